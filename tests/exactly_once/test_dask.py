"""The monthly run on Dask gives the same warehouse, published copy and channel files, byte for byte, as the local
path, and a killed worker leaves the month as it was. On a cluster started apart (`dask scheduler`, `dask worker`,
named by TIERFLOW_DASK_ADDRESS) whose workers die in their shard's grading, the backfill of July loads July's BILL
(parsed in two byte ranges there), then fails with one line naming the shard and leaves the marts, the published
copy and the month's channel files as they were; the rerun on a LocalCluster (`--workers 2`: BILL in two ranges,
two shards) equals the local path."""
from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from flows.dask import DASK_ADDRESS_ENV
from tests.builders import query
from tests.conftest import free_port
from tests.exactly_once.conftest import PROJECT, backfill_command, state
from transforms.core.faults import FAULT_ENV

ON_DASK = ["--workers", "2"]
# A task whose worker died is not tried again elsewhere: the test's worker dies on every try anyway.
ONE_TRY = {"DASK_DISTRIBUTED__SCHEDULER__ALLOWED_FAILURES": "0"}


def run_on_dask(home, env):  # on a LocalCluster of two workers
    return subprocess.run(backfill_command(home) + ON_DASK, env=env, capture_output=True, text=True, cwd=PROJECT)


def shard_task_runs() -> set[str]:
    """Names of the shard task runs the session's Prefect server has seen."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import TaskRunFilter, TaskRunFilterName
    from prefect.client.schemas.sorting import TaskRunSort

    with get_client(sync_client=True) as client:  # a server needs limit and sort given
        runs = client.read_task_runs(task_run_filter=TaskRunFilter(name=TaskRunFilterName(like_="shard-")),
                                     limit=200, sort=TaskRunSort.EXPECTED_START_TIME_DESC)
    return {r.name for r in runs}


def run_folders(home) -> list[str]:
    return [p.name for p in (home / "work").iterdir() if p.name != "history"]


def july_run(home) -> tuple[str, dict, dict]:
    """status, checks and step timings of July's last monthly run."""
    status, checks, timings = query(home, "SELECT status, checks, timings FROM ops.run_ledger WHERE flow = 'monthly' "
                                          "AND period = '2026-07' ORDER BY started_at DESC LIMIT 1")[0]
    return status, json.loads(checks) if checks else {}, json.loads(timings) if timings else {}


@pytest.fixture
def cluster_whose_workers_die_in_grade(cli_env):
    """`dask scheduler` and `dask worker` started apart, as on other machines: two workers that die in their
    shard's grading (TIERFLOW_FAULT), a scheduler that tries a task once. Yields its address."""
    from distributed import Client

    address, dask = f"tcp://127.0.0.1:{free_port()}", Path(sys.executable).parent / "dask"
    scheduler = subprocess.Popen([dask, "scheduler", "--host", "127.0.0.1", "--port", address.rsplit(":", 1)[1],
                                  "--no-dashboard"], env={**cli_env, **ONE_TRY},
                                 stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    worker = subprocess.Popen([dask, "worker", address, "--nworkers", "2", "--nthreads", "1", "--no-dashboard"],
                              env={**cli_env, "POLARS_MAX_THREADS": "1", FAULT_ENV: "in-shard:grade"},
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        with Client(address, timeout=60) as client:
            client.wait_for_workers(2, timeout=120)
        yield address
    finally:
        for process in (worker, scheduler):
            process.terminate()
            process.wait(30)


def test_a_killed_worker_fails_the_run_then_the_rerun_on_dask_equals_the_local_path(
        june, reference, tmp_path, cli_env, cluster_whose_workers_die_in_grade):
    home = tmp_path / "home"
    shutil.copytree(june, home)
    before = state(home)
    on_that_cluster = {**cli_env, DASK_ADDRESS_ENV: cluster_whose_workers_die_in_grade}
    killed = subprocess.run(backfill_command(home), env=on_that_cluster, capture_output=True, text=True, cwd=PROJECT)
    assert killed.returncode == 1, killed.stderr[-2000:]
    cause = next(line for line in killed.stderr.splitlines() if line.startswith("tierflow backfill: error:"))
    assert "shard" in cause and "grade, 2026-07" in cause and "KilledWorker" in cause, cause
    assert july_run(home)[0] == "FAILED"
    after = state(home)
    # July's deliveries were loaded (BILL in ranges on that cluster, the nightly notices of its snapshot sent)
    # before the grading failed; of the grading nothing is left: no mart row, no month state, no monthly channel
    # file, nothing published
    assert after["tables"]["raw.bill"] == reference["tables"]["raw.bill"]
    for table in [t for t in before["tables"] if t.startswith("mart.")] + ["ops.month_state"]:
        assert after["tables"][table] == before["tables"][table], table
    assert after["published"] == before["published"]
    assert [f for f in after["outbox"] if "202607" in f and "/daily/" not in f] == []
    assert run_folders(home) == []

    rerun = run_on_dask(home, cli_env)  # on a LocalCluster (--workers 2)
    assert rerun.returncode == 0, rerun.stderr[-2000:]
    status, checks, timings = july_run(home)
    assert status == "SUCCESS" and checks["shards"] == 2  # graded on the cluster, one shard per worker
    # July summed on the shards from the partial sums its BILL's two ranges left on the first cluster
    assert "aggregate_shards" in timings["steps"], timings
    assert {f"shard-{step}-{k}" for step in ("bill-BILL_202607.dat", "aggregate-2026-07", "metrics-2026-07",
                                             "grade-2026-07", "render-2026-07")
            for k in (0, 1)} <= shard_task_runs()  # Prefect tasks on the workers: BILL in two ranges, two shards
    assert state(home) == reference
    assert run_folders(home) == []  # the shards' files are gone with the run (the history exports stay)
