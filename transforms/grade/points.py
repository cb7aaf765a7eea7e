"""Loyalty points (积分) of one month, kept as lots (rules.md, "Points").

A lot is one (subs_id, earn_month) with what is left of the points earned for that month. The monthly run of M:
(1) applies the redemptions dated in M in time order (ties by txn_id), each against the balance left so far; one
    larger than that balance is rejected whole (INSUFFICIENT_POINTS); accepted ones consume the oldest lots first;
(2) expires, at the end of M, what is left of the lot earned for M - expiry_months;
(3) credits the accrual for M: ceil(max(cons_fen, 0) * k / 100), k = mult_num / mult_den of the tier in effect
    during M, in exact integers.
Set-based throughout: the one Python loop runs over a redemption's rank within its subscriber (a handful of steps),
each step a vectorised operation over all subscribers.
"""
from __future__ import annotations

from dataclasses import dataclass

import polars as pl

from transforms.core.calendar import Month

INSUFFICIENT_POINTS = "INSUFFICIENT_POINTS"
_SUBS = "subs_id"


@dataclass
class PointsMonth:
    lot_changes: pl.DataFrame  # subs_id, earn_month (Date), redeemed Int64, expired Int64  (only non-zero rows)
    new_lots: pl.DataFrame  # subs_id, earn_month (Date = M.first_day), earned Int64  (only earned > 0)
    accepted: pl.DataFrame  # txn_id, subs_id, txn_time, points
    rejected: pl.DataFrame  # txn_id, subs_id, txn_time, points, balance_at_time Int64 (INSUFFICIENT_POINTS)
    balances: pl.DataFrame  # subs_id, earned, redeemed, expired, balance  (month totals; balance after step 3)


def apply_points_month(month: Month, open_lots: pl.DataFrame, redemptions: pl.DataFrame,
                       accrual_base: pl.DataFrame, expiry_months: int) -> PointsMonth:
    """Runs the points timeline of `month` over the lots left at the end of the month before."""
    expiring_lot = (month - expiry_months).first_day
    return apply_points_to_totals(month, _lot_totals(open_lots, expiring_lot), open_lots, redemptions,
                                  accrual_base, expiry_months)


def apply_points_to_totals(month: Month, lot_totals: pl.DataFrame, redeemers_lots: pl.DataFrame,
                           redemptions: pl.DataFrame, accrual_base: pl.DataFrame,
                           expiry_months: int) -> PointsMonth:
    """The same from what the timeline needs of the lots: per subscriber with open lots, `lot_totals` (subs_id,
    opening = what is left of all their lots, expiring = what is left of the lot that expires at the end of M;
    opening > 0), and the open lots themselves (subs_id, earn_month, remaining) of at least every subscriber with
    a redemption in M (the FIFO's input; other subscribers' lots are ignored). Only ~1% of the lots change in a
    month: with 36 months of lots, reading them all costs several times the rest of the step."""
    _check_inputs(month, redeemers_lots, redemptions, accrual_base, expiry_months)
    expiring_lot = (month - expiry_months).first_day
    settled = _settle_redemptions(redemptions, lot_totals)
    accepted = settled.filter(pl.col("accepted"))
    redeemed_per_subs = accepted.group_by(_SUBS).agg(redeemed=pl.col("points").sum().cast(pl.Int64))
    redeemers_lots = redeemers_lots.filter(pl.col(_SUBS).is_in(redeemed_per_subs[_SUBS].implode()))
    consumed = _consume_fifo(redeemers_lots, redeemed_per_subs)
    per_subs = _lot_side_totals(lot_totals, redeemed_per_subs, consumed, expiring_lot)
    earned = _accrue(accrual_base)
    txn_order = [_SUBS, "txn_time", "txn_id"]
    return PointsMonth(
        lot_changes=_lot_changes(consumed, per_subs, expiring_lot),
        new_lots=(earned.filter(pl.col("earned") > 0)
                  .select(_SUBS, earn_month=pl.lit(month.first_day, pl.Date), earned="earned").sort(_SUBS)),
        accepted=accepted.select("txn_id", _SUBS, "txn_time", "points").sort(txn_order),
        rejected=settled.filter(~pl.col("accepted"))
        .select("txn_id", _SUBS, "txn_time", "points", balance_at_time="left_before").sort(txn_order),
        balances=_balances(per_subs, earned, settled),
    )


