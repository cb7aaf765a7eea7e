"""A Prefect server started by the benchmark (`prefect server start`), with its own PREFECT_HOME in a temporary
directory, so that runs "with a server running" talk to it over PREFECT_API_URL and nothing of the user's
Prefect state is read or written. Started in its own session and stopped by its process group id.
"""
from __future__ import annotations

import os
import signal
import socket
import subprocess
import time
import urllib.request
from pathlib import Path

from bench.measure import process_tree_cpu_seconds, tail

HEALTH_TIMEOUT_S = 180  # a loaded 2-core box needs far more than the usual ~15 s


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class PrefectServer:
    def __init__(self, prefect_bin: Path, workdir: Path, base_env: dict, port: int | None = None):
        self.prefect_bin, self.workdir = prefect_bin, workdir
        self.port = port or free_port()
        self.env = base_env | {"PREFECT_HOME": str(workdir / "server-home")}
        self.log_path = workdir / "prefect-server.log"
        self.process: subprocess.Popen | None = None
        self.startup_s: float | None = None

    @property
    def api_url(self) -> str:
        return f"http://127.0.0.1:{self.port}/api"

    def __enter__(self) -> "PrefectServer":
        try:
            self.start()
        except BaseException:  # interrupted or failed while starting: __exit__ will not run, stop it here
            self.stop()
            raise
        return self

    def __exit__(self, *exc) -> None:
        self.stop()

    def start(self) -> None:
        self.workdir.mkdir(parents=True, exist_ok=True)
        started = time.monotonic()
        with open(self.log_path, "wb") as log:
            self.process = subprocess.Popen(
                [str(self.prefect_bin), "server", "start", "--host", "127.0.0.1", "--port", str(self.port)],
                env=self.env, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                start_new_session=True)
        while not self._healthy():
            if self.process.poll() is not None:
                raise RuntimeError(f"prefect server exited with status {self.process.returncode}\n"
                                   f"{tail(self.log_path)}")
            if time.monotonic() - started > HEALTH_TIMEOUT_S:
                self.stop()
                raise RuntimeError(f"prefect server not healthy after {HEALTH_TIMEOUT_S} s\n{tail(self.log_path)}")
            time.sleep(0.5)
        self.startup_s = round(time.monotonic() - started, 1)

    def _healthy(self) -> bool:
        try:
            with urllib.request.urlopen(f"{self.api_url}/health", timeout=2) as response:
                return response.status == 200
        except OSError:
            return False

    def cpu_seconds(self) -> float:
        return process_tree_cpu_seconds(self.process.pid) if self.process else 0.0

    def stop(self) -> None:
        """SIGTERM to the server's own process group (ours: start_new_session), SIGKILL if it lingers."""
        if self.process is None or self.process.poll() is not None:
            return
        group = os.getpgid(self.process.pid)
        os.killpg(group, signal.SIGTERM)
        try:
            self.process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            pass
        try:  # whatever of the group is left (the server's own workers), the leader gone or not
            os.killpg(group, signal.SIGKILL)
        except ProcessLookupError:
            pass
        self.process.wait()
