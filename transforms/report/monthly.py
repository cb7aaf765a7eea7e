"""The figures of the monthly report (outputs.md "Reports") for grading month M, read by SQL from the analysts'
published copy (never the warehouse: its writer lock would block a report during a run).

Everything comes back as plain values (strings, ints, lists and dicts, sorted), so the page made from them is
the same bytes for the same published data, and tests can compare them with their own SQL. The page is
transforms.report.monthly_page.
"""
from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import duckdb

from transforms.core.calendar import Month
from transforms.core.resources import rules_dir
from transforms.grade.grading import CHANGE_TYPES
from transforms.grade.packs import find_pack_by_version, pack_for_month
from transforms.grade.rulepack import PackError, RulePack
from transforms.runs.publish import published_path
from transforms.warehouse.db import first_row

LIST_ROWS = 100     # changes of each type shown on the page; its CSV holds them all
CHANGE_COLUMNS = "subs_id, change_type, from_tier, to_tier, region_code, manager_id, reason"
CHANGE_LABELS = {"NEW": "新增", "UPGRADE": "升级", "DOWNGRADE": "降级", "LOST": "不符合资格"}
DOWNGRADE_RISK = "DOWNGRADE_RISK"
# What a gate of the run ledger shows; its results_path is left out (it names the run).
GATE_FIELDS = ("gate", "success", "accepted", "message", "statistics", "failures")


class ReportError(Exception):
    """The report cannot be made; the message says why and what to run first."""


@dataclass(frozen=True)
class Quality:
    run_found: bool            # a SUCCESS monthly run of M is in ops.run_ledger
    gates: list[dict]          # GATE_FIELDS of each gate of that run, in run order
    accepted_reason: str | None  # why the operator let the run past the circuit breaker
    quarantine: list[dict]     # file_name, day, reason, whole_file, records: the files of M and M's own run
    rejected: list[dict]       # file_name, day, reason: rejected deliveries of M


@dataclass(frozen=True)
class MonthlyFigures:
    month: str                 # YYYY-MM
    pack_name: str
    pack_version: str
    tiers: list[str]           # tier codes, lowest first: the pack's, then any other code the data holds
    labels: dict[str, str]     # tier code -> label (一星 ...)
    distribution: list[dict]   # month, tier, subscribers: every graded month up to M, non-zero pairs
    migration: list[dict]      # from_tier (M-1), to_tier (M), subscribers: every pair of tiers, unchanged included
    changes: list[dict]        # the first LIST_ROWS of each change type (subs_id order): CHANGE_COLUMNS
    change_counts: dict[str, int]  # change type -> subscribers, every type
    by_region: list[dict]      # region_code, change_type, subscribers
    by_manager: list[dict]     # manager_id, change_type, subscribers
    points: dict               # liability, expiring_next_month, subscribers_expiring
    downgrade_risk: list[dict]  # tier, region_code, subscribers
    quality: Quality

    def changes_of(self, change_type: str) -> list[dict]:
        """The first LIST_ROWS changes of a type (all of them: change_list_batches)."""
        return [c for c in self.changes if c["change_type"] == change_type]


def open_published(home: Path) -> duckdb.DuckDBPyConnection:
    path = published_path(home)
    if not path.exists():
        raise ReportError(f"no published copy {path}: run `tierflow monthly` (or `backfill`) first")
    return duckdb.connect(str(path), read_only=True)


