"""`tierflow serve`: the nightly and monthly runs on their schedules, on a Prefect server (outputs.md "Scheduling").

Registers three deployments on the server at PREFECT_API_URL: `nightly/nightly` and `monthly/monthly` with
their cron schedules, `backfill/backfill` on demand only, all bound to one tierflow home; then runs them as
they come due, one at a time (a second run would only find the writer lock held). Ctrl-C or SIGTERM stops it
cleanly: no new run is taken, the run in progress finishes first.
"""
from __future__ import annotations

import asyncio
import atexit
import os
import signal
import sys
from dataclasses import dataclass
from pathlib import Path

import httpx

DEFAULT_NIGHTLY_CRON = "30 2 * * *"     # 02:30 every day
DEFAULT_MONTHLY_CRON = "0 4 5 * *"      # 04:00 on the 5th: BILL arrives on the 3rd
DEFAULT_TIMEZONE = "Asia/Shanghai"
SERVED_ENV = "TIERFLOW_SERVED"          # set for the flow-run processes started by serve
START_SERVER_HINT = ("start one with `prefect server start --host 127.0.0.1 --port 4200` and set "
                     "PREFECT_API_URL=http://127.0.0.1:4200/api")


class ServeError(Exception):
    pass


@dataclass(frozen=True)
class Schedules:
    nightly_cron: str = DEFAULT_NIGHTLY_CRON
    monthly_cron: str = DEFAULT_MONTHLY_CRON
    timezone: str = DEFAULT_TIMEZONE


def require_server() -> str:
    """The URL of a reachable Prefect server, or ServeError with one line saying how to start one."""
    from prefect.settings import PREFECT_API_URL

    url = PREFECT_API_URL.value()
    if not url:
        raise ServeError(f"PREFECT_API_URL is not set: serve needs a running Prefect server; {START_SERVER_HINT}")
    try:
        httpx.get(f"{url.rstrip('/')}/health", timeout=5).raise_for_status()
    except httpx.HTTPError as exc:
        raise ServeError(f"no Prefect server answers at {url} ({type(exc).__name__}); {START_SERVER_HINT}") from None
    return url


def deployments(home: Path, schedules: Schedules) -> list:
    """The three deployments, bound to `home` (flows imported by module path, so served runs find them)."""
    from prefect.deployments.runner import EntrypointType
    from prefect.schedules import Cron

    from flows.pipeline import backfill_flow, monthly_flow, nightly_flow

    common = {"entrypoint_type": EntrypointType.MODULE_PATH}
    timed = {"home": str(home), "timezone": schedules.timezone}
    return [
        nightly_flow.to_deployment(name="nightly", parameters=timed, **common,
                                   schedules=[Cron(schedules.nightly_cron, timezone=schedules.timezone)]),
        monthly_flow.to_deployment(name="monthly", parameters=timed, **common,
                                   schedules=[Cron(schedules.monthly_cron, timezone=schedules.timezone)]),
        backfill_flow.to_deployment(name="backfill", parameters={"home": str(home)}, **common),
    ]


def serve(home: Path, schedules: Schedules = Schedules(), on_ready=None, workers: int | None = None,
          dask_address: str | None = None) -> None:
    """Registers the deployments and runs them as they come due until SIGINT or SIGTERM; with `workers` or
    `dask_address`, each run on that cluster (flows.dask.served_on_cluster)."""
    from flows.dask import DASK_ADDRESS_ENV, SERVED_WORKERS_ENV, DaskError

    if workers and dask_address:
        raise DaskError("give either --workers (a cluster on this machine) or --dask-address, not both")
    require_server()
    # inherited by each flow-run process (prepare_served_run, flows.dask.served_on_cluster)
    os.environ[SERVED_ENV] = "1"
    if workers:
        os.environ[SERVED_WORKERS_ENV] = str(workers)
    if dask_address:
        os.environ[DASK_ADDRESS_ENV] = dask_address
    asyncio.run(_serve(deployments(home, schedules), on_ready))


async def _serve(deployed: list, on_ready) -> None:
    from prefect.runner import Runner

    runner = Runner(name="tierflow", limit=1, pause_on_shutdown=False)
    for deployment in deployed:
        await runner.aadd_deployment(deployment)
    started = asyncio.create_task(runner.start())
    while not runner.started and not started.done():
        await asyncio.sleep(0.05)
    # Runner.start() installs a SIGTERM handler that cancels the run in progress (it ends Crashed); replace it
    # with a drain: take no new run, let the current one finish. Relies on Runner internals of prefect 3.8.8.
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, _drain, runner)
    if on_ready:
        on_ready()
    await started


def _drain(runner) -> None:
    if runner.started:
        runner._scheduled_run_poller.stopping = True
        runner._loops_task_group.cancel_scope.cancel()


def prepare_served_run() -> None:
    """In a flow-run process that serve started: a Ctrl-C in serve's terminal reaches it too, so it is ignored
    (the run finishes, serve stops taking runs); and the native extensions' 'leaked' reports at interpreter exit
    would land in serve's output, so stderr is closed once the run is over."""
    if os.environ.get(SERVED_ENV):
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        atexit.register(_quiet_stderr)


def _quiet_stderr() -> None:
    sys.stderr.flush()
    os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stderr.fileno())
