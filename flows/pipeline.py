"""Prefect flows: nightly, monthly and backfill. Thin orchestration over transforms/ (the units of work are in
transforms/runs/: nightly ingestion, the monthly run, what committed work still owes).

Every flow holds the home's writer lock for its whole run, and starts by recovering: runs that died are closed
as INTERRUPTED in the ledger and everything committed work still owes (channel files, the analysts' copy) is
delivered first. Tasks receive the home directory (a path), never a DuckDB connection: each task opens the
warehouse itself, so tasks can run in other processes and only one of them writes at a time.
"""
from __future__ import annotations

import os
from functools import cache
from datetime import date, datetime
from pathlib import Path
from zoneinfo import ZoneInfo

from prefect import flow, task

from flows.dask import DaskError, parser_of_run, served_on_cluster, shards_of_run, start_cluster
from flows.serve import DEFAULT_TIMEZONE, SERVED_ENV, prepare_served_run
from transforms.core.calendar import Month, parse_day
from transforms.core.files import remove_leftovers_under
from transforms.deliver.channels import load_channels
from transforms.grade.packs import pack_for_month
from transforms.grade.rulepack import PackError, RulePack
from transforms.ingest.extracts import parse_extract_parts
from transforms.ingest.landing import scan_landing
from transforms.ingest.layouts import parse_extract_name
from transforms.ingest.load import DEFAULT_MAX_QUARANTINE_SHARE, reconciliation_failures
from transforms.quality.gates import GateFailed
from transforms.runs import nightly
from transforms.runs.backfill import plan_backfill
from transforms.runs.ledger import StepTimer, close_interrupted, failing_closes, finish_run, quality_dir, start_run
from transforms.runs.lock import writer_lock
from transforms.runs.month_state import MonthlyError, check_ordering, input_files, is_current, require_bill
from transforms.runs.monthly import MonthlyOptions, run_monthly
from transforms.runs.owed import deliver_owed, owed_folder
from transforms.runs.shards import remove_work_folder
from transforms.warehouse.db import connect, scalar, snapshot_date_for


class RunFailed(Exception):
    """A run stopped on purpose; the message is the one-line cause for the operator."""


def progress(line: str) -> None:
    """Progress of a long run, on stdout: stderr holds only a failure's cause, so it comes first there."""
    print(line, flush=True)


def resolve_pack(rules: str | None, month: Month | None = None) -> RulePack:
    """A pack by path, or by name (default six-star): the version in force for the grading month."""
    try:
        return pack_for_month(rules, month)
    except PackError as exc:
        raise RunFailed(str(exc)) from None


def _pack_in_force(rules: str | None, month: Month) -> RulePack | None:
    """The pack version in force for a month, or None before the pack's first version."""
    try:
        return pack_for_month(rules, month)
    except PackError:
        return None


# --- tasks -----------------------------------------------------------------------------------------------------

@task(name="recover")
def recover(home: str) -> dict:
    """Closes runs that died as INTERRUPTED and delivers the channel files committed work still owes (an owed
    publication is done at the end of this run)."""
    con = connect(Path(home))
    try:
        interrupted = close_interrupted(con)
        for run_id in interrupted:
            progress(f"  run {run_id} had been interrupted: closed as INTERRUPTED")
            remove_leftovers_under(quality_dir(Path(home), run_id))  # results it was writing when it died
            remove_work_folder(Path(home), run_id)  # its shards' files
        delivered = deliver_owed(con, Path(home), publishing=False)
        if delivered["files"]:
            progress(f"  delivered {len(delivered['files'])} owed channel file(s)")
        return {"interrupted": interrupted, **delivered}
    finally:
        con.close()


