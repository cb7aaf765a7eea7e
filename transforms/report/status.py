"""What `tierflow status` reports: what is delivered and not loaded yet (and what a re-delivery will make stale),
pending, rejected and quarantined files, processed and stale months with the backfill that fixes them, what
committed work still owes, and the runs that failed or were interrupted."""
from __future__ import annotations

from pathlib import Path

import duckdb

from transforms.core.calendar import Month
from transforms.ingest.landing import Delivery, scan_landing
from transforms.ingest.load import reconciliation_failures
from transforms.runs.month_state import input_files, stale_months
from transforms.runs.owed import owed_effects
from transforms.warehouse.db import scalar

_SHOWN = 10  # list at most this many items of a kind, then count the rest


def status_report(con: duckdb.DuckDBPyConnection | None, home: Path) -> list[str]:
    scan = scan_landing(home)
    lines = [f"home: {home}",
             f"landing: {len(scan.delivered)} delivered file(s), {len(scan.pending)} pending (no .chk yet)"]
    lines += [f"  pending: {p.dat_path.relative_to(home)}" for p in scan.pending]
    lines += [f"  not an extract: {p.relative_to(home)}" for p in scan.unrecognised]
    if con is None:
        return lines + ["warehouse: not created yet (run `tierflow nightly`, `monthly` or `backfill`)"]
    lines += _not_loaded(con, scan.delivered)
    lines += _deliveries(con)
    lines += _months(con)
    lines += _owed(con)
    lines += _troubled_runs(con)
    return lines


def _not_loaded(con, delivered: list[Delivery]) -> list[str]:
    """Delivered files the warehouse has not seen, and for a re-delivery of a file that processed months used,
    the months it will make stale once loaded and the command that loads and regrades them."""
    seen = set(con.execute("SELECT file_name, day FROM ops.delivery").fetchall())
    new = [d for d in delivered if (d.name.file_name, d.day) not in seen]
    if not new:
        return []
    used_by = _months_using(con)
    last = scalar(con, "SELECT max(month) FROM ops.month_state")
    lines = [f"delivered, not loaded yet: {len(new)} file(s) (the next nightly run loads them)"]
    for d in new[:_SHOWN]:
        lines.append(f"  {d.name.file_name} ({d.day:%Y%m%d})")
        months = used_by.get(d.name.file_name)
        if months:
            first, end = min(months), Month.of(last)
            lines.append(f"    re-delivery of a file used by {first}: makes {first}..{end} stale; "
                         f"run `tierflow backfill --start {first} --end {end}`")
    lines += [f"  ... and {len(new) - _SHOWN} more"] * (len(new) > _SHOWN)
    return lines


def _months_using(con) -> dict[str, list[Month]]:
    """file name -> the processed months whose inputs include it."""
    used: dict[str, list[Month]] = {}
    for (month,) in con.execute("SELECT month FROM ops.month_state ORDER BY month").fetchall():
        for f in input_files(con, Month.of(month)):
            used.setdefault(f["file"], []).append(Month.of(month))
    return used


def _deliveries(con) -> list[str]:
    lines = []
    for status, n, loaded, quarantined in con.execute(
            "SELECT status, count(*), sum(loaded), sum(quarantined) FROM ops.delivery GROUP BY ALL ORDER BY 1"
    ).fetchall():
        lines.append(f"deliveries {status}: {n} file(s), {int(loaded or 0):,} records loaded, "
                     f"{int(quarantined or 0):,} quarantined")
    for name, day, reason in con.execute(
            "SELECT file_name, day, reason FROM ops.delivery WHERE status = 'REJECTED' ORDER BY day, file_name"
    ).fetchall():
        lines.append(f"  rejected: {name} ({day:%Y%m%d}): {reason}")
    for reason, n in con.execute("SELECT reason, count(*) FROM ops.quarantine WHERE line_no IS NOT NULL "
                                 "GROUP BY ALL ORDER BY 2 DESC, 1").fetchall():
        lines.append(f"quarantine {reason}: {n:,} record(s)")
    carried = scalar(con, "SELECT coalesce(sum(carried_forward), 0) FROM ops.delivery WHERE status = 'LOADED'")
    if carried:
        lines.append(f"carried forward: {carried:,} subscriber version(s) kept because their snapshot line was "
                     "quarantined")
    orphans = scalar(con, "SELECT coalesce(sum(orphans), 0) FROM ops.delivery WHERE status = 'LOADED'")
    if orphans:
        lines.append(f"orphans: {orphans:,} subscriber id(s) in bills/events that no snapshot knows")
    return lines + [f"RECONCILIATION FAILED: {p}" for p in reconciliation_failures(con)]


def _months(con) -> list[str]:
    months = con.execute("SELECT month, graded, pack_name, pack_version FROM ops.month_state ORDER BY month"
                         ).fetchall()
    if not months:
        return []
    lines = []
    graded = [Month.of(m) for m, g, _, _ in months if g]
    processed = [Month.of(m) for m, g, _, _ in months if not g]
    if graded:
        lines.append(f"graded: {graded[0]} .. {graded[-1]} ({len(graded)} month(s), pack "
                     f"{months[-1][2]} {months[-1][3]})")
    if processed:
        lines.append(f"aggregated only (window incomplete): {', '.join(map(str, processed))}")
    stale = stale_months(con)
    if stale:
        last = Month.of(months[-1][0])
        lines.append(f"STALE: {', '.join(map(str, stale))} - run `tierflow backfill --start {stale[0]} "
                     f"--end {last}`")
    else:
        lines.append("stale: none")
    return lines


def _owed(con) -> list[str]:
    """What committed work still owes (a run was killed or failed after its commit): the next run delivers it."""
    owed = owed_effects(con)
    if not owed:
        return ["owed: nothing"]
    lines = [f"OWED: {len(owed)} effect(s) of committed work, delivered first by the next run "
             "(`tierflow nightly --day <today>`)"]
    lines += [f"  {effect.lower()} {target}".rstrip() + f" (since run {run_id})" for effect, target, run_id
              in owed[:_SHOWN]]
    return lines + [f"  ... and {len(owed) - _SHOWN} more"] * (len(owed) > _SHOWN)


def _troubled_runs(con) -> list[str]:
    """The last runs that failed or were interrupted, with their cause."""
    rows = con.execute("""
        SELECT run_id, flow, period, status, message, started_at FROM ops.run_ledger
        WHERE status IN ('FAILED', 'INTERRUPTED') ORDER BY started_at DESC LIMIT 5""").fetchall()
    if not rows:
        return []
    return ["last failed or interrupted runs:"] + [
        f"  {status} {flow} {period} ({run_id}, {started:%Y-%m-%d %H:%M}): {message}"
        for run_id, flow, period, status, message, started in rows]
