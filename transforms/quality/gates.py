"""The four data-quality gates of quality.md: each aggregates the warehouse into a small frame and validates it
with its Great Expectations suite (expectations/<suite>.json, run by transforms.quality.suites).

GE 1.24's SQL data source returns no rows from DuckDB, and 10M subscribers must not go through pandas, so every
gate aggregates in DuckDB first and validates a small pandas frame (Arrow-backed dtypes). One frame per suite can
mix sections of different grain: a column that does not apply to a row is null, and GE's column expectations
skip nulls (pair expectations are configured with ignore_row_if = either_value_is_missing); values that must be
checked are never null (SQL fills them with a failing sentinel such as '' or -1 or 'none').

Nothing here assumes a particular rule pack: enum value sets come from transforms.ingest.layouts, the tiers, the
unrated tier and the ineligibility reasons from the pack, the grading window from the caller.

Usage: `gate_*(...)` returns a GateResult; `result.raise_if_failed()` raises GateFailed carrying it.
"""
from __future__ import annotations

from collections.abc import Collection, Mapping
from datetime import date
from pathlib import Path
from typing import TYPE_CHECKING

import duckdb
import pandas as pd
import pyarrow as pa

from transforms.core.calendar import Month
from transforms.ingest.layouts import BILL_ITEMS, BRANDS, STATUSES, SUBS_TYPES, SUSP_TYPES, parse_extract_name
from transforms.quality.suites import GateFailed, GateResult, plain, run_suite
from transforms.warehouse.db import first_row, scalar, snapshot_date_for

if TYPE_CHECKING:  # ingestion runs gate 1 without loading the rule engine
    from transforms.grade.rulepack import RulePack

__all__ = ["GateFailed", "GateResult", "gate_breaker", "gate_grading_inputs", "gate_outputs", "gate_raw_file"]


# --- frames ----------------------------------------------------------------------------------------------------

def _frame(rows: list[dict], schema: list[tuple[str, pa.DataType]]) -> pd.DataFrame:
    """A small typed frame (Arrow-backed, so integers stay integers next to nulls)."""
    table = pa.Table.from_pylist(rows, schema=pa.schema(schema))
    return table.to_pandas(types_mapper=pd.ArrowDtype)


def _yyyymmdd(day: date | None) -> int | None:
    return None if day is None else day.year * 10000 + day.month * 100 + day.day


def _records(con: duckdb.DuckDBPyConnection, sql: str, params: list | dict) -> list[dict]:
    cursor = con.execute(sql, params)
    names = [d[0] for d in cursor.description]
    return [dict(zip(names, row)) for row in cursor.fetchall()]


# --- gate 1: raw, per delivered file ---------------------------------------------------------------------------

def _ymd(expr: str) -> str:
    return f"CAST(strftime(CAST({expr} AS DATE), '%Y%m%d') AS BIGINT)"


# Per kind, one scan of the file's loaded records: counts, date bounds and the distinct values of enum fields.
# Only constant SQL here; the file name and the snapshot date are bound parameters.
_RAW_PROFILE = {
    "BILL": f"""
        SELECT count(*) AS raw_rows, NULL::BIGINT AS distinct_keys,
               count(*) FILTER (WHERE subs_id IS NULL) AS null_keys,
               {_ymd('min(bill_month)')} AS bill_month_min, {_ymd('max(bill_month)')} AS bill_month_max,
               list_sort(list(DISTINCT coalesce(item_code, '(null)'))) AS item_code
        FROM raw.bill WHERE file_name = $file""",
    "ACCT": f"""
        SELECT count(*) AS raw_rows, count(DISTINCT subs_id) AS distinct_keys,
               count(*) FILTER (WHERE subs_id IS NULL) AS null_keys,
               {_ymd('min(open_date)')} AS open_date_min, {_ymd('max(open_date)')} AS open_date_max,
               list_sort(list(DISTINCT coalesce(brand, '(null)'))) AS brand,
               list_sort(list(DISTINCT coalesce(subs_type, '(null)'))) AS subs_type,
               list_sort(list(DISTINCT coalesce(status, '(null)'))) AS subscriber_status
        FROM raw.snapshot_as_of($snapshot)""",
    "SUSP": f"""
        SELECT count(*) AS raw_rows, count(DISTINCT event_id) AS distinct_keys,
               count(*) FILTER (WHERE event_id IS NULL OR subs_id IS NULL) AS null_keys,
               {_ymd('max(event_time)')} AS event_day_max,
               list_sort(list(DISTINCT coalesce(susp_type, '(null)'))) AS susp_type
        FROM raw.susp WHERE file_name = $file""",
    "REDEEM": f"""
        SELECT count(*) AS raw_rows, count(DISTINCT txn_id) AS distinct_keys,
               count(*) FILTER (WHERE txn_id IS NULL OR subs_id IS NULL) AS null_keys,
               {_ymd('max(txn_time)')} AS txn_day_max, min(points) AS points_min
        FROM raw.redeem WHERE file_name = $file""",
    "OVERRIDE": """
        SELECT count(*) AS raw_rows, count(DISTINCT override_id) AS distinct_keys,
               count(*) FILTER (WHERE override_id IS NULL OR subs_id IS NULL) AS null_keys,
               count(*) FILTER (WHERE from_month > to_month) AS overrides_ending_before_start
        FROM raw.override WHERE file_name = $file""",
}
_ENUM_FIELDS = ("brand", "subs_type", "subscriber_status", "item_code", "susp_type")
# The suite's value sets, from the one place the extract interface lists them.
_ENUM_PARAMS = {"brands": BRANDS, "subs_types": SUBS_TYPES, "statuses": STATUSES, "bill_items": BILL_ITEMS,
                "susp_types": SUSP_TYPES}
