"""The state of each processed month (ops.month_state): which inputs and pack it was processed with, whether it
is still current, and whether its channel files are out.

Staleness is derived, never stored: each month keeps a fingerprint of its input deliveries (file and MD5) and
pack version, chained through M-1's fingerprint, so a re-delivered input or a changed pack makes that month and
every later one out of date, and `status` names the backfill that brings them up to date.
"""
from __future__ import annotations

import hashlib
import json
from datetime import datetime

from transforms.core.calendar import Month
from transforms.grade.rulepack import RulePack
from transforms.warehouse.db import first_row, scalar, snapshot_date_for


class MonthlyError(Exception):
    """The monthly run cannot proceed; the message says why and what to run."""


def bill_delivery(con, month: Month):
    return first_row(
        con, "SELECT status, reason, md5 FROM ops.delivery WHERE file_name = ? AND status IN ('LOADED', 'REJECTED') "
        "ORDER BY day DESC LIMIT 1", [f"BILL_{month.compact}.dat"])


def require_bill(con, month: Month) -> None:
    row = bill_delivery(con, month)
    if row is None:
        raise MonthlyError(f"BILL_{month.compact} not delivered")
    if row[0] == "REJECTED":
        raise MonthlyError(f"BILL_{month.compact} rejected: {row[1]}")


def window_complete(con, month: Month, months: int) -> bool:
    """BILL is loaded for each of the `months` months ending with M."""
    return all((row := bill_delivery(con, month - k)) is not None and row[0] == "LOADED" for k in range(months))


def input_files(con, month: Month) -> list[dict]:
    """The deliveries month M depends on: BILL of M-5..M (earlier months reach M through M-1's fingerprint), S(M),
    SUSP of the 12-month window, REDEEM of M, and every override file holding a record of an override that
    covers M, whenever it was delivered (a late override makes M stale like any other correction); each with its
    MD5 and counts (for the ledger and the fingerprint)."""
    snapshot = snapshot_date_for(con, month)
    rows = con.execute("""
        WITH covering AS (SELECT DISTINCT o.file_name FROM raw.override o
                          WHERE o.override_id IN (SELECT override_id FROM raw.override
                                                  WHERE from_month <= $m AND to_month >= $m))
        SELECT d.file_name, d.md5, d.record_count, d.loaded, d.quarantined FROM ops.delivery d
        WHERE d.status = 'LOADED' AND (
             (d.kind = 'BILL' AND d.period BETWEEN $bill_from AND $bill_to)
          OR (d.kind = 'ACCT' AND d.period = $snap)
          OR (d.kind = 'SUSP' AND d.period BETWEEN $susp_from AND $to_day)
          OR (d.kind = 'REDEEM' AND d.period BETWEEN $redeem_from AND $to_day)
          OR (d.kind = 'OVERRIDE' AND d.file_name IN (SELECT file_name FROM covering)))
        ORDER BY d.file_name""", {
        "bill_from": (month - 5).compact, "bill_to": month.compact, "m": month.first_day,
        "snap": snapshot.strftime("%Y%m%d") if snapshot else "",
        "susp_from": (month - 11).first_day.strftime("%Y%m%d"),
        "redeem_from": month.first_day.strftime("%Y%m%d"), "to_day": month.last_day.strftime("%Y%m%d"),
    }).fetchall()
    return [dict(zip(("file", "md5", "records", "loaded", "quarantined"), r)) for r in rows]


def fingerprint(con, month: Month, pack_version: str) -> str:
    """Identifies everything month M's results depend on, chained through M-1's fingerprint, so a changed
    input or pack makes M and every later month out of date without any stored 'stale' flag."""
    previous = scalar(con, "SELECT fingerprint FROM ops.month_state WHERE month = ?", [(month - 1).first_day])
    payload = json.dumps({"month": str(month), "pack": pack_version, "previous": previous,
                          "inputs": [(f["file"], f["md5"]) for f in input_files(con, month)]})
    return hashlib.sha256(payload.encode()).hexdigest()[:16]


def is_current(con, month: Month, pack_version: str) -> bool:
    """Processed with the inputs and pack it would use now (and after the same predecessor)."""
    stored = scalar(con, "SELECT fingerprint FROM ops.month_state WHERE month = ?", [month.first_day])
    return stored is not None and stored == fingerprint(con, month, pack_version)


def stale_months(con) -> list[Month]:
    """Processed months whose inputs, pack or predecessor changed since they were processed."""
    rows = con.execute("SELECT month, pack_version FROM ops.month_state ORDER BY month").fetchall()
    return [Month.of(m) for m, version in rows if not is_current(con, Month.of(m), version)]


def check_ordering(con, month: Month, previous_pack_version: str) -> None:
    """M-1 must be processed, with the pack version in force for it, and current, unless M is the first
    month ever processed."""
    earlier = scalar(con, "SELECT count(*) FROM ops.month_state WHERE month < ?", [month.first_day])
    if not earlier:
        return
    prev = month - 1
    if scalar(con, "SELECT count(*) FROM ops.month_state WHERE month = ?", [prev.first_day]) == 0:
        raise MonthlyError(f"{prev} has not been processed: run `tierflow monthly --month {prev}` "
                           f"or `tierflow backfill --start {prev} --end {month}` first")
    if not is_current(con, prev, previous_pack_version):
        raise MonthlyError(f"{prev} is stale (its inputs or rule pack changed): run "
                           f"`tierflow backfill --start {prev} --end {month}`")


def record_month_state(con, month: Month, pack: RulePack, graded: bool, run_id: str) -> None:
    """M is processed (graded or aggregated only) with this pack and these inputs (what it owes is in ops.owed)."""
    con.execute("DELETE FROM ops.month_state WHERE month = ?", [month.first_day])
    con.execute("INSERT INTO ops.month_state VALUES (?, ?, ?, ?, ?, ?, ?)",
                [month.first_day, graded, pack.name, pack.version, fingerprint(con, month, pack.version), run_id,
                 datetime.now()])
