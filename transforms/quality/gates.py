"""The four data-quality gates of quality.md as Great Expectations suites (expectations/*.json).

Suites are data: each `expectations/<suite>.json` holds GE expectation configurations (type + kwargs) and the
tunable bounds in their kwargs; operators change thresholds there. Values only known at run time are written
as placeholders `{"$param": "<name>"}` anywhere inside kwargs and substituted from the `params` dict given to
`run_suite` (a missing parameter is an error, never a silent default). Suite `meta` may name:
  - `row_weight`: a column saying how many records a frame row stands for (counts in messages are weighted);
  - `row_label`: a column whose value is put in front of an example (which month, which channel, ...).

GE 1.24's SQL data source returns no rows from DuckDB, and 10M subscribers must not go through pandas, so every
gate aggregates in DuckDB first and validates a small pandas frame (Arrow-backed dtypes). One frame per suite can
mix sections of different grain: a column that does not apply to a row is null, and GE's column expectations
skip nulls (pair expectations are configured with ignore_row_if = either_value_is_missing); values that must be
checked are never null (SQL fills them with a failing sentinel such as '' or -1 or 'none').

Usage: `gate_*(...)` returns a GateResult; `result.raise_if_failed()` raises GateFailed carrying it.
Great Expectations is imported inside `run_suite` only (its import costs seconds).
"""
from __future__ import annotations

import json
import math
import os
import re
from collections.abc import Collection, Mapping
from dataclasses import asdict, dataclass
from datetime import date
from pathlib import Path

import duckdb
import pandas as pd
import pyarrow as pa

from transforms.core.calendar import Month
from transforms.core.resources import expectations_dir
from transforms.warehouse.db import first_row, scalar, snapshot_date_for

WINDOW = 6                      # grading months M-5..M (rules.md sum6)
CHANGE_TYPES = ("NEW", "UPGRADE", "DOWNGRADE", "LOST")
_SUITE_NAME = re.compile(r"^[a-z][a-z0-9_]*$")
_RESULT_NAME = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.-]*$")
_MAX_EXAMPLES = 5


# --- results ---------------------------------------------------------------------------------------------------

@dataclass
class GateFailure:
    expectation: str            # GE expectation type, e.g. expect_column_values_to_be_in_set
    column: str | None          # the column checked ("A, B" for a column pair)
    counts: dict                # element_count, unexpected_count, missing_count; records/unexpected_records if weighted
    examples: list              # offending values (with the row label in front when the suite names one)

    def line(self) -> str:
        target = f"{self.expectation}({self.column})" if self.column else self.expectation
        c = self.counts
        if "error" in c:
            return f"{target}: error {c['error']}"
        if "unexpected_records" in c:
            how_many = f"{c['unexpected_records']:,} of {c['records']:,} unexpected"
        elif "unexpected_count" in c:
            checked = c.get("element_count", 0) - c.get("missing_count", 0)
            how_many = f"{c['unexpected_count']:,} of {checked:,} unexpected"
        else:
            how_many = f"observed {c.get('observed_value')!r}"
        return f"{target}: {how_many}" + (f", e.g. {self.examples!r}" if self.examples else "")


@dataclass
class GateResult:
    gate: str                   # the suite name
    success: bool
    failures: list[GateFailure]
    statistics: dict            # GE's statistics (evaluated / successful / unsuccessful expectations), gate extras
    accepted: bool = False      # circuit breaker only: it tripped and the operator accepted it
    results_path: Path | None = None

    def message(self) -> str:
        """One line for the operator."""
        detail = "; ".join(f.line() for f in self.failures)
        if self.accepted:
            return f"gate {self.gate} accepted by the operator despite: {detail}"
        if self.success:
            return f"gate {self.gate} passed ({self.statistics.get('evaluated_expectations', 0)} expectations)"
        return f"gate {self.gate} failed: {detail}"

    def raise_if_failed(self) -> "GateResult":
        if not self.success:
            raise GateFailed(self)
        return self

    def as_dict(self) -> dict:
        """JSON-ready, for the run ledger's checks."""
        return {"gate": self.gate, "success": self.success, "accepted": self.accepted,
                "message": self.message(), "failures": [asdict(f) for f in self.failures],
                "statistics": self.statistics,
                "results_path": str(self.results_path) if self.results_path else None}


