"""The analysts' copy (outputs.md "Publication for analysts"): `published/warehouse.duckdb`, read-only, the
mart tables (no personal data) and the ops tables that explain them.

Publishing costs what the run changed, never the stored history. Each mart table is kept as Parquet files, one
per partition (a month; tier_history by the month its spells closed, plus its open spells; tier_current whole),
and a partition is written again only when a run wrote it (ops.changed_partition, recorded by the mart writers).
A published version is a small DuckDB file of views over its partition files (and the small ops tables):

    published/warehouse.duckdb            -> versions/v<N>.duckdb   (a symbolic link, swapped atomically)
    published/versions/v<N>.duckdb        views over the version's files
    published/versions/v<N>.files.json    the files it reads (for the clean-up)
    published/data/<table>/<part>.v<N>.parquet   never changed once written

An analyst connected to an older version keeps reading a consistent state: its files stay until no process
holds that version open (seen in /proc) and a grace period for readers on other machines has passed
(TIERFLOW_PUBLISH_GRACE_SECONDS, default 600). The views name their files by absolute path, so a version
opened from a moved or restored home reads nothing; the next publish there (any run's) names every file under
the home where it now is. A failed run never gets here.
"""
from __future__ import annotations

import json
import os
import re
import time
from datetime import datetime
from pathlib import Path

import duckdb

from transforms.core.faults import fault_point
from transforms.core.files import (FILE_MODE, fsync_dir, fsync_file, remove_leftovers, remove_leftovers_under,
                                   write_atomic)
from transforms.warehouse.db import scalar, transaction
from transforms.warehouse.marts import OPEN, PARTITIONED_BY, WHOLE

PUBLISHED_DIR = "published"
PUBLISHED_FILE = "warehouse.duckdb"
DIR_MODE = 0o750
# ops.quarantine is left out: its raw_text can hold personal data from ACCT lines.
PUBLISHED_OPS = ("delivery", "run_ledger", "month_state")
# What analysts see of the quarantine: counts by file, day, reason and run month, never the raw text.
QUARANTINE_SUMMARY = """
    SELECT file_name, day, coalesce(period, CAST(date_trunc('month', day) AS DATE)) AS month, reason,
           line_no IS NULL AS whole_file, count(*) AS records
    FROM ops.quarantine GROUP BY ALL ORDER BY ALL"""
_VERSION_FILE = re.compile(r"^v(\d+)\.duckdb$")


def grace_seconds() -> float:
    """How long a replaced version stays although no process here holds it (readers on other machines)."""
    return float(os.environ.get("TIERFLOW_PUBLISH_GRACE_SECONDS", "600"))


def published_path(home: Path) -> Path:
    return Path(home) / PUBLISHED_DIR / PUBLISHED_FILE


def publish(con: duckdb.DuckDBPyConnection, home: Path) -> Path:
    """Publishes a new version holding the current state; returns the analysts' path."""
    root = Path(home) / PUBLISHED_DIR
    for folder in (root, root / "versions", root / "data"):
        folder.mkdir(mode=DIR_MODE, parents=True, exist_ok=True)
    remove_leftovers_under(root / "versions")  # a killed publish's half-written manifest (we hold the lock)
    version = _next_version(con, root)
    changed = _changed_partitions(con)
    written = [_write_partition(con, root, table, part, version) for table, part in changed]
    files = _files_after(con, root, written)
    version_file = _write_version(con, root, version, files)
    _swap(published_path(home), version_file)
    with transaction(con, "publish"):
        con.execute("DELETE FROM ops.changed_partition")
        for table, part, path, rows in written:
            con.execute("DELETE FROM ops.published_file WHERE table_name = ? AND part = ?", [table, part])
            if path:
                con.execute("INSERT INTO ops.published_file VALUES (?, ?, ?, ?)", [table, part, path, rows])
        con.execute("INSERT INTO ops.published_version VALUES (?, ?)", [version, datetime.now()])
    _clean_up(root)
    return published_path(home)


def _next_version(con, root: Path) -> int:
    """After every version recorded and every version file on disk (one a killed run wrote but never recorded
    may be what the link points at: it is never written again)."""
    on_disk = [int(m.group(1)) for p in (root / "versions").iterdir() if (m := _VERSION_FILE.match(p.name))]
    return max([scalar(con, "SELECT coalesce(max(version), 0) FROM ops.published_version"), *on_disk]) + 1


def _changed_partitions(con) -> list[tuple[str, str]]:
    """The partitions to write: those changed since the last version, or every one for the first version."""
    if scalar(con, "SELECT count(*) FROM ops.published_version"):
        return con.execute("SELECT table_name, part FROM ops.changed_partition ORDER BY ALL").fetchall()
    parts = [(table, WHOLE) for table, column in PARTITIONED_BY.items() if column is None]
    for table, column in PARTITIONED_BY.items():
        if column is not None:
            parts += [(table, OPEN if value is None else value.isoformat()) for (value,) in con.execute(
                f'SELECT DISTINCT "{column}" FROM mart."{table}" ORDER BY 1').fetchall()]
    return parts


