"""What a grading month reads from the warehouse (staging and mart layers), as Polars frames.

Each function reads one input of month M; transforms.grade.grading turns them into tiers and changes, and
transforms.warehouse.marts writes the results. Everything here only reads, so simulate can use it on a
read-only connection.
"""
from __future__ import annotations

from collections.abc import Collection
from datetime import date

import duckdb
import polars as pl

from transforms.core.calendar import Month
from transforms.grade.rulepack import METRIC_BILL_MONTHS, RulePack
from transforms.ingest.layouts import REVOKED_TIER
from transforms.warehouse.db import params_of
from transforms.warehouse.ranges import EVERYONE, SubsRange, subscriber_ranges


# Every shard's export of mart.subscriber_month has these columns: a month's export is kept and read by every step
# (transforms.runs.shards.HISTORY).
_SUBSCRIBER_MONTHS = "SELECT subs_id, month, cons_fen, data_fen, roam_fen FROM mart.subscriber_month"
# What marts.subscriber_month_query reads of the months before M (for a shard, as GRADING_METRICS_SOURCES).
AGGREGATE_SOURCES = {"mart.subscriber_month": f"{_SUBSCRIBER_MONTHS} WHERE month >= $from AND month < $m"}

# What grading_metrics reads of M, table by table: a shard of the monthly run (transforms.runs.shards) gets these
# rows of its subscribers under the same names and runs grading_metrics unchanged. No personal data: of
# raw.subscriber_history only the columns the metrics read.
GRADING_METRICS_SOURCES = {
    "mart.subscriber_month": f"{_SUBSCRIBER_MONTHS} WHERE month >= $m12 AND month <= $m",
    "raw.susp": "SELECT subs_id, event_time, susp_type FROM raw.susp WHERE event_time >= $m12 AND event_time < $next",
    "staging.points_lot": "SELECT subs_id, earn_month, earned FROM staging.points_lot "
                          "WHERE earn_month >= $m12 AND earn_month <= $m",
    "mart.points_balance": "SELECT subs_id, month, balance, prior_year_points FROM mart.points_balance "
                           "WHERE month = $m",
    "raw.subscriber_history": "SELECT subs_id, status, subs_type, brand, region_code, manager_id, realname_flag, "
                              "vip_flag, group_key_flag, open_date, valid_from, valid_to FROM raw.snapshot_as_of($snap)",
}


# What points_inputs reads of M, table by table (for a shard, as GRADING_METRICS_SOURCES): the lots and moves since
# the oldest lot still open (a lot's moves are dated in or after its month), M's redemptions and consumption,
# M-1's tiers (the multiplier in effect during M) and balances (the opening of M).
POINTS_SOURCES = {
    "staging.points_lot": "SELECT subs_id, earn_month, earned FROM staging.points_lot "
                          "WHERE earn_month >= $oldest AND earn_month < $m",
    "staging.points_move": "SELECT month, subs_id, earn_month, redeemed, expired FROM staging.points_move "
                           "WHERE month >= $oldest AND month < $m",
    "raw.redeem": "SELECT txn_id, subs_id, txn_time, points FROM raw.redeem WHERE txn_time >= $m AND txn_time < $next",
    "mart.subscriber_month": f"{_SUBSCRIBER_MONTHS} WHERE month = $m",
    "mart.tier_assignment": "SELECT subs_id, grade_month, tier FROM mart.tier_assignment WHERE grade_month = $prev",
    "mart.points_balance": "SELECT subs_id, month, balance FROM mart.points_balance WHERE month = $prev",
}


def points_params(month: Month, expiry_months: int) -> dict:
    """The parameters of POINTS_SOURCES."""
    return {"m": month.first_day, "oldest": (month - expiry_months).first_day, "next": (month + 1).first_day,
            "prev": (month - 1).first_day}


def points_inputs(con: duckdb.DuckDBPyConnection, month: Month,
                  pack: RulePack) -> tuple[pl.DataFrame, pl.DataFrame, pl.DataFrame, pl.DataFrame]:
    """What the points step of M reads, in the order of points.apply_points_to_totals: the lot totals, the open
    lots of M's redeemers, M's redemptions, the accrual base."""
    expiry = pack.points.expiry_months
    return (lot_totals(con, month, expiry), open_lots(con, month, expiry, redeemers_only=True),
            redemptions_of(con, month), accrual_base(con, month, pack))


