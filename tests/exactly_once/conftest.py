"""Exactly once across crashes, the shared part of the tests in this folder: a backfill killed at each
boundary in turn (right before and right after each commit, each file rename, each swap of the published copy:
transforms.core.faults) is followed by a rerun that must equal an uninterrupted run (warehouse, published copy,
every outbox file), with nothing owed afterwards and the killed run closed as INTERRUPTED. Fixtures for
test_commits.py and test_files.py (the boundaries are split between two modules so that the two test workers
share them) and test_dask.py (the same province on a Dask cluster); built once per test worker.

The smallest province that reaches every boundary: June 2026 graded (the state every killed run starts from),
then July's deliveries: the month-end snapshot with a rated subscriber cancelled (nightly LOST notices), its
BILL, and July's grading with its channel files and the publication.
"""
from __future__ import annotations

import hashlib
import shutil
import subprocess
import sys
from pathlib import Path

import duckdb
import pytest

from flows.pipeline import backfill_flow
from tests.builders import Province, Sub
from transforms.core.calendar import Month, month_range
from transforms.core.faults import FAULT_ENV, KILLED_EXIT_CODE, POINTS
from transforms.runs.publish import published_path
from transforms.warehouse.db import connect

JAN, JUN, JUL = Month(2026, 1), Month(2026, 6), Month(2026, 7)
PROJECT = Path(__file__).resolve().parents[2]
# landing files are written by the sender (and the generator), never by a run; shards only run on Dask
# (tests/test_dask.py)
REACHED = [p for p in POINTS if not p.endswith(":landing") and not p.startswith("in-shard:")]
COMMITS = [p for p in REACHED if "-commit:" in p]
FILES = [p for p in REACHED if "-commit:" not in p]  # renames and the publish swap
# What a rerun must reproduce exactly: every mart table, and the ops tables without run ids and clock times.
COMPARED = {
    **{f"mart.{t}": "*" for t in ("subscriber_month", "points_balance", "tier_assignment", "tier_current",
                                  "tier_history", "grade_change", "entitlement_change", "tier_summary")},
    "raw.bill": "*",  # parsed in byte ranges on Dask: the same rows and line numbers
    "ops.delivery": "file_name, day, status, md5, loaded, quarantined, carried_forward",
    "ops.quarantine": "file_name, day, line_no, raw_text, reason, detail",
    "ops.month_state": "month, graded, pack_version, fingerprint",
    "ops.sent_record": "*",
    "ops.outbox_file": "relpath, channel, records, md5",
    "ops.owed": "effect, target",
}


def build(home: Path) -> None:
    p = Province()
    p.join(*(Sub(f"S{n}") for n in range(1, 31)))
    for month in month_range(JAN, JUL):
        for n in range(1, 31):
            p.spend(month, f"S{n}", 10000 + 1000 * (n % 7) + (30000 if (n, month) == (2, JUL) else 0))
        if month == JUL:
            p.change("S1", status="CANCELLED", cancel_date="20260720")
        p.close_month(month)
    p.write(home)


@pytest.fixture(scope="session")
def june(tmp_path_factory, prefect_harness) -> Path:
    """June graded, July's deliveries in the landing area, not loaded yet."""
    home = tmp_path_factory.mktemp("june")
    build(home)
    backfill_flow(str(home), "2026-01", "2026-06")
    return home


def state(home: Path) -> dict:
    con = duckdb.connect(str(home / "warehouse.duckdb"), read_only=True)
    try:
        tables = {t: con.execute(f"SELECT {cols} FROM {t} ORDER BY ALL").fetchall() for t, cols in COMPARED.items()}
    finally:
        con.close()
    pub = duckdb.connect(str(published_path(home)), read_only=True)
    try:
        published = pub.execute("SELECT * FROM mart.tier_assignment ORDER BY ALL").fetchall()
    finally:
        pub.close()
    outbox = {str(p.relative_to(home)): hashlib.sha256(p.read_bytes()).hexdigest()
              for p in sorted((home / "outbox").rglob("*")) if p.is_file()}
    # the channel files waiting in ops/owed/: none once delivered, none left by a run killed before its commit
    waiting = sorted(str(p.relative_to(home)) for p in (home / "ops" / "owed").rglob("*") if p.is_file())
    return {"tables": tables, "published": published, "outbox": outbox, "waiting": waiting}


@pytest.fixture(scope="session")
def reference(june, tmp_path_factory) -> dict:
    home = tmp_path_factory.mktemp("reference")
    shutil.copytree(june, home, dirs_exist_ok=True)
    backfill_flow(str(home), "2026-07", "2026-07")
    result = state(home)
    assert result["tables"]["ops.owed"] == [] and result["waiting"] == []
    assert "outbox/sms/daily/20260731/lost.jsonl" in result["outbox"]  # the boundaries are all reached
    assert "outbox/boss/202607/GRADE_CHG_202607.dat" in result["outbox"]
    return result


def backfill_command(home: Path) -> list[str]:
    return [sys.executable, "-m", "flows.cli", "backfill", "--home", str(home), "--start", "2026-07",
            "--end", "2026-07"]


@pytest.fixture
def killed_then_rerun(june, reference, tmp_path, cli_env):
    """Kills a backfill at a point, reruns it, and checks the rerun against the uninterrupted run."""
    def check(point: str) -> None:
        home = tmp_path / "home"
        shutil.copytree(june, home)
        killed = subprocess.run(backfill_command(home), env={**cli_env, FAULT_ENV: point}, capture_output=True,
                                text=True, cwd=PROJECT)
        assert killed.returncode == KILLED_EXIT_CODE, f"{point} was never reached: {killed.stderr[-2000:]}"
        rerun_equals_reference(home, reference)
        con = connect(home, read_only=True)
        try:
            assert con.execute("SELECT count(*) FROM ops.run_ledger WHERE status = 'INTERRUPTED'").fetchone()[0] >= 1
        finally:
            con.close()
    return check


def rerun_equals_reference(home: Path, reference: dict) -> None:
    """The rerun, in this process, needs no cleanup by hand and ends as the uninterrupted run did."""
    backfill_flow(str(home), "2026-07", "2026-07")
    assert state(home) == reference
    con = connect(home, read_only=True)
    try:
        assert con.execute("SELECT count(*) FROM ops.run_ledger WHERE status = 'RUNNING'").fetchone() == (0,)
    finally:
        con.close()
    assert not [p for p in home.rglob(".*.tmp")]  # no leftover of a write that was cut short
