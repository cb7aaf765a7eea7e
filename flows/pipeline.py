"""Prefect flows: nightly, monthly and backfill. Thin orchestration over transforms/.

Tasks receive the home directory (a path), never a DuckDB connection: each task opens the warehouse itself,
so tasks can run in other processes and only one of them writes at a time.
"""
from __future__ import annotations

import sys
import time
from datetime import date
from pathlib import Path

from prefect import flow, task

from transforms.runs.backfill import plan_backfill
from transforms.core.calendar import Month, parse_day
from transforms.ingest.landing import scan_landing
from transforms.ingest.load import DEFAULT_MAX_QUARANTINE_SHARE, ingest_delivery, reconciliation_failures
from transforms.runs.ledger import finish_run, quality_dir, start_run
from transforms.deliver.channels import load_channels
from transforms.deliver.outbox import write_outbox
from transforms.deliver.render import render_nightly_lost
from transforms.runs.month_state import MonthlyError, input_files, is_up_to_date, mark_delivered
from transforms.runs.monthly import MonthlyOptions, run_monthly
from transforms.runs.publish import publish
from transforms.quality.gates import GateFailed
from transforms.grade.packs import pack_for_month
from transforms.grade.rulepack import PackError, RulePack
from transforms.runs.lock import writer_lock
from transforms.warehouse.db import connect

class RunFailed(Exception):
    """A run stopped on purpose; the message is the one-line cause for the operator."""


def progress(line: str) -> None:
    print(line, file=sys.stderr, flush=True)


def resolve_pack(rules: str | None, month: Month | None = None) -> RulePack:
    """A pack by path, or by name (default six-star): the version in force for the grading month."""
    try:
        return pack_for_month(rules, month)
    except PackError as exc:
        raise RunFailed(str(exc)) from None


@task(name="ingest-deliveries")
def ingest_deliveries(home: str, up_to: date | None = None, only_day: date | None = None,
                      max_quarantine_share: float = DEFAULT_MAX_QUARANTINE_SHARE) -> dict:
    """Loads every delivered file (up to a day, or of one day) not loaded yet, in delivery order."""
    scan = scan_landing(Path(home), up_to=only_day or up_to)
    deliveries = [d for d in scan.delivered if only_day is None or d.day == only_day]
    con = connect(Path(home))
    try:
        period = f"{(only_day or up_to or date.today()):%Y-%m-%d}"
        run_id = start_run(con, "ingest", period)
        started = time.monotonic()
        results = [ingest_delivery(con, Path(home), d, run_id, max_quarantine_share, quality_dir(Path(home), run_id))
                   for d in deliveries]
        changed = [r for r in results if r.status != "UNCHANGED"]
        for r in changed:
            progress(f"  {r.line()}")
        notices = _nightly_lost_notices(con, home, results)
        problems = reconciliation_failures(con)
        status = "FAILED" if problems else "SUCCESS"
        finish_run(con, run_id, status, "; ".join(problems),
                   input_files=[{"file": r.file_name, "day": str(r.day), "status": r.status, "loaded": r.loaded,
                                 "quarantined": r.quarantined} for r in changed],
                   output_files=notices, checks={"reconciliation": "ok" if not problems else problems},
                   timings={"seconds": round(time.monotonic() - started, 3)})
        if problems:
            raise RunFailed(f"reconciliation failed: {problems[0]}")
        return {"loaded": sum(r.status == "LOADED" for r in results),
                "rejected": [r.line() for r in results if r.status == "REJECTED"],
                "pending": [str(p.dat_path) for p in scan.pending]}
    finally:
        con.close()


def _pack_in_force(rules: str | None, month: Month) -> RulePack | None:
    """The pack version in force for a month, or None before the pack's first version."""
    try:
        return pack_for_month(rules, month)
    except PackError:
        return None


def _nightly_lost_notices(con, home: str, results) -> list[dict]:
    """LOST notices for rated subscribers cancelled in (or gone from) a snapshot loaded by this run."""
    snapshot_days = [r.day for r in results if r.status == "LOADED" and r.file_name.startswith("ACCT_")]
    if not snapshot_days:
        return []
    channels = load_channels()
    files = [f for day in snapshot_days
             for f in render_nightly_lost(con, day, channels, resolve_pack(None, Month.of(day)).unrated)]
    write_outbox(Path(home), files)
    return [{"file": f.relpath, "records": f.records, "md5": f.md5} for f in files]


