"""The writers of the staging and mart layers, one function per table (or ledger) and grading month.

Each function replaces the partition of one month (delete + insert; the graded tables also one range of
subscribers of it, warehouse.ranges, the ranges written in order), so reruns are idempotent: the monthly
aggregates (mart.subscriber_month), the points ledger and balances, the graded tiers (mart.tier_assignment) and
changes (mart.grade_change, mart.entitlement_change), and the tables derived from them: tier_history,
tier_current, tier_summary.
Inputs come as frames from transforms.grade (pure) or as SQL over the tables already written.
"""
from __future__ import annotations

from dataclasses import fields
from datetime import date

import duckdb
import polars as pl

from transforms.core.calendar import Month
from transforms.grade.engine import OVERRIDE_REASON
from transforms.grade.points import PointsMonth
from transforms.ingest.layouts import BILL_ITEMS, EXCLUDED_FROM_CONSUMPTION
from transforms.warehouse.db import last_known_of
from transforms.warehouse.inputs import STORED_METRICS, has_balances
from transforms.warehouse.ranges import EVERYONE, SubsRange

SUM6_MONTHS = 6  # mart.subscriber_month.sum6_fen: cons of M-5..M, NULL until BILL covers them


def write_tier_assignment(con: duckdb.DuckDBPyConnection, month: Month, version: str, metrics: pl.DataFrame,
                          assignment: pl.DataFrame, overrides: pl.DataFrame, span: SubsRange = EVERYONE) -> None:
    """mart.tier_assignment of M (of the subscribers in `span`): the graded rows with the metrics analysts read
    beside them, and the override (id, reason, approver) behind each tier of reason OVERRIDE."""
    behind = overrides.select("subs_id", override_id="override_id", override_reason="reason",
                              override_approved_by="approved_by")
    rows = (assignment.join(metrics.select("subs_id", "region_code", *sorted(STORED_METRICS)), on="subs_id",
                            how="left", maintain_order="left")
            .join(behind, on="subs_id", how="left", maintain_order="left"))
    if not rows["subs_id"].is_sorted():  # stored in subs_id order (ranges prune by it); a graded frame already is
        rows = rows.sort("subs_id")
    con.execute(f"DELETE FROM mart.tier_assignment WHERE grade_month = $m AND {span.sql()}",
                {"m": month.first_day, **span.params})
    mark_changed(con, "tier_assignment", month.first_day)
    con.register("assigned", rows)
    try:
        con.execute("""
            INSERT INTO mart.tier_assignment
            SELECT $m, subs_id, tier, reason, computed_tier, protected, sum6_fen, tenure_months, prior_year_points,
                   susp12, tags, $version, region_code,
                   CASE WHEN reason = $override THEN override_id END,
                   CASE WHEN reason = $override THEN override_reason END,
                   CASE WHEN reason = $override THEN override_approved_by END
            FROM assigned""", {"m": month.first_day, "version": version, "override": OVERRIDE_REASON})
    finally:
        con.unregister("assigned")


def write_grade_change(con: duckdb.DuckDBPyConnection, month: Month, snapshot: date, changes: pl.DataFrame,
                       table: str = "grade_change", span: SubsRange = EVERYONE) -> None:
    """mart.grade_change of M (of the subscribers in `span`) from grading.grade_changes (or, table
    "entitlement_change", its ENTITLEMENTS rows), with the subscriber's region and account manager in S(M) (or
    when last seen, for one who left)."""
    con.execute(f"DELETE FROM mart.{table} WHERE grade_month = $m AND {span.sql()}",
                {"m": month.first_day, **span.params})
    mark_changed(con, table, month.first_day)
    if changes.height == 0:  # the owner lookup reads the subscriber history: not for nothing
        return
    con.register("changes", changes)
    try:
        con.execute(f"""
            INSERT INTO mart.{table}
            SELECT $m, c.subs_id, c.from_tier, c.to_tier, c.change_type, c.reason, c.entitlements_gained,
                   c.entitlements_lost, who.region_code, who.manager_id
            FROM changes c LEFT JOIN (SELECT * FROM ({last_known_of("$snap", "SELECT subs_id FROM changes")})
                                      WHERE {span.sql()}) who
            USING (subs_id)
            ORDER BY c.subs_id""", {"m": month.first_day, "snap": snapshot, **span.params})
    finally:
        con.unregister("changes")