def roll_open_lots(month: Month, open_lots: pl.DataFrame, result: PointsMonth,
                   expiry_months: int) -> pl.DataFrame:
    """The open lots at the end of `month` (the input of month + 1), from those at the end of the month before.

    The lot of month - expiry_months is always gone (redeemed or expired); only redeemers' other lots change.
    Avoids a join over all lots: the untouched lots keep their input order, followed by the redeemers' lots and
    the new lots, each sorted by subs_id, earn_month (deterministic for a given input).
    """
    still_open = pl.col("earn_month") != (month - expiry_months).first_day
    lots = open_lots.with_columns(_redeemer=pl.col(_SUBS).is_in(result.accepted[_SUBS].unique().implode()))
    untouched = lots.filter(still_open & ~pl.col("_redeemer")).drop("_redeemer")
    used = result.lot_changes.select(_SUBS, "earn_month", used="redeemed")
    redeemers = (lots.filter(still_open & pl.col("_redeemer"))
                 .join(used, on=[_SUBS, "earn_month"], how="left")
                 .select(_SUBS, "earn_month", remaining=pl.col("remaining") - pl.col("used").fill_null(0))
                 .filter(pl.col("remaining") > 0)
                 .sort(_SUBS, "earn_month"))
    fresh = result.new_lots.select(_SUBS, "earn_month", remaining="earned")
    return pl.concat([untouched, redeemers, fresh])


def prior_year_points(month: Month, lots: pl.DataFrame) -> pl.DataFrame:
    """subs_id, prior_year_points: `earned` of the lots earned in the calendar year before `month`'s year.

    Uses `earned` (the accrual), never what is left, so redemptions and expiry do not reduce qualifying points.
    Every subs_id of `lots` gets a row (0 when it earned nothing that year); a subscriber absent from `lots`
    has 0 (callers fill it in).
    """
    in_prior_year = pl.col("earn_month").dt.year() == month.year - 1
    return (lots.group_by(_SUBS)
            .agg(prior_year_points=pl.col("earned").filter(in_prior_year).sum().cast(pl.Int64))
            .sort(_SUBS))


def expiring_next_month(month: Month, open_lots_after_m: pl.DataFrame, expiry_months: int) -> pl.DataFrame:
    """subs_id, points: what is left of lot (M+1) - expiry_months, i.e. what expires at the end of M+1."""
    expiring_lot = (month + 1 - expiry_months).first_day
    return (open_lots_after_m.filter((pl.col("earn_month") == expiring_lot) & (pl.col("remaining") > 0))
            .group_by(_SUBS).agg(points=pl.col("remaining").sum().cast(pl.Int64))
            .sort(_SUBS))


def _check_inputs(month: Month, open_lots: pl.DataFrame, redemptions: pl.DataFrame,
                  accrual_base: pl.DataFrame, expiry_months: int) -> None:
    """Refuses inputs that break the contract: they would corrupt balances silently."""
    if expiry_months < 1:
        raise ValueError(f"expiry_months must be at least 1, got {expiry_months}")
    oldest, newest = (month - expiry_months).first_day, (month - 1).first_day
    first, last, least = open_lots.select(
        first=pl.min("earn_month"), last=pl.max("earn_month"), least=pl.min("remaining")).row(0)
    if open_lots.height and (first < oldest or last > newest or least <= 0):
        raise ValueError(f"open lots not open during {month}: earn_month {first}..{last} must be within "
                         f"{oldest}..{newest} and remaining > 0 (least {least})")
    outside = redemptions.filter(~pl.col("txn_time").dt.date().is_between(month.first_day, month.last_day))
    if outside.height:
        raise ValueError(f"{outside.height} redemptions not dated in {month}, e.g. {outside.row(0)}")
    if redemptions.filter(pl.col("points") <= 0).height:
        raise ValueError("redemption points must be positive")
    if redemptions["txn_id"].n_unique() != redemptions.height:
        raise ValueError("duplicate txn_id in redemptions")
    if accrual_base.filter((pl.col("mult_den") <= 0) | (pl.col("mult_num") < 0)).height:
        raise ValueError("multipliers must be mult_num >= 0 over mult_den > 0")


def _lot_totals(open_lots: pl.DataFrame, expiring_lot) -> pl.DataFrame:
    """subs_id, opening (sum of remaining), expiring (remaining of the lot that expires at the end of M)."""
    remaining = pl.col("remaining").cast(pl.Int64)
    return (open_lots.lazy().group_by(_SUBS)
            .agg(opening=remaining.sum(), expiring=remaining.filter(pl.col("earn_month") == expiring_lot).sum())
            .collect())


def _settle_redemptions(redemptions: pl.DataFrame, lot_totals: pl.DataFrame) -> pl.DataFrame:
    """Each redemption with `accepted` and `left_before` (the balance left at its time), decided in time order.

    Step k decides every subscriber's k-th redemption at once; the balance left after it feeds step k+1. A
    subscriber with a (k+1)-th redemption also has a k-th, so step k's output covers everyone step k+1 needs.
    """
    ranked = (redemptions.sort(_SUBS, "txn_time", "txn_id")
              .with_columns(rank=pl.int_range(1, pl.len() + 1, dtype=pl.Int64).over(_SUBS)))
    left = (ranked.select(_SUBS).unique().join(lot_totals, on=_SUBS, how="left")
            .select(_SUBS, left=pl.col("opening").fill_null(0)))
    decided = []
    for _, step in sorted(ranked.partition_by("rank", as_dict=True).items()):
        step = (step.join(left, on=_SUBS, how="left")
                .with_columns(left_before=pl.col("left"), accepted=pl.col("points") <= pl.col("left"))
                .drop("left"))
        decided.append(step)
        taken = pl.when(pl.col("accepted")).then(pl.col("points")).otherwise(0)
        left = step.select(_SUBS, left=pl.col("left_before") - taken)
    schema = {**redemptions.schema, "rank": pl.Int64, "left_before": pl.Int64, "accepted": pl.Boolean}
    return pl.concat(decided, how="vertical") if decided else pl.DataFrame(schema=schema)


