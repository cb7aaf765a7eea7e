"""One delivered file loaded into a fresh warehouse, in this process and without Prefect: the ingest of that file
alone, for side-by-side runs of two commits on the same file (`PYTHONPATH=<worktree>` selects the code).

    .venv/bin/tierflow generate --home /tmp/g10m --subscribers 10000000 --start 2025-01 --months 1 --seed 7
    .venv/bin/python -m bench.load_one --landing /tmp/g10m/landing --file BILL_202501.dat --rounds 2

The file's .dat and .chk are hard-linked into a scratch home (never the source home), whose warehouse is made
anew each round. Great Expectations is imported before the clock starts (its 4-5 s import is the same for both
commits and would hide the load's own time; `--with-ge-import` keeps it in). Each round prints wall, CPU (user +
sys of this process) and the load's result line; peak RSS is the process's, so run one file per process.
"""
from __future__ import annotations

import argparse
import os
import resource
import shutil
import sys
import time
from pathlib import Path

from transforms.ingest.landing import scan_landing
from transforms.ingest.load import ingest_delivery
from transforms.warehouse.db import connect

ROOT = Path(__file__).resolve().parent.parent


def scratch_home(landing: Path, file_name: str, work: Path) -> Path:
    """A home holding only the named delivery (hard links) and no warehouse."""
    found = sorted(landing.glob(f"*/{file_name}"))
    if not found:
        raise SystemExit(f"{file_name} is not in any day folder of {landing}")
    dat = found[-1]
    if work.exists():
        shutil.rmtree(work)
    day = work / "landing" / dat.parent.name
    day.mkdir(parents=True)
    for source in (dat, dat.with_suffix(".chk")):
        os.link(source, day / source.name)
    return work


def load_once(home: Path) -> tuple[float, float, str]:
    """Wall and CPU seconds of loading the home's one delivery into a new warehouse, and its result line."""
    for stale in home.glob("warehouse.duckdb*"):
        stale.unlink()
    [delivery] = scan_landing(home).delivered
    con = connect(home)
    try:
        before, started = resource.getrusage(resource.RUSAGE_SELF), time.perf_counter()
        result = ingest_delivery(con, home, delivery, "bench-load-one")
        wall, after = time.perf_counter() - started, resource.getrusage(resource.RUSAGE_SELF)
    finally:
        con.close()
    cpu = after.ru_utime - before.ru_utime + after.ru_stime - before.ru_stime
    return wall, cpu, result.line()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.load_one", description=__doc__.splitlines()[0])
    parser.add_argument("--landing", type=Path, required=True, help="a landing area (tierflow generate's)")
    parser.add_argument("--file", required=True, help="the delivered file to load, e.g. BILL_202501.dat")
    parser.add_argument("--rounds", type=int, default=1)
    parser.add_argument("--work", type=Path, default=ROOT / "bench" / ".homes" / "load-one",
                        help="the scratch home (replaced)")
    parser.add_argument("--with-ge-import", action="store_true", help="leave Great Expectations' import in")
    args = parser.parse_args(argv)
    home = scratch_home(args.landing, args.file, args.work)
    if not args.with_ge_import:
        import great_expectations  # noqa: F401  (cached in sys.modules: the gate finds it imported)
    for round_no in range(1, args.rounds + 1):
        wall, cpu, line = load_once(home)
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20
        print(f"round {round_no}: wall {wall:.2f} s, CPU {cpu:.2f} s, peak RSS so far {peak:.2f} GiB: {line}",
              flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