def rebuild_tier_history(con: duckdb.DuckDBPyConnection, month: Month) -> None:
    """Rewinds tier spells to before M's effective date and replays every graded month from M on.

    A spell's valid_from is the first day its tier is in effect (the day after its grading month).
    """
    effective = (month + 1).first_day
    mark_history_changed(con, effective)  # the spells closed from M on, before the rewind
    con.execute("DELETE FROM mart.tier_history WHERE valid_from >= ?", [effective])
    con.execute("UPDATE mart.tier_history SET valid_to = NULL WHERE valid_to >= ?", [effective])
    graded = [row[0] for row in con.execute(
        "SELECT DISTINCT grade_month FROM mart.tier_assignment WHERE grade_month >= ? ORDER BY 1",
        [month.first_day]).fetchall()]
    for grade_month in graded:
        _apply_month_to_history(con, grade_month)
    mark_history_changed(con, effective)  # and after the replay


def _apply_month_to_history(con, grade_month: date) -> None:
    effective = (Month.of(grade_month) + 1).first_day
    con.execute("""
        UPDATE mart.tier_history h SET valid_to = $eff
        WHERE h.valid_to IS NULL AND NOT EXISTS (
            SELECT 1 FROM mart.tier_assignment a
            WHERE a.grade_month = $m AND a.subs_id = h.subs_id AND a.tier = h.tier)""",
                {"eff": effective, "m": grade_month})
    con.execute("""
        INSERT INTO mart.tier_history
        SELECT a.subs_id, a.tier, $eff, NULL FROM mart.tier_assignment a
        WHERE a.grade_month = $m AND NOT EXISTS (
            SELECT 1 FROM mart.tier_history h WHERE h.valid_to IS NULL AND h.subs_id = a.subs_id)
        ORDER BY a.subs_id""", {"eff": effective, "m": grade_month})


def rebuild_tier_current(con: duckdb.DuckDBPyConnection) -> None:
    """The tier of every subscriber of the latest graded month, with the grading month its spell began."""
    con.execute("DELETE FROM mart.tier_current")
    mark_changed(con, "tier_current", None)
    con.execute("""
        INSERT INTO mart.tier_current
        WITH latest AS (SELECT max(grade_month) AS m FROM mart.tier_assignment)
        SELECT a.subs_id, a.tier, a.grade_month,
               CAST(h.valid_from - INTERVAL 1 MONTH AS DATE) AS since_month
        FROM mart.tier_assignment a JOIN latest ON a.grade_month = latest.m
        JOIN mart.tier_history h ON h.subs_id = a.subs_id AND h.valid_to IS NULL
        ORDER BY a.subs_id""")


