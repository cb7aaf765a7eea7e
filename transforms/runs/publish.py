"""The analysts' copy: `published/warehouse.duckdb`, holding the mart schema (no personal data) and the ops
tables that explain it, replaced atomically after each successful run.

It is built aside and renamed over the old file: an analyst who opened the old copy keeps reading it (the
old file lives on while it is open), and a new connection sees the new state. A failed run never gets here.
"""
from __future__ import annotations

import os
from pathlib import Path

import duckdb

from transforms.core.faults import fault_point
from transforms.core.files import FILE_MODE, aside_path, fsync_dir, fsync_file, remove_leftovers

PUBLISHED_DIR = "published"
PUBLISHED_FILE = "warehouse.duckdb"
# ops.quarantine is left out: its raw_text can hold personal data from ACCT lines.
PUBLISHED_OPS = ("delivery", "run_ledger", "month_state")
# What analysts see of the quarantine: counts by file, day, reason and run month, never the raw text.
QUARANTINE_SUMMARY = """
    SELECT file_name, day, coalesce(period, CAST(date_trunc('month', day) AS DATE)) AS month, reason,
           line_no IS NULL AS whole_file, count(*) AS records
    FROM ops.quarantine GROUP BY ALL ORDER BY ALL"""


def published_path(home: Path) -> Path:
    return Path(home) / PUBLISHED_DIR / PUBLISHED_FILE


def publish(con: duckdb.DuckDBPyConnection, home: Path) -> Path:
    target = published_path(home)
    target.parent.mkdir(mode=0o750, parents=True, exist_ok=True)
    remove_leftovers(target)  # of a run killed mid-publish
    tmp = aside_path(target)
    mart_tables = [r[0] for r in con.execute(
        "SELECT table_name FROM duckdb_tables() WHERE database_name = current_database() "
        "AND schema_name = 'mart' ORDER BY 1").fetchall()]
    con.execute("ATTACH ? AS pub", [str(tmp)])
    try:
        con.execute("CREATE SCHEMA pub.mart; CREATE SCHEMA pub.ops")
        for table in mart_tables:
            con.execute(f'CREATE TABLE pub.mart."{table}" AS SELECT * FROM mart."{table}"')
        for table in PUBLISHED_OPS:
            con.execute(f'CREATE TABLE pub.ops."{table}" AS SELECT * FROM ops."{table}"')
        con.execute(f"CREATE TABLE pub.ops.quarantine_summary AS {QUARANTINE_SUMMARY}")
    finally:
        con.execute("DETACH pub")
    os.chmod(tmp, FILE_MODE)
    fsync_file(tmp)
    fault_point("before-swap:publish")
    os.replace(tmp, target)
    fsync_dir(target.parent)
    fault_point("after-swap:publish")
    return target
