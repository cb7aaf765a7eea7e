"""Shared fixtures. Flow tests share one real Prefect server per session (`prefect server start` on a free
127.0.0.1 port with its own PREFECT_HOME): in-process flows, `tierflow` subprocesses and `tierflow serve` all
talk to it, and it is stopped at the end."""
from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

os.environ.setdefault("PREFECT_LOGGING_LEVEL", "WARNING")
os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")  # no network here
SERVER_START_SECONDS = 180  # healthy after ~15 s on a quiet machine; much more on a loaded one


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="session")
def prefect_server(tmp_path_factory) -> str:
    """The API URL of a Prefect server started for this session."""
    home = tmp_path_factory.mktemp("prefect-home")
    port = free_port()
    env = {k: v for k, v in os.environ.items() if k != "PREFECT_API_URL"} | {"PREFECT_HOME": str(home)}
    log = open(home / "server.log", "wb")
    server = subprocess.Popen([sys.executable, "-m", "prefect", "server", "start", "--host", "127.0.0.1",
                               "--port", str(port)], env=env, stdout=log, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}/api"
    try:
        _wait_healthy(url, server, home / "server.log")
        yield url
    finally:
        server.terminate()
        try:
            server.wait(30)
        except subprocess.TimeoutExpired:
            server.kill()
        log.close()


def _wait_healthy(url: str, server: subprocess.Popen, log: Path) -> None:
    deadline = time.monotonic() + SERVER_START_SECONDS
    while time.monotonic() < deadline:
        if server.poll() is not None:
            pytest.fail(f"prefect server exited ({server.returncode}): {log.read_text()[-2000:]}")
        try:
            if httpx.get(f"{url}/health", timeout=2).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.5)
    pytest.fail(f"prefect server not healthy after {SERVER_START_SECONDS} s: {log.read_text()[-2000:]}")


@pytest.fixture(scope="session")
def prefect_harness(prefect_server):
    """Flows run in this process report to the session's server."""
    from prefect.settings import PREFECT_API_URL, temporary_settings
    with temporary_settings(updates={PREFECT_API_URL: prefect_server}):
        yield


@pytest.fixture(scope="session")
def cli_env(prefect_server) -> dict:
    """Environment for `tierflow` subprocesses: they use the session's server instead of starting their own."""
    return {**os.environ, "PREFECT_API_URL": prefect_server}