def write_tier_summary(con: duckdb.DuckDBPyConnection, month: Month) -> None:
    """Per region and tier: subscribers at M and the migrations into (or, for LOST, out of) the tier."""
    con.execute("DELETE FROM mart.tier_summary WHERE grade_month = ?", [month.first_day])
    mark_changed(con, "tier_summary", month.first_day)
    con.execute("""
        INSERT INTO mart.tier_summary
        WITH cur AS (SELECT subs_id, tier, coalesce(region_code, '') AS region_code
                     FROM mart.tier_assignment WHERE grade_month = $m),
             prev AS (SELECT subs_id, coalesce(region_code, '') AS region_code
                      FROM mart.tier_assignment WHERE grade_month = $prev),
             chg AS (SELECT subs_id, from_tier, change_type FROM mart.grade_change WHERE grade_month = $m),
             into_tier AS (
                SELECT cur.region_code, cur.tier, count(*) AS subscribers,
                       count(*) FILTER (WHERE chg.change_type IS NULL) AS unchanged,
                       count(*) FILTER (WHERE chg.change_type = 'NEW') AS new_in,
                       count(*) FILTER (WHERE chg.change_type = 'UPGRADE') AS upgraded_in,
                       count(*) FILTER (WHERE chg.change_type = 'DOWNGRADE') AS downgraded_in
                FROM cur LEFT JOIN chg USING (subs_id) GROUP BY ALL),
             lost AS (
                SELECT coalesce(cur.region_code, prev.region_code) AS region_code, chg.from_tier AS tier,
                       count(*) AS lost_from
                FROM chg LEFT JOIN cur USING (subs_id) LEFT JOIN prev USING (subs_id)
                WHERE chg.change_type = 'LOST' GROUP BY ALL)
        SELECT $m, region_code, tier, coalesce(subscribers, 0), coalesce(unchanged, 0), coalesce(new_in, 0),
               coalesce(upgraded_in, 0), coalesce(downgraded_in, 0), coalesce(lost_from, 0)
        FROM into_tier FULL OUTER JOIN lost USING (region_code, tier)
        ORDER BY region_code, tier""", {"m": month.first_day, "prev": (month - 1).first_day})


def write_subscriber_month(con: duckdb.DuckDBPyConnection, month: Month, sum6_complete: bool,
                           computed: list[str] | None = None) -> None:
    """mart.subscriber_month for M from BILL_M (GIFT and DEPOSIT excluded from consumption), with sum6 from
    the stored aggregates of M-5..M-1 (a subscriber without rows in a delivered month counts 0); or M's rows as
    `computed` elsewhere by subscriber_month_query (Parquet files: runs.shards.aggregate_on_shards)."""
    con.execute("DELETE FROM mart.subscriber_month WHERE month = ?", [month.first_day])
    mark_changed(con, "subscriber_month", month.first_day)
    if computed is not None:
        con.execute(f"INSERT INTO mart.subscriber_month SELECT * FROM read_parquet({computed}) ORDER BY subs_id")
        return
    con.execute("INSERT INTO mart.subscriber_month "
                + subscriber_month_query(bill_sums_query("(SELECT * FROM raw.bill WHERE bill_month = $m)")),
                subscriber_month_params(month, sum6_complete))


def bill_sums_query(rows: str) -> str:
    """subs_id and its sums of the BILL rows (subs_id, item_code, amount_fen) of `rows`: cons_fen (GIFT and
    DEPOSIT excluded) and one per item, as BIGINT (a sum is HUGEINT, which Parquet would keep as a double)."""
    items = "".join(f",\n    CAST(coalesce(sum(amount_fen) FILTER (WHERE item_code = '{item}'), 0) AS BIGINT) "
                    f"AS {item.lower()}_fen" for item in BILL_ITEMS)
    excluded = ", ".join(f"'{item}'" for item in EXCLUDED_FROM_CONSUMPTION)
    return (f"SELECT subs_id,\n    CAST(coalesce(sum(amount_fen) FILTER (WHERE item_code NOT IN ({excluded})), 0) "
            f"AS BIGINT) AS cons_fen{items}\nFROM {rows} GROUP BY subs_id")


def resummed_query(sums: str) -> str:
    """The sums of bill_sums_query over partial sums of it (`sums`: the same columns, a subscriber's rows split
    in parts): the sums of the whole."""
    columns = ["cons_fen"] + [f"{item.lower()}_fen" for item in BILL_ITEMS]
    return (f"SELECT subs_id, " + ", ".join(f"CAST(sum({c}) AS BIGINT) AS {c}" for c in columns)
            + f" FROM {sums} GROUP BY subs_id")


