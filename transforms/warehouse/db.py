"""The DuckDB warehouse: connection settings and the layered schema (raw -> staging -> mart, plus ops).

Only one process writes the warehouse at a time (DuckDB's file lock enforces it); every writing unit of work
(one delivery, one monthly run) runs in a single transaction so a crash leaves the previous state.
"""
from __future__ import annotations

import os
import re
from contextlib import contextmanager
from datetime import date
from pathlib import Path

import duckdb

from transforms.core.faults import fault_point
from transforms.ingest.layouts import BILL_ITEMS

WAREHOUSE_FILE = "warehouse.duckdb"

# Per-process engine limits: DuckDB is not fork-safe and a 2-core box is shared by the scheduler and workers.
DEFAULT_THREADS = int(os.environ.get("TIERFLOW_THREADS", "2"))
DEFAULT_MEMORY_LIMIT = os.environ.get("TIERFLOW_MEMORY_LIMIT", "6GB")

_ITEM_COLUMNS = ", ".join(f"{item.lower()}_fen BIGINT NOT NULL" for item in BILL_ITEMS)

# S(d): every subscriber's version valid on snapshot date d; and each subscriber's latest version dated on or
# before d, also for one who has left (whose last version was closed): who they were when last seen. Also
# defined over a shard's copy of raw.subscriber_history (transforms.runs.shards).
SNAPSHOT_MACROS = """\
CREATE MACRO IF NOT EXISTS raw.snapshot_as_of(d) AS TABLE SELECT * FROM raw.subscriber_history WHERE valid_from <= d AND (valid_to IS NULL OR valid_to > d);
CREATE MACRO IF NOT EXISTS raw.last_known_as_of(d) AS TABLE SELECT * FROM raw.subscriber_history WHERE valid_from <= d QUALIFY row_number() OVER (PARTITION BY subs_id ORDER BY valid_from DESC) = 1;"""


def last_known_of(day: str, subs: str) -> str:
    """SQL of raw.last_known_as_of(`day`) for the subscribers that the subquery `subs` selects: their versions
    alone are numbered (the macro numbers every version of everyone: ~0.2 s at 1M, each time, growing with the
    history, where a month's changes or a day's cancellations are a few thousand)."""
    return (f"SELECT * FROM raw.subscriber_history WHERE valid_from <= {day} AND subs_id IN ({subs}) "
            "QUALIFY row_number() OVER (PARTITION BY subs_id ORDER BY valid_from DESC) = 1")


