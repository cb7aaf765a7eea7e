"""The channel sets of a month or a day: what each channel is sent now, rendered, and recorded as told.

A graded month sends each change channel its first file (set 1, `GRADE_CHG_202512.dat`, always written, empty
when nothing changed), and every regrade that changes what the channel must know sends a numbered correction
set (`GRADE_CHG_202512_02.dat`, ...) holding only the difference (transforms.deliver.corrections). The
points-expiry notice and the opt-in at-risk notice work the same way, without reversals (a reminder is not taken
back; a subscriber is told again only when their points, or their tier at risk, changed). A day whose ACCT
snapshot shows cancellations sends the nightly LOST notices, which count as told to the SMS gateway for that
day's month, so the month's SMS file does not repeat them.

The caller records the sets (record_sets) and owes their files in the transaction that commits the work.
"""
from __future__ import annotations

from dataclasses import dataclass
from datetime import date
from pathlib import PurePosixPath

import duckdb
import polars as pl

from transforms.core.calendar import Month
from transforms.deliver.channels import (AT_RISK, AT_RISK_TAG, CHANGES, DAILY_LOST, POINTS, Channel, ChannelError,
                                        by_feed)
from transforms.deliver.corrections import (CHANGE, CHANGE_COLUMNS, NIGHTLY_LOST, NOTICE, change_set, new_notices,
                                            told_state)
from transforms.deliver.render import (OutFile, at_risk_facts, change_context, change_facts, lost_facts, points_facts,
                                      render)
from transforms.grade.rulepack import RulePack
from transforms.warehouse.db import scalar

# The nightly LOST notices go out through the SMS gateway: they count as told to the sms channel.
GATEWAY_OF = {"sms_lost_daily": "sms"}


@dataclass(frozen=True)
class ChannelSet:
    channel: str            # the channel the records count as told to (the gateway for nightly notices)
    period: Month           # the grading month they are about
    kind: str               # CHANGE (with REVERSAL records), NIGHTLY_LOST or NOTICE
    records: pl.DataFrame   # subs_id and what was told: CHANGE_COLUMNS (+ kind), points, or to_tier (at risk)
    out: OutFile


def numbered(relpath: str, set_no: int) -> str:
    """The file of set n: the configured name for set 1, `<stem>_<nn><suffix>` after it."""
    if set_no == 1:
        return relpath
    path = PurePosixPath(relpath)
    return str(path.with_name(f"{path.stem}_{set_no:02d}{path.suffix}"))


def month_sets(con: duckdb.DuckDBPyConnection, month: Month, pack: RulePack, channels: list[Channel], graded: bool,
               expiring: pl.DataFrame) -> list[ChannelSet]:
    """The sets month M sends now: when graded, per change channel the difference between M's changes (graded
    with `pack`) and what it was told, per at-risk channel the notices not yet sent; per points channel the
    notices not yet sent (`expiring`: subs_id, points)."""
    sets, due = [], []  # due: (channel, its file, the records it is sent)
    for channel in by_feed(channels, CHANGES) if graded else []:
        records = change_set(_in_force(con, month, channel.changes), told_state(_sent(con, channel.name, month)),
                             channel.carries_entitlements)
        relpath = _free_relpath(con, channel.relpath(month))
        if records.height or relpath == channel.relpath(month):
            due.append((channel, relpath, records))
    if due:
        context = change_context(con, month, pl.concat([records.select("subs_id") for _, _, records in due]))
        for channel, relpath, records in due:
            out = render(channel, change_facts(month, records, context), relpath)
            sets.append(ChannelSet(channel.name, month, CHANGE, records, out))
    notices = [(c, points_facts(con, month, expiring), {"points": "points"}) for c in by_feed(channels, POINTS)]
    if graded and by_feed(channels, AT_RISK):
        if AT_RISK_TAG not in pack.tags:
            raise ChannelError(f"channel sms_at_risk tells the subscribers tagged {AT_RISK_TAG}, a tag pack "
                               f"{pack.name} (version {pack.version}) does not define: remove the channel from "
                               "the configuration or grade with a pack that has the tag")
        notices += [(c, at_risk_facts(con, month, pack), {"tier": "to_tier"}) for c in by_feed(channels, AT_RISK)]
    for channel, facts, told_as in notices:
        sets += _notice_set(con, month, channel, facts, told_as)
    return sets