_RAW_SCHEMA = ([("file_name", pa.string()), ("kind", pa.string()), ("delivery_status", pa.string()),
                ("md5", pa.string())]
               + [(c, pa.int64()) for c in (
                   "record_count", "byte_size", "loaded", "quarantined", "loaded_plus_quarantined", "held_rows", "raw_rows",
                   "distinct_keys", "null_keys", "bill_month_min", "bill_month_max", "open_date_min",
                   "open_date_max", "event_day_max", "txn_day_max", "points_min", "overrides_ending_before_start")]
               + [(c, pa.string()) for c in _ENUM_FIELDS])


def raw_file_frame(con: duckdb.DuckDBPyConnection, file_name: str) -> tuple[pd.DataFrame, dict]:
    """The gate-1 frame of a delivered file (the delivery in use) and the suite's parameters."""
    delivery = _records(con, """
        SELECT file_name, kind, period, day, status, md5, record_count, byte_size, loaded, quarantined,
               carried_forward
        FROM ops.delivery WHERE file_name = ?
        ORDER BY status IN ('LOADED', 'REJECTED') DESC, day DESC LIMIT 1""", [file_name])
    if not delivery:
        raise ValueError(f"{file_name} has never been delivered")
    d = delivery[0]
    period_first_day = (Month.parse(d["period"]).first_day if d["kind"] == "BILL"
                        else date(int(d["period"][:4]), int(d["period"][4:6]), int(d["period"][6:8])))
    bound = {"snapshot": period_first_day} if d["kind"] == "ACCT" else {"file": file_name}
    profile = _records(con, _RAW_PROFILE[d["kind"]], bound)[0]
    control = {
        "file_name": d["file_name"], "kind": d["kind"], "delivery_status": d["status"], "md5": d["md5"] or "",
        "record_count": -1 if d["record_count"] is None else d["record_count"],
        "byte_size": -1 if d["byte_size"] is None else d["byte_size"],
        "loaded": d["loaded"], "quarantined": d["quarantined"],
        "loaded_plus_quarantined": d["loaded"] + d["quarantined"],
        "held_rows": d["loaded"] + d["carried_forward"],
        **{k: v for k, v in profile.items() if k not in _ENUM_FIELDS},
    }
    values = [{name: value} for name in _ENUM_FIELDS for value in (profile.get(name) or [])]
    params = {"period_first_day": _yyyymmdd(period_first_day), "delivery_day": _yyyymmdd(d["day"]),
              **{name: list(value_set) for name, value_set in _ENUM_PARAMS.items()}}
    return _frame([control] + values, _RAW_SCHEMA), params


def gate_raw_file(con: duckdb.DuckDBPyConnection, file_name: str, results_dir: Path | None = None) -> GateResult:
    """Gate 1 for one delivered file: control totals recorded, loaded + quarantined = record_count, raw rows =
    loaded, and for the loaded records enums within their sets, unique non-null keys, dates in range.
    Results go to results_dir/raw_file_<FILE>.json."""
    frame, params = raw_file_frame(con, file_name)
    return run_suite("raw_file", frame, params, results_dir, f"raw_file_{Path(file_name).stem}",
                     variant=parse_extract_name(file_name).kind)


# --- gate 2: grading inputs ------------------------------------------------------------------------------------

