"""The benchmark of spec/performance.md (issue 10), one command per size:

    .venv/bin/python -m bench.run --size 1m                 # quick: 3 rounds, plus the 12-month backfill
    .venv/bin/python -m bench.run --size 10m                # headline: 2 rounds
    .venv/bin/python -m bench.run --subscribers 20000       # any size (a harness check below 1M)
    ... --history36                                         # also month 36 against month 12 (long to prepare)

It generates the province (or reuses it), backfills months 1-11 once (measured: "the backfill") and saves that
state; then, for K rounds, runs every measured run side by side, each from the same saved state: the monthly
CLI run of month 12 with a Prefect server and with Prefect's temporary server, the bare-DuckDB floor, the
pandas and Polars baselines, the nightly runs, an empty Prefect flow. Every tier is checked against the
pipeline's. Results: a Markdown table (printed, in bench/results/ and in BENCHMARKS.md) plus the raw JSON.
"""
from __future__ import annotations

import argparse
import os
import shutil
import sys
import tempfile
import time
import uuid
from dataclasses import dataclass
from datetime import date, timedelta
from pathlib import Path

from bench import homes, ledger
from bench.baseline_common import GradingMonth
from bench.machine import machine_info
from bench.measure import Measurement, RunFailed, run_measured
from bench.prefect_server import PrefectServer
from bench.report import write_results
from bench.tiers import compare_tiers, tier_counts

ROOT = Path(__file__).resolve().parents[1]
SIZES = {"1m": 1_000_000, "10m": 10_000_000}
DEFAULT_ROUNDS = {"1m": 3, "10m": 2}
START, SEED, MONTHS, LONG_MONTHS = GradingMonth(2025, 1), 1, 12, 36
EPHEMERAL_STARTUP_TIMEOUT_S = "180"  # Prefect's default (20 s) times out on a loaded 2-core box
BASELINES = {"floor": "bench.floor", "pandas": "bench.pandas_baseline", "polars": "bench.polars_baseline"}


# --- what is measured, where ----------------------------------------------------------------------------------

@dataclass
class Province:
    """A generated province in its own tierflow home; month M = its last month, graded by the measured runs."""
    label: str
    home: Path
    subscribers: int
    months: int

    @property
    def month(self) -> GradingMonth:
        return START.shifted(self.months - 1)

    @property
    def previous(self) -> GradingMonth:
        return START.shifted(self.months - 2)

    def params(self) -> dict:
        return {"subscribers": self.subscribers, "start": str(START), "months": self.months, "seed": SEED}

    def delivery_days(self) -> list[date]:
        return sorted(date(int(d.name[:4]), int(d.name[4:6]), int(d.name[6:])) for d in
                      (self.home / "landing").iterdir() if d.is_dir() and d.name.isdigit() and len(d.name) == 8)

    def bill_path(self) -> Path:
        found = sorted((self.home / "landing").glob(f"*/BILL_{self.month.compact}.dat"))
        if not found:
            raise RunFailed(f"BILL_{self.month.compact}.dat not found under {self.home / 'landing'}")
        return found[-1]  # the newest delivery, as the pipeline uses

    def inputs_warehouse(self) -> Path:
        return homes.bench_dir(self.home) / "inputs" / ledger.WAREHOUSE_FILE


@dataclass
class Settings:
    label: str
    subscribers: int
    rounds: int
    homes_root: Path
    results_dir: Path
    threads: int
    memory_limit: str
    history36: bool
    backfill12: bool
    rebuild: bool
    regenerate: bool
    full_copies: bool
    port: int | None
    update_benchmarks_md: bool
    command: str
    dask_workers: int = 2          # the Dask run's --workers; 0: no Dask run
    only: tuple[str, ...] = ()     # run only these keys in each round (default: all)


