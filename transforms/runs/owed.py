"""Effects owed by committed work: every effect that follows a commit happens exactly once.

A unit of work records, in the very transaction that commits it, each effect that must follow (ops.owed): the
channel files it produced, the publication of the analysts' copy, the report of a month. After the commit the
run delivers them and removes each record once its effect is done; a run killed in between leaves them owed,
and the next run of any kind delivers them first, byte for byte what they would have been.

A channel file's bytes wait in the run's folder of owed files (`<home>/ops/owed/<run_id>/<relpath>`, written
and fsynced before the commit), not in the warehouse: a mass-change month's files are gigabytes. A folder no
owed file needs any more (delivered, or left by a run that never committed) is removed after a delivery.
"""
from __future__ import annotations

import shutil
from datetime import datetime
from pathlib import Path

import duckdb

from transforms.deliver.outbox import write_new
from transforms.deliver.render import OutFile
from transforms.core.calendar import Month
from transforms.runs.ledger import StepTimer
from transforms.runs.publish import publish
from transforms.warehouse.db import transaction

OUTBOX, PUBLISH, REPORT = "OUTBOX", "PUBLISH", "REPORT"
_ORDER = {OUTBOX: 0, PUBLISH: 1, REPORT: 2}  # files first; the report reads the published copy


def owed_folder(home: Path, run_id: str) -> Path:
    """Where a run's channel files wait until they are delivered."""
    return _owed_root(home) / run_id


def _owed_root(home: Path) -> Path:
    return Path(home) / "ops" / "owed"


def owe_files(con: duckdb.DuckDBPyConnection, files: list[OutFile], run_id: str) -> None:
    """Records channel files, written in the run's owed_folder, as owed (inside the caller's transaction)."""
    for out in files:
        con.execute("INSERT INTO ops.owed (effect, target, channel, control, records, md5, run_id, owed_since) "
                    "VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                    [OUTBOX, out.relpath, out.channel, out.control, out.records, out.md5, run_id, datetime.now()])


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
    recorded in ops.outbox_file and no longer owed; returns them. Then removes the owed folders no longer needed."""
    rows = con.execute("SELECT target, channel, control, records, md5, run_id FROM ops.owed "
                       "WHERE effect = ? ORDER BY owed_since, target", [OUTBOX]).fetchall()
    written = []
    for relpath, channel, control, records, md5, run_id in rows:
        out = OutFile(channel, relpath, owed_folder(home, run_id) / relpath, records, md5,
                      bytes(control) if control is not None else None)
        write_new(home, out)
        with transaction(con, "owed"):
            con.execute("INSERT INTO ops.outbox_file VALUES (?, ?, ?, ?, ?, ?)",
                        [relpath, channel, records, md5, run_id, datetime.now()])
            con.execute("DELETE FROM ops.owed WHERE effect = ? AND target = ?", [OUTBOX, relpath])
        written.append(out)
    _remove_unneeded_folders(con, home)
    return written


def _remove_unneeded_folders(con, home: Path) -> None:
    """The owed folders of runs that owe no file any more: delivered, or never committed (killed, failed)."""
    root = _owed_root(home)
    needed = {run_id for (run_id,) in con.execute("SELECT DISTINCT run_id FROM ops.owed WHERE effect = ?",
                                                  [OUTBOX]).fetchall()}
    for folder in sorted(root.iterdir()) if root.is_dir() else []:
        if folder.name not in needed:
            shutil.rmtree(folder, ignore_errors=True)


def done(con: duckdb.DuckDBPyConnection, effect: str, target: str) -> None:
    """A publication or report is done: no longer owed."""
    with transaction(con, "owed"):
        con.execute("DELETE FROM ops.owed WHERE effect = ? AND target = ?", [effect, target])


def deliver_owed(con: duckdb.DuckDBPyConnection, home: Path, publishing: bool = True,
                 steps: StepTimer | None = None) -> dict:
    """Delivers what is owed, in order: the channel files, then (unless `publishing` is off: a run publishes once,
    at its end) the analysts' copy and the reports of the months graded since, which read it. `steps` times each
    (files, publish, reports)."""
    steps = steps or StepTimer()
    with steps("files"):
        files = deliver_files(con, home)
    owed = owed_effects(con) if publishing else []
    if any(effect == PUBLISH for effect, _, _ in owed):
        with steps("publish"):
            publish(con, home)
            done(con, PUBLISH, "")
    reports = [target for effect, target, _ in owed if effect == REPORT]
    with steps("reports"):
        if reports:
            from transforms.report.monthly_page import write_report  # plotly: imported only when a report is due
        for month in reports:
            write_report(home, Month.parse(month))
            done(con, REPORT, month)
    return {"files": [f.relpath for f in files], "published": bool(owed), "reports": reports}
