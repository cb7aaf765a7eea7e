"""What `tierflow status` reports: deliveries, pending files, quarantine, processed and stale months."""
from __future__ import annotations

from pathlib import Path

import duckdb

from transforms.core.calendar import Month
from transforms.ingest.landing import scan_landing
from transforms.ingest.load import reconciliation_failures
from transforms.runs.month_state import stale_months
from transforms.warehouse.db import scalar


def status_report(con: duckdb.DuckDBPyConnection | None, home: Path) -> list[str]:
    scan = scan_landing(home)
    lines = [f"home: {home}",
             f"landing: {len(scan.delivered)} delivered file(s), {len(scan.pending)} pending (no .chk yet)"]
    lines += [f"  pending: {p.dat_path.relative_to(home)}" for p in scan.pending]
    lines += [f"  not an extract: {p.relative_to(home)}" for p in scan.unrecognised]
    if con is None:
        return lines + ["warehouse: not created yet (run `tierflow nightly`, `monthly` or `backfill`)"]
    for status, n, records, loaded, quarantined in con.execute(
            "SELECT status, count(*), sum(record_count), sum(loaded), sum(quarantined) FROM ops.delivery "
            "GROUP BY ALL ORDER BY 1").fetchall():
        lines.append(f"deliveries {status}: {n} file(s), {int(loaded or 0):,} records loaded, "
                     f"{int(quarantined or 0):,} quarantined")
    for name, day, reason in con.execute(
            "SELECT file_name, day, reason FROM ops.delivery WHERE status = 'REJECTED' ORDER BY day, file_name"
    ).fetchall():
        lines.append(f"  rejected: {name} ({day:%Y%m%d}): {reason}")
    for reason, n in con.execute("SELECT reason, count(*) FROM ops.quarantine WHERE line_no IS NOT NULL "
                                 "GROUP BY ALL ORDER BY 2 DESC, 1").fetchall():
        lines.append(f"quarantine {reason}: {n:,} record(s)")
    orphans = scalar(con, "SELECT coalesce(sum(orphans), 0) FROM ops.delivery WHERE status = 'LOADED'")
    if orphans:
        lines.append(f"orphans: {orphans:,} subscriber id(s) in bills/events that no snapshot knows")
    lines += [f"RECONCILIATION FAILED: {p}" for p in reconciliation_failures(con)]
    months = con.execute("SELECT month, graded, pack_name, pack_version FROM ops.month_state ORDER BY month"
                         ).fetchall()
    stale = stale_months(con)
    graded = [Month.of(m) for m, g, _, _ in months if g]
    processed = [Month.of(m) for m, g, _, _ in months if not g]
    if graded:
        lines.append(f"graded: {graded[0]} .. {graded[-1]} ({len(graded)} month(s), pack "
                     f"{months[-1][2]} {months[-1][3]})")
    if processed:
        lines.append(f"aggregated only (window incomplete): {', '.join(map(str, processed))}")
    if stale:
        last = Month.of(months[-1][0])
        lines.append(f"STALE: {', '.join(map(str, stale))} - run `tierflow backfill --start {stale[0]} "
                     f"--end {last}`")
    elif months:
        lines.append("stale: none")
    return lines