def grading_metrics_params(month: Month, snapshot: date) -> dict:
    """The parameters of grading_metrics and of GRADING_METRICS_SOURCES."""
    return {"snap": snapshot, "m": month.first_day, "m3": (month - 2).first_day, "m6": (month - 5).first_day,
            "m12": (month - 11).first_day, "next": (month + 1).first_day,
            "m_index": month.index}


# The catalogue's aggregates (rulepack.METRIC_CATALOGUE, in its order), each with the part of grading_metrics_of
# that sums it: a month computes only those asked for, over the months they need (METRIC_BILL_MONTHS).
_AGGREGATES: dict[str, tuple[str, str]] = {
    "cons_fen": ("sm", "sum(cons_fen) FILTER (WHERE month = $m)"),
    "sum3_fen": ("sm", "sum(cons_fen) FILTER (WHERE month >= $m3)"),
    "sum6_fen": ("sm", "sum(cons_fen) FILTER (WHERE month >= $m6)"),
    "sum12_fen": ("sm", "sum(cons_fen) FILTER (WHERE month >= $m12)"),
    "cons_prev5_fen": ("sm", "sum(cons_fen) FILTER (WHERE month >= $m6 AND month < $m)"),
    "cons_m5_fen": ("sm", "sum(cons_fen) FILTER (WHERE month = $m6)"),
    "data_fen": ("sm", "sum(data_fen) FILTER (WHERE month = $m)"),
    "roam_fen": ("sm", "sum(roam_fen) FILTER (WHERE month = $m)"),
    "roam_months6": ("sm", "count(*) FILTER (WHERE month >= $m6 AND roam_fen > 0)"),
    "susp12": ("susp", "count(*) FILTER (WHERE susp_type = 'ARREARS_TWOWAY')"),
    "susp12_oneway": ("susp", "count(*) FILTER (WHERE susp_type = 'ARREARS_ONEWAY')"),
    # M's points step wrote prior_year_points with M's balances (marts.write_points): 12 lot-months are read
    # here whatever the history stored
    "prior_year_points": ("bal", "prior_year_points"),
    "points_earned_12m": ("lots", "sum(earned)"),
    "points_balance": ("bal", "balance"),
}
_SOURCES = {
    "sm": "SELECT subs_id, {columns} FROM mart.subscriber_month WHERE month >= $window AND month <= $m AND {span} "
          "GROUP BY subs_id",
    "susp": "SELECT subs_id, {columns} FROM raw.susp WHERE event_time >= $m12 AND event_time < $next AND {span} "
            "GROUP BY subs_id",
    "lots": "SELECT subs_id, {columns} FROM staging.points_lot WHERE earn_month >= $m12 AND earn_month <= $m "
            "AND {span} GROUP BY subs_id",
    "bal": "SELECT subs_id, {columns} FROM mart.points_balance WHERE month = $m AND {span}",
}
# What mart.tier_assignment keeps beside each tier (marts.write_tier_assignment), whatever the pack reads.
STORED_METRICS = frozenset({"sum6_fen", "tenure_months", "prior_year_points", "susp12"})


def metrics_read(pack: RulePack) -> frozenset[str]:
    """The metrics a monthly run of `pack` computes: those the pack reads and those the tiers are stored with."""
    return pack.metrics_used() | STORED_METRICS


def grading_metrics(con: duckdb.DuckDBPyConnection, month: Month, snapshot: date,
                    names: Collection[str] | None = None) -> pl.DataFrame:
    """One row per subscriber of S(M) with the fields of S(M) and the aggregated metrics `names` (default: every
    one of the catalogue, rulepack.METRIC_CATALOGUE), sorted by subs_id (the engine's fast paths rely on it). Read
    range by range of subscribers (warehouse.ranges): one range's hash tables at a time keep a 10M-subscriber
    month within DuckDB's memory limit."""
    return pl.concat([grading_metrics_of(con, month, snapshot, span, names)
                      for span in subscriber_ranges(con, month)])


