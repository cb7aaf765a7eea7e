"""Effects owed by committed work: every effect that follows a commit happens exactly once.

A unit of work records, in the very transaction that commits it, each effect that must follow (ops.owed): the
channel files it produced (with their bytes), the publication of the analysts' copy, the report of a month.
After the commit the run delivers them and removes each record once its effect is done; a run killed in between
leaves them owed, and the next run of any kind delivers them first, byte for byte what they would have been.
"""
from __future__ import annotations

from datetime import datetime
from pathlib import Path

import duckdb

from transforms.deliver.outbox import write_new
from transforms.deliver.render import OutFile
from transforms.core.calendar import Month
from transforms.runs.publish import publish
from transforms.warehouse.db import transaction

OUTBOX, PUBLISH, REPORT = "OUTBOX", "PUBLISH", "REPORT"
_ORDER = {OUTBOX: 0, PUBLISH: 1, REPORT: 2}  # files first; the report reads the published copy


def owe_files(con: duckdb.DuckDBPyConnection, files: list[OutFile], run_id: str) -> None:
    """Records channel files as owed (inside the caller's transaction)."""
    for out in files:
        con.execute("INSERT INTO ops.owed VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
                    [OUTBOX, out.relpath, out.channel, out.payload, out.control, out.records, out.md5, run_id,
                     datetime.now()])


def owe(con: duckdb.DuckDBPyConnection, effect: str, target: str, run_id: str) -> None:
    """Records a publication (target '') or a month's report (target YYYY-MM) as owed, once."""
    con.execute("DELETE FROM ops.owed WHERE effect = ? AND target = ?", [effect, target])
    con.execute("INSERT INTO ops.owed (effect, target, run_id, owed_since) VALUES (?, ?, ?, ?)",
                [effect, target, run_id, datetime.now()])


def owed_effects(con: duckdb.DuckDBPyConnection) -> list[tuple[str, str, str | None]]:
    """(effect, target, run_id) of everything owed, in the order it will be delivered."""
    rows = con.execute("SELECT effect, target, run_id FROM ops.owed ORDER BY owed_since, target").fetchall()
    return sorted(rows, key=lambda r: _ORDER[r[0]])


def deliver_files(con: duckdb.DuckDBPyConnection, home: Path) -> list[OutFile]:
    """Writes every owed channel file (a file once written is never rewritten: see outbox.write_new), each then
    recorded in ops.outbox_file and no longer owed; returns them."""
    rows = con.execute("SELECT target, channel, payload, control, records, run_id FROM ops.owed "
                       "WHERE effect = ? ORDER BY owed_since, target", [OUTBOX]).fetchall()
    written = []
    for relpath, channel, payload, control, records, run_id in rows:
        out = OutFile(channel, relpath, bytes(payload), records, bytes(control) if control is not None else None)
        write_new(home, out)
        with transaction(con, "owed"):
            con.execute("INSERT INTO ops.outbox_file VALUES (?, ?, ?, ?, ?, ?)",
                        [relpath, channel, records, out.md5, run_id, datetime.now()])
            con.execute("DELETE FROM ops.owed WHERE effect = ? AND target = ?", [OUTBOX, relpath])
        written.append(out)
    return written


def done(con: duckdb.DuckDBPyConnection, effect: str, target: str) -> None:
    """A publication or report is done: no longer owed."""
    with transaction(con, "owed"):
        con.execute("DELETE FROM ops.owed WHERE effect = ? AND target = ?", [effect, target])


def deliver_owed(con: duckdb.DuckDBPyConnection, home: Path, publishing: bool = True) -> dict:
    """Delivers what is owed, in order: the channel files, then (unless `publishing` is off: a run publishes once,
    at its end) the analysts' copy and the reports of the months graded since, which read it."""
    files = deliver_files(con, home)
    owed = owed_effects(con) if publishing else []
    if any(effect == PUBLISH for effect, _, _ in owed):
        publish(con, home)
        done(con, PUBLISH, "")
    reports = [target for effect, target, _ in owed if effect == REPORT]
    if reports:
        from transforms.report.monthly_page import write_report  # plotly: imported only when a report is due
    for month in reports:
        write_report(home, Month.parse(month))
        done(con, REPORT, month)
    return {"files": [f.relpath for f in files], "published": bool(owed), "reports": reports}
