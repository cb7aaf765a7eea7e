"""The monthly run of grading month M (rules.md): aggregate, points, grade, marts — in one transaction.

Inputs come from raw tables already loaded by ingestion; the run reads one month of raw bills (BILL_M) and
takes earlier months from the stored monthly aggregates (mart.subscriber_month).
"""
from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path

import duckdb
import polars as pl

from transforms.core.calendar import Month
from transforms.ingest.layouts import BILL_ITEMS, EXCLUDED_FROM_CONSUMPTION
from transforms.deliver.channels import CHANGES, POINTS, Channel, by_feed
from transforms.deliver.render import OutFile, points_expiring, render_month, render_points_expiry
from transforms.grade.engine import (apply_protection, assign_tiers, compute_tags, entitlement_changes,
                                rank_table)
from transforms.warehouse.marts import rebuild_tier_current, rebuild_tier_history, write_grade_change, write_tier_summary
from transforms.grade.points import apply_points_month
from transforms.quality.gates import gate_breaker, gate_grading_inputs, gate_outputs
from transforms.grade.rulepack import RulePack
from transforms.warehouse.db import first_row, scalar, snapshot_date_for, transaction

WINDOW = 6


class MonthlyError(Exception):
    """The monthly run cannot proceed; the message says why and what to run."""


@dataclass(frozen=True)
class MonthlyOptions:
    results_dir: Path | None = None        # where GE validation results are kept
    channels: tuple[Channel, ...] = ()     # channel configuration; empty = render no channel files
    accept_mass_change: bool = False       # the operator accepted a tripped circuit breaker
    previous_pack_version: str | None = None  # pack version in force for M-1 (default: M's pack)


@dataclass
class MonthlyResult:
    month: Month
    graded: bool
    subscribers: int = 0
    changes: dict = field(default_factory=dict)
    tiers: dict = field(default_factory=dict)
    points: dict = field(default_factory=dict)
    note: str = ""
    files: list[OutFile] = field(default_factory=list)   # channel files to write once committed
    checks: list[dict] = field(default_factory=list)     # quality gate results (GateResult.as_dict())

    def line(self) -> str:
        if not self.graded:
            return f"{self.month}: aggregated and accrued points; {self.note}"
        changes = ", ".join(f"{k} {v:,}" for k, v in sorted(self.changes.items())) or "no changes"
        return f"{self.month}: graded {self.subscribers:,} subscribers ({changes})"


# --- inputs and their fingerprint ------------------------------------------------------------------------------

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


def window_complete(con, month: Month) -> bool:
    return all((row := bill_delivery(con, month - k)) is not None and row[0] == "LOADED" for k in range(WINDOW))