@task(name="monthly-grading")
def grade_month(home: str, month: str, rules: str | None = None, only_if_stale: bool = False,
                accept_reason: str | None = None) -> str:
    """The monthly run of one month, validated before it commits, then its channel files; with only_if_stale,
    skips a month already up to date. accept_reason: the operator accepts a tripped circuit breaker."""
    target = Month.parse(month)
    pack = resolve_pack(rules, target)
    con = connect(Path(home))
    try:
        if only_if_stale and is_up_to_date(con, target, pack.version):
            return f"{target}: up to date"
        run_id = start_run(con, "monthly", str(target), pack.name, pack.version)
        options = MonthlyOptions(quality_dir(Path(home), run_id), tuple(load_channels()),
                                 accept_mass_change=accept_reason is not None,
                                 previous_pack=_pack_in_force(rules, target - 1))
        accepted = {"accepted_mass_change": accept_reason} if accept_reason else {}
        try:
            result = run_monthly(con, target, pack, run_id, options)
        except (MonthlyError, GateFailed) as exc:
            gate = {"failed_gate": exc.result.as_dict()} if isinstance(exc, GateFailed) else {}
            finish_run(con, run_id, "FAILED", str(exc), input_files=input_files(con, target),
                       checks=gate | accepted)
            raise RunFailed(str(exc)) from None
        written = write_outbox(Path(home), result.files)
        mark_delivered(con, target)
        finish_run(con, run_id, "SUCCESS", result.line(), input_files=input_files(con, target),
                   output_files=[{"file": f.relpath, "records": f.records, "md5": f.md5} for f in result.files],
                   checks={"graded": result.graded, "tiers": result.tiers, "changes": result.changes,
                           "points": result.points, "gates": result.checks} | accepted,
                   timings=result.timings)
        progress(f"  {len(written)} channel file(s) written")
        return result.line()
    finally:
        con.close()


@task(name="publish")
def publish_copy(home: str) -> str:
    """Replaces the analysts' read-only copy with the state just committed."""
    con = connect(Path(home))
    try:
        return str(publish(con, Path(home)))
    finally:
        con.close()


@flow(name="nightly")
def nightly_flow(home: str, day: str) -> dict:
    """Ingests everything delivered up to a day (redemptions and suspensions are loaded here; the monthly run
    of their month applies them)."""
    with writer_lock(Path(home), f"nightly {day}"):
        summary = ingest_deliveries(home, up_to=parse_day(day))
        publish_copy(home)
    if summary["rejected"]:
        progress(f"{len(summary['rejected'])} file(s) rejected")
    return summary


@flow(name="monthly")
def monthly_flow(home: str, month: str, rules: str | None = None, accept_reason: str | None = None) -> str:
    """Ingests pending deliveries, then grades the month (accept_reason: accept a tripped circuit breaker)."""
    Month.parse(month)
    with writer_lock(Path(home), f"monthly {month}"):
        ingest_deliveries(home)
        line = grade_month(home, month, rules, accept_reason=accept_reason)
        publish_copy(home)
    progress(line)
    return line


@flow(name="backfill")
def backfill_flow(home: str, start: str, end: str, rules: str | None = None, dry_run: bool = False) -> list[str]:
    """Every nightly and monthly run of the range in date order; months already up to date are skipped, so
    running it twice changes nothing."""
    resolve_pack(rules)  # fail before doing anything if the pack is unusable
    steps = plan_backfill(scan_landing(Path(home)), Month.parse(start), Month.parse(end))
    if dry_run:
        return [str(s) for s in steps]
    with writer_lock(Path(home), f"backfill {start}..{end}"):
        lines = _run_steps(home, steps, rules)
        publish_copy(home)
    return lines


def _run_steps(home: str, steps: list, rules: str | None) -> list[str]:
    months = [s.month for s in steps if s.kind == "monthly"]
    lines = []
    for n, step in enumerate(steps, 1):
        if step.kind == "ingest":
            ingest_deliveries(home, only_day=step.day)
            continue
        # Every month up to this one, in order: a re-delivery ingested since may have made earlier ones stale.
        for month in months[:months.index(step.month) + 1]:
            line = grade_month(home, str(month), rules, only_if_stale=True)
            if month == step.month or not line.endswith("up to date"):
                progress(f"[{n}/{len(steps)}] {line}")
                lines.append(line)
    return lines