def grading_metrics_of(con: duckdb.DuckDBPyConnection, month: Month, snapshot: date, span: SubsRange,
                       names: Collection[str] | None = None) -> pl.DataFrame:
    """grading_metrics of the subscribers in `span`: each source is read only for the metrics asked of it, the
    BILL aggregates over the longest window among them (a six-month pack reads 6 months, not 12)."""
    wanted = [n for n in _AGGREGATES if names is None or n in names]
    parts = {part: [n for n in wanted if _AGGREGATES[n][0] == part] for part in _SOURCES}
    ctes = [f"{part} AS ({_SOURCES[part].format(columns=_aggregates_of(metrics), span=span.sql())})"
            for part, metrics in parts.items() if metrics]
    joins = "".join(f" LEFT JOIN {part} USING (subs_id)" for part, metrics in parts.items() if metrics)
    columns = "".join(f", coalesce({_AGGREGATES[n][0]}.{n}, 0)::BIGINT AS {n}" for n in wanted)
    window = max((METRIC_BILL_MONTHS[n] for n in parts["sm"]), default=1)
    sql = f"""
        {"WITH " + ", ".join(ctes) if ctes else ""}
        SELECT snap.subs_id, snap.status, snap.subs_type, snap.brand, snap.region_code, snap.manager_id,
               snap.realname_flag, snap.vip_flag, snap.group_key_flag,
               CAST($m_index - (year(snap.open_date) * 12 + month(snap.open_date) - 1) + 1 AS BIGINT)
                   AS tenure_months{columns}
        FROM raw.snapshot_as_of($snap) snap{joins}
        WHERE {span.sql("snap.subs_id")}
        ORDER BY snap.subs_id"""
    params = grading_metrics_params(month, snapshot) | {"window": (month - (window - 1)).first_day} | span.params
    return con.sql(sql, params=params_of(sql, params)).pl()


def _aggregates_of(names: list[str]) -> str:
    return ", ".join(f"{_AGGREGATES[n][1]} AS {n}" for n in names)


def active_overrides(con: duckdb.DuckDBPyConnection, month: Month) -> pl.DataFrame:
    """Overrides holding for M (subs_id, tier, override_id, reason, approved_by) among those loaded: the latest
    delivery of each override_id wins; tier NONE revokes; at most one per subscriber (the latest delivered).
    Whatever was delivered by the time M is graded counts (in a backfill: by the day M's BILL arrived)."""
    return con.sql("""
        WITH latest AS (
            SELECT o.*, d.day FROM raw.override o
            JOIN ops.delivery d ON d.file_name = o.file_name AND d.status = 'LOADED'
            QUALIFY row_number() OVER (PARTITION BY override_id ORDER BY d.day DESC, o.file_name DESC,
                                       o.line_no DESC) = 1)
        SELECT subs_id, tier, override_id, reason, approved_by FROM latest
        WHERE tier <> $revoked AND from_month <= $m AND to_month >= $m
        QUALIFY row_number() OVER (PARTITION BY subs_id ORDER BY day DESC, override_id DESC) = 1
        ORDER BY subs_id""", params={"m": month.first_day, "revoked": REVOKED_TIER}).pl()


def tier_spells(con: duckdb.DuckDBPyConnection, month: Month, span: SubsRange = EVERYONE) -> pl.DataFrame:
    """Tier in effect during M (graded for M-1) and the grading month its spell began: subs_id, prev_tier,
    since_month (of the subscribers in `span`)."""
    sql, params = tier_spells_query(month, span)
    return con.sql(sql, params=params).pl()


def tier_spells_query(month: Month, span: SubsRange = EVERYONE) -> tuple[str, dict]:
    """The SQL and parameters of tier_spells (a shard's export copies it without building the frame)."""
    return (f"""
        SELECT h.subs_id, h.tier AS prev_tier, CAST(h.valid_from - INTERVAL 1 MONTH AS DATE) AS since_month
        FROM mart.tier_history h
        WHERE h.valid_from <= $m AND (h.valid_to IS NULL OR h.valid_to > $m) AND {span.sql("h.subs_id")}""",
            {"m": month.first_day} | span.params)