SCHEMA_DDL = f"""
CREATE SCHEMA IF NOT EXISTS raw;
CREATE SCHEMA IF NOT EXISTS staging;
CREATE SCHEMA IF NOT EXISTS mart;
CREATE SCHEMA IF NOT EXISTS ops;

-- raw: loaded records, each with the file and line it came from. Personal data lives only here.
CREATE TABLE IF NOT EXISTS raw.subscriber_history (
    subs_id VARCHAR NOT NULL, msisdn VARCHAR, cust_id VARCHAR, cust_name VARCHAR, cert_no VARCHAR,
    brand VARCHAR, subs_type VARCHAR, status VARCHAR, open_date DATE, cancel_date DATE,
    realname_flag BOOLEAN, group_key_flag BOOLEAN, vip_flag BOOLEAN, region_code VARCHAR, manager_id VARCHAR,
    valid_from DATE NOT NULL,   -- snapshot date this version was first seen
    valid_to DATE,              -- snapshot date it was replaced or the subscriber vanished (exclusive); NULL = current
    file_name VARCHAR NOT NULL, line_no BIGINT NOT NULL
);
{SNAPSHOT_MACROS}
CREATE TABLE IF NOT EXISTS raw.bill (
    file_name VARCHAR NOT NULL, line_no BIGINT NOT NULL,
    subs_id VARCHAR NOT NULL, bill_month DATE NOT NULL, item_code VARCHAR NOT NULL, amount_fen BIGINT NOT NULL
);
CREATE TABLE IF NOT EXISTS raw.susp (
    file_name VARCHAR NOT NULL, line_no BIGINT NOT NULL,
    event_id VARCHAR NOT NULL, subs_id VARCHAR NOT NULL, event_time TIMESTAMP NOT NULL, susp_type VARCHAR NOT NULL
);
CREATE TABLE IF NOT EXISTS raw.redeem (
    file_name VARCHAR NOT NULL, line_no BIGINT NOT NULL,
    txn_id VARCHAR NOT NULL, subs_id VARCHAR NOT NULL, txn_time TIMESTAMP NOT NULL, points BIGINT NOT NULL,
    channel VARCHAR
);
CREATE TABLE IF NOT EXISTS raw.override (
    file_name VARCHAR NOT NULL, line_no BIGINT NOT NULL,
    override_id VARCHAR NOT NULL, subs_id VARCHAR NOT NULL, tier VARCHAR NOT NULL, from_month DATE NOT NULL,
    to_month DATE NOT NULL, reason VARCHAR, approved_by VARCHAR
);

-- staging: the points ledger (lots earned per month, and what each month took from them).
CREATE TABLE IF NOT EXISTS staging.points_lot (
    subs_id VARCHAR NOT NULL, earn_month DATE NOT NULL, earned BIGINT NOT NULL
);
CREATE TABLE IF NOT EXISTS staging.points_move (
    month DATE NOT NULL, subs_id VARCHAR NOT NULL, earn_month DATE NOT NULL,
    redeemed BIGINT NOT NULL, expired BIGINT NOT NULL
);
CREATE TABLE IF NOT EXISTS staging.redemption (
    month DATE NOT NULL, txn_id VARCHAR NOT NULL, subs_id VARCHAR NOT NULL, txn_time TIMESTAMP NOT NULL,
    points BIGINT NOT NULL, status VARCHAR NOT NULL  -- APPLIED or INSUFFICIENT_POINTS
);

-- mart: what analysts query.
CREATE TABLE IF NOT EXISTS mart.subscriber_month (
    month DATE NOT NULL, subs_id VARCHAR NOT NULL, cons_fen BIGINT NOT NULL,
    {_ITEM_COLUMNS},  -- one sum per BILL item code (transforms.ingest.layouts.BILL_ITEMS)
    sum6_fen BIGINT  -- NULL while the 6-month window is incomplete
);
CREATE TABLE IF NOT EXISTS mart.points_balance (
    month DATE NOT NULL, subs_id VARCHAR NOT NULL, earned BIGINT NOT NULL, redeemed BIGINT NOT NULL,
    expired BIGINT NOT NULL, balance BIGINT NOT NULL, prior_year_points BIGINT NOT NULL,
    expiring_next_month BIGINT NOT NULL DEFAULT 0  -- of the balance: what expires at the end of M+1
);
CREATE TABLE IF NOT EXISTS mart.tier_assignment (
    grade_month DATE NOT NULL, subs_id VARCHAR NOT NULL, tier VARCHAR NOT NULL, reason VARCHAR NOT NULL,
    computed_tier VARCHAR NOT NULL, protected BOOLEAN NOT NULL, sum6_fen BIGINT NOT NULL,
    tenure_months INTEGER NOT NULL, prior_year_points BIGINT NOT NULL, susp12 INTEGER NOT NULL,
    tags VARCHAR[] NOT NULL, rules_version VARCHAR NOT NULL, region_code VARCHAR,
    override_id VARCHAR, override_reason VARCHAR, override_approved_by VARCHAR  -- behind a tier of reason OVERRIDE
);
CREATE TABLE IF NOT EXISTS mart.tier_current (
    subs_id VARCHAR NOT NULL, tier VARCHAR NOT NULL, grade_month DATE NOT NULL, since_month DATE NOT NULL
);
CREATE TABLE IF NOT EXISTS mart.tier_history (
    subs_id VARCHAR NOT NULL, tier VARCHAR NOT NULL,
    valid_from DATE NOT NULL,  -- first day the tier is in effect (the day after its grading month)
    valid_to DATE              -- exclusive; NULL = still in effect
);
CREATE TABLE IF NOT EXISTS mart.grade_change (
    grade_month DATE NOT NULL, subs_id VARCHAR NOT NULL, from_tier VARCHAR NOT NULL, to_tier VARCHAR NOT NULL,
    change_type VARCHAR NOT NULL, reason VARCHAR NOT NULL,
    entitlements_gained VARCHAR[] NOT NULL, entitlements_lost VARCHAR[] NOT NULL,
    region_code VARCHAR, manager_id VARCHAR  -- the subscriber's owner in S(M), or when last seen
);
CREATE TABLE IF NOT EXISTS mart.entitlement_change (  -- tier unchanged, entitlements changed (a tag alone)
    grade_month DATE NOT NULL, subs_id VARCHAR NOT NULL, from_tier VARCHAR NOT NULL, to_tier VARCHAR NOT NULL,
    change_type VARCHAR NOT NULL, reason VARCHAR NOT NULL,  -- change_type ENTITLEMENTS; reason: M's tier reason
    entitlements_gained VARCHAR[] NOT NULL, entitlements_lost VARCHAR[] NOT NULL,
    region_code VARCHAR, manager_id VARCHAR
);
CREATE TABLE IF NOT EXISTS mart.tier_summary (
    grade_month DATE NOT NULL, region_code VARCHAR NOT NULL, tier VARCHAR NOT NULL,
    subscribers BIGINT NOT NULL, unchanged BIGINT NOT NULL, new_in BIGINT NOT NULL,
    upgraded_in BIGINT NOT NULL, downgraded_in BIGINT NOT NULL, lost_from BIGINT NOT NULL
);

-- ops: deliveries, quarantine, runs and month states.
CREATE TABLE IF NOT EXISTS ops.delivery (
    file_name VARCHAR NOT NULL, kind VARCHAR NOT NULL, period VARCHAR NOT NULL, day DATE NOT NULL,
    path VARCHAR NOT NULL, md5 VARCHAR, byte_size BIGINT, encoding VARCHAR, record_count BIGINT,
    loaded BIGINT NOT NULL, quarantined BIGINT NOT NULL, orphans BIGINT NOT NULL DEFAULT 0,
    status VARCHAR NOT NULL,   -- LOADED, REJECTED, SUPERSEDED
    reason VARCHAR, run_id VARCHAR, loaded_at TIMESTAMP,
    carried_forward BIGINT NOT NULL DEFAULT 0  -- ACCT: subscribers whose line was quarantined keep their version
);
CREATE TABLE IF NOT EXISTS ops.quarantine (
    file_name VARCHAR NOT NULL, day DATE, line_no BIGINT,  -- line_no NULL: the whole file was rejected
    raw_text VARCHAR, reason VARCHAR NOT NULL, detail VARCHAR, period DATE, run_id VARCHAR
);
CREATE TABLE IF NOT EXISTS ops.snapshot (
    snapshot_date DATE NOT NULL, file_name VARCHAR NOT NULL, subscribers BIGINT NOT NULL
);
CREATE TABLE IF NOT EXISTS ops.month_state (
    month DATE NOT NULL, graded BOOLEAN NOT NULL, pack_name VARCHAR, pack_version VARCHAR,
    fingerprint VARCHAR NOT NULL, run_id VARCHAR, processed_at TIMESTAMP
);
-- Effects a committed unit of work owes (recorded in its transaction, removed once done): OUTBOX files (their
-- bytes kept under <home>/ops/owed/<run_id>/), PUBLISH of the analysts' copy, a REPORT of a month. Any later
-- run delivers them first.
CREATE TABLE IF NOT EXISTS ops.owed (
    effect VARCHAR NOT NULL, target VARCHAR NOT NULL, channel VARCHAR, control BLOB,
    records BIGINT, md5 VARCHAR, run_id VARCHAR, owed_since TIMESTAMP
);
-- The mart partitions written since the analysts' copy was last published (transforms.runs.publish), and the
-- published versions with the partition files each one reads.
CREATE TABLE IF NOT EXISTS ops.changed_partition (table_name VARCHAR NOT NULL, part VARCHAR NOT NULL);
CREATE TABLE IF NOT EXISTS ops.published_file (
    table_name VARCHAR NOT NULL, part VARCHAR NOT NULL, path VARCHAR NOT NULL, rows BIGINT NOT NULL
);
CREATE TABLE IF NOT EXISTS ops.published_version (version BIGINT NOT NULL, published_at TIMESTAMP NOT NULL);
-- Every channel file written (a file once written is never rewritten with other content).
CREATE TABLE IF NOT EXISTS ops.outbox_file (
    relpath VARCHAR NOT NULL, channel VARCHAR NOT NULL, records BIGINT NOT NULL, md5 VARCHAR NOT NULL,
    run_id VARCHAR, written_at TIMESTAMP
);
-- What each channel was told per grading month, record by record in the order sent (seq): the base of the
-- correction sets (transforms.deliver.corrections). No personal data: subs_id and the change only.
CREATE TABLE IF NOT EXISTS ops.sent_record (
    channel VARCHAR NOT NULL, period DATE NOT NULL, seq BIGINT NOT NULL, relpath VARCHAR NOT NULL,
    subs_id VARCHAR NOT NULL, kind VARCHAR NOT NULL,  -- CHANGE, REVERSAL, NIGHTLY_LOST, NOTICE
    from_tier VARCHAR, to_tier VARCHAR, change_type VARCHAR,
    entitlements_gained VARCHAR[], entitlements_lost VARCHAR[], points BIGINT
);
CREATE TABLE IF NOT EXISTS ops.run_ledger (
    run_id VARCHAR NOT NULL, flow VARCHAR NOT NULL, period VARCHAR, pack_name VARCHAR, pack_version VARCHAR,
    status VARCHAR NOT NULL, message VARCHAR, input_files JSON, output_files JSON, checks JSON, timings JSON,
    started_at TIMESTAMP NOT NULL, finished_at TIMESTAMP
);
"""


