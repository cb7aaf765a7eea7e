"""`transforms.synth.generate`: synthetic BOSS extracts follow spec/extracts.md and are deterministic."""
from __future__ import annotations

import hashlib
from collections import Counter
from datetime import date
from pathlib import Path

import numpy as np
import pytest

from transforms.core.calendar import Month, parse_day
from transforms.ingest.control import read_control, verify_control
from transforms.synth.generate import _cert_numbers, generate_province

START = Month.parse("2025-06")
MONTHS = 8  # 2025-06 .. 2026-01
SUBSCRIBERS = 2_000
FIELDS = {"ACCT": 15, "BILL": 4, "SUSP": 4, "REDEEM": 5}
BRANDS = {"GOTONE", "MZONE", "EASYOWN"}
SUBS_TYPES = {"PERSONAL", "IOT", "DATACARD", "TEST", "FIXEDWL"}
STATUSES = {"NORMAL", "SUSPENDED", "CANCELLED"}
ITEMS = {"RENT", "VOICE", "DATA", "SMS", "ROAM", "VAS", "DISCOUNT", "ADJUST", "GIFT", "DEPOSIT"}
SUSP_TYPES = {"ARREARS_ONEWAY", "ARREARS_TWOWAY", "REQUEST", "LOSS"}
CHANNELS = {"APP", "SMS", "COUNTER", "WEB"}


def _generate(home: Path, seed: int = 0) -> dict:
    return generate_province(home, SUBSCRIBERS, START, MONTHS, seed=seed)


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    home = tmp_path_factory.mktemp("province")
    lines = []
    summary = generate_province(home, SUBSCRIBERS, START, MONTHS, seed=0, progress=lines.append)
    return home, summary, lines


@pytest.fixture(scope="module")
def files(run) -> dict[str, tuple[date, list[list[str]]]]:
    """file stem -> (delivery day, records split into fields)."""
    home = run[0]
    out = {}
    for dat in sorted((home / "landing").glob("*/*.dat")):
        records = [line.split("|") for line in dat.read_bytes().decode("gbk").split("\n")[:-1]]
        out[dat.stem] = (parse_day(dat.parent.name), records)
    return out


def _of_kind(files, kind):
    return {stem: v for stem, v in sorted(files.items()) if stem.split("_")[0] == kind}


def _snapshots(files) -> list[dict[str, list[str]]]:
    return [{r[0]: r for r in records} for _, records in _of_kind(files, "ACCT").values()]


def _md5s(home: Path) -> dict[str, str]:
    return {str(p.relative_to(home)): hashlib.md5(p.read_bytes()).hexdigest()
            for p in sorted((home / "landing").rglob("*")) if p.is_file()}


# --- delivery layout and control files -------------------------------------------------------------------

def test_every_dat_has_a_matching_control_file(run):
    dats = sorted((run[0] / "landing").glob("*/*.dat"))
    assert dats
    for dat in dats:
        control = read_control(dat.with_suffix(".chk"))
        verify_control(dat, control)  # size and md5
        assert control.record_count == dat.read_bytes().count(b"\n")
        assert control.encoding == "GBK"
    assert sorted(p.with_suffix(".dat") for p in (run[0] / "landing").glob("*/*.chk")) == dats


def test_summary_matches_the_files(run, files):
    _, summary, progress = run
    bills = _of_kind(files, "BILL")
    assert summary["files"] == len(files)
    assert summary["subscribers"] == SUBSCRIBERS and summary["months"] == MONTHS
    assert summary["bill_rows"] == sum(len(records) for _, records in bills.values())
    assert summary["landing"] == str(run[0] / "landing")
    days = [day for day, _ in files.values()]
    assert summary["first_day"] == min(days).isoformat()
    assert summary["last_day"] == "2026-02-03"  # BILL_202601, the last generated month, on the 3rd of 2026-02
    assert len(progress) == MONTHS and progress[0].startswith("2025-06: ACCT ")


def test_file_kinds_and_days(files):
    kinds = Counter(stem.split("_")[0] for stem in files)
    assert set(kinds) == {"ACCT", "BILL", "SUSP", "REDEEM"}  # never OVERRIDE
    assert kinds["ACCT"] == MONTHS and kinds["BILL"] == MONTHS
    last_bill_day = date(2026, 2, 3)
    assert max(day for day, _ in files.values()) == last_bill_day
    for stem, (day, _) in files.items():
        kind, stamp = stem.split("_")
        if kind == "BILL":
            month = Month.parse(stamp)
            assert day == (month + 1).first_day.replace(day=3)
        else:
            assert stamp == day.strftime("%Y%m%d")
        if kind == "ACCT":
            assert day == Month.of(day).last_day


def test_bill_files_cover_every_generated_month(files):
    assert list(_of_kind(files, "BILL")) == [f"BILL_{(START + i).compact}" for i in range(MONTHS)]


