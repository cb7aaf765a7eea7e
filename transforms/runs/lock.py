"""One writing run at a time per home.

An advisory lock (flock) on `<home>/.tierflow.lock`: the kernel releases it when the holder dies, even by
kill -9, so a crashed run never needs manual cleanup. The file names the holder so the refusal can say who.
"""
from __future__ import annotations

import fcntl
import json
import os
import time
from contextlib import contextmanager
from datetime import datetime
from pathlib import Path

LOCK_FILE = ".tierflow.lock"


class RunLocked(Exception):
    pass


def holder(home: Path) -> str:
    """Who holds (or last held) the home's writer lock, as the lock file says."""
    return _holder(Path(home) / LOCK_FILE)


def _holder(path: Path) -> str:
    try:
        info = json.loads(path.read_text() or "{}")
    except (OSError, ValueError):
        return "another tierflow run"
    return f"{info.get('run', 'a run')} (pid {info.get('pid', '?')}, since {info.get('since', '?')})"


@contextmanager
def writer_lock(home: Path, run: str, wait_seconds: float = 0.0):
    """Holds the home's writer lock for the block; waits up to wait_seconds, then fails naming the holder."""
    path = Path(home) / LOCK_FILE
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o640)
    deadline = time.monotonic() + wait_seconds
    try:
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if time.monotonic() >= deadline:
                    raise RunLocked(f"another run is writing {home}: {_holder(path)}") from None
                time.sleep(0.5)
        os.ftruncate(fd, 0)
        os.pwrite(fd, json.dumps({"run": run, "pid": os.getpid(),
                                  "since": datetime.now().isoformat(timespec="seconds")}).encode(), 0)
        yield
    finally:
        os.close(fd)  # closing the descriptor releases the lock