class GateFailed(Exception):
    """A quality gate failed; `.result` is its GateResult and the message is the operator's line."""

    def __init__(self, result: GateResult):
        super().__init__(result.message())
        self.result = result


# --- running a suite -------------------------------------------------------------------------------------------

def load_suite(suite_name: str) -> dict:
    """The suite JSON of expectations/<suite_name>.json (name checked: no path out of the folder)."""
    if not _SUITE_NAME.match(suite_name):
        raise ValueError(f"invalid suite name {suite_name!r}")
    path = expectations_dir() / f"{suite_name}.json"
    if not path.is_file():
        raise ValueError(f"no expectation suite {suite_name!r} in {expectations_dir()}")
    return json.loads(path.read_text(encoding="utf-8"))


def substitute(value, params: Mapping, suite_name: str = ""):
    """Replaces every {"$param": name} inside `value` by params[name]."""
    if isinstance(value, dict):
        if set(value) == {"$param"}:
            name = value["$param"]
            if name not in params:
                raise ValueError(f"suite {suite_name} needs parameter {name!r} (given: {sorted(params)})")
            return params[name]
        return {k: substitute(v, params, suite_name) for k, v in value.items()}
    if isinstance(value, list):
        return [substitute(v, params, suite_name) for v in value]
    return value


def run_suite(suite_name: str, frame: pd.DataFrame, params: Mapping, results_dir: Path | None = None,
              result_name: str | None = None) -> GateResult:
    """Validates one frame with one suite; writes GE's validation result to results_dir/<result_name or
    suite_name>.json when results_dir is given (volatile fields removed: same inputs, same file)."""
    spec = load_suite(suite_name)
    if result_name is not None and not _RESULT_NAME.match(result_name):
        raise ValueError(f"invalid result name {result_name!r}")
    expectations = [{"type": e["type"], "kwargs": substitute(e["kwargs"], params, suite_name),
                     "meta": e.get("meta", {})} for e in spec["expectations"]]
    meta = spec.get("meta", {})
    frame = frame.reset_index(drop=True)
    validation, ordered_ids = _validate(suite_name, expectations, meta, frame)
    by_id = {r.expectation_config.id: r for r in validation.results}
    results = [by_id[i] for i in ordered_ids]
    failures = [_failure(r, frame, meta) for r in results if not r.success]
    statistics = dict(validation.statistics)
    path = None
    if results_dir is not None:
        path = _write_results(validation.to_json_dict(), ordered_ids, Path(results_dir),
                              result_name or suite_name, params, frame)
    return GateResult(suite_name, not failures, failures, statistics, results_path=path)


def _validate(suite_name: str, expectations: list[dict], meta: dict, frame: pd.DataFrame):
    os.environ.setdefault("GX_ANALYTICS_ENABLED", "false")  # no network
    import great_expectations as gx  # slow import: only when a gate runs
    from great_expectations.data_context.types.base import (DataContextConfig, InMemoryStoreBackendDefaults,
                                                            ProgressBarsConfig)

    config = DataContextConfig(store_backend_defaults=InMemoryStoreBackendDefaults(init_temp_docs_sites=False),
                               analytics_enabled=False, progress_bars=ProgressBarsConfig(globally=False))
    context = gx.get_context(mode="ephemeral", project_config=config)
    batch_definition = (context.data_sources.add_pandas("tierflow")
                        .add_dataframe_asset(suite_name)
                        .add_batch_definition_whole_dataframe("whole"))
    suite = context.suites.add(gx.ExpectationSuite(name=suite_name, expectations=expectations, meta=meta))
    batch = batch_definition.get_batch(batch_parameters={"dataframe": frame})
    # COMPLETE: all unexpected row indexes, to weight counts (frames are aggregated, hence small).
    validation = batch.validate(suite, result_format="COMPLETE")
    return validation, [e.id for e in suite.expectations]


