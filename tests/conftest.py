"""Shared fixtures. Flow tests share one Prefect test harness per session (it starts a temporary server)."""
from __future__ import annotations

import os

import pytest

os.environ.setdefault("PREFECT_LOGGING_LEVEL", "WARNING")
os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")  # no network here


@pytest.fixture(scope="session")
def prefect_harness():
    from prefect.testing.utilities import prefect_test_harness
    with prefect_test_harness(server_startup_timeout=120):
        yield


@pytest.fixture(scope="session")
def cli_env(prefect_harness) -> dict:
    """Environment for `tierflow` subprocesses: they reuse the harness's server instead of starting their own."""
    from prefect.settings import PREFECT_API_URL
    return {**os.environ, "PREFECT_API_URL": PREFECT_API_URL.value()}