def _consume_fifo(redeemers_lots: pl.DataFrame, redeemed_per_subs: pl.DataFrame) -> pl.DataFrame:
    """subs_id, earn_month, redeemed: the accepted total taken from the oldest lots first.

    consumed_from_lot = clip(total_redeemed - remaining of the older lots, 0, remaining); the total never exceeds
    the opening balance, since a redemption larger than the balance left was rejected.
    """
    older = pl.col("remaining").cum_sum().over(_SUBS) - pl.col("remaining")
    taken = (pl.col("total") - older).clip(0, pl.col("remaining")).cast(pl.Int64)
    return (redeemers_lots.join(redeemed_per_subs.rename({"redeemed": "total"}), on=_SUBS, how="inner")
            .sort(_SUBS, "earn_month")
            .select(_SUBS, "earn_month", redeemed=taken)
            .filter(pl.col("redeemed") > 0))


def _lot_side_totals(lot_totals: pl.DataFrame, redeemed_per_subs: pl.DataFrame, consumed: pl.DataFrame,
                     expiring_lot) -> pl.DataFrame:
    """subs_id, opening, redeemed (in total), expiring_redeemed (taken from the expiring lot), expired (the rest
    of the expiring lot): one row per subscriber with open lots."""
    from_expiring = (consumed.filter(pl.col("earn_month") == expiring_lot)
                     .select(_SUBS, expiring_redeemed="redeemed"))
    return (lot_totals.join(redeemed_per_subs, on=_SUBS, how="left")
            .join(from_expiring, on=_SUBS, how="left")
            .with_columns(pl.col("redeemed", "expiring_redeemed").fill_null(0))
            .select(_SUBS, "opening", "redeemed", "expiring_redeemed",
                    expired=pl.col("expiring") - pl.col("expiring_redeemed")))


def _lot_changes(consumed: pl.DataFrame, per_subs: pl.DataFrame, expiring_lot) -> pl.DataFrame:
    """The consumption of the other lots merged with the expiring lot's rows (which carry their consumption)."""
    others = (consumed.filter(pl.col("earn_month") != expiring_lot)
              .with_columns(expired=pl.lit(0, pl.Int64)).sort(_SUBS, "earn_month"))
    expiring = (per_subs.filter((pl.col("expiring_redeemed") > 0) | (pl.col("expired") > 0))
                .select(_SUBS, earn_month=pl.lit(expiring_lot, pl.Date), redeemed="expiring_redeemed",
                        expired="expired")
                .sort(_SUBS))
    return others.merge_sorted(expiring, key=[_SUBS, "earn_month"])


def _accrue(accrual_base: pl.DataFrame) -> pl.DataFrame:
    """subs_id, earned = ceil(max(cons_fen, 0) * mult_num / (100 * mult_den)), exact in integers.

    With a >= 0 and b > 0, ceil(a / b) = (a + b - 1) // b (floor and truncation agree for non-negatives).
    """
    numerator = pl.col("cons_fen").cast(pl.Int64).clip(lower_bound=0) * pl.col("mult_num").cast(pl.Int64)
    denominator = 100 * pl.col("mult_den").cast(pl.Int64)
    return accrual_base.select(_SUBS, earned=(numerator + denominator - 1) // denominator)


def _balances(per_subs: pl.DataFrame, earned: pl.DataFrame, settled: pl.DataFrame) -> pl.DataFrame:
    """Month totals for every subscriber in any input; balance = opening - redeemed - expired + earned.

    Subscribers whose redemptions were all rejected and who have neither lots nor an accrual still get a row.
    """
    lot_side = per_subs.select(_SUBS, "opening", "redeemed", "expired")
    out = (lot_side.join(earned, on=_SUBS, how="full", coalesce=True)
           .join(settled.select(_SUBS).unique(), on=_SUBS, how="full", coalesce=True)
           .with_columns(pl.col("opening", "redeemed", "expired", "earned").fill_null(0)))
    out = (out.select(_SUBS, "earned", "redeemed", "expired",
                      balance=pl.col("opening") - pl.col("redeemed") - pl.col("expired") + pl.col("earned"))
           .sort(_SUBS))
    # a subs_id repeated in accrual_base would repeat here: checked on the sorted result, cheaper than a hash
    if out.select((pl.col(_SUBS) == pl.col(_SUBS).shift(1)).any()).item():
        raise ValueError("duplicate subs_id in accrual_base")
    return out
