"""What the warehouse says about a run: its ops.run_ledger rows (with whatever timings they hold), the files
its ingest loaded, and the tiers it assigned. Read-only, after the run's process has exited.

The ledger's `timings` JSON is read without assuming its shape: today {"seconds": s} per run row; per-step
timings ({"steps": {"name": s}}) or anything else numeric show up as dotted keys ("steps.aggregate").
"""
from __future__ import annotations

import json
from contextlib import closing
from datetime import date
from pathlib import Path

import duckdb

WAREHOUSE_FILE = "warehouse.duckdb"


def _connect(home: Path) -> duckdb.DuckDBPyConnection:
    return duckdb.connect(str(home / WAREHOUSE_FILE), read_only=True)


def run_ids(home: Path) -> set[str]:
    if not (home / WAREHOUSE_FILE).exists():
        return set()
    with closing(_connect(home)) as con:
        return {r[0] for r in con.execute("SELECT run_id FROM ops.run_ledger").fetchall()}


def new_runs(home: Path, before: set[str]) -> list[dict]:
    """Ledger rows written since `before` (the run ids present before the measured run), oldest first."""
    with closing(_connect(home)) as con:
        rows = con.execute("""SELECT run_id, flow, period, status, timings, input_files
                              FROM ops.run_ledger ORDER BY started_at, run_id""").fetchall()
    runs = []
    for run_id, flow, period, status, timings, input_files in rows:
        if run_id in before:
            continue
        timings = _json(timings)
        runs.append({"run_id": run_id, "flow": flow, "period": period, "status": status,
                     "timings": timings, "timing_keys": flatten_numbers(timings),
                     "input_files": _json(input_files) or []})
    return runs


def _json(value):
    if value is None or isinstance(value, (dict, list)):
        return value
    try:
        return json.loads(value)
    except ValueError:
        return {"unparsed": str(value)}


def flatten_numbers(value, prefix: str = "") -> dict[str, float]:
    """Every numeric leaf of a JSON value under a dotted key: {"steps": {"a": 1}} -> {"steps.a": 1}."""
    if isinstance(value, bool):
        return {}
    if isinstance(value, (int, float)):
        return {prefix or "value": float(value)}
    if isinstance(value, dict):
        flat = {}
        for key, item in value.items():
            flat |= flatten_numbers(item, f"{prefix}.{key}" if prefix else str(key))
        return flat
    return {}


def accounted_seconds(run: dict) -> float | None:
    """The run row's own total: its "seconds", else the sum of its steps, else None."""
    timings = run["timings"] if isinstance(run["timings"], dict) else {}
    if isinstance(timings.get("seconds"), (int, float)):
        return float(timings["seconds"])
    steps = flatten_numbers(timings.get("steps", {}))
    return sum(steps.values()) if steps else None


def breakdown(runs: list[dict], wall_s: float) -> dict[str, float]:
    """Seconds per "<flow>.<timing key>" (summed over rows of the same flow), plus what the ledger does not
    account for: wall minus the rows' own totals (process start, imports, Prefect, publishing, ...)."""
    keys: dict[str, float] = {}
    for run in runs:
        for key, seconds in run["timing_keys"].items():
            keys[f"{run['flow']}.{key}"] = keys.get(f"{run['flow']}.{key}", 0.0) + seconds
    totals = [accounted_seconds(run) for run in runs]
    if runs and all(t is not None for t in totals):
        keys["outside the ledger (wall - run rows)"] = wall_s - sum(totals)
    return keys


def ingest_lines(runs: list[dict], kinds: tuple[str, ...] = ("BILL_", "ACCT_")) -> dict:
    """Lines of the files the runs' ingest loaded (loaded + quarantined = the file's records), the BILL and
    ACCT ones apart, and the ingest rows' seconds: rows per second of ingest."""
    ingest = [run for run in runs if run["flow"] == "ingest"]
    files = [f for run in ingest for f in run["input_files"] if isinstance(f, dict) and f.get("status") == "LOADED"]
    lines = sum(int(f.get("loaded", 0)) + int(f.get("quarantined", 0)) for f in files
                if str(f.get("file", "")).startswith(kinds))
    all_lines = sum(int(f.get("loaded", 0)) + int(f.get("quarantined", 0)) for f in files)
    seconds = [accounted_seconds(run) for run in ingest]
    total = sum(s for s in seconds if s is not None) if ingest and None not in seconds else None
    return {"bill_acct_lines": lines, "all_lines": all_lines, "files": [f.get("file") for f in files],
            "ingest_s": total, "rows_per_s": (lines / total) if total else None}


def export_tiers(home: Path, month_first_day: date, out: Path) -> int:
    """mart.tier_assignment of the grading month as Parquet (subs_id, tier); returns the row count."""
    with closing(_connect(home)) as con:
        con.execute(f"""COPY (SELECT subs_id, tier FROM mart.tier_assignment
                              WHERE grade_month = DATE '{month_first_day}' ORDER BY subs_id)
                        TO '{out}' (FORMAT parquet)""")
        return con.execute(f"SELECT count(*) FROM '{out}'").fetchall()[0][0]


def month_sizes(home: Path, month_compact: str, month_first_day: date, month_last_day: date) -> dict:
    """Sizes of the measured month for the report: S(M), BILL_M and ACCT lines, warehouse file size."""
    with closing(_connect(home)) as con:
        deliveries = dict(con.execute(f"""
            SELECT kind, record_count FROM ops.delivery WHERE status = 'LOADED' AND (
                file_name = 'BILL_{month_compact}.dat'
                OR (kind = 'ACCT' AND period = (SELECT max(period) FROM ops.delivery WHERE kind = 'ACCT'
                                                AND status = 'LOADED' AND period <= '{month_last_day:%Y%m%d}')))
            """).fetchall())
        graded = con.execute(f"SELECT count(*) FROM mart.tier_assignment WHERE grade_month = DATE '{month_first_day}'"
                             ).fetchall()[0][0]
    return {"bill_lines": deliveries.get("BILL"), "acct_lines": deliveries.get("ACCT"), "subscribers_graded": graded,
            "warehouse_bytes": (home / WAREHOUSE_FILE).stat().st_size}


def month_run_ids(home: Path, month) -> list[tuple[str]]:
    """The run that last wrote a month (ops.month_state.run_id)."""
    con = duckdb.connect(str(home / WAREHOUSE_FILE), read_only=True)
    try:
        return con.execute("SELECT run_id FROM ops.month_state WHERE month = ?", [month]).fetchall()
    finally:
        con.close()
