"""`tierflow` command line. Every run command is a Prefect flow; with no PREFECT_API_URL, Prefect starts a
temporary local server for the process (about 15-20 s), so the CLI needs no server running.

On failure: exit status 1, a one-line cause first on stderr, detail after.
"""
from __future__ import annotations

import argparse
import os
import sys
import traceback
from pathlib import Path

from flows.rules_cli import cmd_rules, cmd_simulate
from transforms.core.calendar import Month, parse_day

# Prefect's per-task INFO logs drown the progress lines, and its tracebacks of a failed run would bury the one-line
# cause: its console output is off unless TIERFLOW_DEBUG is set (its logs still reach a Prefect server). Operators
# can set these variables themselves.
DEBUG = bool(os.environ.get("TIERFLOW_DEBUG"))
os.environ.setdefault("PREFECT_LOGGING_LEVEL", "WARNING")
if not DEBUG:
    os.environ.setdefault("PREFECT_LOGGING_HANDLERS_CONSOLE_LEVEL", "CRITICAL")
os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
# Without PREFECT_API_URL each run starts a temporary server; on a loaded machine it needs more than 20 s.
os.environ.setdefault("PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS", "120")

DEMO_SUBSCRIBERS = 5_000
DEMO_START = Month(2025, 1)
DEMO_MONTHS = 14


def _month(text: str) -> str:
    try:
        return str(Month.parse(text))
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def _day(text: str) -> str:
    try:
        return f"{parse_day(text):%Y-%m-%d}"
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def _positive(text: str) -> int:
    if not text.isdigit() or int(text) <= 0:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}")
    return int(text)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="tierflow", description="Monthly subscriber tiering pipeline.")
    home = argparse.ArgumentParser(add_help=False)
    home.add_argument("--home", default=os.environ.get("TIERFLOW_HOME", "./data"),
                      help="tierflow home: landing/, warehouse, outbox (default ./data or $TIERFLOW_HOME)")
    sub = parser.add_subparsers(dest="command", required=True)

    demo = sub.add_parser("demo", parents=[home], help="generate a small province, backfill it, print a summary")
    demo.add_argument("--subscribers", type=_positive, default=DEMO_SUBSCRIBERS)
    demo.add_argument("--months", type=_positive, default=DEMO_MONTHS, help=f"months from {DEMO_START}")
    demo.add_argument("--seed", type=int, default=0)

    gen = sub.add_parser("generate", parents=[home], help="write synthetic extracts into landing/")
    gen.add_argument("--subscribers", type=_positive, required=True)
    gen.add_argument("--start", type=_month, required=True)
    gen.add_argument("--months", type=_positive, required=True)
    gen.add_argument("--seed", type=int, default=0)

    nightly = sub.add_parser("nightly", parents=[home], help="ingest everything delivered up to a day")
    nightly.add_argument("--day", type=_day, required=True)

    cluster = argparse.ArgumentParser(add_help=False)
    cluster.add_argument("--workers", type=_positive, default=None,
                         help="grade over subscriber shards on a Dask cluster of N worker processes on this machine")
    cluster.add_argument("--dask-address", default=None,
                         help="grade over shards on the Dask cluster at tcp://HOST:PORT (default "
                              "$TIERFLOW_DASK_ADDRESS); its workers must see the home at the same path")

    monthly = sub.add_parser("monthly", parents=[home, cluster], help="the monthly grading run of a month")
    monthly.add_argument("--month", type=_month, required=True)
    monthly.add_argument("--rules", default=None, help="rule pack name in rules/ or a path (default six-star)")
    monthly.add_argument("--accept-mass-change", action="store_true",
                         help="publish although DOWNGRADE + LOST exceed the circuit breaker's share")
    monthly.add_argument("--reason", default=None, help="why the mass change is accepted (kept in the run ledger)")

    backfill = sub.add_parser("backfill", parents=[home, cluster], help="every nightly and monthly run of a range")
    backfill.add_argument("--start", type=_month, required=True)
    backfill.add_argument("--end", type=_month, required=True)
    backfill.add_argument("--rules", default=None)
    backfill.add_argument("--dry-run", action="store_true", help="print the plan, change nothing")

    sub.add_parser("status", parents=[home], help="delivered, pending, rejected, graded and stale")

    serve = sub.add_parser("serve", parents=[home, cluster],
                           help="run the nightly and monthly schedules on the Prefect server at PREFECT_API_URL")
    serve.add_argument("--nightly-cron", default=None, help='cron of the nightly run (default "30 2 * * *")')
    serve.add_argument("--monthly-cron", default=None, help='cron of the monthly run (default "0 4 5 * *")')
    serve.add_argument("--timezone", default=None, help="timezone of both schedules (default Asia/Shanghai)")

    rules = sub.add_parser("rules", parents=[home], help="rule pack tools")
    rules_sub = rules.add_subparsers(dest="rules_command", required=True)
    check = rules_sub.add_parser("check", help="validate a pack; print its tiers, rules and metrics used")
    check.add_argument("file", help="pack file, or pack name in rules/")

    simulate = sub.add_parser("simulate", parents=[home],
                              help="grade a month with a candidate pack, without publishing; compare")
    simulate.add_argument("--month", type=_month, required=True)
    simulate.add_argument("--rules", required=True, help="candidate pack file, or pack name in rules/")
    simulate.add_argument("--official", default=None,
                          help="the pack of the official grading, when it is not in rules/")
    simulate.add_argument("--out", default=None, help="output folder (default <home>/simulations/...)")

    report = sub.add_parser("report", parents=[home],
                            help="write the HTML report of a graded month from the published copy")
    report.add_argument("--month", type=_month, required=True)
    report.add_argument("--out", default=None, help="output file (default <home>/reports/<YYYYMM>.html)")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    home = Path(args.home).resolve()
    try:
        return COMMANDS[args.command](args, home) or 0
    except KeyboardInterrupt:
        print("tierflow: interrupted", file=sys.stderr)
        return 130
    except Exception as exc:  # the operator gets the cause in one line first, a short hint after
        print(f"tierflow {args.command}: error: {_cause(exc)}", file=sys.stderr)
        if DEBUG:
            traceback.print_exc()
        else:
            print("  (set TIERFLOW_DEBUG=1 for the traceback)", file=sys.stderr)
        return 1