def test_redemptions_start_with_the_eighth_month(files):
    # months 1-7 (2025-06 .. 2025-12) have no points yet
    assert {day.strftime("%Y%m") for day, _ in _of_kind(files, "REDEEM").values()} == {"202601"}


# --- record format ---------------------------------------------------------------------------------------

def test_field_counts(files):
    for stem, (_, records) in files.items():
        expected = FIELDS[stem.split("_")[0]]
        assert records, stem
        assert {len(r) for r in records} == {expected}, stem


def test_acct_records(files):
    for stem, (day, records) in _of_kind(files, "ACCT").items():
        ids = [r[0] for r in records]
        assert len(ids) == len(set(ids)), stem
        assert len({r[1] for r in records}) == len(records)  # msisdn unique
        for r in records:
            assert r[0][0] == "S" and len(r[0]) == 11 and r[0][1:].isdigit()
            assert len(r[1]) == 11 and r[1].isdigit() and r[1][0] == "1"
            assert len(r[4]) == 18 and r[4][:17].isdigit() and (r[4][17].isdigit() or r[4][17] == "X")
            assert r[5] in BRANDS and r[6] in SUBS_TYPES and r[7] in STATUSES
            assert parse_day(r[8]) <= day
            assert (r[9] != "") == (r[7] == "CANCELLED")
            assert {r[10], r[11], r[12]} <= {"Y", "N"}
            assert r[14] == "" or (r[14][0] == "M" and len(r[14]) == 4)
        assert any(any(ord(ch) > 127 for ch in r[3]) for r in records)  # Chinese names


def test_bill_records(files):
    for stem, (_, records) in _of_kind(files, "BILL").items():
        month = stem.split("_")[1]
        assert {r[1] for r in records} == {month}
        assert {r[2] for r in records} <= ITEMS
        for r in records:
            amount = int(r[3])  # raises if not an integer
            assert str(amount) == r[3]
            if r[2] == "DISCOUNT":
                assert amount < 0
    all_items = {r[2] for _, records in _of_kind(files, "BILL").values() for r in records}
    assert all_items == ITEMS


def test_bill_rows_belong_to_the_month_snapshot(files):
    snapshots = _snapshots(files)
    bills = list(_of_kind(files, "BILL").values())
    for snapshot, (_, records) in zip(snapshots, bills):
        billed = {r[0] for r in records}
        assert billed <= set(snapshot)
        assert len(billed) < len(snapshot)  # some subscribers have no rows
        assert 4.5 <= len(records) / len(snapshot) <= 5.5  # about 5 rows a subscriber-month
    cancelled_billed = [sid for snapshot, (_, records) in zip(snapshots, bills)
                        for sid in {r[0] for r in records} if snapshot[sid][7] == "CANCELLED"]
    assert cancelled_billed  # cancelled ones bill in their last month


def test_susp_and_redeem_records(files):
    event_ids, txn_ids = [], []
    for stem, (day, records) in _of_kind(files, "SUSP").items():
        for r in records:
            assert r[0][0] == "E" and len(r[0]) == 13
            assert r[2][:8] == day.strftime("%Y%m%d") and len(r[2]) == 14 and r[2].isdigit()
            assert r[3] in SUSP_TYPES
            event_ids.append(r[0])
    for stem, (day, records) in _of_kind(files, "REDEEM").items():
        for r in records:
            assert r[0][0] == "R" and len(r[0]) == 13
            assert r[2][:8] == day.strftime("%Y%m%d") and len(r[2]) == 14
            assert 100 <= int(r[3]) <= 3000
            assert r[4] in CHANNELS
            txn_ids.append(r[0])
    assert len(_of_kind(files, "SUSP")) > 1 and len(_of_kind(files, "REDEEM")) > 1
    assert len(event_ids) == len(set(event_ids))  # unique across all files
    assert len(txn_ids) == len(set(txn_ids))


# --- population dynamics ---------------------------------------------------------------------------------

def test_cancelled_subscribers_leave_the_next_snapshot(files):
    snapshots = _snapshots(files)
    months = [day for day, _ in _of_kind(files, "ACCT").values()]
    churned = 0
    for day, current, later in zip(months, snapshots, snapshots[1:]):
        for sid, r in current.items():
            if r[7] == "CANCELLED":
                churned += 1
                assert sid not in later
                cancel = parse_day(r[9])
                assert Month.of(cancel) == Month.of(day) and cancel >= parse_day(r[8])
    assert churned > 8  # ~0.8% of ~2,000 a month over 7 month pairs ≈ 110


