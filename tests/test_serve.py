"""`tierflow serve` with real parts: the session's Prefect server (tests/conftest.py), `tierflow serve --workers 2`
as a subprocess registering its deployments and schedules, a nightly run triggered through the API that loads a
BILL and grades its month over the shards of a Dask LocalCluster, and a clean stop."""
from __future__ import annotations

import json
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from flows.pipeline import nightly_flow
from tests.test_operations import build
from transforms.warehouse.db import connect

pytestmark = pytest.mark.flow
PROJECT = Path(__file__).resolve().parent.parent
READY_SECONDS = 120


class Served:
    """`tierflow serve` running in the background, its output collected line by line."""

    def __init__(self, home: Path, env: dict, *options: str):
        self.lines: list[str] = []
        self.process = subprocess.Popen([sys.executable, "-m", "flows.cli", "serve", "--home", str(home), *options],
                                        env=env, cwd=PROJECT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                        text=True)
        threading.Thread(target=self._collect, daemon=True).start()

    def _collect(self) -> None:
        for line in self.process.stdout:
            self.lines.append(line.rstrip("\n"))

    def wait_for(self, text: str, seconds: float) -> None:
        deadline = time.monotonic() + seconds
        while not any(text in line for line in self.lines):
            if self.process.poll() is not None or time.monotonic() > deadline:
                pytest.fail(f"serve never printed {text!r}: " + "\n".join(self.lines[-30:]))
            time.sleep(0.2)

    def stop(self) -> int:
        self.process.send_signal(signal.SIGTERM)
        return self.process.wait(60)


@pytest.fixture(scope="module")
def served(tmp_path_factory, prefect_harness, cli_env):
    home = tmp_path_factory.mktemp("served")
    build(home)
    nightly_flow(str(home), "2026-06-30")  # BILL 2026-01..05 loaded, those months processed (no tiers yet)
    serve = Served(home, cli_env, "--workers", "2")
    serve.wait_for("serve: ready", READY_SECONDS)
    yield home, serve
    if serve.process.poll() is None:
        serve.stop()


def test_serve_registers_the_deployments_with_their_schedules(served):
    from prefect import get_client
    from prefect.client.schemas.sorting import DeploymentSort

    home, _ = served
    with get_client(sync_client=True) as client:
        deployments = {d.name: d for d in client.read_deployments(limit=50, sort=DeploymentSort.NAME_ASC)}
        assert set(deployments) == {"nightly", "monthly", "backfill"}
        schedules = {name: [(s.schedule.cron, s.schedule.timezone) for s in d.schedules]
                     for name, d in deployments.items()}
        flows = {name: client.read_flow(d.flow_id).name for name, d in deployments.items()}
    assert schedules == {"nightly": [("30 2 * * *", "Asia/Shanghai")], "monthly": [("0 4 5 * *", "Asia/Shanghai")],
                         "backfill": []}
    assert flows == {"nightly": "nightly", "monthly": "monthly", "backfill": "backfill"}
    assert all(d.parameters["home"] == str(home) for d in deployments.values())


def test_a_nightly_run_triggered_through_the_api_loads_the_bill_and_grades_its_month(served):
    from prefect.deployments import run_deployment

    home, _ = served
    run = run_deployment("nightly/nightly", parameters={"day": "2026-07-03"}, timeout=300, poll_interval=1)
    assert run.state is not None and run.state.is_completed(), run.state
    con = connect(home, read_only=True)
    try:
        assert con.execute("SELECT graded FROM ops.month_state WHERE month = '2026-06-01'").fetchall() == [(True,)]
        assert con.execute("SELECT count(*) FROM mart.tier_assignment WHERE grade_month = '2026-06-01'"
                           ).fetchone() == (106,)
        # graded over the shards of the cluster serve was given (`--workers 2`), not in the run's process
        [(timings,)] = con.execute("SELECT timings FROM ops.run_ledger WHERE flow = 'monthly' "
                                   "AND period = '2026-06' AND status = 'SUCCESS'").fetchall()
        assert "shards_metrics" in json.loads(timings)["steps"]
    finally:
        con.close()
    assert (home / "outbox" / "boss" / "202606" / "GRADE_CHG_202606.dat").exists()


def test_sigterm_stops_serve_cleanly(served):
    _, serve = served
    assert serve.stop() == 0
    assert serve.lines[-1] == "serve: stopped"


def test_serve_without_a_server_says_how_to_start_one(tmp_path, cli_env):
    done = subprocess.run([sys.executable, "-m", "flows.cli", "serve", "--home", str(tmp_path)],
                          env={**cli_env, "PREFECT_API_URL": "http://127.0.0.1:9/api"}, cwd=PROJECT,
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 1
    first = done.stderr.splitlines()[0]
    assert first.startswith("tierflow serve: error: no Prefect server answers at http://127.0.0.1:9/api")
    assert "prefect server start --host 127.0.0.1 --port 4200" in first