class Bench:
    def __init__(self, settings: Settings, workdir: Path):
        self.s = settings
        self.workdir = workdir
        self.bin = Path(sys.executable).parent
        self.logs = settings.homes_root / f"{settings.label}-logs"
        self.out = settings.homes_root / f"{settings.label}-out"
        self.base_env = self._base_env()
        self.server = PrefectServer(self.bin / "prefect", workdir / "prefect-server", self.base_env, settings.port)
        self.p12 = Province(settings.label, settings.homes_root / settings.label, settings.subscribers, MONTHS)
        self.p36 = Province(f"{settings.label}-h36", settings.homes_root / f"{settings.label}-h36",
                            settings.subscribers, LONG_MONTHS) if settings.history36 else None
        self.measurements: list[Measurement] = []
        self.agreement: list[dict] = []
        self.provinces: dict[str, dict] = {}
        self.reference: dict[str, Path] = {}   # province label -> the pipeline's tiers of its month M

    # --- environments: same engine limits everywhere; Prefect state only in our temporary directory ---------

    def _base_env(self) -> dict:
        env = {k: v for k, v in os.environ.items() if k not in ("PREFECT_API_URL", "TIERFLOW_HOME")}
        threads = str(self.s.threads)
        return env | {"TIERFLOW_THREADS": threads, "TIERFLOW_MEMORY_LIMIT": self.s.memory_limit,
                      "POLARS_MAX_THREADS": threads, "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
                      "PREFECT_LOGGING_LEVEL": "WARNING", "TIERFLOW_DEBUG": "1",
                      "PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS": EPHEMERAL_STARTUP_TIMEOUT_S}

    def server_env(self) -> dict:
        return self.base_env | {"PREFECT_HOME": str(self.workdir / "client-home"),
                                "PREFECT_API_URL": self.server.api_url}

    def temporary_server_env(self) -> dict:
        return self.base_env | {"PREFECT_HOME": str(self.workdir / "ephemeral-home")}

    def tierflow(self, *args: str) -> list[str]:
        return [str(self.bin / "tierflow"), *args]

    def measure(self, key: str, round_no: int, argv: list[str], env: dict) -> Measurement:
        with_server = env.get("PREFECT_API_URL") == self.server.api_url
        m = run_measured(key, round_no, argv, env, self.logs, self.server.cpu_seconds if with_server else None)
        m.extra["prefect"] = "server" if with_server else "temporary server" if "PREFECT_HOME" in env else None
        self.measurements.append(m)
        return m

    # --- preparation: province, the backfill of months 1..M-1, the baselines' inputs ----------------------------

    def prepare(self, p: Province) -> None:
        info = {"home": str(p.home), "months": p.months, "month": str(p.month)}
        info["generate"] = self.ensure_province(p)
        info["backfill"] = self.ensure_pristine(p)
        info["commands"] = {"generate": self.generate_argv(p), "backfill": self.backfill_argv(p)}
        info["landing_bytes"] = homes.du_bytes(p.home / "landing")
        self.ensure_inputs(p)
        self.provinces[p.label] = info

    def generate_argv(self, p: Province) -> list[str]:
        return self.tierflow("generate", "--home", str(p.home), "--subscribers", str(p.subscribers),
                             "--start", str(START), "--months", str(p.months), "--seed", str(SEED))

    def backfill_argv(self, p: Province) -> list[str]:
        return self.tierflow("backfill", "--home", str(p.home), "--start", str(START), "--end", str(p.previous))

    def ensure_province(self, p: Province) -> dict:
        marker_path = homes.bench_dir(p.home) / "province.json"
        marker = homes.read_marker(marker_path)
        if marker and marker.get("params") == p.params() and (p.home / "landing").is_dir() and not self.s.regenerate:
            progress(f"{p.label}: reusing the province in {p.home}")
            return marker | {"reused": True}
        if (p.home / "landing").exists() and not self.s.regenerate:
            raise RunFailed(f"{p.home} holds a landing area of other parameters ({marker and marker.get('params')}); "
                            f"pass --regenerate to replace it, or choose another --homes")
        if p.home.exists() and any(p.home.iterdir()) and not homes.bench_dir(p.home).is_dir():
            raise RunFailed(f"{p.home} is not empty and not a benchmark home: remove it or choose another --homes")
        if p.home.exists():
            shutil.rmtree(p.home)
        p.home.mkdir(parents=True)
        progress(f"{p.label}: generating {p.subscribers:,} subscribers x {p.months} months into {p.home}")
        m = self.measure(f"generate-{p.label}", 0, self.generate_argv(p), self.base_env)
        marker = {"params": p.params(), "measurement": m.as_dict(), "measured_at": time.strftime("%Y-%m-%d %H:%M")}
        homes.write_marker(marker_path, marker)
        return marker | {"reused": False}

    def ensure_pristine(self, p: Province) -> dict:
        """The state after month M-1, made by `tierflow backfill` over months 1..M-1 (measured) on a fresh home."""
        pipeline = homes.pipeline_fingerprint(ROOT)
        saved = homes.state_info(p.home, "pristine")
        if saved and saved.get("pipeline") == pipeline and saved.get("params") == p.params() and not self.s.rebuild:
            progress(f"{p.label}: reusing the saved state after {p.previous} "
                     f"(backfill measured {saved['measured_at']})")
            return saved | {"reused": True}
        progress(f"{p.label}: backfilling {START}..{p.previous} (measured: the backfill)")
        homes.clear_state(p.home)
        m = self.measure(f"backfill-{p.label}", 0, self.backfill_argv(p), self.server_env())
        info = {"pipeline": pipeline, "params": p.params(), "state_id": uuid.uuid4().hex,
                "measurement": m.as_dict(), "measured_at": time.strftime("%Y-%m-%d %H:%M"),
                "ledger": ledger.breakdown(ledger.new_runs(p.home, set()), m.wall_s)}
        homes.save_state(p.home, "pristine", self.s.full_copies, info)
        return info | {"reused": False}

    def ensure_inputs(self, p: Province) -> None:
        """The baselines' stored inputs: the state after M-1 plus what the nightly runs load before BILL_M
        arrives (S(M) = ACCT of M's last day, M's suspensions, redemptions and overrides). The monthly run
        loads those itself; the baselines read them stored, and read only BILL_M as text."""
        marker_path = p.inputs_warehouse().with_suffix(".json")
        state_id = homes.state_info(p.home, "pristine")["state_id"]
        if (homes.read_marker(marker_path) or {}).get("state_id") == state_id and p.inputs_warehouse().exists():
            return
        progress(f"{p.label}: preparing the baselines' inputs (nightly {p.month.last_day}, not measured)")
        homes.restore_state(p.home, "pristine", self.s.full_copies)
        self.run_unmeasured(f"inputs-{p.label}", self.tierflow(
            "nightly", "--home", str(p.home), "--day", f"{p.month.last_day}"), self.server_env())
        p.inputs_warehouse().parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(p.home / ledger.WAREHOUSE_FILE, p.inputs_warehouse())
        homes.write_marker(marker_path, {"state_id": state_id})

    def run_unmeasured(self, key: str, argv: list[str], env: dict) -> None:
        run_measured(key, 0, argv, env, self.logs)

    def warm_up_prefect(self) -> None:
        """One empty flow with each Prefect setup before the rounds: the temporary server's database is
        created on first use (migrations), which would otherwise land in the first measured run."""
        for env in (self.server_env(), self.temporary_server_env()):
            self.run_unmeasured("warm-up", [sys.executable, "-m", "bench.noop_flow"], env)

    # --- the measured runs ----------------------------------------------------------------------------------

    def monthly(self, key: str, p: Province, round_no: int, env: dict, extra: tuple[str, ...] = ()) -> Measurement:
        homes.restore_state(p.home, "pristine", self.s.full_copies)
        if "--workers" in extra:
            self.restore_dask_history(p, env, extra)
        before = ledger.run_ids(p.home)
        m = self.measure(key, round_no, self.tierflow("monthly", "--home", str(p.home), "--month", str(p.month),
                                                      *extra), env)
        self.read_ledger(m, p, before)
        tiers = self.out / f"{key}-r{round_no}.parquet"
        ledger.export_tiers(p.home, p.month.first_day, tiers)
        if p.label not in self.reference:
            self.reference[p.label] = self.out / f"reference-{p.label}.parquet"
            shutil.copy2(tiers, self.reference[p.label])
            self.provinces[p.label]["sizes"] = ledger.month_sizes(p.home, p.month.compact, p.month.first_day,
                                                                  p.month.last_day)
            self.provinces[p.label]["tier_counts"] = tier_counts(tiers)
        self.check_tiers(m, p, tiers)
        return m

    def restore_dask_history(self, p: Province, env: dict, extra: tuple[str, ...]) -> None:
        """The exports of months 1..M-1 a Dask deployment keeps from month to month (work/history, made by the
        monthly runs before M): made once by an unmeasured Dask run of M on the restored state, then put back
        before each measured one, so that it exports only month M as it would in production."""
        saved = homes.bench_dir(p.home) / f"dask-history-{homes.state_info(p.home, 'pristine')['state_id']}"
        if not saved.exists():
            progress(f"{p.label}: the Dask run's history exports of months 1..{p.previous} (not measured)")
            self.run_unmeasured("dask-history", self.tierflow("monthly", "--home", str(p.home), "--month",
                                                              str(p.month), *extra), env)
            current = {r[0] for r in ledger.month_run_ids(p.home, p.month.first_day)}
            shutil.copytree(p.home / "work" / "history", saved,
                            ignore=lambda _, names: [n for n in names if n.split(".")[1:2] and
                                                     n.split(".")[1] in current])
            homes.restore_state(p.home, "pristine", self.s.full_copies)
        shutil.rmtree(p.home / "work" / "history", ignore_errors=True)
        shutil.copytree(saved, p.home / "work" / "history")

    def nightly(self, key: str, p: Province, round_no: int, day: date, restore: bool) -> Measurement:
        if restore:
            homes.restore_state(p.home, "pristine", self.s.full_copies)
        before = ledger.run_ids(p.home)
        m = self.measure(key, round_no, self.tierflow("nightly", "--home", str(p.home), "--day", f"{day}"),
                         self.server_env())
        self.read_ledger(m, p, before)
        m.extra["day"] = f"{day}"
        return m

    def baseline(self, key: str, p: Province, round_no: int) -> Measurement:
        tiers = self.out / f"{key}-r{round_no}.parquet"
        m = self.measure(key, round_no, [sys.executable, "-m", BASELINES[key], "--bill", str(p.bill_path()),
                                         "--warehouse", str(p.inputs_warehouse()), "--month", str(p.month),
                                         "--out", str(tiers)], self.base_env)
        self.check_tiers(m, p, tiers)
        return m

    def noop(self, key: str, round_no: int, env: dict) -> Measurement:
        return self.measure(key, round_no, [sys.executable, "-m", "bench.noop_flow"], env)

    def read_ledger(self, m: Measurement, p: Province, before: set[str]) -> None:
        runs = ledger.new_runs(p.home, before)
        failed = [r for r in runs if r["status"] != "SUCCESS"]
        if failed:
            raise RunFailed(f"{m.key} (round {m.round}) exited 0 but its ledger says {failed[0]['status']}: "
                            f"{failed[0]}")
        m.extra |= {"ledger": runs, "breakdown": ledger.breakdown(runs, m.wall_s), "ingest": ledger.ingest_lines(runs)}

    def check_tiers(self, m: Measurement, p: Province, tiers: Path) -> None:
        if p.label not in self.reference:  # --only without a monthly run: the baselines meet in cross_check_baselines
            progress(f"  {m.key}: no pipeline run of {p.label} in this benchmark to check its tiers against")
            return
        result = compare_tiers(self.reference[p.label], tiers) | {"run": m.key, "round": m.round,
                                                                    "province": p.label}
        m.extra["tiers"] = result
        self.agreement.append(result)
        if result["differences"]:
            progress(f"  DISAGREEMENT: {m.key} round {m.round}: {result['differences']:,} tiers differ from the "
                     f"pipeline's, e.g. {result['examples']}")

    def round_plan(self, round_no: int) -> list:
        """One round, in a fixed order (A B C ...), as (key, run) pairs; the nightly runs on the state after month
        12 follow the monthly run that left it."""
        p, nights = self.p12, self.p12.delivery_days()
        last_delivery = nights[-1]
        quiet_day = next(d for d in (last_delivery + timedelta(days=k) for k in range(1, 40)) if d not in nights)
        def step(key: str, run, *args, **kwargs):
            return key, lambda: run(key, *args, **kwargs)

        plan = [
            step("monthly_server", self.monthly, p, round_no, self.server_env()),
            step("nightly_no_delivery", self.nightly, p, round_no, quiet_day, restore=False),
            step("nightly_nothing_new", self.nightly, p, round_no, last_delivery, restore=False),
            step("monthly_temporary_server", self.monthly, p, round_no, self.temporary_server_env()),
            step("floor", self.baseline, p, round_no),
            step("pandas", self.baseline, p, round_no),
            step("polars", self.baseline, p, round_no),
            step("nightly_month_end", self.nightly, p, round_no, p.month.last_day, restore=True),
            step("noop_flow_server", self.noop, round_no, self.server_env()),
            step("noop_flow_temporary_server", self.noop, round_no, self.temporary_server_env()),
        ]
        if self.p36:
            plan.append(step("monthly_server_h36", self.monthly, self.p36, round_no, self.server_env()))
        if self.s.dask_workers:
            plan.append(step("monthly_dask", self.monthly, p, round_no, self.server_env(),
                             ("--workers", str(self.s.dask_workers))))
        return plan

    def run_rounds(self) -> None:
        for round_no in range(1, self.s.rounds + 1):
            for key, step in self.round_plan(round_no):
                if self.s.only and key not in self.s.only:
                    continue
                m = step()
                progress(f"[round {round_no}/{self.s.rounds}] {m.key}: wall {m.wall_s:.1f} s, CPU {m.cpu_s:.1f} s, "
                         f"peak RSS {m.maxrss_kib / 1024:.0f} MiB" + _agreement_note(m))

    def backfill12(self) -> None:
        """The 12-month backfill on a fresh warehouse over the same landing files, once."""
        home = self.s.homes_root / f"{self.s.label}-backfill12"
        if home.exists() and not (homes.bench_dir(home) / "backfill12.json").exists():
            raise RunFailed(f"{home} exists and is not a benchmark home: remove it or choose another --homes")
        if home.exists():
            shutil.rmtree(home)
        homes.link_landing(self.p12.home, home)
        homes.write_marker(homes.bench_dir(home) / "backfill12.json", {"landing_of": str(self.p12.home)})
        progress(f"backfill of {START}..{self.p12.month} on a fresh warehouse (measured once)")
        m = self.measure("backfill12", 0, self.tierflow("backfill", "--home", str(home), "--start", str(START),
                                                        "--end", str(self.p12.month)), self.server_env())
        self.read_ledger(m, Province(self.p12.label, home, self.p12.subscribers, MONTHS), set())
        tiers = self.out / "backfill12.parquet"
        ledger.export_tiers(home, self.p12.month.first_day, tiers)
        self.check_tiers(m, self.p12, tiers)
        progress(f"backfill12: wall {m.wall_s:.1f} s, CPU {m.cpu_s:.1f} s" + _agreement_note(m))

    def check_h36_floor(self) -> None:
        """The 36-month province's tiers against the floor, once (not measured)."""
        p = self.p36
        tiers = self.out / "floor-h36.parquet"
        self.run_unmeasured("floor-h36", [sys.executable, "-m", BASELINES["floor"], "--bill", str(p.bill_path()),
                                          "--warehouse", str(p.inputs_warehouse()), "--month", str(p.month),
                                          "--out", str(tiers)], self.base_env)
        result = compare_tiers(self.reference[p.label], tiers) | {"run": "floor (36 months)", "round": 0,
                                                                    "province": p.label}
        self.agreement.append(result)

    def cross_check_baselines(self) -> None:
        """The baselines against each other (last round), so that a disagreement shows on which side it is."""
        last = self.s.rounds
        floor = self.out / f"floor-r{last}.parquet"
        if not floor.exists():  # --only without the floor
            return
        for other in ("pandas", "polars"):
            if not (self.out / f"{other}-r{last}.parquet").exists():
                continue
            result = compare_tiers(floor, self.out / f"{other}-r{last}.parquet")
            self.agreement.append(result | {"run": f"{other} vs floor", "round": last, "province": self.p12.label})

    def run(self) -> dict:
        for folder in (self.logs, self.out):
            folder.mkdir(parents=True, exist_ok=True)
        load_start = os.getloadavg()
        with self.server:
            progress(f"Prefect server healthy at {self.server.api_url} after {self.server.startup_s} s")
            for p in filter(None, (self.p12, self.p36)):
                self.prepare(p)
            self.warm_up_prefect()
            self.run_rounds()
            if self.s.backfill12:
                self.backfill12()
            if self.p36:
                self.check_h36_floor()
            self.cross_check_baselines()
        return {"settings": {k: str(v) if isinstance(v, Path) else v for k, v in vars(self.s).items()},
                "server": {"api_url": self.server.api_url, "startup_s": self.server.startup_s},
                "load_average": {"start": load_start, "end": os.getloadavg()},
                "provinces": self.provinces, "measurements": [m.as_dict() for m in self.measurements],
                "agreement": self.agreement}


