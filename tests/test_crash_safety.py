"""Run safety with real processes: kill -9 mid-backfill then a clean rerun; an analyst reading the published
copy through a whole run; one writer at a time."""
from __future__ import annotations

import hashlib
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import duckdb
import pytest

from flows.pipeline import backfill_flow
from transforms.core.calendar import Month
from transforms.synth.generate import generate_province
from transforms.runs.publish import published_path
from transforms.runs.lock import RunLocked, writer_lock
from transforms.warehouse.db import connect

pytestmark = pytest.mark.flow
MARTS = ["subscriber_month", "points_balance", "tier_assignment", "tier_history", "grade_change", "entitlement_change",
         "tier_summary"]


def digest(path: Path) -> str:
    con = duckdb.connect(str(path), read_only=True)
    try:
        rows = [con.execute(f"SELECT * FROM mart.{t} ORDER BY ALL").fetchall() for t in MARTS]
    finally:
        con.close()
    return hashlib.sha256(repr(rows).encode()).hexdigest()


def start_backfill(home: Path, env: dict, end: str = "2025-08") -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "flows.cli", "backfill", "--home", str(home), "--start",
                             "2025-01", "--end", end], env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, cwd=Path(__file__).resolve().parent.parent)


def kill_when(proc: subprocess.Popen, marker: str) -> str:
    """SIGKILLs the run as soon as it prints a line containing marker; returns that line."""
    for line in proc.stdout:  # progress goes to stdout
        if marker in line:
            proc.send_signal(signal.SIGKILL)
            proc.wait()
            return line
    proc.wait()
    pytest.fail(f"the run ended (rc {proc.returncode}) before printing {marker!r}")


@pytest.fixture(scope="module")
def landing(tmp_path_factory) -> Path:
    home = tmp_path_factory.mktemp("landing")
    # seed 14: DOWNGRADE + LOST stay under the breaker's 5% in every month of this small province
    generate_province(home, subscribers=300, start=Month(2025, 1), months=8, seed=14)
    return home / "landing"


@pytest.fixture(scope="module")
def reference(landing, tmp_path_factory, prefect_harness) -> str:
    home = tmp_path_factory.mktemp("reference")
    shutil.copytree(landing, home / "landing")
    backfill_flow(str(home), "2025-01", "2025-08")
    return digest(home / "warehouse.duckdb")


def test_kill_9_mid_backfill_then_a_clean_rerun(landing, reference, tmp_path, cli_env):
    """A kill -9 from outside at a moment the run does not choose (tests/test_exactly_once.py kills a run at every
    boundary in turn from inside)."""
    home = tmp_path / "home"
    shutil.copytree(landing, home / "landing")
    for marker in ("2025-07: graded",):  # after two monthly commits, while the next days load
        kill_when(start_backfill(home, cli_env), marker)
        connect(home).close()  # the warehouse opens after every kill: nothing to clean by hand
        if published_path(home).exists():
            digest(published_path(home))  # the published copy is always a complete database
    rerun = start_backfill(home, cli_env)
    _, err = rerun.communicate(timeout=300)
    assert rerun.returncode == 0, err
    assert digest(home / "warehouse.duckdb") == reference
    assert digest(published_path(home)) == reference
    assert not list(published_path(home).parent.glob(".*.tmp"))


def test_an_analyst_keeps_reading_the_last_published_state_through_a_run(landing, tmp_path, cli_env):
    home = tmp_path / "home"
    shutil.copytree(landing, home / "landing")
    backfill_flow(str(home), "2025-01", "2025-07")
    analyst = duckdb.connect(str(published_path(home)), read_only=True)
    query = "SELECT max(grade_month)::VARCHAR, count(*) FROM mart.tier_assignment"
    before = analyst.execute(query).fetchall()
    assert before[0][0] == "2025-07-01"
    run = start_backfill(home, cli_env)
    while run.poll() is None:   # the analyst is never blocked and never sees a half-written state
        assert analyst.execute(query).fetchall() == before
        time.sleep(0.2)
    assert run.returncode == 0, run.stderr.read()
    assert analyst.execute(query).fetchall() == before
    analyst.close()
    fresh = duckdb.connect(str(published_path(home)), read_only=True)
    assert fresh.execute(query).fetchall()[0][0] == "2025-08-01"
    fresh.close()
    assert oct(os.stat(published_path(home)).st_mode & 0o777) == "0o640"


def test_a_second_writer_fails_at_once_naming_the_running_one(tmp_path):
    with writer_lock(tmp_path, "monthly 2026-05"):
        with pytest.raises(RunLocked, match=r"monthly 2026-05 \(pid \d+"):
            with writer_lock(tmp_path, "nightly 2026-06-01"):
                pass
    with writer_lock(tmp_path, "nightly 2026-06-01"):  # released when the holder ends
        pass