def _write_partition(con, root: Path, table: str, part: str, version: int) -> tuple[str, str, str | None, int]:
    """The partition's rows as a Parquet file of this version: (table, part, path or None when empty, rows)."""
    column = PARTITIONED_BY[table]
    where = ("true" if column is None else f'"{column}" IS NULL' if part == OPEN else f'"{column}" = ?')
    params = [part] if column is not None and part != OPEN else []
    rows = scalar(con, f'SELECT count(*) FROM mart."{table}" WHERE {where}', params)
    if not rows:
        return table, part, None, 0
    folder = root / "data" / table
    folder.mkdir(mode=DIR_MODE, exist_ok=True)
    path = folder / f"{part}.v{version}.parquet"
    con.execute(f"COPY (SELECT * FROM mart.\"{table}\" WHERE {where} ORDER BY ALL) TO '{_sql_path(path)}' "
                "(FORMAT parquet, COMPRESSION zstd)", params)
    os.chmod(path, FILE_MODE)
    fsync_file(path)
    return table, part, str(path), rows


def _files_after(con, root: Path, written: list[tuple]) -> dict[str, list[str]]:
    """Per mart table, the files of the new version: the partitions written now, the others as published,
    found under `root` (the home may have been moved or restored elsewhere since they were written)."""
    files = {table: {} for table in PARTITIONED_BY}
    for table, part, path in con.execute("SELECT table_name, part, path FROM ops.published_file").fetchall():
        files[table][part] = str(root / "data" / table / Path(path).name)
    for table, part, path, _ in written:
        if path:
            files[table][part] = path
        else:
            files[table].pop(part, None)
    return {table: [parts[p] for p in sorted(parts)] for table, parts in files.items()}


def _write_version(con, root: Path, version: int, files: dict[str, list[str]]) -> Path:
    """versions/v<N>.duckdb: a view per mart table over its files (a typed empty table when it has none), and
    the small ops tables."""
    path = root / "versions" / f"v{version}.duckdb"
    con.execute("ATTACH ? AS pub", [str(path)])
    try:
        con.execute("CREATE SCHEMA pub.mart; CREATE SCHEMA pub.ops")
        for table, paths in files.items():
            if paths:
                listed = ", ".join(f"'{_sql_path(Path(p))}'" for p in paths)
                con.execute(f'CREATE VIEW pub.mart."{table}" AS SELECT * FROM read_parquet([{listed}])')
            else:
                con.execute(f'CREATE TABLE pub.mart."{table}" AS SELECT * FROM mart."{table}" LIMIT 0')
        for table in PUBLISHED_OPS:
            con.execute(f'CREATE TABLE pub.ops."{table}" AS SELECT * FROM ops."{table}"')
        con.execute(f"CREATE TABLE pub.ops.quarantine_summary AS {QUARANTINE_SUMMARY}")
    finally:
        con.execute("DETACH pub")
    os.chmod(path, FILE_MODE)
    fsync_file(path)
    manifest = sorted(p for paths in files.values() for p in paths)
    write_atomic(_manifest(path), json.dumps(manifest, indent=0).encode(), "published")
    return path


def _manifest(version_file: Path) -> Path:
    return version_file.with_name(version_file.stem + ".files.json")


def _sql_path(path: Path) -> str:
    """A path as the inside of a SQL string literal (our own paths; quotes doubled all the same)."""
    return str(path.resolve()).replace("'", "''")


def _swap(link: Path, version_file: Path) -> None:
    """Points the analysts' path at the new version, atomically: a reader opens the old version or the new."""
    remove_leftovers(link)
    tmp = link.with_name(f".{link.name}.{os.getpid()}.tmp")
    os.symlink(Path("versions") / version_file.name, tmp)
    fault_point("before-swap:publish")
    os.replace(tmp, link)
    fsync_dir(link.parent)
    fault_point("after-swap:publish")


def _clean_up(root: Path) -> None:
    """Removes the versions no reader can hold and the files only they read: a version stays while it is the
    current one, while a process on this machine has it open, and for the grace period after it was made."""
    current = root / "versions" / Path(os.readlink(root / PUBLISHED_FILE)).name
    held, now = _open_files(), time.time()
    kept_files: set[str] = set()
    for path in sorted((root / "versions").glob("v*.duckdb")):
        if path == current or str(path.resolve()) in held or now - path.stat().st_mtime < grace_seconds():
            kept_files |= set(json.loads(_manifest(path).read_text())) if _manifest(path).exists() else set()
        else:
            path.unlink(missing_ok=True)
            _manifest(path).unlink(missing_ok=True)
    for parquet in (root / "data").rglob("*.parquet"):
        if str(parquet.resolve()) not in kept_files:
            parquet.unlink(missing_ok=True)


def _open_files() -> set[str]:
    """Paths of the files the processes of this machine hold open (those /proc lets us see)."""
    held = set()
    for fd_dir in Path("/proc").glob("[0-9]*/fd"):
        try:
            for fd in fd_dir.iterdir():
                held.add(os.readlink(fd))
        except OSError:
            continue  # a process gone, or not ours to look at
    return held