def subscriber_month_query(items: str) -> str:
    """M's rows of mart.subscriber_month, ordered by subs_id, from `items` (a query of bill_sums_query's columns)
    and the stored aggregates of M-5..M-1 (mart.subscriber_month); parameters: subscriber_month_params."""
    return f"""
        WITH items AS ({items}),
        earlier AS (
            SELECT subs_id, sum(cons_fen) AS cons5 FROM mart.subscriber_month
            WHERE month >= $from AND month < $m GROUP BY subs_id)
        SELECT $m AS month, items.*,
               CAST(CASE WHEN $complete THEN items.cons_fen + coalesce(earlier.cons5, 0) END AS BIGINT) AS sum6_fen
        FROM items LEFT JOIN earlier USING (subs_id)
        ORDER BY subs_id"""


def subscriber_month_params(month: Month, sum6_complete: bool) -> dict:
    return {"m": month.first_day, "from": (month - (SUM6_MONTHS - 1)).first_day, "complete": sum6_complete}


def write_points(con: duckdb.DuckDBPyConnection, month: Month, result: PointsMonth | dict[str, list[str]]) -> None:
    """The points ledger of M (new lots, what M took from older lots, the redemptions and their outcome) and
    mart.points_balance; a rejected redemption is quarantined with its file and line. `result`: the frames, or
    per frame of PointsMonth the Parquet files holding it (runs.shards.points_on_shards: the shards' outputs,
    read here by DuckDB, never held whole as frames)."""
    m = month.first_day
    for table, column in (("staging.points_lot", "earn_month"), ("staging.points_move", "month"),
                          ("staging.redemption", "month"), ("mart.points_balance", "month")):
        con.execute(f"DELETE FROM {table} WHERE {column} = ?", [m])
    mark_changed(con, "points_balance", m)
    con.execute("DELETE FROM ops.quarantine WHERE reason = 'INSUFFICIENT_POINTS' AND period = ?", [m])
    names = [f.name for f in fields(PointsMonth)]
    for name in names:
        if isinstance(result, PointsMonth):
            con.register(name, getattr(result, name))
        else:
            con.execute(f"CREATE OR REPLACE TEMP VIEW {name} AS SELECT * FROM read_parquet({result[name]})")
    # the rows in the order the points step sorts them, whoever computed them
    con.execute("INSERT INTO staging.points_lot SELECT subs_id, earn_month, earned FROM new_lots ORDER BY subs_id")
    con.execute("INSERT INTO staging.points_move SELECT ?, subs_id, earn_month, redeemed, expired "
                "FROM lot_changes ORDER BY subs_id, earn_month", [m])
    con.execute("""INSERT INTO staging.redemption
                   SELECT $m, txn_id, subs_id, txn_time, points, 'APPLIED' FROM accepted
                   UNION ALL SELECT $m, txn_id, subs_id, txn_time, points, 'INSUFFICIENT_POINTS' FROM rejected
                   ORDER BY 2""", {"m": m})
    # A redemption larger than the balance is quarantined with its file and line, never applied in part.
    con.execute("""INSERT INTO ops.quarantine
                   SELECT r.file_name, NULL, r.line_no,
                          concat_ws('|', r.txn_id, r.subs_id, strftime(r.txn_time, '%Y%m%d%H%M%S'),
                                    r.points, r.channel),
                          'INSUFFICIENT_POINTS',
                          'redemption of ' || r.points || ' points, balance at its time ' || x.balance_at_time,
                          $m, NULL
                   FROM rejected x JOIN raw.redeem r USING (txn_id) ORDER BY r.file_name, r.line_no""", {"m": m})
    pyp_sql, pyp_params = _prior_year_points_query(con, month)
    con.execute(f"""
        INSERT INTO mart.points_balance
        WITH pyp AS ({pyp_sql})
        SELECT $m, subs_id, coalesce(b.earned, 0), coalesce(b.redeemed, 0), coalesce(b.expired, 0),
               coalesce(b.balance, 0), coalesce(pyp.prior_year_points, 0), 0
        FROM balances b FULL OUTER JOIN pyp USING (subs_id)
        ORDER BY subs_id""", {"m": m} | pyp_params)
    for name in names:
        if isinstance(result, PointsMonth):
            con.unregister(name)
        else:
            con.execute(f"DROP VIEW {name}")


