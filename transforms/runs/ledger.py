"""ops.run_ledger: one row per run, written when it starts and completed when it ends."""
from __future__ import annotations

import json
import time
import uuid
from contextlib import contextmanager
from datetime import datetime
from pathlib import Path

import duckdb


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