def _cause(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


def run() -> None:
    """The `tierflow` command: main(), then an exit without the interpreter's shutdown noise (native extensions
    report 'leaked' objects on stderr at exit; our output is flushed first, atexit handlers still run)."""
    code = main()
    sys.stdout.flush()
    sys.stderr.flush()
    if not DEBUG:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stderr.fileno())
    sys.exit(code)


def cmd_generate(args, home: Path) -> int:
    from transforms.synth.generate import generate_province
    summary = generate_province(home, args.subscribers, Month.parse(args.start), args.months, args.seed,
                                progress=lambda line: print(line, flush=True))
    print(f"wrote {summary['files']} files for {summary['subscribers']:,} subscribers x {summary['months']} "
          f"months into {summary['landing']}")
    return 0


def cmd_nightly(args, home: Path) -> int:
    from transforms.quality.suites import start_validator, validate_in_a_process
    if has_files_to_read(home, args.day):
        start_validator()  # GE in a process of its own, imported while this one starts Prefect
    else:
        validate_in_a_process()  # none started unless the night finds a file after all
    from flows.pipeline import nightly_flow
    summary = nightly_flow(str(home), args.day)
    print(f"nightly {args.day}: {summary['loaded']} file(s) loaded, {len(summary['rejected'])} rejected, "
          f"{len(summary['pending'])} pending")
    return 1 if summary["rejected"] else 0


def cmd_monthly(args, home: Path) -> int:
    _validate_beside()
    from flows.dask import on_cluster
    from flows.pipeline import monthly_flow
    if args.accept_mass_change and not (args.reason or "").strip():
        raise ValueError("--accept-mass-change needs --reason \"...\" (it is kept in the run ledger)")
    reason = args.reason.strip() if args.accept_mass_change else None
    print(on_cluster(monthly_flow, args.workers, args.dask_address)(str(home), args.month, args.rules, reason))
    return 0


def cmd_backfill(args, home: Path) -> int:
    if not args.dry_run:  # a dry run only lists what it would do
        _validate_beside()
    from flows.dask import on_cluster
    from flows.pipeline import backfill_flow
    lines = on_cluster(backfill_flow, args.workers, args.dask_address)(str(home), args.start, args.end, args.rules,
                                                                      args.dry_run)
    print("\n".join(lines) if lines else "nothing to do: every month is up to date")
    return 0