def points_totals(con: duckdb.DuckDBPyConnection, month: Month) -> dict:
    """M's points as the run ledger keeps them: earned, redeemed, expired and the redemptions refused."""
    earned, redeemed, expired = con.execute(
        "SELECT coalesce(sum(earned), 0), coalesce(sum(redeemed), 0), coalesce(sum(expired), 0) "
        "FROM mart.points_balance WHERE month = ?", [month.first_day]).fetchall()[0]
    rejected = con.execute("SELECT count(*) FROM staging.redemption WHERE month = ? AND status = "
                           "'INSUFFICIENT_POINTS'", [month.first_day]).fetchall()[0][0]
    return {"earned": int(earned), "redeemed": int(redeemed), "expired": int(expired),
            "rejected_redemptions": int(rejected)}


def _prior_year_points_query(con: duckdb.DuckDBPyConnection, month: Month) -> tuple[str, dict]:
    """subs_id, prior_year_points (the lots earned in the calendar year before M's): carried from M-1's balances
    within a year, since the lots of the year before no longer change once M-1 is processed and current
    (month_state.check_ordering); summed over that year's lots in January, or when M-1 has no balances. M-1's
    rows hold everyone with such points: each month writes them whether or not the subscriber has a balance."""
    if month.month != 1 and has_balances(con, month - 1):
        return ("SELECT subs_id, prior_year_points FROM mart.points_balance "
                "WHERE month = $prev AND prior_year_points > 0", {"prev": (month - 1).first_day})
    return ("SELECT subs_id, sum(earned) AS prior_year_points FROM staging.points_lot "
            "WHERE earn_month >= $year_start AND earn_month < $year_end GROUP BY subs_id",
            {"year_start": date(month.year - 1, 1, 1), "year_end": date(month.year, 1, 1)})


def write_points_expiring(con: duckdb.DuckDBPyConnection, month: Month, expiring: pl.DataFrame) -> None:
    """mart.points_balance.expiring_next_month of M (expiring: subs_id, points; warehouse.inputs.points_expiring)."""
    con.register("expiring", expiring)
    try:
        con.execute("UPDATE mart.points_balance b SET expiring_next_month = e.points FROM expiring e "
                    "WHERE b.month = ? AND b.subs_id = e.subs_id", [month.first_day])
    finally:
        con.unregister("expiring")


# --- what changed: the partitions the analysts' copy must publish again (transforms.runs.publish) -------------

# table -> the column whose value partitions it in the published copy (None: published whole). tier_history by
# valid_to: a spell never changes once closed (unless a regrade rewinds it), the open ones every month.
PARTITIONED_BY = {"subscriber_month": "month", "points_balance": "month", "tier_assignment": "grade_month",
                  "grade_change": "grade_month", "entitlement_change": "grade_month", "tier_summary": "grade_month",
                  "tier_current": None, "tier_history": "valid_to"}
WHOLE = "all"   # the partition of a table published whole
OPEN = "open"   # tier_history's partition of the spells still in effect (valid_to NULL)


def mark_changed(con: duckdb.DuckDBPyConnection, table: str, value: date | None) -> None:
    """Records that a partition of a mart table was written (inside the writer's transaction)."""
    part = WHOLE if PARTITIONED_BY[table] is None else OPEN if value is None else value.isoformat()
    con.execute("INSERT INTO ops.changed_partition SELECT ?, ? WHERE NOT EXISTS (SELECT 1 FROM "
                "ops.changed_partition WHERE table_name = ? AND part = ?)", [table, part, table, part])


def mark_history_changed(con: duckdb.DuckDBPyConnection, effective: date) -> None:
    """tier_history's open spells and every partition of spells closed on or after `effective`."""
    mark_changed(con, "tier_history", None)
    for (valid_to,) in con.execute("SELECT DISTINCT valid_to FROM mart.tier_history WHERE valid_to >= ?",
                                   [effective]).fetchall():
        mark_changed(con, "tier_history", valid_to)