def input_files(con, month: Month) -> list[dict]:
    """The deliveries month M depends on: BILL of the 6-month window, S(M), SUSP of the 12-month
    window, REDEEM of M and all overrides; each with its MD5 and counts (for the ledger and the fingerprint)."""
    snapshot = snapshot_date_for(con, month)
    rows = con.execute("""
        SELECT d.file_name, d.md5, d.record_count, d.loaded, d.quarantined FROM ops.delivery d
        WHERE d.status = 'LOADED' AND (
             (d.kind = 'BILL' AND d.period BETWEEN $bill_from AND $bill_to)
          OR (d.kind = 'ACCT' AND d.period = $snap)
          OR (d.kind = 'SUSP' AND d.period BETWEEN $susp_from AND $to_day)
          OR (d.kind = 'REDEEM' AND d.period BETWEEN $redeem_from AND $to_day)
          OR (d.kind = 'OVERRIDE' AND d.period <= $to_day))
        ORDER BY d.file_name""", {
        "bill_from": (month - (WINDOW - 1)).compact, "bill_to": month.compact,
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


def is_up_to_date(con, month: Month, pack_version: str) -> bool:
    """Current and its files delivered: a run killed after its commit but before writing the outbox is not
    up to date, so the next backfill redoes it (byte for byte)."""
    return bool(scalar(con, "SELECT delivered FROM ops.month_state WHERE month = ?", [month.first_day])) \
        and is_current(con, month, pack_version)


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


# --- the run -------------------------------------------------------------------------------------------------

def run_monthly(con: duckdb.DuckDBPyConnection, month: Month, pack: RulePack, run_id: str,
                options: MonthlyOptions = MonthlyOptions()) -> MonthlyResult:
    """Everything of M in one transaction, validated before it commits (quality gates 2-4): a failed gate
    raises GateFailed and leaves the warehouse as it was. Channel files are rendered here and returned, for
    the caller to write after the commit."""
    require_bill(con, month)
    snapshot = snapshot_date_for(con, month)
    if snapshot is None or snapshot < month.first_day:
        found = f"the latest is {snapshot:%Y%m%d}" if snapshot else "none is loaded"
        raise MonthlyError(f"no ACCT snapshot dated in {month} ({found})")
    check_ordering(con, month, options.previous_pack_version or pack.version)
    complete = window_complete(con, month)
    with transaction(con):
        aggregate_subscriber_month(con, month, complete)
        checks = [gate_grading_inputs(con, month, WINDOW, options.results_dir).raise_if_failed().as_dict()]
        points = run_points(con, month, pack)
        if complete:
            result = grade(con, month, pack, snapshot)
            result.files = _render_changes(con, month, options.channels)
            checks.append(gate_outputs(con, month, pack, _channel_counts(result.files, options.channels),
                                       options.results_dir).raise_if_failed().as_dict())
            checks.append(gate_breaker(con, month, pack, options.accept_mass_change,
                                       options.results_dir).raise_if_failed().as_dict())
        else:
            result = MonthlyResult(month, graded=False,
                                   note=f"no tiers: BILL for {month - 5}..{month} is incomplete")
        result.files += _render_points_expiry(con, month, pack, options.channels)
        result.points, result.checks = points, checks
        _record_month_state(con, month, pack, complete, run_id)
    return result


def _render_changes(con, month: Month, channels: tuple[Channel, ...]) -> list[OutFile]:
    return render_month(con, month, list(channels)) if by_feed(list(channels), CHANGES) else []


def _render_points_expiry(con, month: Month, pack: RulePack, channels: tuple[Channel, ...]) -> list[OutFile]:
    if not by_feed(list(channels), POINTS):
        return []
    return render_points_expiry(con, month, list(channels), points_expiring(con, month, pack.points.expiry_months))


def _channel_counts(files: list[OutFile], channels: tuple[Channel, ...]) -> dict:
    """Records written per change channel, with the change types it carries (gate 3 compares them with
    mart.grade_change); a configured channel that rendered no file counts 0."""
    written = {f.channel: f.records for f in files}
    return {ch.name: (written.get(ch.name, 0), ch.changes) for ch in by_feed(list(channels), CHANGES)}


def _record_month_state(con, month: Month, pack: RulePack, graded: bool, run_id: str) -> None:
    con.execute("DELETE FROM ops.month_state WHERE month = ?", [month.first_day])
    con.execute("INSERT INTO ops.month_state VALUES (?, ?, ?, ?, ?, ?, ?, false)",
                [month.first_day, graded, pack.name, pack.version, fingerprint(con, month, pack.version), run_id,
                 datetime.now()])


def mark_delivered(con, month: Month) -> None:
    """Channel files are in the outbox and the analysts' copy is published: the month is complete."""
    con.execute("UPDATE ops.month_state SET delivered = true WHERE month = ?", [month.first_day])


def aggregate_subscriber_month(con, month: Month, complete: bool) -> None:
    """mart.subscriber_month for M from BILL_M (GIFT and DEPOSIT excluded from consumption), with sum6 from
    the stored aggregates of M-5..M-1 (a subscriber without rows in a delivered month counts 0)."""
    m = month.first_day
    item_sums = ",\n".join(f"coalesce(sum(amount_fen) FILTER (WHERE item_code = '{item}'), 0) "
                           f"AS {item.lower()}_fen" for item in BILL_ITEMS)
    con.execute("DELETE FROM mart.subscriber_month WHERE month = ?", [m])
    con.execute(f"""
        INSERT INTO mart.subscriber_month
        WITH items AS (
            SELECT subs_id,
                   coalesce(sum(amount_fen) FILTER (WHERE NOT list_contains($excluded, item_code)), 0)
                       AS cons_fen,
                   {item_sums}
            FROM raw.bill WHERE bill_month = $m GROUP BY subs_id),
        earlier AS (
            SELECT subs_id, sum(cons_fen) AS cons5 FROM mart.subscriber_month
            WHERE month >= $from AND month < $m GROUP BY subs_id)
        SELECT $m, items.*, CASE WHEN $complete THEN items.cons_fen + coalesce(earlier.cons5, 0) END
        FROM items LEFT JOIN earlier USING (subs_id)
        ORDER BY subs_id""", {"m": m, "from": (month - (WINDOW - 1)).first_day, "complete": complete,
                              "excluded": list(EXCLUDED_FROM_CONSUMPTION)})


def run_points(con, month: Month, pack: RulePack) -> dict:
    """Redemptions, expiry and accrual of M (rules.md 'Points'); writes the ledger and mart.points_balance."""
    m, expiry = month.first_day, pack.points.expiry_months
    open_lots = con.sql("""
        SELECT l.subs_id, l.earn_month,
               CAST(l.earned - coalesce(sum(mv.redeemed + mv.expired), 0) AS BIGINT) AS remaining
        FROM staging.points_lot l
        LEFT JOIN staging.points_move mv
               ON mv.subs_id = l.subs_id AND mv.earn_month = l.earn_month AND mv.month < $m
              AND mv.earn_month >= $oldest  -- moves of lots older than 36 months are never read again
        WHERE l.earn_month < $m AND l.earn_month >= $oldest
        GROUP BY l.subs_id, l.earn_month, l.earned HAVING remaining > 0""", params={"m": m, "oldest": (month - expiry).first_day}).pl()
    redemptions = con.sql(
        "SELECT txn_id, subs_id, txn_time, points FROM raw.redeem WHERE txn_time >= ? AND txn_time < ?", params=[m, (month + 1).first_day]).pl()
    multipliers = pl.DataFrame(
        {"tier": list(pack.points.multipliers),
         "mult_num": [f.numerator for f in pack.points.multipliers.values()],
         "mult_den": [f.denominator for f in pack.points.multipliers.values()]},
        schema={"tier": pl.Utf8, "mult_num": pl.Int64, "mult_den": pl.Int64})
    # k is the multiplier of the tier in effect during M: the tier graded for M-1 (unrated if none).
    con.register("multipliers", multipliers)
    accrual_base = con.sql("""
        SELECT s.subs_id, s.cons_fen, coalesce(k.mult_num, 0) AS mult_num, coalesce(k.mult_den, 1) AS mult_den
        FROM mart.subscriber_month s
        LEFT JOIN mart.tier_assignment a ON a.subs_id = s.subs_id AND a.grade_month = $prev
        LEFT JOIN multipliers k ON k.tier = a.tier
        WHERE s.month = $m""", params={"m": m, "prev": (month - 1).first_day}).pl()
    con.unregister("multipliers")
    result = apply_points_month(month, open_lots, redemptions, accrual_base, expiry)
    _write_points(con, month, result)
    return {"earned": int(result.balances["earned"].sum() or 0),
            "redeemed": int(result.balances["redeemed"].sum() or 0),
            "expired": int(result.balances["expired"].sum() or 0),
            "rejected_redemptions": result.rejected.height}


def _write_points(con, month: Month, result) -> None:
    m = month.first_day
    for table, column in (("staging.points_lot", "earn_month"), ("staging.points_move", "month"),
                          ("staging.redemption", "month"), ("mart.points_balance", "month")):
        con.execute(f"DELETE FROM {table} WHERE {column} = ?", [m])
    con.execute("DELETE FROM ops.quarantine WHERE reason = 'INSUFFICIENT_POINTS' AND period = ?", [m])
    con.register("new_lots", result.new_lots)
    con.execute("INSERT INTO staging.points_lot SELECT subs_id, earn_month, earned FROM new_lots")
    con.register("lot_changes", result.lot_changes)
    con.execute("INSERT INTO staging.points_move SELECT ?, subs_id, earn_month, redeemed, expired "
                "FROM lot_changes", [m])
    con.register("accepted", result.accepted)
    con.register("rejected", result.rejected)
    con.execute("""INSERT INTO staging.redemption
                   SELECT $m, txn_id, subs_id, txn_time, points, 'APPLIED' FROM accepted
                   UNION ALL SELECT $m, txn_id, subs_id, txn_time, points, 'INSUFFICIENT_POINTS' FROM rejected
                   ORDER BY 2""", {"m": m})
    # A redemption larger than the balance is quarantined with its file and line, never applied in part.
    con.execute("""INSERT INTO ops.quarantine
                   SELECT r.file_name, NULL, r.line_no,
                          concat_ws('|', r.txn_id, r.subs_id, strftime(r.txn_time, '%Y%m%d%H%M%S'),
                                    r.points, r.channel),
                          'INSUFFICIENT_POINTS',
                          'redemption of ' || r.points || ' points, balance at its time ' || x.balance_at_time,
                          $m, NULL
                   FROM rejected x JOIN raw.redeem r USING (txn_id) ORDER BY r.file_name, r.line_no""", {"m": m})
    con.register("balances", result.balances)
    con.execute("""
        INSERT INTO mart.points_balance
        WITH pyp AS (SELECT subs_id, sum(earned) AS prior_year_points FROM staging.points_lot
                     WHERE year(earn_month) = $year - 1 GROUP BY subs_id)
        SELECT $m, subs_id, coalesce(b.earned, 0), coalesce(b.redeemed, 0), coalesce(b.expired, 0),
               coalesce(b.balance, 0), coalesce(pyp.prior_year_points, 0)
        FROM balances b FULL OUTER JOIN pyp USING (subs_id)
        ORDER BY subs_id""", {"m": m, "year": month.year})
    for name in ("new_lots", "lot_changes", "accepted", "rejected", "balances"):
        con.unregister(name)


# --- grading -------------------------------------------------------------------------------------------------

def grading_metrics(con, month: Month, snapshot) -> pl.DataFrame:
    """One row per subscriber of S(M) with every metric of the catalogue (rulepack.METRIC_CATALOGUE)."""
    return con.sql("""
        WITH snap AS (
            SELECT * FROM raw.subscriber_history
            WHERE valid_from <= $snap AND (valid_to IS NULL OR valid_to > $snap)),
        sm AS (
            SELECT subs_id,
                   sum(cons_fen) FILTER (WHERE month = $m) AS cons_fen,
                   sum(cons_fen) FILTER (WHERE month >= $m3) AS sum3_fen,
                   sum(cons_fen) FILTER (WHERE month >= $m6) AS sum6_fen,
                   sum(cons_fen) AS sum12_fen,
                   sum(cons_fen) FILTER (WHERE month >= $m6 AND month < $m) AS cons_prev5_fen,
                   sum(cons_fen) FILTER (WHERE month = $m6) AS cons_m5_fen,
                   sum(data_fen) FILTER (WHERE month = $m) AS data_fen,
                   sum(roam_fen) FILTER (WHERE month = $m) AS roam_fen,
                   count(*) FILTER (WHERE month >= $m6 AND roam_fen > 0) AS roam_months6
            FROM mart.subscriber_month WHERE month >= $m12 AND month <= $m GROUP BY subs_id),
        susp AS (
            SELECT subs_id, count(*) FILTER (WHERE susp_type = 'ARREARS_TWOWAY') AS susp12,
                   count(*) FILTER (WHERE susp_type = 'ARREARS_ONEWAY') AS susp12_oneway
            FROM raw.susp WHERE event_time >= $m12 AND event_time < $next GROUP BY subs_id),
        lots AS (
            SELECT subs_id,
                   sum(earned) FILTER (WHERE year(earn_month) = $year - 1) AS prior_year_points,
                   sum(earned) FILTER (WHERE earn_month >= $m12) AS points_earned_12m
            FROM staging.points_lot WHERE earn_month <= $m GROUP BY subs_id),
        bal AS (SELECT subs_id, balance FROM mart.points_balance WHERE month = $m)
        SELECT snap.subs_id, snap.status, snap.subs_type, snap.brand, snap.region_code,
               snap.realname_flag, snap.vip_flag, snap.group_key_flag,
               CAST($m_index - (year(snap.open_date) * 12 + month(snap.open_date) - 1) + 1 AS BIGINT)
                   AS tenure_months,
               coalesce(sm.cons_fen, 0)::BIGINT AS cons_fen, coalesce(sm.sum3_fen, 0)::BIGINT AS sum3_fen,
               coalesce(sm.sum6_fen, 0)::BIGINT AS sum6_fen, coalesce(sm.sum12_fen, 0)::BIGINT AS sum12_fen,
               coalesce(sm.cons_prev5_fen, 0)::BIGINT AS cons_prev5_fen,
               coalesce(sm.cons_m5_fen, 0)::BIGINT AS cons_m5_fen,
               coalesce(sm.data_fen, 0)::BIGINT AS data_fen, coalesce(sm.roam_fen, 0)::BIGINT AS roam_fen,
               coalesce(sm.roam_months6, 0)::BIGINT AS roam_months6,
               coalesce(susp.susp12, 0)::BIGINT AS susp12, coalesce(susp.susp12_oneway, 0)::BIGINT AS susp12_oneway,
               coalesce(lots.prior_year_points, 0)::BIGINT AS prior_year_points,
               coalesce(lots.points_earned_12m, 0)::BIGINT AS points_earned_12m,
               coalesce(bal.balance, 0)::BIGINT AS points_balance
        FROM snap LEFT JOIN sm USING (subs_id) LEFT JOIN susp USING (subs_id)
        LEFT JOIN lots USING (subs_id) LEFT JOIN bal USING (subs_id)
        ORDER BY snap.subs_id""", params={
        "snap": snapshot, "m": month.first_day, "m3": (month - 2).first_day, "m6": (month - 5).first_day,
        "m12": (month - 11).first_day, "next": (month + 1).first_day, "year": month.year,
        "m_index": month.index}).pl()


def active_overrides(con, month: Month) -> pl.DataFrame:
    """Overrides holding for M: the latest delivery of each override_id wins; tier NONE revokes."""
    return con.sql("""
        WITH latest AS (
            SELECT o.*, d.day FROM raw.override o
            JOIN ops.delivery d ON d.file_name = o.file_name AND d.status = 'LOADED'
             AND d.period <= strftime($last_day, '%Y%m%d')  -- what was delivered by M's end (the fingerprint's set)
            QUALIFY row_number() OVER (PARTITION BY override_id ORDER BY d.day DESC, o.file_name DESC,
                                       o.line_no DESC) = 1)
        SELECT subs_id, tier FROM latest
        WHERE tier <> 'NONE' AND from_month <= $m AND to_month >= $m
        QUALIFY row_number() OVER (PARTITION BY subs_id ORDER BY day DESC, override_id DESC) = 1
        ORDER BY subs_id""", params={"m": month.first_day, "last_day": month.last_day}).pl()


def grade(con, month: Month, pack: RulePack, snapshot) -> MonthlyResult:
    metrics = grading_metrics(con, month, snapshot)  # sorted by subs_id: the engine's fast paths rely on it
    ranks = rank_table(pack, metrics) if pack.ranks else None
    assigned = assign_tiers(pack, metrics, active_overrides(con, month), ranks=ranks)
    assigned = apply_protection(assigned, _spell_start(con, month), month, list(pack.tiers),
                                pack.protection_months)
    assigned = assigned.with_columns(compute_tags(pack, metrics, assigned, ranks=ranks)["tags"])
    _write_tier_assignment(con, month, pack, metrics, assigned)
    write_grade_change(con, month, list(pack.tiers))
    _write_entitlement_changes(con, month, pack, assigned)
    rebuild_tier_history(con, month)
    rebuild_tier_current(con)
    write_tier_summary(con, month)
    counts = dict(con.execute("SELECT change_type, count(*) FROM mart.grade_change WHERE grade_month = ? "
                              "GROUP BY ALL", [month.first_day]).fetchall())
    tiers = dict(con.execute("SELECT tier, count(*) FROM mart.tier_assignment WHERE grade_month = ? "
                             "GROUP BY ALL", [month.first_day]).fetchall())
    return MonthlyResult(month, graded=True, subscribers=metrics.height, changes=counts, tiers=tiers)


def _write_entitlement_changes(con, month: Month, pack: RulePack, assigned: pl.DataFrame) -> None:
    """Fills entitlements_gained / _lost of M's grade_change rows from the tiers and tags of M-1 and M."""
    previous = con.sql("SELECT subs_id, tier, tags FROM mart.tier_assignment WHERE grade_month = $prev "
                       "ORDER BY subs_id", params={"prev": (month - 1).first_day}).pl()
    changes = entitlement_changes(pack, previous, assigned.select("subs_id", "tier", "tags"))
    con.register("entitlement_changes", changes)
    con.execute("""
        UPDATE mart.grade_change g
        SET entitlements_gained = e.entitlements_gained, entitlements_lost = e.entitlements_lost
        FROM entitlement_changes e WHERE g.grade_month = $m AND g.subs_id = e.subs_id""",
                {"m": month.first_day})
    con.unregister("entitlement_changes")


def _spell_start(con, month: Month) -> pl.DataFrame:
    """Tier in effect during M (graded for M-1) and the grading month its spell began."""
    return con.sql("""
        SELECT h.subs_id, h.tier AS prev_tier, CAST(h.valid_from - INTERVAL 1 MONTH AS DATE) AS since_month
        FROM mart.tier_history h
        WHERE h.valid_from <= $m AND (h.valid_to IS NULL OR h.valid_to > $m)""", params={"m": month.first_day}).pl()


def _write_tier_assignment(con, month: Month, pack: RulePack, metrics: pl.DataFrame,
                           assigned: pl.DataFrame) -> None:
    rows = assigned.join(metrics.select("subs_id", "sum6_fen", "tenure_months", "prior_year_points", "susp12",
                                        "region_code"), on="subs_id", how="left")
    con.execute("DELETE FROM mart.tier_assignment WHERE grade_month = ?", [month.first_day])
    con.register("assigned", rows)
    con.execute("""
        INSERT INTO mart.tier_assignment
        SELECT $m, subs_id, tier, reason, computed_tier, protected, sum6_fen, tenure_months, prior_year_points,
               susp12, tags, $version, region_code
        FROM assigned ORDER BY subs_id""", {"m": month.first_day, "version": pack.version})
    con.unregister("assigned")