def _failure(result, frame: pd.DataFrame, meta: dict) -> GateFailure:
    config = result.expectation_config
    kwargs = config.kwargs
    column = kwargs.get("column") or (f"{kwargs['column_A']}, {kwargs['column_B']}" if "column_A" in kwargs
                                      else None)
    error = _exception_message(result.exception_info)
    if error:
        return GateFailure(config.type, column, {"error": error}, [])
    res = result.result or {}
    counts = {k: _plain(res[k]) for k in ("element_count", "unexpected_count", "missing_count", "observed_value")
              if k in res}
    indexes = list(res.get("unexpected_index_list") or [])
    weight = meta.get("row_weight")
    if weight and kwargs.get("column") and weight in frame and indexes:
        checked = frame[kwargs["column"]].notna()
        weights = frame[weight]
        if weights[checked].notna().all():
            counts["records"] = int(weights[checked].sum())
            counts["unexpected_records"] = int(weights.iloc[indexes].sum())
    values = res.get("unexpected_list") or res.get("partial_unexpected_list") or []
    if not values and "observed_value" in res and "unexpected_count" not in res:
        values = [res["observed_value"]]
    label = meta.get("row_label")
    examples = []
    for position, value in enumerate(values[:_MAX_EXAMPLES]):
        value = _plain(value)
        row_label = None
        if label and label in frame and position < len(indexes):
            row_label = _plain(frame[label].iloc[indexes[position]])
        examples.append(f"{row_label}: {value}" if row_label is not None else value)
    return GateFailure(config.type, column, counts, examples)


def _exception_message(info) -> str | None:
    """GE reports an exception either flat or keyed by metric; the first message found."""
    if not info:
        return None
    if info.get("raised_exception"):
        return str(info.get("exception_message"))
    for value in info.values():
        if isinstance(value, dict) and value.get("raised_exception"):
            return str(value.get("exception_message"))
    return None


def _plain(value):
    """JSON-ready Python value (numpy / Arrow scalars unwrapped, floats rounded for reading)."""
    if isinstance(value, (list, tuple)):
        return type(value)(_plain(v) for v in value)
    if hasattr(value, "item") and not isinstance(value, (str, bytes)):
        value = value.item()
    if value is pd.NA:
        return None
    if isinstance(value, float):
        return None if math.isnan(value) else round(value, 4)
    return value


