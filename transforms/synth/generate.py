"""Synthetic BOSS extracts for one province (`tierflow generate`), per spec/extracts.md.

Everything is vectorised: numpy draws per subscriber, Polars builds each file's lines with `concat_str`.
Randomness comes from PCG64 streams keyed by (seed, purpose, month[, chunk]), so the same arguments give
byte-identical files, and a shorter run is a prefix of a longer one with the same seed (the subscriber
universe grows month by month and month m only draws from month m's streams).

The subscriber universe is held as numpy arrays (one row per subscriber ever generated, in subs_id order)
plus a Polars frame of the static text pieces of the ACCT line; each month selects its members from it.
"""
from __future__ import annotations

from dataclasses import dataclass
from datetime import date
from pathlib import Path
from typing import Callable

import numpy as np
import polars as pl

from transforms.core.calendar import Month
from transforms.ingest.control import write_delivery
from transforms.ingest.layouts import BILL_ITEMS, BRANDS, STATUSES, SUBS_TYPES, SUSP_TYPES

ENCODING = "GBK"

BRAND_SHARES = (0.15, 0.30, 0.55)
BRAND_SPEND = (2.2, 0.95, 0.7)  # GOTONE spends more, EASYOWN less
TYPE_SHARES = (0.90, 0.05, 0.03, 0.01, 0.01)
TYPE_SPEND = (1.0, 0.15, 0.5, 1.0, 0.8)
NORMAL, SUSPENDED, CANCELLED = 0, 1, 2
CHANNELS = ("APP", "SMS", "COUNTER", "WEB")
CHANNEL_SHARES = (0.5, 0.2, 0.15, 0.15)
REGIONS = tuple(str(code) for code in range(4110, 4130))
MSISDN_PREFIXES = np.array([134, 135, 136, 137, 138, 139, 150, 151, 152, 157, 158, 159, 182, 183, 187, 188],
                           dtype=np.int64)
SURNAMES = tuple("王李张刘陈杨黄赵吴周徐孙马朱胡郭何高林罗郑梁谢宋唐许韩冯邓曹彭曾肖田董袁潘于蒋蔡余杜")
GIVEN_CHARS = tuple("伟芳娜敏静丽强磊军洋勇艳杰娟涛明超秀霞平刚桂英华玉兰红建国文辉鹏飞宇浩然欣怡子涵梓轩晨阳思雨佳琪博")

SUSP_DAYS = (5, 12, 19, 26)   # SUSP delivered on these days of every month
REDEEM_DAYS = (8, 18, 28)     # REDEEM delivered on these days (from the 8th generated month on)
REDEEM_FROM_MONTH = 7         # 0-based: nobody has points before the 8th generated month
BILL_DAY = 3                  # BILL_M arrives on the 3rd of M+1
BILL_CHUNK = 1_000_000        # subscribers per BILL chunk (a constant: part of the determinism contract)

JOIN_RATE = 0.01
CHURN_RATE = 0.008
SPEND_MEDIAN_FEN = 7_500      # before brand/type factors: the overall median of cons ends near 60 yuan
SPEND_SIGMA = 0.9
MONTH_NOISE_SIGMA = 0.3
PACKAGES_FEN = np.array([0, 800, 1800, 2800, 3800, 5800, 8800, 12800, 18800, 28800, 38800, 58800], dtype=np.int64)

# BILL slots: one column each in the per-chunk amount matrix; duplicated items have two slots (every item of the
# BILL layout appears).
SLOT_ITEMS = ("RENT", "VOICE", "VOICE", "DATA", "DATA", "SMS", "ROAM", "VAS", "DISCOUNT", "ADJUST", "GIFT",
              "DEPOSIT")
assert set(SLOT_ITEMS) == set(BILL_ITEMS)

# PCG64 stream purposes
_INIT, _JOIN, _BRAND, _SUSP, _REDEEM, _BILL = range(6)
_EPOCH = date(1970, 1, 1)


def _rng(seed: int, *key: int) -> np.random.Generator:
    return np.random.Generator(np.random.PCG64(np.random.SeedSequence(seed, spawn_key=key)))


def _day_number(day: date) -> int:
    return (day - _EPOCH).days


# ---------------------------------------------------------------------------------------------------------
# Subscriber universe
# ---------------------------------------------------------------------------------------------------------