def assignment_of(con: duckdb.DuckDBPyConnection, month: Month, span: SubsRange = EVERYONE) -> pl.DataFrame:
    """mart.tier_assignment of a month (subs_id, tier, reason, tags, region_code) of the subscribers in `span`,
    sorted by subs_id; empty when the month was not graded."""
    sql, params = assignment_query(month, span)
    return con.sql(sql, params=params).pl()


def assignment_query(month: Month, span: SubsRange = EVERYONE) -> tuple[str, dict]:
    """The SQL and parameters of assignment_of (a shard's export copies it without building the frame)."""
    return (f"SELECT subs_id, tier, reason, tags, region_code FROM mart.tier_assignment "
            f"WHERE grade_month = $m AND {span.sql()} ORDER BY subs_id", {"m": month.first_day} | span.params)


# --- points --------------------------------------------------------------------------------------------------

def open_lots(con: duckdb.DuckDBPyConnection, month: Month, expiry_months: int,
              redeemers_only: bool = False) -> pl.DataFrame:
    """Points lots with something left at the end of M-1 (subs_id, earn_month, remaining); lots older than the
    expiry are gone, their moves never read again. `redeemers_only`: the lots of the subscribers with a
    redemption dated in M (what the FIFO of points.apply_points_to_totals reads)."""
    redeemers = ("AND l.subs_id IN (SELECT subs_id FROM raw.redeem WHERE txn_time >= $m AND txn_time < $next)"
                 if redeemers_only else "")
    return con.sql(f"""
        SELECT l.subs_id, l.earn_month,
               CAST(l.earned - coalesce(sum(mv.redeemed + mv.expired), 0) AS BIGINT) AS remaining
        FROM staging.points_lot l
        LEFT JOIN staging.points_move mv
               ON mv.subs_id = l.subs_id AND mv.earn_month = l.earn_month AND mv.month < $m
              AND mv.earn_month >= $oldest
        WHERE l.earn_month < $m AND l.earn_month >= $oldest {redeemers}
        GROUP BY l.subs_id, l.earn_month, l.earned HAVING remaining > 0""",
                   params={"m": month.first_day, "oldest": (month - expiry_months).first_day,
                           **({"next": (month + 1).first_day} if redeemers_only else {})}).pl()


def lot_totals(con: duckdb.DuckDBPyConnection, month: Month, expiry_months: int) -> pl.DataFrame:
    """Per subscriber with open lots at the end of M-1: subs_id, opening (what is left of all their lots),
    expiring (what is left of the lot that expires at the end of M, the oldest lot still open).

    opening is M-1's balance (mart.points_balance): the balance after M-1 is what is left of its lots, so the
    cost does not grow with the months of lots stored (36 months of lots cost 4x 12 in lot_totals_from_lots).
    Only when M-1 has no balances (the first month with points) are the lots summed. Both agree while the pack's
    expiry_months stays the same (a shorter expiry would drop lots the balance still holds)."""
    params = {"m": month.first_day, "prev": (month - 1).first_day, "oldest": (month - expiry_months).first_day}
    if not has_balances(con, month - 1):
        return lot_totals_from_lots(con, month, expiry_months)
    return con.sql("""
        WITH lot AS (SELECT subs_id, sum(earned) AS earned FROM staging.points_lot
                     WHERE earn_month = $oldest GROUP BY subs_id),
             used AS (SELECT subs_id, sum(redeemed + expired) AS used FROM staging.points_move
                      WHERE earn_month = $oldest AND month < $m GROUP BY subs_id)
        SELECT b.subs_id, CAST(b.balance AS BIGINT) AS opening,
               CAST(coalesce(lot.earned, 0) - coalesce(used.used, 0) AS BIGINT) AS expiring
        FROM mart.points_balance b LEFT JOIN lot USING (subs_id) LEFT JOIN used USING (subs_id)
        WHERE b.month = $prev AND b.balance > 0""", params=params).pl()


def has_balances(con: duckdb.DuckDBPyConnection, month: Month) -> bool:
    """Whether mart.points_balance holds the balances of `month` (its points step has run)."""
    return bool(con.sql("SELECT count(*) FROM (SELECT 1 FROM mart.points_balance WHERE month = $m LIMIT 1)",
                        params={"m": month.first_day}).fetchall()[0][0])


