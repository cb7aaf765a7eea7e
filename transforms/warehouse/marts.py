"""Mart tables derived from the graded tiers: grade_change, tier_history, tier_current, tier_summary.

Each function replaces the partition of one grading month (delete + insert), so reruns are idempotent.
Tier order comes from the rule pack and is passed as a parameter, never spliced into SQL.
"""
from __future__ import annotations

from datetime import date

import duckdb

from transforms.core.calendar import Month
from transforms.warehouse.db import scalar


def write_grade_change(con: duckdb.DuckDBPyConnection, month: Month, tiers: list[str]) -> int:
    """Compares the tier for M with the tier for M-1 (the unrated tier where there was no row).

    NEW: unrated -> rated; UPGRADE / DOWNGRADE between rated tiers; LOST: rated -> unrated, including a
    subscriber absent from S(M). Unchanged subscribers get no row.
    """
    con.execute("DELETE FROM mart.grade_change WHERE grade_month = ?", [month.first_day])
    con.execute("""
        INSERT INTO mart.grade_change
        WITH cur AS (SELECT subs_id, tier, reason FROM mart.tier_assignment WHERE grade_month = $m),
             prev AS (SELECT subs_id, tier FROM mart.tier_assignment WHERE grade_month = $prev),
             pairs AS (
                SELECT coalesce(cur.subs_id, prev.subs_id) AS subs_id,
                       coalesce(prev.tier, $unrated) AS from_tier, coalesce(cur.tier, $unrated) AS to_tier,
                       coalesce(cur.reason, 'ABSENT_FROM_SNAPSHOT') AS reason
                FROM cur FULL OUTER JOIN prev ON cur.subs_id = prev.subs_id)
        SELECT $m, subs_id, from_tier, to_tier,
               CASE WHEN from_tier = $unrated THEN 'NEW'
                    WHEN to_tier = $unrated THEN 'LOST'
                    WHEN list_position($tiers, to_tier) > list_position($tiers, from_tier) THEN 'UPGRADE'
                    ELSE 'DOWNGRADE' END,
               reason, []::VARCHAR[], []::VARCHAR[]
        FROM pairs WHERE from_tier <> to_tier
        ORDER BY subs_id""",
                {"m": month.first_day, "prev": (month - 1).first_day, "unrated": tiers[0], "tiers": tiers})
    return int(scalar(con, "SELECT count(*) FROM mart.grade_change WHERE grade_month = ?", [month.first_day]))


def rebuild_tier_history(con: duckdb.DuckDBPyConnection, month: Month) -> None:
    """Rewinds tier spells to before M's effective date and replays every graded month from M on.

    A spell's valid_from is the first day its tier is in effect (the day after its grading month).
    """
    effective = (month + 1).first_day
    con.execute("DELETE FROM mart.tier_history WHERE valid_from >= ?", [effective])
    con.execute("UPDATE mart.tier_history SET valid_to = NULL WHERE valid_to >= ?", [effective])
    graded = [row[0] for row in con.execute(
        "SELECT DISTINCT grade_month FROM mart.tier_assignment WHERE grade_month >= ? ORDER BY 1",
        [month.first_day]).fetchall()]
    for grade_month in graded:
        _apply_month_to_history(con, grade_month)


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
