"""ops.run_ledger: one row per run, written when it starts and closed when it ends: SUCCESS, FAILED with its
cause (whatever raised), or INTERRUPTED when the process died and a later run found the row still RUNNING."""
from __future__ import annotations

import json
import time
import uuid
from contextlib import contextmanager
from datetime import datetime
from pathlib import Path

import duckdb

from transforms.warehouse.db import scalar


def quality_dir(home: Path, run_id: str) -> Path:
    """Where a run keeps Great Expectations' validation results."""
    return Path(home) / "ops" / "quality" / run_id


def start_run(con: duckdb.DuckDBPyConnection, flow: str, period: str, pack_name: str | None = None,
              pack_version: str | None = None) -> str:
    run_id = f"{flow}-{period}-{uuid.uuid4().hex[:8]}"
    con.execute("INSERT INTO ops.run_ledger (run_id, flow, period, pack_name, pack_version, status, started_at) "
                "VALUES (?, ?, ?, ?, ?, 'RUNNING', ?)", [run_id, flow, period, pack_name, pack_version,
                                                         datetime.now()])
    return run_id


def finish_run(con: duckdb.DuckDBPyConnection, run_id: str, status: str, message: str = "",
               input_files: list | None = None, output_files: list | None = None, checks: dict | None = None,
               timings: dict | None = None) -> None:
    con.execute("""UPDATE ops.run_ledger SET status = ?, message = ?, input_files = ?, output_files = ?,
                   checks = ?, timings = ?, finished_at = ? WHERE run_id = ?""",
                [status, message, json.dumps(input_files or []), json.dumps(output_files or []),
                 json.dumps(checks or {}), json.dumps(timings or {}), datetime.now(), run_id])


def first_line(exc: BaseException) -> str:
    """The one-line cause of an exception: its message's first line, or its type when it has none."""
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


@contextmanager
def failing_closes(con: duckdb.DuckDBPyConnection, run_id: str, **details):
    """Closes the run as FAILED with the cause of whatever escapes the block (then re-raises it); `details`
    (input_files, checks, ...) are recorded with it."""
    try:
        yield
    except BaseException as exc:
        if scalar(con, "SELECT status FROM ops.run_ledger WHERE run_id = ?", [run_id]) == "RUNNING":
            finish_run(con, run_id, "FAILED", first_line(exc), **details)  # else it was closed with more detail
        raise


def close_interrupted(con: duckdb.DuckDBPyConnection) -> list[str]:
    """Rows still RUNNING belong to runs that died (only the holder of the writer lock runs, and it calls this
    first): each is closed as INTERRUPTED with what it had committed. Returns their run ids."""
    rows = con.execute("""
        SELECT r.run_id,
               (SELECT list(d.file_name ORDER BY d.day, d.file_name) FROM ops.delivery d WHERE d.run_id = r.run_id),
               (SELECT list(strftime(s.month, '%Y-%m') ORDER BY s.month) FROM ops.month_state s
                WHERE s.run_id = r.run_id)
        FROM ops.run_ledger r WHERE r.status = 'RUNNING' ORDER BY r.started_at""").fetchall()
    for run_id, files, months in rows:
        committed = [f"{len(files)} delivery record(s) ({', '.join(files[:3])}{', ...' if len(files) > 3 else ''})"
                     ] if files else []
        committed += [f"month(s) {', '.join(months)}"] if months else []
        con.execute("UPDATE ops.run_ledger SET status = 'INTERRUPTED', message = ?, finished_at = ? "
                    "WHERE run_id = ?", [f"interrupted; had committed: {'; '.join(committed) or 'nothing'}",
                                         datetime.now(), run_id])
    return [r[0] for r in rows]


class StepTimer:
    """Wall seconds per named step of a run, for ops.run_ledger.timings ({"steps": {...}, "seconds": total})."""

    def __init__(self):
        self.steps: dict[str, float] = {}
        self._started = time.monotonic()

    @contextmanager
    def __call__(self, name: str):
        started = time.monotonic()
        try:
            yield
        finally:
            self.steps[name] = round(self.steps.get(name, 0.0) + time.monotonic() - started, 3)

    def as_dict(self) -> dict:
        return {"seconds": round(time.monotonic() - self._started, 3), "steps": dict(self.steps)}