@task(name="deliver")
def deliver(home: str) -> dict:
    """Delivers what the run's commits owe: channel files, then the analysts' copy and the reports."""
    con = connect(Path(home))
    try:
        run_id = start_run(con, "deliver", f"{date.today():%Y-%m-%d}")
        with failing_closes(con, run_id):
            steps = StepTimer()
            delivered = deliver_owed(con, Path(home), steps=steps)
            finish_run(con, run_id, "SUCCESS", "", output_files=delivered["files"], checks=delivered,
                       timings=steps.as_dict())
        return delivered
    finally:
        con.close()


@task(name="ingest-deliveries")
def ingest_deliveries(home: str, up_to: date | None = None, days: tuple[tuple[date, tuple[str, ...]], ...] = (),
                      max_quarantine_share: float = DEFAULT_MAX_QUARANTINE_SHARE) -> dict:
    """Loads every delivered file not loaded yet, in delivery order: up to a day, or of the given days (with
    the named files of a day only, when it names any)."""
    wanted = dict(days)
    scan = scan_landing(Path(home), up_to=max(wanted) if wanted else up_to)
    deliveries = [d for d in scan.delivered if not wanted or (d.day in wanted and (
        not wanted[d.day] or d.name.file_name in wanted[d.day]))]
    con = connect(Path(home))
    try:
        period = max(wanted) if wanted else (up_to or date.today())
        run_id = start_run(con, "ingest", f"{period:%Y-%m-%d}")
        with failing_closes(con, run_id):
            steps = StepTimer()
            parse = parser_of_run(home, run_id) or parse_extract_parts  # BILL in byte ranges when on Dask
            try:
                results = nightly.ingest(con, Path(home), deliveries, run_id, load_channels(),
                                         cache(_default_pack_in_force), max_quarantine_share,
                                         quality_dir(Path(home), run_id), parse, steps)
            except DaskError as exc:
                raise RunFailed(str(exc)) from None
            finally:
                remove_work_folder(Path(home), run_id)
            changed = [r for r in results if r.status != "UNCHANGED"]
            for r in changed:
                progress(f"  {r.line()}")
            with steps("reconcile"):
                problems = reconciliation_failures(con, [r.file_name for r in changed if r.status == "LOADED"])
            if problems:
                raise RunFailed(f"reconciliation failed: {problems[0]}")
            with steps("notices"):
                deliver_owed(con, Path(home), publishing=False)  # the nightly notices of the snapshots loaded
            finish_run(con, run_id, "SUCCESS", "",
                       input_files=[{"file": r.file_name, "day": str(r.day), "status": r.status,
                                     "loaded": r.loaded, "quarantined": r.quarantined} for r in changed],
                       checks={"reconciliation": "ok"}, timings=steps.as_dict())
        return {"loaded": sum(r.status == "LOADED" for r in results),
                "bills": [r.file_name for r in results if r.status == "LOADED" and r.file_name.startswith("BILL_")],
                "rejected": [r.line() for r in results if r.status == "REJECTED"],
                "pending": [str(p.dat_path) for p in scan.pending]}
    finally:
        con.close()


def _default_pack_in_force(month: Month) -> RulePack | None:
    return _pack_in_force(None, month)