def warehouse_path(home: Path) -> Path:
    return Path(home) / WAREHOUSE_FILE


def connect(home: Path, read_only: bool = False, threads: int | None = None,
            memory_limit: str | None = None) -> duckdb.DuckDBPyConnection:
    """Opens the home's warehouse with per-process limits and makes sure the schema exists."""
    home = Path(home)
    home.mkdir(parents=True, exist_ok=True)
    path = warehouse_path(home)
    con = duckdb.connect(str(path), read_only=read_only, config={
        "threads": threads or DEFAULT_THREADS,
        "memory_limit": memory_limit or DEFAULT_MEMORY_LIMIT,
        "preserve_insertion_order": True,
    })
    if not read_only:
        con.execute(SCHEMA_DDL)
        os.chmod(path, 0o640)  # warehouse holds personal data in raw: never world-readable
    return con


@contextmanager
def transaction(con: duckdb.DuckDBPyConnection, unit: str):
    """All-or-nothing unit of work: commit on success, roll back on any error. `unit` names the kind of work
    for fault injection (transforms.core.faults: before-commit:<unit>, after-commit:<unit>)."""
    con.execute("BEGIN TRANSACTION")
    try:
        yield con
    except BaseException:
        con.execute("ROLLBACK")
        raise
    fault_point(f"before-commit:{unit}")
    con.execute("COMMIT")
    fault_point(f"after-commit:{unit}")