def lot_totals_from_lots(con: duckdb.DuckDBPyConnection, month: Month, expiry_months: int) -> pl.DataFrame:
    """lot_totals summed over the lots: the same as summing open_lots per subscriber, without building the lots:
    what is left of a subscriber's lots is what they earned minus what moved (redeemed or expired) out of them, and
    no lot is ever left below zero."""
    return con.sql("""
        WITH earned AS (
                SELECT subs_id, sum(earned) AS earned, sum(earned) FILTER (WHERE earn_month = $oldest) AS exp_earned
                FROM staging.points_lot WHERE earn_month < $m AND earn_month >= $oldest GROUP BY subs_id),
             moved AS (
                SELECT subs_id, sum(redeemed + expired) AS moved,
                       sum(redeemed + expired) FILTER (WHERE earn_month = $oldest) AS exp_moved
                FROM staging.points_move WHERE month < $m AND earn_month < $m AND earn_month >= $oldest
                GROUP BY subs_id)
        SELECT subs_id, CAST(earned - coalesce(moved, 0) AS BIGINT) AS opening,
               CAST(coalesce(exp_earned, 0) - coalesce(exp_moved, 0) AS BIGINT) AS expiring
        FROM earned LEFT JOIN moved USING (subs_id)
        WHERE earned - coalesce(moved, 0) > 0""",
                   params={"m": month.first_day, "oldest": (month - expiry_months).first_day}).pl()


def redemptions_of(con: duckdb.DuckDBPyConnection, month: Month) -> pl.DataFrame:
    """The redemptions dated in M: txn_id, subs_id, txn_time, points."""
    return con.sql("SELECT txn_id, subs_id, txn_time, points FROM raw.redeem WHERE txn_time >= ? AND txn_time < ?",
                   params=[month.first_day, (month + 1).first_day]).pl()


def accrual_base(con: duckdb.DuckDBPyConnection, month: Month, pack: RulePack) -> pl.DataFrame:
    """subs_id, cons_fen of M and the multiplier (mult_num / mult_den) of the tier in effect during M: the tier
    graded for M-1, the unrated tier's when there is none."""
    multipliers = pl.DataFrame(
        {"tier": list(pack.points.multipliers),
         "mult_num": [f.numerator for f in pack.points.multipliers.values()],
         "mult_den": [f.denominator for f in pack.points.multipliers.values()]},
        schema={"tier": pl.Utf8, "mult_num": pl.Int64, "mult_den": pl.Int64})
    unrated = pack.points.multipliers[pack.unrated]
    con.register("multipliers", multipliers)
    try:
        return con.sql("""
            SELECT s.subs_id, s.cons_fen, coalesce(k.mult_num, $num) AS mult_num,
                   coalesce(k.mult_den, $den) AS mult_den
            FROM mart.subscriber_month s
            LEFT JOIN mart.tier_assignment a ON a.subs_id = s.subs_id AND a.grade_month = $prev
            LEFT JOIN multipliers k ON k.tier = a.tier
            WHERE s.month = $m""", params={"m": month.first_day, "prev": (month - 1).first_day,
                                           "num": unrated.numerator, "den": unrated.denominator}).pl()
    finally:
        con.unregister("multipliers")


def points_expiring(con: duckdb.DuckDBPyConnection, month: Month, expiry_months: int) -> pl.DataFrame:
    """subs_id, points: what is left at the end of M of the lot that expires at the end of M+1 (earned minus
    what the monthly runs up to M redeemed or expired from it).

    Same result as points.expiring_next_month over the open lots after M, computed in DuckDB: Polars' group_by
    over millions of string keys costs seconds on 2 cores, this a fraction of one."""
    return con.sql("""
        WITH lot AS (SELECT subs_id, sum(earned) AS earned FROM staging.points_lot
                     WHERE earn_month = $lot GROUP BY subs_id),
             used AS (SELECT subs_id, sum(redeemed + expired) AS used FROM staging.points_move
                      WHERE earn_month = $lot AND month <= $m GROUP BY subs_id)
        SELECT subs_id, CAST(earned - coalesce(used, 0) AS BIGINT) AS points
        FROM lot LEFT JOIN used USING (subs_id)
        WHERE earned - coalesce(used, 0) > 0
        ORDER BY subs_id""", params={"m": month.first_day, "lot": (month + 1 - expiry_months).first_day}).pl()