def _agreement_note(m: Measurement) -> str:
    tiers = m.extra.get("tiers")
    if not tiers:
        return ""
    return ", tiers agree" if not tiers["differences"] else f", {tiers['differences']:,} TIERS DIFFER"


def progress(line: str) -> None:
    print(line, file=sys.stderr, flush=True)


# --- command line -----------------------------------------------------------------------------------------------

def parse_settings(argv: list[str] | None = None) -> Settings:
    parser = argparse.ArgumentParser(prog="python -m bench.run", description=__doc__.splitlines()[0])
    size = parser.add_mutually_exclusive_group(required=True)
    size.add_argument("--size", choices=sorted(SIZES), help="1m (quick) or 10m (headline)")
    size.add_argument("--subscribers", type=int, help="a custom size (below 1M: a harness check)")
    parser.add_argument("--rounds", type=int, help="rounds of interleaved runs (default 3, 2 at 10m)")
    parser.add_argument("--homes", type=Path, default=ROOT / "bench" / ".homes",
                        help="where the bench homes live (default bench/.homes; each size has its own)")
    parser.add_argument("--results", type=Path, default=ROOT / "bench" / "results")
    parser.add_argument("--threads", type=int, default=int(os.environ.get("TIERFLOW_THREADS", "2")),
                        help="DuckDB and Polars threads of every process (TIERFLOW_THREADS, POLARS_MAX_THREADS)")
    parser.add_argument("--memory-limit", default=os.environ.get("TIERFLOW_MEMORY_LIMIT", "6GB"),
                        help="DuckDB memory limit of every process (TIERFLOW_MEMORY_LIMIT)")
    parser.add_argument("--history36", action="store_true",
                        help="also a 36-month province: month 36 against month 12 (long to prepare)")
    parser.add_argument("--backfill12", action=argparse.BooleanOptionalAction, default=None,
                        help="the 12-month backfill on a fresh warehouse, once (default: on, except at 10m)")
    parser.add_argument("--rebuild", action="store_true", help="redo the backfill of months 1-11 even if saved")
    parser.add_argument("--regenerate", action="store_true", help="regenerate the province(s)")
    parser.add_argument("--full-copies", action="store_true", help="copy every file of a saved state, link none")
    parser.add_argument("--port", type=int, help="port of the Prefect server (default: a free one)")
    parser.add_argument("--no-benchmarks-md", action="store_true", help="do not update BENCHMARKS.md")
    parser.add_argument("--dask-workers", type=int, default=2,
                        help="workers of the monthly run on Dask (--workers of tierflow; 0: no Dask run)")
    parser.add_argument("--only", default="", help="comma-separated run keys: only these in each round "
                                                    "(a focused measurement; BENCHMARKS.md is not updated)")
    args = parser.parse_args(argv)
    label = args.size or str(args.subscribers)
    subscribers = SIZES[args.size] if args.size else args.subscribers
    if subscribers <= 0 or (args.rounds is not None and args.rounds < 1):
        parser.error("--subscribers and --rounds must be positive")
    return Settings(label, subscribers, args.rounds or DEFAULT_ROUNDS.get(label, 3), args.homes.resolve(),
                    args.results.resolve(), args.threads, args.memory_limit, args.history36,
                    args.backfill12 if args.backfill12 is not None else label != "10m", args.rebuild,
                    args.regenerate, args.full_copies, args.port, not (args.no_benchmarks_md or args.only),
                    " ".join([".venv/bin/python -m bench.run", *(argv if argv is not None else sys.argv[1:])]),
                    args.dask_workers, tuple(k for k in args.only.split(",") if k))


def main(argv: list[str] | None = None) -> int:
    settings = parse_settings(argv)
    machine = machine_info(ROOT) | {"pipeline_fingerprint": homes.pipeline_fingerprint(ROOT)}
    with tempfile.TemporaryDirectory(prefix="tierflow-bench-") as workdir:
        try:
            result = Bench(settings, Path(workdir)).run()
        except (RunFailed, homes.StateError, RuntimeError) as exc:
            progress(f"bench: FAILED: {exc}")
            return 1
    result["machine"] = machine | {"load_average_end": os.getloadavg()}
    markdown_path, json_path = write_results(result, settings.results_dir, ROOT / "BENCHMARKS.md",
                                             settings.update_benchmarks_md)
    print(markdown_path.read_text())
    progress(f"written: {markdown_path}, {json_path}")
    disagreements = [a for a in result["agreement"] if a["differences"]]
    if disagreements:
        progress(f"bench: {len(disagreements)} comparison(s) found tiers that differ: see the agreement table")
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