def monthly_figures(con: duckdb.DuckDBPyConnection, month: Month) -> MonthlyFigures:
    """Every figure of the report of M, from a connection to the published copy."""
    name, version = graded_pack(con, month)
    pack = pack_of(month, name, version)
    params = {"m": month.first_day}
    changes = _dicts(con, f"""
        SELECT {CHANGE_COLUMNS} FROM mart.grade_change WHERE grade_month = $m
        QUALIFY row_number() OVER (PARTITION BY change_type ORDER BY subs_id) <= $rows""",
                     {**params, "rows": LIST_ROWS})
    counts = dict(con.execute("SELECT change_type, count(*) FROM mart.grade_change WHERE grade_month = $m "
                              "GROUP BY ALL", params).fetchall())
    distribution = distribution_up_to(con, month)
    migration = migration_of(con, month, pack.unrated)
    tiers = tier_order(pack, {r["tier"] for r in distribution} | {r["from_tier"] for r in migration}
                       | {r["to_tier"] for r in migration})
    return MonthlyFigures(
        month=str(month), pack_name=name, pack_version=version, tiers=tiers,
        labels={t: pack.tier_labels.get(t, t) for t in tiers},
        distribution=sorted(distribution, key=lambda r: (r["month"], tiers.index(r["tier"]))),
        migration=full_grid(migration, tiers),
        changes=sorted(changes, key=lambda c: (CHANGE_TYPES.index(c["change_type"]), c["subs_id"])),
        change_counts={t: counts.get(t, 0) for t in CHANGE_TYPES},
        by_region=changes_by(con, month, "region_code"), by_manager=changes_by(con, month, "manager_id"),
        points=points_of(con, month), downgrade_risk=downgrade_risk(con, month, tiers),
        quality=quality_of(con, month))


def change_list_batches(con: duckdb.DuckDBPyConnection, month: Month, change_type: str,
                        batch_rows: int = 100_000) -> Iterator[list[tuple]]:
    """Every change of a type in M (CHANGE_COLUMNS, subs_id order), a batch of rows at a time: a first graded
    month at 10M holds 8M NEW."""
    cursor = con.execute(f"SELECT {CHANGE_COLUMNS} FROM mart.grade_change WHERE grade_month = ? AND change_type = ? "
                         "ORDER BY subs_id", [month.first_day, change_type])
    while rows := cursor.fetchmany(batch_rows):
        yield rows


def graded_pack(con: duckdb.DuckDBPyConnection, month: Month) -> tuple[str, str]:
    """(pack name, pack version) M was graded with; refuses a month without tiers."""
    row = first_row(con, "SELECT graded, pack_name, pack_version FROM ops.month_state WHERE month = ?",
                    [month.first_day])
    if row is None or not row[0]:
        why = "was never processed" if row is None else "was processed without tiers (incomplete BILL window)"
        raise ReportError(f"{month} has not been graded ({why}): run `tierflow monthly --month {month}` first")
    return row[1], row[2]


def pack_of(month: Month, name: str, version: str) -> RulePack:
    """The pack M was graded with, for its tier order and labels: the file of that version in rules/ (found by
    its content hash), else the version of that pack in force for M, else the default pack's."""
    found = find_pack_by_version(version, [rules_dir()])
    if found is not None:
        return found
    try:
        return pack_for_month(name, month)
    except PackError:  # graded with a pack file from elsewhere: the default pack still names the usual tiers
        return pack_for_month(None, month)


def tier_order(pack: RulePack, codes: set[str]) -> list[str]:
    """The pack's tiers lowest first, then codes only the data holds (a pack version of an earlier month)."""
    return [*pack.tiers, *sorted(codes - set(pack.tiers))]


def distribution_up_to(con: duckdb.DuckDBPyConnection, month: Month) -> list[dict]:
    """Subscribers per graded month and tier up to M, from mart.tier_summary (a few hundred rows a month, where
    counting mart.tier_assignment would read every month's tiers: the cost would grow with the history)."""
    return _dicts(con, """
        SELECT strftime(grade_month, '%Y-%m') AS month, tier, sum(subscribers)::BIGINT AS subscribers
        FROM mart.tier_summary WHERE grade_month <= $m GROUP BY ALL HAVING sum(subscribers) > 0 ORDER BY ALL""",
                  {"m": month.first_day})


def migration_of(con: duckdb.DuckDBPyConnection, month: Month, unrated: str) -> list[dict]:
    """Tier of M-1 x tier of M per subscriber of S(M-1) or S(M); a side without a row counts as unrated, as
    grade_change does (outputs.md), so the off-diagonal cells are M's changes."""
    return _dicts(con, """
        WITH cur AS (SELECT subs_id, tier FROM mart.tier_assignment WHERE grade_month = $m),
             prev AS (SELECT subs_id, tier FROM mart.tier_assignment WHERE grade_month = $p)
        SELECT coalesce(prev.tier, $unrated) AS from_tier, coalesce(cur.tier, $unrated) AS to_tier,
               count(*) AS subscribers
        FROM prev FULL JOIN cur USING (subs_id) GROUP BY ALL ORDER BY ALL""",
                  {"m": month.first_day, "p": (month - 1).first_day, "unrated": unrated})