_INPUTS_SCHEMA = [("month", pa.string()), ("bill_file", pa.string()), ("bill_status", pa.string()),
                  ("snapshot_month", pa.string()), ("subscriber_rows", pa.int64()),
                  ("distinct_subscribers", pa.int64()), ("billed_subscribers", pa.int64()),
                  ("consumption_fen", pa.int64()), ("consumption_ratio", pa.float64()),
                  ("billed_subscribers_ratio", pa.float64())]


def grading_inputs_frame(con: duckdb.DuckDBPyConnection, month: Month, window: int) -> pd.DataFrame:
    """One row per month of the window (the `window` months ending with M) from the start of history (the
    first BILL ever delivered) on."""
    if window < 1:
        raise ValueError(f"grading window must be a positive number of months, got {window!r}")
    first_bill = scalar(con, "SELECT min(period) FROM ops.delivery WHERE kind = 'BILL'")
    start = min(max(month - (window - 1), Month.parse(first_bill) if first_bill else month), month)
    months = [start + k for k in range(month - start + 1)]
    status = dict(con.execute("""
        SELECT period, arg_max(status, day) FROM ops.delivery
        WHERE kind = 'BILL' AND status IN ('LOADED', 'REJECTED') AND period BETWEEN ? AND ?
        GROUP BY period""", [months[0].compact, month.compact]).fetchall())
    totals = {Month.of(m): (n, cons) for m, n, cons in con.execute("""
        SELECT month, count(*), sum(cons_fen) FROM mart.subscriber_month
        WHERE month BETWEEN ? AND ? GROUP BY month""", [(month - window).first_day, month.first_day]).fetchall()}
    rows_m, distinct_m = first_row(con, "SELECT count(*), count(DISTINCT subs_id) FROM mart.subscriber_month "
                                        "WHERE month = ?", [month.first_day])
    rows = []
    for m in months:
        snapshot = snapshot_date_for(con, m)
        billed, cons = totals.get(m, (0, 0))
        row = {"month": str(m), "bill_file": f"BILL_{m.compact}.dat",
               "bill_status": status.get(m.compact, "MISSING"),
               "snapshot_month": str(Month.of(snapshot)) if snapshot else "none",
               "billed_subscribers": billed, "consumption_fen": int(cons or 0)}
        if m == month:
            prev_billed, prev_cons = totals.get(month - 1, (0, 0))
            # First month of history (no aggregates for M-1): the ratios are null, their checks skipped.
            row |= {"subscriber_rows": rows_m, "distinct_subscribers": distinct_m,
                    "consumption_ratio": (cons or 0) / prev_cons if prev_cons and prev_cons > 0 else None,
                    "billed_subscribers_ratio": billed / prev_billed if prev_billed else None}
        rows.append(row)
    return _frame(rows, _INPUTS_SCHEMA)


def gate_grading_inputs(con: duckdb.DuckDBPyConnection, month: Month, window: int,
                        results_dir: Path | None = None) -> GateResult:
    """Gate 2, run after mart.subscriber_month of M is written and before grading: BILL loaded for each of the
    `window` months ending with M (the pack's grading window), S(M) present and dated within M, one row per
    (month, subs_id) for M, and total consumption and billed subscribers of M within the suite's bounds of M-1."""
    return run_suite("grading_inputs", grading_inputs_frame(con, month, window), {}, results_dir)


# --- gate 3: outputs -------------------------------------------------------------------------------------------

ChannelCount = int | tuple[int, Collection[str]]

_OUTPUTS_SCHEMA = [("label", pa.string()), ("records", pa.int64()), ("assignment", pa.string()),
                   ("tier", pa.string()), ("reason", pa.string()), ("unrated_rule", pa.string()),
                   ("grade_change", pa.string()), ("channel_records", pa.int64()),
                   ("grade_change_records", pa.int64())]

_ASSIGNMENT_SQL = """
    WITH snap AS (SELECT subs_id FROM raw.snapshot_as_of($snap)),  -- unique per date: gate 1 checks each ACCT
         assigned AS (SELECT subs_id, count(*) AS n FROM mart.tier_assignment WHERE grade_month = $m
                      GROUP BY subs_id)
    SELECT CASE WHEN snap.subs_id IS NULL THEN 'NOT_IN_SNAPSHOT' WHEN assigned.n IS NULL THEN 'MISSING'
                WHEN assigned.n > 1 THEN 'DUPLICATED' ELSE 'ONE_ROW' END AS assignment,
           count(*) AS records
    FROM snap FULL OUTER JOIN assigned ON snap.subs_id = assigned.subs_id
    GROUP BY ALL ORDER BY ALL"""

_TIER_SQL = """
    SELECT tier, reason,
           CASE WHEN (tier = $unrated) = list_contains($ineligible, reason) THEN 'CONSISTENT'
                ELSE tier || ' with reason ' || reason END AS unrated_rule,
           count(*) AS records
    FROM mart.tier_assignment WHERE grade_month = $m
    GROUP BY ALL ORDER BY ALL"""