@contextmanager
def in_any_order(con: duckdb.DuckDBPyConnection):
    """Statements whose rows may land in any physical order (a table only ever aggregated, each row keeping its
    line_no): DuckDB inserts about twice as fast when it need not keep the order of its source."""
    con.execute("SET preserve_insertion_order = false")
    try:
        yield con
    finally:
        con.execute("SET preserve_insertion_order = true")


def params_of(sql: str, params: dict) -> dict:
    """The parameters `sql` names (DuckDB refuses unused ones)."""
    return {k: v for k, v in params.items() if re.search(rf"\${k}\b", sql)}


def first_row(con: duckdb.DuckDBPyConnection, sql: str, params: list | dict | None = None) -> tuple | None:
    """The first row or None. Fetches to the end: DuckDB 2.0 refuses other work (register, unregister)
    on a connection whose last result is not exhausted."""
    rows = con.execute(sql, params or []).fetchall()
    return rows[0] if rows else None


def scalar(con: duckdb.DuckDBPyConnection, sql: str, params: list | dict | None = None):
    row = first_row(con, sql, params)
    return None if row is None else row[0]


def snapshot_date_for(con, month) -> date | None:
    """S(M): the latest applied snapshot dated on or before the last day of M."""
    return scalar(con, "SELECT max(snapshot_date) FROM ops.snapshot WHERE snapshot_date <= ?", [month.last_day])