def full_grid(migration: list[dict], tiers: list[str]) -> list[dict]:
    counts = {(r["from_tier"], r["to_tier"]): r["subscribers"] for r in migration}
    return [{"from_tier": f, "to_tier": t, "subscribers": counts.get((f, t), 0)} for f in tiers for t in tiers]


def changes_by(con: duckdb.DuckDBPyConnection, month: Month, owner: str) -> list[dict]:
    """Changes of M per change type and region_code or manager_id (NULL when the snapshot had none)."""
    order = ", ".join(f"'{t}'" for t in CHANGE_TYPES)
    return _dicts(con, f"""
        SELECT {owner}, change_type, count(*) AS subscribers FROM mart.grade_change WHERE grade_month = $m
        GROUP BY {owner}, change_type ORDER BY {owner} NULLS LAST, list_position([{order}], change_type)""",
                  {"m": month.first_day})


def points_of(con: duckdb.DuckDBPyConnection, month: Month) -> dict:
    """The points liability at the end of M and, of it, what expires at the end of M+1."""
    return _dicts(con, """
        SELECT coalesce(sum(balance), 0)::BIGINT AS liability,
               coalesce(sum(expiring_next_month), 0)::BIGINT AS expiring_next_month,
               count(*) FILTER (WHERE expiring_next_month > 0) AS subscribers_expiring
        FROM mart.points_balance WHERE month = $m""", {"m": month.first_day})[0]


def downgrade_risk(con: duckdb.DuckDBPyConnection, month: Month, tiers: list[str]) -> list[dict]:
    rows = _dicts(con, """
        SELECT tier, region_code, count(*) AS subscribers FROM mart.tier_assignment
        WHERE grade_month = $m AND list_contains(tags, $tag) GROUP BY ALL ORDER BY ALL""",
                  {"m": month.first_day, "tag": DOWNGRADE_RISK})
    return sorted(rows, key=lambda r: (tiers.index(r["tier"]), r["region_code"] is None, r["region_code"] or ""))


def quality_of(con: duckdb.DuckDBPyConnection, month: Month) -> Quality:
    """The gates of the latest successful monthly run of M, the quarantine of M's files (by delivery period:
    BILL_YYYYMM and the daily files dated in M) and of M's run itself (rows without a day, such as
    INSUFFICIENT_POINTS), and M's rejected files."""
    row = first_row(con, """
        SELECT checks FROM ops.run_ledger WHERE flow = 'monthly' AND period = ? AND status = 'SUCCESS'
        ORDER BY started_at DESC, run_id DESC LIMIT 1""", [str(month)])
    checks = json.loads(row[0]) if row and row[0] else {}
    quarantine = _dicts(con, """
        SELECT file_name, strftime(day, '%Y-%m-%d') AS day, reason, whole_file, records::BIGINT AS records
        FROM ops.quarantine_summary
        WHERE (day IS NOT NULL AND file_name IN (SELECT file_name FROM ops.delivery WHERE left(period, 6) = $yyyymm))
           OR (day IS NULL AND month = $m)
        ORDER BY file_name, day NULLS LAST, reason, whole_file""", {"m": month.first_day, "yyyymm": month.compact})
    rejected = _dicts(con, """
        SELECT file_name, strftime(day, '%Y-%m-%d') AS day, reason FROM ops.delivery
        WHERE status = 'REJECTED' AND left(period, 6) = $yyyymm ORDER BY day, file_name""", {"yyyymm": month.compact})
    gates = [{k: gate.get(k) for k in GATE_FIELDS} for gate in checks.get("gates", [])]
    return Quality(row is not None, gates, checks.get("accepted_mass_change"), quarantine, rejected)


def _dicts(con: duckdb.DuckDBPyConnection, sql: str, params: dict) -> list[dict]:
    cursor = con.execute(sql, params)
    names = [d[0] for d in cursor.description]
    return [dict(zip(names, row)) for row in cursor.fetchall()]