@task(name="monthly-grading")
def grade_month(home: str, month: str, rules: str | None = None, only_if_stale: bool = False,
                accept_reason: str | None = None) -> str:
    """The monthly run of one month, validated before it commits, then its channel files; with only_if_stale,
    skips a month already current. accept_reason: the operator accepts a tripped circuit breaker."""
    target = Month.parse(month)
    pack = resolve_pack(rules, target)
    con = connect(Path(home))
    try:
        if only_if_stale and is_current(con, target, pack.version):
            return f"{target}: up to date"
        run_id = start_run(con, "monthly", str(target), pack.name, pack.version)
        accepted = {"accepted_mass_change": accept_reason} if accept_reason else {}
        with failing_closes(con, run_id, checks=accepted):
            options = MonthlyOptions(quality_dir(Path(home), run_id), tuple(load_channels()),
                                     owed_folder(Path(home), run_id),
                                     accept_mass_change=accept_reason is not None,
                                     previous_pack=_pack_in_force(rules, target - 1),
                                     shards=shards_of_run(home, run_id))
            try:
                result = run_monthly(con, target, pack, run_id, options)
            except GateFailed as exc:
                finish_run(con, run_id, "FAILED", str(exc), input_files=input_files(con, target),
                           checks={"failed_gate": exc.result.as_dict()} | accepted)
                raise RunFailed(str(exc)) from None
            except (MonthlyError, DaskError) as exc:
                raise RunFailed(str(exc)) from None
            finally:
                remove_work_folder(Path(home), run_id)
            delivered = deliver_owed(con, Path(home), publishing=False)  # the flow publishes once, at its end
            finish_run(con, run_id, "SUCCESS", result.line(), input_files=input_files(con, target),
                       output_files=[{"file": f.relpath, "records": f.records, "md5": f.md5} for f in result.files],
                       checks={"graded": result.graded, "tiers": result.tiers, "changes": result.changes,
                               "points": result.points, "gates": result.checks} | accepted
                       | ({"shards": options.shards.count} if options.shards else {}),
                       timings=result.timings)
        progress(f"  {len(delivered['files'])} channel file(s) written")
        return result.line()
    finally:
        con.close()


@task(name="gradable-months")
def gradable_months(home: str, candidates: list[str], rules: str | None = None) -> list[str]:
    """The candidate months never processed that can be graded now: BILL and S(M) there, M-1 processed and
    current (or M the first month); in order. A month processed before whose BILL came again is stale: status
    names the backfill, nothing regrades it silently."""
    con = connect(Path(home))
    try:
        ready = []
        for month in sorted(Month.parse(m) for m in candidates):
            pack = _pack_in_force(rules, month)
            if pack is None or scalar(con, "SELECT count(*) FROM ops.month_state WHERE month = ?",
                                      [month.first_day]):
                continue
            try:
                require_bill(con, month)
                previous = _pack_in_force(rules, month - 1) or pack
                check_ordering(con, month, previous.version)
            except MonthlyError as exc:
                progress(f"  {month} not graded now: {exc}")
                continue
            if (snapshot := snapshot_date_for(con, month)) is None or snapshot < month.first_day:
                progress(f"  {month} not graded now: no ACCT snapshot dated in it yet")
                continue
            ready.append(str(month))
        return ready
    finally:
        con.close()


# --- flows -----------------------------------------------------------------------------------------------------

def _today(timezone: str) -> date:
    """The day of a scheduled run in the schedule's timezone (a run triggered by hand: now)."""
    from prefect.runtime import flow_run

    when = flow_run.scheduled_start_time or datetime.now(ZoneInfo(timezone))
    return when.astimezone(ZoneInfo(timezone)).date()


@flow(name="nightly")
def nightly_flow(home: str, day: str | None = None, timezone: str = DEFAULT_TIMEZONE) -> dict:
    """Ingests everything delivered up to a day (default: the day of the scheduled run); redemptions and
    suspensions are loaded here, the monthly run of their month applies them. A BILL_M loaded tonight grades M
    when M can be graded, so a month is graded without a person."""
    prepare_served_run()
    day = day or f"{_today(timezone):%Y-%m-%d}"
    with writer_lock(Path(home), f"nightly {day}"):
        recover(home)
        summary = ingest_deliveries(home, up_to=parse_day(day))
        bill_months = sorted(str(Month.parse(parse_extract_name(f).period)) for f in summary["bills"])
        # in order, each checked once the one before is graded: one night may bring several months' BILLs
        summary["graded"] = [grade_month(home, m, only_if_stale=True) for m in bill_months
                             if gradable_months(home, [m])]
        deliver(home)
    for line in summary["graded"]:
        progress(line)
    if summary["rejected"]:
        progress(f"{len(summary['rejected'])} file(s) rejected")
    return summary


