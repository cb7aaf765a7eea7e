"""Fault injection for the project's own tests: the process dies at a named boundary, as a kill -9 would.

`TIERFLOW_FAULT=<point>` (or `<point>#<n>` for its n-th occurrence, counting from 1) makes the process exit at
once (os._exit, no cleanup, no flush of anything not yet durable) when it reaches that point. The points are
every boundary where a crash could split work from its effects: right before and right after each commit, each
file rename and each swap of the published copy; and inside a shard's step of a sharded run (transforms.runs.shards),
where the process that dies is a worker's. Without the variable this is one dictionary lookup.
"""
from __future__ import annotations

import os
import sys

FAULT_ENV = "TIERFLOW_FAULT"
KILLED_EXIT_CODE = 137  # what a shell reports for kill -9

_UNITS = ("ingest", "monthly", "owed", "publish")
_FILES = ("outbox", "report", "results", "published", "landing")
POINTS = tuple(
    [f"{when}-commit:{unit}" for unit in _UNITS for when in ("before", "after")]
    + [f"{when}-rename:{kind}" for kind in _FILES for when in ("before", "after")]
    + [f"{when}-swap:publish" for when in ("before", "after")]
    + [f"in-shard:{step}" for step in ("aggregate", "points", "metrics", "grade", "render")])  # a worker process of a sharded run dies

_seen: dict[str, int] = {}


def fault_point(point: str) -> None:
    """Dies here when the test switch names this point (and this occurrence of it)."""
    if point not in POINTS:
        raise ValueError(f"unknown fault point {point!r}")
    wanted = os.environ.get(FAULT_ENV)
    if not wanted:
        return
    name, _, nth = wanted.partition("#")
    if name != point:
        return
    _seen[point] = _seen.get(point, 0) + 1
    if _seen[point] == int(nth or 1):
        print(f"tierflow: fault injected at {point}", file=sys.stderr, flush=True)
        os._exit(KILLED_EXIT_CODE)