# The changes recomputed from the tiers of M and M-1 (outputs.md "Change types"), matched with the stored rows.
_GRADE_CHANGE_SQL = """
    WITH cur AS (SELECT subs_id, tier FROM mart.tier_assignment WHERE grade_month = $m),
         prev AS (SELECT subs_id, tier FROM mart.tier_assignment WHERE grade_month = $prev),
         pairs AS (SELECT coalesce(cur.subs_id, prev.subs_id) AS subs_id,
                          coalesce(prev.tier, $unrated) AS from_tier, coalesce(cur.tier, $unrated) AS to_tier
                   FROM cur FULL OUTER JOIN prev ON cur.subs_id = prev.subs_id),
         expected AS (
            SELECT subs_id, from_tier, to_tier,
                   CASE WHEN from_tier = $unrated THEN 'NEW' WHEN to_tier = $unrated THEN 'LOST'
                        WHEN list_position($tiers, to_tier) > list_position($tiers, from_tier) THEN 'UPGRADE'
                        ELSE 'DOWNGRADE' END AS change_type
            FROM pairs WHERE from_tier <> to_tier),
         stored AS (SELECT subs_id, from_tier, to_tier, change_type, count(*) OVER (PARTITION BY subs_id) AS n
                    FROM mart.grade_change WHERE grade_month = $m)
    SELECT CASE WHEN s.subs_id IS NULL THEN 'MISSING_ROW' WHEN e.subs_id IS NULL THEN 'UNEXPECTED_ROW'
                WHEN s.n > 1 THEN 'DUPLICATED_ROW'
                WHEN s.from_tier <> e.from_tier THEN 'WRONG_FROM_TIER'
                WHEN s.to_tier <> e.to_tier THEN 'WRONG_TO_TIER'
                WHEN s.change_type <> e.change_type THEN 'WRONG_CHANGE_TYPE'
                ELSE 'CONSISTENT' END AS grade_change,
           count(*) AS records
    FROM expected e FULL OUTER JOIN stored s ON e.subs_id = s.subs_id
    GROUP BY ALL ORDER BY ALL"""

# Each ENTITLEMENTS row of M: a subscriber without a grade change, whose tier of M it names, with a change.
_ENTITLEMENT_CHANGE_SQL = """
    WITH cur AS (SELECT subs_id, tier FROM mart.tier_assignment WHERE grade_month = $m),
         tier_changed AS (SELECT DISTINCT subs_id FROM mart.grade_change WHERE grade_month = $m),
         stored AS (SELECT *, count(*) OVER (PARTITION BY subs_id) AS n
                    FROM mart.entitlement_change WHERE grade_month = $m)
    SELECT CASE WHEN s.n > 1 THEN 'ENTITLEMENTS_DUPLICATED_ROW'
                WHEN t.subs_id IS NOT NULL THEN 'ENTITLEMENTS_WITH_A_TIER_CHANGE'
                WHEN cur.tier IS DISTINCT FROM s.to_tier OR s.from_tier <> s.to_tier THEN 'ENTITLEMENTS_WRONG_TIER'
                WHEN len(s.entitlements_gained) + len(s.entitlements_lost) = 0 THEN 'ENTITLEMENTS_UNCHANGED'
                ELSE 'CONSISTENT' END AS grade_change,
           count(*) AS records
    FROM stored s LEFT JOIN cur USING (subs_id) LEFT JOIN tier_changed t USING (subs_id)
    GROUP BY ALL ORDER BY ALL"""


def _channel_rows(con, month: Month, channel_counts: Mapping[str, ChannelCount] | None) -> list[dict]:
    """Per channel: records written and the change rows of M it selects (all change types unless given):
    mart.grade_change, and mart.entitlement_change for ENTITLEMENTS."""
    if not channel_counts:
        return []
    from transforms.deliver.channels import CHANGE_TYPES  # here: gate 1 (ingest) loads no rule engine
    by_type = dict(con.execute("SELECT change_type, count(*) FROM (SELECT change_type FROM mart.grade_change "
                               "WHERE grade_month = $m UNION ALL SELECT change_type FROM mart.entitlement_change "
                               "WHERE grade_month = $m) GROUP BY ALL", {"m": month.first_day}).fetchall())
    rows = []
    for channel in sorted(channel_counts):
        spec = channel_counts[channel]
        written, types = (spec, CHANGE_TYPES) if isinstance(spec, int) else (spec[0], tuple(spec[1]))
        unknown = set(types) - set(CHANGE_TYPES)
        if unknown or not isinstance(written, int):
            raise ValueError(f"channel {channel}: expected records written (int) and change types within "
                             f"{CHANGE_TYPES}, got {spec!r}")
        rows.append({"label": channel, "channel_records": written,
                     "grade_change_records": sum(by_type.get(t, 0) for t in set(types))})
    return rows


