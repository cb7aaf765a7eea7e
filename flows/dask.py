"""The heavy steps of the monthly run on a Dask cluster, through Prefect's DaskTaskRunner (issue 11).

`tierflow monthly|backfill --workers N` starts a LocalCluster of N worker processes on this machine for the run;
`--dask-address tcp://HOST:PORT` (or TIERFLOW_DASK_ADDRESS) uses a running cluster, whose workers must see the
home at the same path. The flow then runs on a DaskTaskRunner: a BILL file is parsed in one byte range per worker,
and the monthly run of each month aggregates it, accrues points and grades over one shard per worker, and
renders its channel files in parts (transforms.runs.shards). Every part is a
Prefect task on a worker; the driver (the flow's process, the only one that writes the warehouse) exports,
gathers and writes. Without either option nothing here is used.
"""
from __future__ import annotations

import atexit
import os
import sys
import threading
from dataclasses import dataclass
from functools import partial
from pathlib import Path

from prefect import Flow, task
from prefect.cache_policies import NO_CACHE
from prefect.context import FlowRunContext

from transforms.runs.shards import STEPS, ShardLimits, parse_on_shards, work_folder

DASK_ADDRESS_ENV = "TIERFLOW_DASK_ADDRESS"
SERVED_WORKERS_ENV = "TIERFLOW_SERVED_WORKERS"  # `serve --workers N`: each run it starts gets N local workers
DUCKDB_MEMORY_SHARE = 0.5  # of a worker's memory: the rest is for Polars frames and Parquet buffers
_registered: list = []  # this worker process's exit handler, once
_starting: dict[int, threading.Thread] = {}  # task runner -> the thread starting its cluster (start_cluster)


class DaskError(Exception):
    """The cluster cannot run the shards (unreachable, no worker, a worker died on every try)."""


def on_cluster(flow: Flow, workers: int | None, address: str | None) -> Flow:
    """`flow` with its tasks on Dask: a LocalCluster of `workers` processes, or the cluster at `address`
    (default TIERFLOW_DASK_ADDRESS); `flow` itself when neither is given."""
    address = address or os.environ.get(DASK_ADDRESS_ENV) or None
    if workers and address:
        raise DaskError("give either --workers (a cluster on this machine) or --dask-address / "
                        f"{DASK_ADDRESS_ENV} (a running cluster), not both")
    if not workers and not address:
        return flow
    from prefect_dask import DaskTaskRunner

    if address:
        return flow.with_options(task_runner=DaskTaskRunner(address=address))
    threads = max(1, (os.cpu_count() or 1) // workers)
    return flow.with_options(task_runner=DaskTaskRunner(cluster_kwargs={
        "n_workers": workers, "threads_per_worker": threads, "processes": True, "dashboard_address": None,
        # Polars sizes its pool at import: one worker's share, not the machine
        "env": {"POLARS_MAX_THREADS": str(threads)}}))


def served_on_cluster(flow: Flow) -> Flow:
    """`flow` as a run that `tierflow serve` started takes it: on the cluster serve was given (`--workers N`: a
    LocalCluster per run; `--dask-address` or TIERFLOW_DASK_ADDRESS: that cluster), else `flow` itself. A served
    run loads its flow by module path, so flows.pipeline applies this at import, in those processes only."""
    workers = os.environ.get(SERVED_WORKERS_ENV)
    return on_cluster(flow, int(workers) if workers else None, None)


def start_cluster() -> None:
    """Starts the flow's cluster in the background when the flow runs on Dask (a LocalCluster's processes take
    seconds to start and import), while the run recovers and loads what comes before BILL."""
    runner = _dask_runner()
    if runner is None or id(runner) in _starting:
        return
    _prepare(runner)
    _starting[id(runner)] = thread = threading.Thread(target=lambda: runner.client, name="dask-start", daemon=True)
    thread.start()


def shards_of_run(home: str, run_id: str):
    """The ShardMap of a run when its flow runs on Dask (one shard per worker; the cluster is started here if
    start_cluster did not), else None."""
    runner = _dask_runner()
    if runner is None:
        return None
    if starting := _starting.pop(id(runner), None):
        starting.join()  # a failed start is retried below, where its error reaches the run
    _prepare(runner)
    workers = len(runner.client.scheduler_info()["workers"])
    if not workers:
        raise DaskError(f"the Dask cluster at {runner.client.scheduler.address} has no worker")
    return DaskShards(workers, work_folder(Path(home), run_id))


def parser_of_run(home: str, run_id: str):
    """How an ingest run reads a file when its flow runs on Dask: BILL in byte ranges on the workers
    (shards.parse_on_shards); else None (extracts.parse_extract_parts, the default)."""
    if _dask_runner() is None:
        return None
    return partial(parse_on_shards, partial(shards_of_run, home, run_id))


def _prepare(runner) -> None:
    if not runner.address:  # a LocalCluster, started at the first use of runner.client: its workers report
        runner.cluster_kwargs["env"]["PREFECT_API_URL"] = _api_url()  # to this run's server, not one each


def _dask_runner():
    runner = getattr(FlowRunContext.get(), "task_runner", None)
    prefect_dask = sys.modules.get("prefect_dask")  # imported by on_cluster only
    return runner if prefect_dask is not None and isinstance(runner, prefect_dask.DaskTaskRunner) else None


@dataclass(frozen=True)
class DaskShards:
    """A ShardMap submitting one Prefect task per shard to the flow's DaskTaskRunner."""
    count: int
    folder: Path

    def __call__(self, step: str, work, *args) -> list:
        futures = [run_shard.with_options(task_run_name=f"shard-{step}-{work.label}-{k}").submit(step, work, k, *args)
                   for k in range(work.count)]
        results = []
        for k, future in enumerate(futures):
            try:
                results.append(future.result())
            except Exception as exc:
                raise DaskError(f"shard {k} of {work.count} ({step}, {work.label}) failed: "
                                f"{type(exc).__name__}: {exc}") from exc
        return results


@task(name="shard", cache_policy=NO_CACHE, persist_result=False)
def run_shard(step: str, work, shard: int, *args):
    """One part's step on a Dask worker (`work`: a shards.ShardWork, RangeWork or RenderWork), with the
    worker's share of threads and memory."""
    return STEPS[step](work, shard, _worker_limits(), *args)


def _api_url() -> str:
    """The Prefect API this process reports to: PREFECT_API_URL, or the temporary server Prefect started for it."""
    from prefect.settings import PREFECT_API_URL

    if PREFECT_API_URL.value():
        return PREFECT_API_URL.value()
    from prefect.server.api.server import SubprocessASGIServer

    return SubprocessASGIServer().api_url


def _quiet_exit() -> None:
    """A worker process's interpreter exit is silent, as the CLI's is (native extensions report 'leaked' objects
    on stderr at exit)."""
    sys.stderr.flush()
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, sys.stderr.fileno())


def _worker_limits() -> ShardLimits:
    from distributed import get_worker

    try:
        worker = get_worker()
    except ValueError:  # not on a worker (a test calling the task's function)
        return ShardLimits()
    if not os.environ.get("TIERFLOW_DEBUG") and _quiet_exit not in _registered:
        atexit.register(_quiet_exit)
        _registered.append(_quiet_exit)
    memory = worker.memory_manager.memory_limit
    return ShardLimits(threads=worker.state.nthreads,
                       memory_limit=f"{int(memory * DUCKDB_MEMORY_SHARE) // 2**20}MB" if memory else
                       ShardLimits().memory_limit)