def _notice_set(con, month: Month, channel: Channel, facts: pl.DataFrame,
                told_as: dict[str, str]) -> list[ChannelSet]:
    """The notices of `facts` whose subscriber was not told the same (`told_as`: fact column -> the column of
    ops.sent_record that keeps it) for M; the month's first file is always written."""
    told = (_sent(con, channel.name, month).sort("seq").group_by("subs_id", maintain_order=True).last()
            .select("subs_id", *told_as.values()).rename({v: k for k, v in told_as.items()}))
    fresh = facts.join(told, on=["subs_id", *told_as], how="anti", nulls_equal=True)
    relpath = _free_relpath(con, channel.relpath(month))
    if not fresh.height and relpath != channel.relpath(month):
        return []
    records = fresh.select("subs_id", *(pl.col(k).alias(v) for k, v in told_as.items()))
    return [ChannelSet(channel.name, month, NOTICE, records, render(channel, fresh, relpath))]


def _in_force(con, month: Month, change_types: tuple[str, ...]) -> pl.DataFrame:
    """The changes of M of the given types: mart.grade_change, and mart.entitlement_change for ENTITLEMENTS."""
    return con.sql("""
        SELECT subs_id, from_tier, to_tier, change_type, entitlements_gained, entitlements_lost
        FROM (SELECT * FROM mart.grade_change WHERE grade_month = $m
              UNION ALL SELECT * FROM mart.entitlement_change WHERE grade_month = $m)
        WHERE list_contains($types, change_type) ORDER BY subs_id""",
                   params={"m": month.first_day, "types": list(change_types)}).pl()


def nightly_sets(con: duckdb.DuckDBPyConnection, day: date, channels: list[Channel],
                 unrated: str) -> list[ChannelSet]:
    """The LOST notices of `day` not already told for its month; none when no ACCT snapshot is dated that day.
    The day's first file is always written (empty when nobody was lost); a later one only with new notices."""
    if not scalar(con, "SELECT count(*) FROM ops.snapshot WHERE snapshot_date = ?", [day]):
        return []
    month, sets = Month.of(day), []
    for channel in by_feed(channels, DAILY_LOST):
        gateway = GATEWAY_OF.get(channel.name, channel.name)
        notices = new_notices(lost_facts(con, day, unrated), told_state(_sent(con, gateway, month)))
        relpath = _free_relpath(con, channel.relpath(month, day))
        if notices.height or relpath == channel.relpath(month, day):
            records = notices.select("subs_id", "from_tier", "to_tier", "change_type",
                                     entitlements_gained=pl.lit([], pl.List(pl.String)),
                                     entitlements_lost=pl.lit([], pl.List(pl.String)))
            sets.append(ChannelSet(gateway, month, NIGHTLY_LOST, records, render(channel, notices, relpath)))
    return sets


def record_sets(con: duckdb.DuckDBPyConnection, sets: list[ChannelSet]) -> None:
    """Records what each set tells its channel (ops.sent_record), in order after everything told before."""
    seq = scalar(con, "SELECT coalesce(max(seq), 0) FROM ops.sent_record") + 1
    for n, item in enumerate(sets):
        rows = item.records.with_columns(channel=pl.lit(item.channel), period=pl.lit(item.period.first_day),
                                         seq=pl.lit(seq + n), relpath=pl.lit(item.out.relpath))
        if "kind" not in rows.columns:
            rows = rows.with_columns(kind=pl.lit(item.kind))
        con.register("told_now", rows)
        try:
            columns = [c for c in (*CHANGE_COLUMNS, "points") if c in rows.columns]
            con.execute(f"INSERT INTO ops.sent_record (channel, period, seq, relpath, kind, {', '.join(columns)}) "
                        f"SELECT channel, period, seq, relpath, kind, {', '.join(columns)} FROM told_now "
                        "ORDER BY subs_id")
        finally:
            con.unregister("told_now")


def told_counts(con: duckdb.DuckDBPyConnection, month: Month, channels: list[Channel]) -> dict:
    """Per change channel, the subscribers whose told state for M is a change, with the change types it carries:
    what gate 3 compares with mart.grade_change (and mart.entitlement_change for ENTITLEMENTS)."""
    return {c.name: (told_state(_sent(con, c.name, month)).height, c.changes) for c in by_feed(channels, CHANGES)}


def _sent(con, channel: str, month: Month) -> pl.DataFrame:
    return con.sql("SELECT seq, kind, subs_id, from_tier, to_tier, change_type, entitlements_gained, "
                   "entitlements_lost, points FROM ops.sent_record WHERE channel = $c AND period = $m "
                   "ORDER BY seq, subs_id", params={"c": channel, "m": month.first_day}).pl()


def _free_relpath(con, relpath: str) -> str:
    """The first of relpath, relpath_02, ... not yet written, owed or told."""
    taken = {r[0] for r in con.execute("SELECT relpath FROM ops.outbox_file UNION SELECT relpath FROM ops.sent_record "
                                       "UNION SELECT target FROM ops.owed WHERE effect = 'OUTBOX'").fetchall()}
    set_no = 1
    while numbered(relpath, set_no) in taken:
        set_no += 1
    return numbered(relpath, set_no)