@dataclass
class _Universe:
    """One entry per subscriber ever generated, index = subs_id number - 1."""
    join_month: np.ndarray     # -1 for the initial base, else the 0-based generated month of joining
    churn_month: np.ndarray    # 0-based generated month of cancellation, or a large number
    cancel_day: np.ndarray     # day number of cancel_date (meaningful only when churning)
    open_day: np.ndarray
    brand: np.ndarray          # mutable: rare brand changes
    subs_type: np.ndarray
    level: np.ndarray          # spending level, fen a month
    rent: np.ndarray           # package rent, fen a month (0 = no RENT row)
    discount_pct: np.ndarray   # 0 or 10..30
    roamer: np.ndarray
    arrears: np.ndarray        # 0 none, 1 occasional, 2 chronic
    text: pl.DataFrame         # subs_id, head (fields 1-5), subs_type, open_date, tail (fields 11-15)
    n_customers: int = 0

    @property
    def size(self) -> int:
        return len(self.join_month)

    def members(self, month: int) -> np.ndarray:
        """Indexes in that month's snapshot: joined by then and not cancelled before it."""
        return np.flatnonzero((self.join_month <= month) & (self.churn_month >= month))


def _draw_batch(rng: np.random.Generator, n: int, first_index: int, first_customer: int, msisdn_offset: int,
                open_day: np.ndarray, join_month: int, churn_month: np.ndarray, cancel_day: np.ndarray) -> dict:
    """Attributes of n new subscribers (numbers first_index+1 ..), customers numbered from first_customer."""
    index = np.arange(first_index, first_index + n, dtype=np.int64)
    # ~10% of subscriptions belong to the customer of the previous one (families, second lines)
    new_customer = rng.random(n) >= 0.10
    new_customer[:1] = True
    customer = first_customer + np.cumsum(new_customer) - 1
    first_of_customer = np.flatnonzero(new_customer)[customer - first_customer]

    brand = rng.choice(len(BRANDS), size=n, p=BRAND_SHARES).astype(np.int8)
    subs_type = rng.choice(len(SUBS_TYPES), size=n, p=TYPE_SHARES).astype(np.int8)
    level = (rng.lognormal(np.log(SPEND_MEDIAN_FEN), SPEND_SIGMA, n)
             * np.asarray(BRAND_SPEND)[brand] * np.asarray(TYPE_SPEND)[subs_type])
    rent = PACKAGES_FEN[np.searchsorted(PACKAGES_FEN, 0.6 * level, side="right") - 1]
    rent[rng.random(n) < 0.04] = 0
    discount_pct = np.where(rng.random(n) < 0.30, rng.integers(1, 4, n) * 10, 0)
    roamer = rng.random(n) < 0.08
    prone = rng.random(n) < 0.03
    arrears = np.where(prone, np.where(rng.random(n) < 0.25, 2, 1), 0).astype(np.int8)

    realname = rng.random(n) < 0.97
    group_key = rng.random(n) < 0.02
    vip = rng.random(n) < 0.002
    region_weights = 1.0 / np.arange(1, len(REGIONS) + 1) ** 0.7
    region = rng.choice(len(REGIONS), size=n, p=region_weights / region_weights.sum())
    manager = np.where(rng.random(n) < 0.30, rng.integers(1, 200, n), 0)

    # personal data belongs to the customer: draw per subscriber, then take the customer's first draw
    surname = rng.integers(0, len(SURNAMES), n)[first_of_customer]
    given1 = rng.integers(0, len(GIVEN_CHARS), n)[first_of_customer]
    given2 = np.where(rng.random(n) < 0.65, rng.integers(0, len(GIVEN_CHARS), n), -1)[first_of_customer]
    age_days = rng.integers(18 * 365, 66 * 365, n)[first_of_customer]
    birth_day = open_day[first_of_customer] - age_days
    cert_region = (int(REGIONS[0]) + rng.integers(0, len(REGIONS), n)) * 100 + rng.integers(1, 10, n)
    cert_seq = rng.integers(1, 1000, n)
    cert_no = _cert_numbers(cert_region[first_of_customer], birth_day, cert_seq[first_of_customer])
    msisdn = _msisdns(index, msisdn_offset)

    text = _static_text(index, msisdn, customer, surname, given1, given2, cert_no, subs_type, open_day,
                        realname, group_key, vip, region, manager)
    return dict(join_month=np.full(n, join_month, dtype=np.int32), churn_month=churn_month.astype(np.int32),
                cancel_day=cancel_day.astype(np.int32), open_day=open_day.astype(np.int32), brand=brand,
                subs_type=subs_type, level=level, rent=rent, discount_pct=discount_pct, roamer=roamer,
                arrears=arrears, text=text, n_customers=int(new_customer.sum()))