@flow(name="monthly")
def monthly_flow(home: str, month: str | None = None, rules: str | None = None, accept_reason: str | None = None,
                 timezone: str = DEFAULT_TIMEZONE) -> str:
    """Ingests pending deliveries, then grades the month (accept_reason: accept a tripped circuit breaker).
    Without a month (the scheduled run): the month before the run's day, after catching up every earlier month
    still open."""
    prepare_served_run()
    target = Month.parse(month) if month else Month.of(_today(timezone)) - 1
    with writer_lock(Path(home), f"monthly {target}"):
        start_cluster()
        recover(home)
        ingest_deliveries(home)
        lines = [grade_month(home, m, rules, only_if_stale=True) for m in _open_months(home, target, rules)
                 ] if month is None else []
        lines.append(grade_month(home, str(target), rules, only_if_stale=month is None,
                                 accept_reason=accept_reason))
        deliver(home)
    for line in lines:
        progress(line)
    return lines[-1]


def _open_months(home: str, target: Month, rules: str | None) -> list[str]:
    """Months before `target` with a BILL delivered that are processed but stale, or not processed while a
    later one is: the catch-up of a scheduled monthly run."""
    con = connect(Path(home), read_only=True)
    try:
        processed = [Month.of(m) for (m,) in con.execute("SELECT month FROM ops.month_state ORDER BY 1").fetchall()]
        if not processed:
            return []
        months = [processed[0] + k for k in range(target - processed[0])]
        return [str(m) for m in months
                if (pack := _pack_in_force(rules, m)) is not None and not is_current(con, m, pack.version)]
    finally:
        con.close()


@flow(name="backfill")
def backfill_flow(home: str, start: str, end: str, rules: str | None = None, dry_run: bool = False) -> list[str]:
    """Every nightly and monthly run of the range in date order, then the range's late deliveries and a regrade of
    what they made stale; months already current are skipped, so running it twice changes nothing."""
    prepare_served_run()
    resolve_pack(rules)  # fail before doing anything if the pack is unusable
    steps = plan_backfill(scan_landing(Path(home)), Month.parse(start), Month.parse(end))
    if dry_run:
        return [str(s) for s in steps]
    with writer_lock(Path(home), f"backfill {start}..{end}"):
        start_cluster()
        recover(home)
        lines = _run_steps(home, steps, rules)
        deliver(home)
    return lines


def _run_steps(home: str, steps: list, rules: str | None) -> list[str]:
    """The plan in order: the days between two monthly runs are loaded by one task (each file still its own
    transaction, in delivery order); before each month's run, the earlier months a re-delivery made stale."""
    months = [s.month for s in steps if s.kind == "monthly"]
    lines, days = [], []
    for n, step in enumerate(steps, 1):
        if step.kind == "ingest":
            days.append((step.day, step.files))
            continue
        if days:
            ingest_deliveries(home, days=tuple(days))
            days = []
        earlier = months if step.kind == "regrade" else months[:months.index(step.month)]
        due = stale_among(home, [str(m) for m in earlier], rules) + ([str(step.month)] if step.month else [])
        for month in due:
            line = grade_month(home, month, rules, only_if_stale=True)
            progress(f"[{n}/{len(steps)}] {line}")
            lines.append(line)
    if days:
        ingest_deliveries(home, days=tuple(days))
    return lines


@task(name="stale-months")
def stale_among(home: str, months: list[str], rules: str | None = None) -> list[str]:
    """The given months, in order, that are not current (a re-delivery or a pack change made them stale)."""
    con = connect(Path(home), read_only=True)
    try:
        return [m for m in months if (pack := _pack_in_force(rules, Month.parse(m))) is not None
                and not is_current(con, Month.parse(m), pack.version)]
    finally:
        con.close()


if os.environ.get(SERVED_ENV):  # a run that `tierflow serve` started: on serve's cluster, if it was given one
    nightly_flow, monthly_flow, backfill_flow = map(served_on_cluster, (nightly_flow, monthly_flow, backfill_flow))