def test_snapshots_start_with_the_base_and_add_joiners(files):
    snapshots = _snapshots(files)
    first = snapshots[0]
    assert SUBSCRIBERS < len(first) < SUBSCRIBERS * 1.03  # the base plus ~1% joiners of 2025-06
    for later_snapshot, day in zip(snapshots[1:], [d for d, _ in _of_kind(files, "ACCT").values()][1:]):
        earlier_ids = set().union(*[s.keys() for s in snapshots[:snapshots.index(later_snapshot)]])
        new = [r for sid, r in later_snapshot.items() if sid not in earlier_ids]
        assert new
        assert all(Month.of(parse_day(r[8])) == Month.of(day) for r in new)  # joined that month


def test_attributes_are_stable_month_to_month(files):
    snapshots = _snapshots(files)
    changes = kept = 0
    for current, later in zip(snapshots, snapshots[1:]):
        for sid in current.keys() & later.keys():
            a, b = current[sid], later[sid]
            assert a[:5] == b[:5] and a[6] == b[6] and a[8] == b[8] and a[10:] == b[10:]
            changes += a[5] != b[5]
            kept += 1
    assert changes < kept * 0.005  # rare brand changes only


def test_realistic_skew(files):
    last_day, last = list(_of_kind(files, "ACCT").values())[-1]
    brands = Counter(r[5] for r in last)
    assert brands["EASYOWN"] > brands["MZONE"] > brands["GOTONE"] > 0
    types = Counter(r[6] for r in last)
    assert types["PERSONAL"] > 0.8 * len(last) and set(types) == SUBS_TYPES
    assert 0 < sum(r[12] == "Y" for r in last) < 0.01 * len(last)  # vip ~0.2%
    assert sum(r[11] == "Y" for r in last) > 0  # group key persons
    assert sum(r[7] == "SUSPENDED" for r in last) > 0
    # tenure(M) < 6 at the last month: joined after 2025-08 (2026-01 - 2025-08 + 1 = 6)
    assert sum(Month.of(parse_day(r[8])) > Month.parse("2025-08") for r in last) > 0
    assert min(parse_day(r[8]) for r in last) < date(2013, 1, 1)  # a long-tenure tail

    twoway = Counter(r[1] for _, records in _of_kind(files, "SUSP").values() for r in records
                     if r[3] == "ARREARS_TWOWAY")
    assert sum(count >= 3 for count in twoway.values()) > 0  # arrears cap candidates within 8 ≤ 12 months

    _, bill = list(_of_kind(files, "BILL").values())[-1]
    cons = Counter()
    for r in bill:
        if r[2] not in ("GIFT", "DEPOSIT"):
            cons[r[0]] += int(r[3])
    totals = np.array(sorted(cons.values()))
    assert 4_000 <= np.median(totals) <= 8_000  # median ≈ 60 yuan = 6,000 fen
    assert totals[-len(totals) // 100] > 10 * np.median(totals)  # lognormal tail: top 1% above 10x median
    assert (totals < 0).any()  # refund months
    by_brand = {}
    brand_of = {r[0]: r[5] for r in last}
    for sid, total in cons.items():
        by_brand.setdefault(brand_of[sid], []).append(total)
    assert np.median(by_brand["GOTONE"]) > np.median(by_brand["MZONE"]) > np.median(by_brand["EASYOWN"])


def test_cert_check_character():
    # GB 11643 example 11010519491231002X: weighted digit sum 167, 167 mod 11 = 2 -> check 'X'
    cert = _cert_numbers(np.array([110105]), np.array([(date(1949, 12, 31) - date(1970, 1, 1)).days]),
                         np.array([2]))
    assert cert.to_list() == ["11010519491231002X"]


# --- determinism -----------------------------------------------------------------------------------------

def test_same_arguments_give_identical_files(run, tmp_path):
    assert _md5s(tmp_path) == {} and _generate(tmp_path) == {**run[1], "landing": str(tmp_path / "landing")}
    first, second = _md5s(run[0]), _md5s(tmp_path)
    assert first and first == second


def test_another_seed_gives_other_files(run, tmp_path):
    _generate(tmp_path, seed=1)
    first, other = _md5s(run[0]), _md5s(tmp_path)
    common = first.keys() & other.keys()
    assert common and all(first[name] != other[name] for name in common if name.endswith(".dat"))


def test_rejects_empty_runs(tmp_path):
    with pytest.raises(ValueError, match="months"):
        generate_province(tmp_path, 10, START, 0)
    with pytest.raises(ValueError, match="subscribers"):
        generate_province(tmp_path, 0, START, 3)


def test_a_shorter_run_is_a_prefix_of_a_longer_one(run, tmp_path):
    generate_province(tmp_path, SUBSCRIBERS, START, 3, seed=0)  # 2025-06 .. 2025-08
    full, short = _md5s(run[0]), _md5s(tmp_path)
    assert "landing/20250903/BILL_202508.dat" in short
    assert all(full[name] == md5 for name, md5 in short.items())