def has_files_to_read(home: Path, day) -> bool:
    """Whether tonight has a delivered file the warehouse does not know (in_use.to_read), as far as a look in
    read-only mode tells: False when it cannot tell (another process holds the warehouse, whose lock the run will
    wait for, or a state only the run's recovery mends): the run then starts GE's process at its first file."""
    import duckdb

    from transforms.ingest.landing import scan_landing
    from transforms.ingest.in_use import to_read  # not load: its imports would delay GE's process
    from transforms.warehouse.db import connect, warehouse_path
    deliveries = scan_landing(home, up_to=parse_day(day)).delivered
    if not deliveries or not warehouse_path(home).exists():
        return bool(deliveries)
    try:
        con = connect(home, read_only=True)
        try:
            return bool(to_read(con, deliveries))
        finally:
            con.close()
    except duckdb.Error:
        return False


def _validate_beside() -> None:
    """A run that validates: Great Expectations imported in its validation process from now on, on the other
    core, while this one imports and starts Prefect (transforms.quality.validator)."""
    from transforms.quality.suites import start_validator
    start_validator()


def cmd_status(args, home: Path) -> int:
    import duckdb

    from transforms.report.status import status_report
    from transforms.runs.lock import holder
    from transforms.warehouse.db import connect, warehouse_path
    try:
        con = connect(home, read_only=True) if warehouse_path(home).exists() else None
    except duckdb.IOException:  # DuckDB's writer lock keeps every other process out while a run writes
        raise RuntimeError(f"the warehouse is being written by {holder(home)}: ask again when it is done, or "
                           "read the published copy") from None
    try:
        print("\n".join(status_report(con, home)))
    finally:
        if con is not None:
            con.close()
    return 0


def cmd_demo(args, home: Path) -> int:
    if (home / "landing").exists() and any((home / "landing").iterdir()):
        raise ValueError(f"{home} already has a landing area: the demo needs an empty --home")
    end = DEMO_START + (args.months - 1)
    args.start = str(DEMO_START)
    cmd_generate(args, home)
    args.start, args.end, args.rules, args.dry_run = str(DEMO_START), str(end), None, False
    args.workers, args.dask_address = None, None  # no cluster options (TIERFLOW_DASK_ADDRESS still applies)
    cmd_backfill(args, home)
    print()
    cmd_status(args, home)
    from transforms.report.monthly_page import default_report_path
    print(f"\nreport of {end}: {default_report_path(home, end)}")
    return 0


def cmd_report(args, home: Path) -> int:
    """Reads only the analysts' published copy, so it runs beside a writing run and needs no Prefect."""
    from transforms.report.monthly_page import write_report
    path = write_report(home, Month.parse(args.month), Path(args.out) if args.out else None)
    print(f"wrote {path} ({path.stat().st_size:,} bytes)")
    return 0


def cmd_serve(args, home: Path) -> int:
    from flows.serve import Schedules, serve
    defaults = Schedules()
    schedules = Schedules(args.nightly_cron or defaults.nightly_cron, args.monthly_cron or defaults.monthly_cron,
                          args.timezone or defaults.timezone)
    where = (f"; each run on {args.workers} local Dask workers" if args.workers else
             f"; runs on the Dask cluster at {args.dask_address}" if args.dask_address else "")
    print(f"serving {home}: nightly `{schedules.nightly_cron}`, monthly `{schedules.monthly_cron}` "
          f"({schedules.timezone}){where}; Ctrl-C or SIGTERM stops after the run in progress", flush=True)
    serve(home, schedules, on_ready=lambda: print("serve: ready", flush=True), workers=args.workers,
          dask_address=args.dask_address)
    print("serve: stopped", flush=True)
    return 0


COMMANDS = {"demo": cmd_demo, "generate": cmd_generate, "nightly": cmd_nightly, "monthly": cmd_monthly,
            "backfill": cmd_backfill, "status": cmd_status, "rules": cmd_rules, "simulate": cmd_simulate,
            "serve": cmd_serve, "report": cmd_report}


if __name__ == "__main__":
    run()
