"""Running one measured child process: wall time (time.monotonic around it), CPU (user + sys) and peak RSS of
the child from os.wait4, so that each figure belongs to that one process tree and nothing else.

CPU and peak RSS from wait4 cover the child and the descendants it waited for (the temporary Prefect server
a CLI starts, for instance); peak RSS is the largest single process of that tree (ru_maxrss), not a sum.
"""
from __future__ import annotations

import os
import subprocess
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

STDERR_TAIL_LINES = 40
_CLOCK_TICKS = os.sysconf("SC_CLK_TCK")


class RunFailed(RuntimeError):
    """A measured run exited non-zero: the benchmark stops and shows what the run said."""


@dataclass
class Measurement:
    key: str                   # which run: monthly_server, floor, ...
    round: int                 # 1-based; 0 for runs outside the rounds (preparation, the 12-month backfill)
    argv: list[str]
    wall_s: float
    user_s: float
    sys_s: float
    maxrss_kib: int
    server_cpu_s: float | None = None    # CPU the running Prefect server spent meanwhile (not in cpu_s)
    load_before: float | None = None     # 1-minute load average: how busy the shared machine was
    extra: dict = field(default_factory=dict)  # ledger rows, ingest counts, tier comparison, ...

    @property
    def cpu_s(self) -> float:
        return self.user_s + self.sys_s

    def as_dict(self) -> dict:
        return asdict(self) | {"cpu_s": round(self.cpu_s, 3)}


def load_average() -> float:
    return os.getloadavg()[0]


def run_measured(key: str, round_no: int, argv: list[str], env: dict, log_dir: Path,
                 server_cpu=None) -> Measurement:
    """Runs argv to completion with stdout/stderr in log files; raises RunFailed (with the stderr tail) when
    it exits non-zero. server_cpu: a callable giving the Prefect server's CPU seconds so far, or None."""
    log_dir.mkdir(parents=True, exist_ok=True)
    stem = f"{key}-r{round_no}"
    out_path, err_path = log_dir / f"{stem}.out", log_dir / f"{stem}.err"
    load = load_average()
    server_before = server_cpu() if server_cpu else None
    with open(out_path, "wb") as out, open(err_path, "wb") as err:
        started = time.monotonic()
        child = subprocess.Popen(argv, env=env, stdout=out, stderr=err, stdin=subprocess.DEVNULL)
        _, status, usage = os.wait4(child.pid, 0)
        wall = time.monotonic() - started
    child.returncode = os.waitstatus_to_exitcode(status)  # reaped by wait4: tell Popen not to wait again
    if child.returncode != 0:
        raise RunFailed(f"{key} (round {round_no}) exited with status {child.returncode}: {' '.join(argv)}\n"
                        f"--- last lines of {err_path} ---\n{tail(err_path)}")
    server_spent = None if server_cpu is None else round(server_cpu() - server_before, 3)
    return Measurement(key, round_no, argv, round(wall, 3), round(usage.ru_utime, 3), round(usage.ru_stime, 3),
                       usage.ru_maxrss, server_spent, load)


def tail(path: Path, lines: int = STDERR_TAIL_LINES) -> str:
    try:
        text = Path(path).read_text(errors="replace")
    except OSError as exc:
        return f"(cannot read: {exc})"
    return "\n".join(text.rstrip().splitlines()[-lines:]) or "(empty)"


def process_tree_cpu_seconds(root_pid: int) -> float:
    """User + sys CPU of a live process and all its live descendants, plus what they reaped, from /proc:
    how much the Prefect server (a process tree we did not wait for) worked during a run."""
    parents, cpu = {}, {}
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit():
            continue
        try:
            stat = Path(entry.path, "stat").read_text()
        except OSError:
            continue  # exited meanwhile
        fields = stat[stat.rindex(")") + 2:].split()  # after "pid (comm) ": state ppid ...
        parents[int(entry.name)] = int(fields[1])
        cpu[int(entry.name)] = sum(int(v) for v in fields[11:15])  # utime stime cutime cstime
    tree, frontier = {root_pid}, [root_pid]
    while frontier:
        parent = frontier.pop()
        children = [pid for pid, ppid in parents.items() if ppid == parent and pid not in tree]
        tree.update(children)
        frontier += children
    return sum(cpu.get(pid, 0) for pid in tree) / _CLOCK_TICKS