def outputs_frame(con: duckdb.DuckDBPyConnection, month: Month, pack: RulePack,
                  channel_counts: Mapping[str, ChannelCount] | None = None) -> pd.DataFrame:
    snapshot = snapshot_date_for(con, month)
    m = {"m": month.first_day}
    rows = (_records(con, _ASSIGNMENT_SQL, m | {"snap": snapshot})
            + _records(con, _TIER_SQL, m | {"unrated": pack.unrated, "ineligible": sorted(pack.ineligible_reasons)})
            + _records(con, _GRADE_CHANGE_SQL, m | {"prev": (month - 1).first_day, "unrated": pack.unrated,
                                                    "tiers": list(pack.tiers)})
            + _records(con, _ENTITLEMENT_CHANGE_SQL, m)
            + _channel_rows(con, month, channel_counts))
    return _frame(rows, _OUTPUTS_SCHEMA)


def gate_outputs(con: duckdb.DuckDBPyConnection, month: Month, pack: RulePack,
                 channel_counts: Mapping[str, ChannelCount] | None = None,
                 results_dir: Path | None = None) -> GateResult:
    """Gate 3 after grading M with `pack`: exactly one tier row per subscriber of S(M), tiers within the pack's,
    the pack's unrated tier exactly when the reason is one of its eligibility reasons, mart.grade_change of M
    equal to the changes recomputed from the tiers of M and M-1, mart.entitlement_change rows only for
    subscribers without one, at their tier of M, and channel file counts equal the change rows they select.

    channel_counts: {channel: records_written} compares with all change rows of M (every type of
    deliver.channels.CHANGE_TYPES, ENTITLEMENTS included); {channel: (records_written, change_types)} with the
    rows of those change types only (a channel configured for some changes). Count change records only (not, e.g.,
    points-expiry notices). None: not checked.
    """
    frame = outputs_frame(con, month, pack, channel_counts)
    return run_suite("outputs", frame, {"tiers": list(pack.tiers)}, results_dir)


# --- gate 4: circuit breaker -----------------------------------------------------------------------------------

_BREAKER_SCHEMA = [("month", pa.string()), ("rated_base", pa.int64()), ("downgrades", pa.int64()),
                   ("lost", pa.int64()), ("downgrade_lost_share", pa.float64())]


def breaker_frame(con: duckdb.DuckDBPyConnection, month: Month, pack: RulePack) -> pd.DataFrame:
    """DOWNGRADE + LOST of M over the rated subscribers of M-1 (rated: a tier other than the pack's unrated one,
    the only ones a DOWNGRADE or LOST can come from; gate 3 holds it equivalent to a reason outside the pack's
    eligibility reasons). Null share when M-1 has none (first graded month)."""
    base = scalar(con, "SELECT count(*) FROM mart.tier_assignment WHERE grade_month = ? AND tier <> ?",
                  [(month - 1).first_day, pack.unrated])
    downgrades, lost = first_row(con, """
        SELECT count(*) FILTER (WHERE change_type = 'DOWNGRADE'), count(*) FILTER (WHERE change_type = 'LOST')
        FROM mart.grade_change WHERE grade_month = ?""", [month.first_day])
    # A float share is exact enough here: a true ratio above the bound differs from it by >= 1/(20 x base).
    share = (downgrades + lost) / base if base else None
    return _frame([{"month": str(month), "rated_base": base, "downgrades": downgrades, "lost": lost,
                    "downgrade_lost_share": share}], _BREAKER_SCHEMA)


def gate_breaker(con: duckdb.DuckDBPyConnection, month: Month, pack: RulePack, accepted: bool = False,
                 results_dir: Path | None = None) -> GateResult:
    """Gate 4: fails when DOWNGRADE + LOST of M exceed the suite's share of the rated base, unless `accepted`
    (the operator's explicit acceptance): then it passes with `accepted=True` and the failures kept."""
    frame = breaker_frame(con, month, pack)
    result = run_suite("circuit_breaker", frame, {}, results_dir)
    row = frame.iloc[0]
    result.statistics["observed"] = {k: plain(row[k]) for k in ("rated_base", "downgrades", "lost",
                                                                 "downgrade_lost_share")}
    if not result.success and accepted:
        result.success, result.accepted = True, True
    return result