def _msisdns(index: np.ndarray, offset: int) -> np.ndarray:
    """Unique 11-digit numbers: an affine bijection of the subscriber index modulo the number space."""
    space = len(MSISDN_PREFIXES) * 10**8
    multiplier = 2_654_435_761  # prime, coprime with the 2^12 * 5^8 space
    x = (multiplier * ((index + offset) % space)) % space
    return MSISDN_PREFIXES[x // 10**8] * 10**8 + x % 10**8


def _cert_numbers(region6: np.ndarray, birth_day: np.ndarray, seq: np.ndarray) -> pl.Series:
    """18-character resident ID numbers with a valid GB 11643 check character."""
    births = birth_day.astype("datetime64[D]")
    years = births.astype("datetime64[Y]").astype(np.int64) + 1970
    months = births.astype("datetime64[M]").astype(np.int64) % 12 + 1
    days = (births - births.astype("datetime64[M]")).astype(np.int64) + 1
    body = region6 * 10**11 + (years * 10_000 + months * 100 + days) * 1_000 + seq  # 17 digits
    weights = np.array([7, 9, 10, 5, 8, 4, 2, 1, 6, 3, 7, 9, 10, 5, 8, 4, 2], dtype=np.int64)
    checksum = np.zeros(len(body), dtype=np.int64)
    for position, weight in enumerate(weights):
        checksum += body // 10 ** (16 - position) % 10 * weight
    checksum %= 11
    check = pl.Series(list("10X98765432")).gather(checksum)
    return pl.select(pl.concat_str([pl.lit(pl.Series(body).cast(pl.String)), pl.lit(check)])).to_series()


def _static_text(index, msisdn, customer, surname, given1, given2, cert_no, subs_type, open_day,
                 realname, group_key, vip, region, manager) -> pl.DataFrame:
    given = pl.Series(GIVEN_CHARS + ("",))
    name = pl.concat_str([pl.Series(SURNAMES).gather(surname), given.gather(given1),
                          given.gather(np.where(given2 < 0, len(GIVEN_CHARS), given2))])
    flag = pl.Series(["N", "Y"])
    frame = pl.select(
        subs_id=_prefixed("S", index + 1, 10),
        msisdn=pl.lit(pl.Series(msisdn).cast(pl.String)),
        cust_id=_prefixed("C", customer + 1, 10),
        cust_name=name,
        cert_no=pl.lit(cert_no),
        subs_type=pl.lit(pl.Series(SUBS_TYPES).gather(subs_type)),
        open_date=pl.lit(_dates(open_day)),
        realname=pl.lit(flag.gather(realname.astype(np.int64))),
        group_key=pl.lit(flag.gather(group_key.astype(np.int64))),
        vip=pl.lit(flag.gather(vip.astype(np.int64))),
        region=pl.lit(pl.Series(REGIONS).gather(region)),
        manager=pl.lit(pl.Series(manager)),
    )
    return frame.select(
        "subs_id",
        pl.concat_str(["subs_id", "msisdn", "cust_id", "cust_name", "cert_no"], separator="|").alias("head"),
        "subs_type",
        "open_date",
        pl.concat_str(["realname", "group_key", "vip", "region",
                       pl.when(pl.col("manager") > 0)
                       .then(pl.concat_str([pl.lit("M"), pl.col("manager").cast(pl.String).str.zfill(3)]))
                       .otherwise(pl.lit(""))], separator="|").alias("tail"),
    )


def _prefixed(prefix: str, numbers: np.ndarray, width: int) -> pl.Series:
    return pl.concat_str([pl.lit(prefix), pl.Series(numbers).cast(pl.String).str.zfill(width)])


def _subs_ids(indexes: np.ndarray) -> pl.Series:
    """subs_id text of universe indexes (subs_id number = index + 1)."""
    return _prefixed("S", indexes + 1, 10)


def _dates(day_numbers: np.ndarray) -> pl.Series:
    return pl.Series(day_numbers.astype(np.int32)).cast(pl.Date).dt.strftime("%Y%m%d")


def _churn_months(rng: np.random.Generator, n: int, first_possible: int, horizon: int) -> np.ndarray:
    """Month of cancellation under a constant monthly churn rate; `horizon` (never, within the run) if later."""
    month = first_possible + rng.geometric(CHURN_RATE, n) - 1
    return np.minimum(month, horizon)


def _cancel_days(rng: np.random.Generator, churn: np.ndarray, start: Month, horizon: int) -> np.ndarray:
    first = np.array([_day_number((start + m).first_day) for m in range(horizon + 1)])
    length = np.array([(start + m).last_day.day for m in range(horizon)] + [1])
    return first[churn] + (rng.random(len(churn)) * length[churn]).astype(np.int64)


def _msisdn_offset(seed: int) -> int:
    """One offset for every batch, so the msisdn bijection stays unique across joiners."""
    return int(_rng(seed, _INIT, 1).integers(0, len(MSISDN_PREFIXES) * 10**8))


def _initial_base(seed: int, subscribers: int, start: Month, months: int) -> dict:
    rng = _rng(seed, _INIT)
    start_day = _day_number(start.first_day)
    # open dates over ~15 years, skewed to recent ones; 8% within the last 12 months (tenure edges)
    years_back = np.where(rng.random(subscribers) < 0.08, rng.random(subscribers) * 365,
                          365 + rng.random(subscribers) ** 1.3 * 14 * 365)
    open_day = start_day - 1 - years_back.astype(np.int64)
    churn = _churn_months(rng, subscribers, 0, months)
    cancel_day = _cancel_days(rng, churn, start, months)
    return _draw_batch(rng, subscribers, 0, 0, _msisdn_offset(seed), open_day, -1, churn, cancel_day)


def _joiners(seed: int, subscribers: int, start: Month, months: int, month: int, first_index: int,
             first_customer: int) -> dict:
    rng = _rng(seed, _JOIN, month)
    m = start + month
    n = int(rng.binomial(subscribers, JOIN_RATE))
    open_day = _day_number(m.first_day) + rng.integers(0, m.last_day.day, n)
    churn = _churn_months(rng, n, month + 1, months)  # joiners stay at least their first month
    return _draw_batch(rng, n, first_index, first_customer, _msisdn_offset(seed), open_day, month, churn,
                       _cancel_days(rng, churn, start, months))


def _build_universe(seed: int, subscribers: int, start: Month, months: int) -> _Universe:
    batches = [_initial_base(seed, subscribers, start, months)]
    for month in range(months):
        size = sum(len(b["join_month"]) for b in batches)
        customers = sum(b["n_customers"] for b in batches)
        batches.append(_joiners(seed, subscribers, start, months, month, size, customers))
    batches = [b for b in batches if len(b["join_month"])]
    arrays = {key: np.concatenate([b[key] for b in batches])
              for key in batches[0] if key not in ("text", "n_customers")}
    text = pl.concat([b["text"] for b in batches], rechunk=True)
    return _Universe(**arrays, text=text, n_customers=sum(b["n_customers"] for b in batches))


# ---------------------------------------------------------------------------------------------------------
# Monthly files
# ---------------------------------------------------------------------------------------------------------

def _lines_payload(lines: pl.Series) -> bytes:
    if len(lines) == 0:
        return b""
    return (lines.str.join("\n").item() + "\n").encode("gbk")


def _clock(seconds: np.ndarray) -> pl.Series:
    hhmmss = seconds // 3600 * 10_000 + seconds // 60 % 60 * 100 + seconds % 60
    return pl.Series(hhmmss).cast(pl.String).str.zfill(6)


def _change_brands(universe: _Universe, seed: int, month: int, members: np.ndarray) -> None:
    """Rare brand migrations (0.05% a month), visible from this month's snapshot on."""
    if month == 0:
        return
    rng = _rng(seed, _BRAND, month)
    movers = members[rng.random(len(members)) < 0.0005]
    universe.brand[movers] = (universe.brand[movers] + rng.integers(1, len(BRANDS), len(movers))) % len(BRANDS)


@dataclass
class _Events:
    """One month's suspension events, sorted by time, with their delivery-day index."""
    subs: np.ndarray
    kind: np.ndarray
    day_slot: np.ndarray
    seconds: np.ndarray


def _suspension_events(universe: _Universe, seed: int, month: Month, month_no: int,
                       members: np.ndarray) -> _Events:
    rng = _rng(seed, _SUSP, month_no)
    n = len(members)
    chronic = universe.arrears[members] == 2
    prone = universe.arrears[members] > 0
    oneway = prone & (rng.random(n) < np.where(chronic, 0.75, 0.30))
    twoway = oneway & (rng.random(n) < np.where(chronic, 0.85, 0.25))
    oneway_slot = rng.integers(0, len(SUSP_DAYS), n)
    twoway_slot = np.minimum(oneway_slot + rng.integers(0, 3, n), len(SUSP_DAYS) - 1)
    request = rng.random(n) < 0.001
    loss = rng.random(n) < 0.0005
    other_slot = rng.integers(0, len(SUSP_DAYS), n)
    # one-way in the morning, two-way (same day or later) in the afternoon, others any time of day
    parts = [
        (oneway, 0, oneway_slot, rng.integers(8 * 3600, 12 * 3600, n)),
        (twoway, 1, twoway_slot, rng.integers(13 * 3600, 22 * 3600, n)),
        (request, 2, other_slot, rng.integers(8 * 3600, 22 * 3600, n)),
        (loss, 3, other_slot, rng.integers(0, 24 * 3600, n)),
    ]
    subs = np.concatenate([members[mask] for mask, *_ in parts])
    kind = np.concatenate([np.full(mask.sum(), k, dtype=np.int8) for mask, k, *_ in parts])
    slot = np.concatenate([s[mask] for mask, _, s, _ in parts])
    seconds = np.concatenate([t[mask] for mask, *_, t in parts])
    # a subscriber cancelled this month has no events from the cancel day on
    day = np.asarray(SUSP_DAYS)[slot]
    churning = universe.churn_month[subs] == month_no
    cancel_dom = universe.cancel_day[subs] - _day_number(month.first_day) + 1
    keep = ~churning | (day < cancel_dom)
    order = np.lexsort((kind[keep], subs[keep], seconds[keep], slot[keep]))
    return _Events(subs[keep][order], kind[keep][order], slot[keep][order], seconds[keep][order])


def _statuses(universe: _Universe, seed: int, month_no: int, members: np.ndarray, events: _Events) -> np.ndarray:
    """SUSPENDED at month end for part of those suspended this month; CANCELLED in the churn month."""
    rng = _rng(seed, _SUSP, month_no, 1)
    stay_suspended = np.array([0.3, 0.6, 0.5, 0.5])[events.kind] > rng.random(len(events.kind))
    suspended = np.zeros(universe.size, dtype=bool)
    suspended[events.subs[stay_suspended]] = True
    status = np.where(suspended[members], SUSPENDED, NORMAL)
    return np.where(universe.churn_month[members] == month_no, CANCELLED, status)


def _write_susp(landing: Path, month: Month, events: _Events, next_id: int) -> tuple[int, list[date]]:
    """One SUSP file per delivery day with events; returns the next free event number and the days written."""
    days = []
    for slot, dom in enumerate(SUSP_DAYS):
        pick = events.day_slot == slot
        count = int(pick.sum())
        if not count:
            continue
        day = date(month.year, month.month, dom)
        stamp = day.strftime("%Y%m%d")
        lines = pl.select(pl.concat_str([
            _prefixed("E", np.arange(next_id, next_id + count), 12),
            _subs_ids(events.subs[pick]),
            pl.concat_str([pl.lit(stamp), _clock(events.seconds[pick])]),
            pl.Series(SUSP_TYPES).gather(events.kind[pick]),
        ], separator="|")).to_series()
        write_delivery(landing / stamp, f"SUSP_{stamp}.dat", _lines_payload(lines), count, ENCODING)
        next_id += count
        days.append(day)
    return next_id, days


def _write_redeem(landing: Path, universe: _Universe, seed: int, month: Month, month_no: int,
                  members: np.ndarray, next_id: int) -> tuple[int, list[date], int]:
    """Redemptions from ~0.5% of personal subscribers a month, heavier spenders more likely."""
    if month_no < REDEEM_FROM_MONTH:
        return next_id, [], 0
    rng = _rng(seed, _REDEEM, month_no)
    n = len(members)
    weight = np.clip(universe.level[members] / SPEND_MEDIAN_FEN, 0.25, 4.0)
    chance = 0.005 * weight / weight.mean()
    redeemers = members[(rng.random(n) < chance) & (universe.subs_type[members] == 0)]
    k = len(redeemers)
    slot = rng.integers(0, len(REDEEM_DAYS), k)
    seconds = rng.integers(7 * 3600, 23 * 3600, k)
    points = rng.integers(1, 31, k) * 100
    channel = rng.choice(len(CHANNELS), size=k, p=CHANNEL_SHARES)
    order = np.lexsort((redeemers, seconds, slot))
    redeemers, slot, seconds, points, channel = (a[order] for a in (redeemers, slot, seconds, points, channel))
    days = []
    for s, dom in enumerate(REDEEM_DAYS):
        pick = slot == s
        count = int(pick.sum())
        if not count:
            continue
        day = date(month.year, month.month, dom)
        stamp = day.strftime("%Y%m%d")
        lines = pl.select(pl.concat_str([
            _prefixed("R", np.arange(next_id, next_id + count), 12),
            _subs_ids(redeemers[pick]),
            pl.concat_str([pl.lit(stamp), _clock(seconds[pick])]),
            pl.Series(points[pick]).cast(pl.String),
            pl.Series(CHANNELS).gather(channel[pick]),
        ], separator="|")).to_series()
        write_delivery(landing / stamp, f"REDEEM_{stamp}.dat", _lines_payload(lines), count, ENCODING)
        next_id += count
        days.append(day)
    return next_id, days, k


def _write_acct(landing: Path, universe: _Universe, month: Month, month_no: int, members: np.ndarray,
                status: np.ndarray) -> date:
    day = month.last_day
    stamp = day.strftime("%Y%m%d")
    cancelled = status == CANCELLED
    cancel = pl.repeat("", len(members), eager=True).scatter(np.flatnonzero(cancelled),
                                                             _dates(universe.cancel_day[members[cancelled]]))
    text = universe.text[members]
    lines = text.select(pl.concat_str([
        pl.col("head"),
        pl.lit(pl.Series(BRANDS).gather(universe.brand[members])),
        pl.col("subs_type"),
        pl.lit(pl.Series(STATUSES).gather(status)),
        pl.col("open_date"),
        pl.lit(cancel),
        pl.col("tail"),
    ], separator="|")).to_series()
    write_delivery(landing / stamp, f"ACCT_{stamp}.dat", _lines_payload(lines), len(members), ENCODING)
    return day


def _bill_matrix(universe: _Universe, rng: np.random.Generator, month: Month, month_no: int,
                 subs: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Amounts (fen) and presence of every BILL slot for a chunk of subscribers: shape (n, len(SLOT_ITEMS))."""
    n = len(subs)
    days = month.last_day.day
    month_start = _day_number(month.first_day)
    # part-month subscribers: prorate from open_date / up to cancel_date
    first_dom = np.clip(universe.open_day[subs] - month_start + 1, 1, days)
    last_dom = np.where(universe.churn_month[subs] == month_no, universe.cancel_day[subs] - month_start + 1, days)
    share = np.clip(last_dom - first_dom + 1, 1, days) / days
    total = universe.level[subs] * rng.lognormal(0.0, MONTH_NOISE_SIGMA, n) * share
    rent = np.round(universe.rent[subs] * share).astype(np.int64)
    usage = np.maximum(total - rent, 0.15 * total)

    roaming = universe.roamer[subs] & (rng.random(n) < 0.4)
    weights = np.stack([
        rng.gamma(2.0, 1.0, n) * (rng.random(n) < 0.90),          # VOICE
        rng.gamma(2.0, 1.2, n) * (rng.random(n) < 0.95),          # DATA
        rng.gamma(2.0, 0.1, n) * (rng.random(n) < 0.80),          # SMS
        rng.gamma(2.0, 0.6, n) * roaming,                          # ROAM
        rng.gamma(2.0, 0.2, n) * (rng.random(n) < 0.60),          # VAS
    ], axis=1)
    weight_sum = weights.sum(axis=1, keepdims=True)
    parts = np.floor(usage[:, None] * weights / np.where(weight_sum > 0, weight_sum, 1.0)).astype(np.int64)
    voice, data, sms, roam, vas = parts.T
    # some items arrive as two rows (e.g. a data booster billed apart): they add up
    voice2 = np.floor(voice * rng.random(n) * (rng.random(n) < 0.25)).astype(np.int64)
    data2 = np.floor(data * rng.random(n) * (rng.random(n) < 0.40)).astype(np.int64)
    discount = -(rent * universe.discount_pct[subs] // 100)
    gross = rent + voice + data + sms + roam + vas + discount

    adjust = np.where(rng.random(n) < 0.01, rng.integers(-2000, 2001, n), 0)
    refund = rng.random(n) < 0.003  # a refund month: the total goes negative
    adjust = np.where(refund, -(gross + rng.integers(100, 5001, n)), adjust)
    gift = np.where(rng.random(n) < 0.03, rng.integers(5, 51, n) * 100, 0)
    deposit = np.where(rng.random(n) < 0.01, rng.integers(1, 11, n) * 5000, 0)

    amounts = np.stack([rent, voice - voice2, voice2, data - data2, data2, sms, roam, vas, discount, adjust,
                        gift, deposit], axis=1)
    silent = (rng.random(n) < 0.02) | ((universe.subs_type[subs] == 3) & (rng.random(n) < 0.9))  # TEST lines
    present = (amounts != 0) & ~silent[:, None]
    return amounts, present


def _write_bill(landing: Path, universe: _Universe, seed: int, month: Month, month_no: int,
                members: np.ndarray) -> tuple[date, int]:
    chunks, rows = [], 0
    slot_items = pl.Series(SLOT_ITEMS)
    for chunk_no, begin in enumerate(range(0, len(members), BILL_CHUNK)):
        subs = members[begin:begin + BILL_CHUNK]
        amounts, present = _bill_matrix(universe, _rng(seed, _BILL, month_no, chunk_no), month, month_no, subs)
        row, slot = np.nonzero(present)  # row-major: grouped by subscriber, items in slot order
        lines = pl.select(pl.concat_str([
            _subs_ids(subs[row]),
            pl.lit(month.compact),
            slot_items.gather(slot),
            pl.Series(amounts[row, slot]).cast(pl.String),
        ], separator="|")).to_series()
        chunks.append(_lines_payload(lines))
        rows += len(row)
    day = (month + 1).first_day.replace(day=BILL_DAY)
    write_delivery(landing / day.strftime("%Y%m%d"), f"BILL_{month.compact}.dat", b"".join(chunks), rows,
                   ENCODING)
    return day, rows


def generate_province(home: Path, subscribers: int, start: Month, months: int, seed: int = 0,
                      progress: Callable[[str], None] | None = None) -> dict:
    """Writes `months` months of BOSS extracts for a synthetic province into home/landing/; returns a summary."""
    if subscribers < 1:
        raise ValueError(f"subscribers must be at least 1, got {subscribers}")
    if months < 1:
        raise ValueError(f"months must be at least 1, got {months}")
    landing = Path(home) / "landing"
    universe = _build_universe(seed, subscribers, start, months)
    days: list[date] = []
    files = bill_rows = 0
    next_event = next_txn = 1
    for month_no in range(months):
        month = start + month_no
        members = universe.members(month_no)
        _change_brands(universe, seed, month_no, members)
        events = _suspension_events(universe, seed, month, month_no, members)
        next_event, susp_days = _write_susp(landing, month, events, next_event)
        next_txn, redeem_days, redemptions = _write_redeem(landing, universe, seed, month, month_no, members,
                                                           next_txn)
        status = _statuses(universe, seed, month_no, members, events)
        acct_day = _write_acct(landing, universe, month, month_no, members, status)
        bill_day, rows = _write_bill(landing, universe, seed, month, month_no, members)
        days += susp_days + redeem_days + [acct_day, bill_day]
        files += len(susp_days) + len(redeem_days) + 2
        bill_rows += rows
        if progress:
            progress(f"{month}: ACCT {len(members):,} rows, BILL {rows:,} rows, "
                     f"SUSP {len(events.subs):,} events, REDEEM {redemptions:,} txns")
    return {"files": files, "subscribers": subscribers, "subscribers_total": universe.size, "months": months,
            "bill_rows": bill_rows, "landing": str(landing), "first_day": min(days).isoformat(),
            "last_day": max(days).isoformat()}