def _write_results(doc: dict, ordered_ids: list[str], results_dir: Path, name: str, params: Mapping,
                   frame: pd.DataFrame) -> Path:
    """GE's full validation result, results in suite order, without run-specific ids and load times; with the
    parameters and the (aggregated, small) frame validated, for the record."""
    rank = {i: n for n, i in enumerate(ordered_ids)}
    doc["results"] = sorted(doc.get("results", []), key=lambda r: rank.get(r["expectation_config"].get("id"), 0))
    for r in doc["results"]:
        r["expectation_config"].pop("id", None)
    doc.pop("id", None)
    doc.get("meta", {}).get("batch_markers", {}).pop("ge_load_time", None)
    doc["tierflow_params"] = dict(params)
    doc["tierflow_frame"] = [{k: _plain(v) for k, v in row.items() if not pd.isna(v)}
                             for row in frame.to_dict("records")]
    results_dir.mkdir(parents=True, exist_ok=True)
    path = results_dir / f"{name}.json"
    tmp = path.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(doc, indent=1, sort_keys=True, default=str, ensure_ascii=False), encoding="utf-8")
    tmp.replace(path)
    return path


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
        FROM raw.subscriber_history
        WHERE valid_from <= $snapshot AND (valid_to IS NULL OR valid_to > $snapshot)""",
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
_RAW_SCHEMA = ([("file_name", pa.string()), ("kind", pa.string()), ("delivery_status", pa.string()),
                ("md5", pa.string())]
               + [(c, pa.int64()) for c in (
                   "record_count", "byte_size", "loaded", "quarantined", "loaded_plus_quarantined", "raw_rows",
                   "distinct_keys", "null_keys", "bill_month_min", "bill_month_max", "open_date_min",
                   "open_date_max", "event_day_max", "txn_day_max", "points_min", "overrides_ending_before_start")]
               + [(c, pa.string()) for c in _ENUM_FIELDS])


def raw_file_frame(con: duckdb.DuckDBPyConnection, file_name: str) -> tuple[pd.DataFrame, dict]:
    """The gate-1 frame of a delivered file (the delivery in use) and the suite's parameters."""
    delivery = _records(con, """
        SELECT file_name, kind, period, day, status, md5, record_count, byte_size, loaded, quarantined
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
        **{k: v for k, v in profile.items() if k not in _ENUM_FIELDS},
    }
    values = [{name: value} for name in _ENUM_FIELDS for value in (profile.get(name) or [])]
    params = {"period_first_day": _yyyymmdd(period_first_day), "delivery_day": _yyyymmdd(d["day"])}
    return _frame([control] + values, _RAW_SCHEMA), params


def gate_raw_file(con: duckdb.DuckDBPyConnection, file_name: str, results_dir: Path | None = None) -> GateResult:
    """Gate 1 for one delivered file: control totals recorded, loaded + quarantined = record_count, raw rows =
    loaded, and for the loaded records enums within their sets, unique non-null keys, dates in range.
    Results go to results_dir/raw_file_<FILE>.json."""
    frame, params = raw_file_frame(con, file_name)
    return run_suite("raw_file", frame, params, results_dir, f"raw_file_{Path(file_name).stem}")


# --- gate 2: grading inputs ------------------------------------------------------------------------------------

_INPUTS_SCHEMA = [("month", pa.string()), ("bill_file", pa.string()), ("bill_status", pa.string()),
                  ("snapshot_month", pa.string()), ("subscriber_rows", pa.int64()),
                  ("distinct_subscribers", pa.int64()), ("billed_subscribers", pa.int64()),
                  ("consumption_fen", pa.int64()), ("consumption_ratio", pa.float64()),
                  ("billed_subscribers_ratio", pa.float64())]


def grading_inputs_frame(con: duckdb.DuckDBPyConnection, month: Month) -> pd.DataFrame:
    """One row per month of M-5..M from the start of history (the first BILL ever delivered) on."""
    first_bill = scalar(con, "SELECT min(period) FROM ops.delivery WHERE kind = 'BILL'")
    start = min(max(month - (WINDOW - 1), Month.parse(first_bill) if first_bill else month), month)
    months = [start + k for k in range(month - start + 1)]
    status = dict(con.execute("""
        SELECT period, arg_max(status, day) FROM ops.delivery
        WHERE kind = 'BILL' AND status IN ('LOADED', 'REJECTED') AND period BETWEEN ? AND ?
        GROUP BY period""", [months[0].compact, month.compact]).fetchall())
    totals = {Month.of(m): (n, cons) for m, n, cons in con.execute("""
        SELECT month, count(*), sum(cons_fen) FROM mart.subscriber_month
        WHERE month BETWEEN ? AND ? GROUP BY month""", [(month - WINDOW).first_day, month.first_day]).fetchall()}
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


def gate_grading_inputs(con: duckdb.DuckDBPyConnection, month: Month,
                        results_dir: Path | None = None) -> GateResult:
    """Gate 2, run after mart.subscriber_month of M is written and before grading: BILL loaded for each month
    of the window, S(M) present and dated within M, one row per (month, subs_id) for M, and total consumption
    and billed subscribers of M within the suite's bounds of M-1."""
    return run_suite("grading_inputs", grading_inputs_frame(con, month), {}, results_dir)


# --- gate 3: outputs -------------------------------------------------------------------------------------------

ChannelCount = int | tuple[int, Collection[str]]

_OUTPUTS_SCHEMA = [("label", pa.string()), ("records", pa.int64()), ("assignment", pa.string()),
                   ("tier", pa.string()), ("reason", pa.string()), ("unrated_rule", pa.string()),
                   ("grade_change", pa.string()), ("channel_records", pa.int64()),
                   ("grade_change_records", pa.int64())]

_ASSIGNMENT_SQL = """
    WITH snap AS (SELECT subs_id FROM raw.subscriber_history  -- unique per date: gate 1 checks each ACCT
                  WHERE valid_from <= $snap AND (valid_to IS NULL OR valid_to > $snap)),
         assigned AS (SELECT subs_id, count(*) AS n FROM mart.tier_assignment WHERE grade_month = $m
                      GROUP BY subs_id)
    SELECT CASE WHEN snap.subs_id IS NULL THEN 'NOT_IN_SNAPSHOT' WHEN assigned.n IS NULL THEN 'MISSING'
                WHEN assigned.n > 1 THEN 'DUPLICATED' ELSE 'ONE_ROW' END AS assignment,
           count(*) AS records
    FROM snap FULL OUTER JOIN assigned ON snap.subs_id = assigned.subs_id
    GROUP BY ALL ORDER BY ALL"""

_TIER_SQL = """
    SELECT tier, reason,
           CASE WHEN (tier = $unrated) = starts_with(reason, 'INELIGIBLE_') THEN 'CONSISTENT'
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


def _channel_rows(con, month: Month, channel_counts: Mapping[str, ChannelCount] | None) -> list[dict]:
    """Per channel: records written and the grade_change rows of M it selects (all change types unless given)."""
    if not channel_counts:
        return []
    by_type = dict(con.execute("SELECT change_type, count(*) FROM mart.grade_change WHERE grade_month = ? "
                               "GROUP BY ALL", [month.first_day]).fetchall())
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


def outputs_frame(con: duckdb.DuckDBPyConnection, month: Month, tiers: list[str], unrated: str,
                  channel_counts: Mapping[str, ChannelCount] | None = None) -> pd.DataFrame:
    snapshot = snapshot_date_for(con, month)
    m = {"m": month.first_day}
    rows = (_records(con, _ASSIGNMENT_SQL, m | {"snap": snapshot})
            + _records(con, _TIER_SQL, m | {"unrated": unrated})
            + _records(con, _GRADE_CHANGE_SQL, m | {"prev": (month - 1).first_day, "unrated": unrated,
                                                    "tiers": list(tiers)})
            + _channel_rows(con, month, channel_counts))
    return _frame(rows, _OUTPUTS_SCHEMA)


def gate_outputs(con: duckdb.DuckDBPyConnection, month: Month, tiers: list[str], unrated: str,
                 channel_counts: Mapping[str, ChannelCount] | None = None,
                 results_dir: Path | None = None) -> GateResult:
    """Gate 3 after grading M: exactly one tier row per subscriber of S(M), tiers within `tiers` (the pack's,
    lowest first), `unrated` exactly when the reason is INELIGIBLE_*, mart.grade_change of M equal to the changes
    recomputed from the tiers of M and M-1, and channel file counts equal grade_change counts.

    channel_counts: {channel: records_written} compares with all grade_change rows of M;
    {channel: (records_written, change_types)} with the rows of those change types only (a channel configured
    for some changes). Count grade-change records only (not, e.g., points-expiry notices). None: not checked.
    """
    frame = outputs_frame(con, month, tiers, unrated, channel_counts)
    return run_suite("outputs", frame, {"tiers": list(tiers)}, results_dir)


# --- gate 4: circuit breaker -----------------------------------------------------------------------------------

_BREAKER_SCHEMA = [("month", pa.string()), ("rated_base", pa.int64()), ("downgrades", pa.int64()),
                   ("lost", pa.int64()), ("downgrade_lost_share", pa.float64())]


def breaker_frame(con: duckdb.DuckDBPyConnection, month: Month) -> pd.DataFrame:
    """DOWNGRADE + LOST of M over the rated subscribers of M-1 (rated: reason not INELIGIBLE_*, which gate 3
    holds equivalent to a tier other than the unrated one). Null share when M-1 has none (first graded month)."""
    base = scalar(con, "SELECT count(*) FROM mart.tier_assignment WHERE grade_month = ? "
                       "AND NOT starts_with(reason, 'INELIGIBLE_')", [(month - 1).first_day])
    downgrades, lost = first_row(con, """
        SELECT count(*) FILTER (WHERE change_type = 'DOWNGRADE'), count(*) FILTER (WHERE change_type = 'LOST')
        FROM mart.grade_change WHERE grade_month = ?""", [month.first_day])
    # A float share is exact enough here: a true ratio above the bound differs from it by >= 1/(20 x base).
    share = (downgrades + lost) / base if base else None
    return _frame([{"month": str(month), "rated_base": base, "downgrades": downgrades, "lost": lost,
                    "downgrade_lost_share": share}], _BREAKER_SCHEMA)


def gate_breaker(con: duckdb.DuckDBPyConnection, month: Month, accepted: bool = False,
                 results_dir: Path | None = None) -> GateResult:
    """Gate 4: fails when DOWNGRADE + LOST of M exceed the suite's share of the rated base, unless `accepted`
    (the operator's explicit acceptance): then it passes with `accepted=True` and the failures kept."""
    frame = breaker_frame(con, month)
    result = run_suite("circuit_breaker", frame, {}, results_dir)
    row = frame.iloc[0]
    result.statistics["observed"] = {k: _plain(row[k]) for k in ("rated_base", "downgrades", "lost",
                                                                  "downgrade_lost_share")}
    if not result.success and accepted:
        result.success, result.accepted = True, True
    return result
