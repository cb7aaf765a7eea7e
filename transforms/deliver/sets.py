"""The channel sets of a month or a day: what each channel is sent now, rendered, and recorded as told.

A graded month sends each change channel its first file (set 1, `GRADE_CHG_202512.dat`, always written, empty
when nothing changed), and every regrade that changes what the channel must know sends a numbered correction
set (`GRADE_CHG_202512_02.dat`, ...) holding only the difference (transforms.deliver.corrections). The
points-expiry notice and the opt-in at-risk notice work the same way, without reversals (a reminder is not taken
back; a subscriber is told again only when their points, or their tier at risk, changed). A day whose ACCT
snapshot shows cancellations sends the nightly LOST notices, which count as told to the SMS gateway for that
day's month, so the month's SMS file does not repeat them.

A month's sets are computed, rendered and recorded (ops.sent_record) range by range of subs_id
(transforms.warehouse.ranges), so that a month telling most subscribers holds one range's frames at a time; each
file is written in subs_id order, the same bytes as in one piece. The files go into the caller's folder of owed
files (transforms.runs.owed), and the caller owes them in the transaction that records them.
"""
from __future__ import annotations

from collections.abc import Callable
from contextlib import ExitStack
from dataclasses import dataclass, field
from datetime import date
from pathlib import Path, PurePosixPath

import duckdb
import polars as pl

from transforms.core.calendar import Month
from transforms.deliver.channels import (AT_RISK, AT_RISK_TAG, CHANGES, DAILY_LOST, POINTS, Channel, ChannelError,
                                        by_feed)
from transforms.deliver.corrections import (CHANGE, CHANGE_COLUMNS, NIGHTLY_LOST, NOTICE, change_set, new_notices,
                                            told_state)
from transforms.deliver.render import (FileWriter, OutFile, at_risk_facts, change_context, change_facts, lost_facts,
                                      points_facts)
from transforms.grade.rulepack import RulePack
from transforms.runs.shards import RenderOnShards, ShardMap
from transforms.warehouse.db import scalar
from transforms.warehouse.ranges import EVERYONE, SubsRange, subscriber_ranges

# The nightly LOST notices go out through the SMS gateway: they count as told to the sms channel.
GATEWAY_OF = {"sms_lost_daily": "sms"}


@dataclass(frozen=True)
class ChannelSet:
    channel: str            # the channel the records count as told to (the gateway for nightly notices)
    period: Month           # the grading month they are about
    kind: str               # CHANGE (with REVERSAL records), NIGHTLY_LOST or NOTICE
    out: OutFile


@dataclass(frozen=True)
class _Send:
    """A set about to be sent: its channel, what it counts as told to, its file."""
    channel: Channel
    told_to: str
    period: Month
    kind: str
    relpath: str
    first: bool                                               # the period's first file: written even when empty
    told_as: dict[str, str] = field(default_factory=dict)     # notices: fact column -> ops.sent_record column


# What a set sends for one range of subscribers: the records told (subs_id and what was told: CHANGE_COLUMNS
# (+ kind), points, or to_tier) and the facts rendered.
Part = tuple[pl.DataFrame, pl.DataFrame]


def numbered(relpath: str, set_no: int) -> str:
    """The file of set n: the configured name for set 1, `<stem>_<nn><suffix>` after it."""
    if set_no == 1:
        return relpath
    path = PurePosixPath(relpath)
    return str(path.with_name(f"{path.stem}_{set_no:02d}{path.suffix}"))


def month_sets(con: duckdb.DuckDBPyConnection, month: Month, pack: RulePack, channels: list[Channel], graded: bool,
               expiring: pl.DataFrame, folder: Path, spans: list[SubsRange] | None = None,
               shards: ShardMap | None = None) -> list[ChannelSet]:
    """The sets month M sends now, written under `folder` and recorded: when graded, per change channel the
    difference between M's changes (graded with `pack`) and what it was told, per at-risk channel the notices
    not yet sent; per points channel the notices not yet sent (`expiring`: subs_id, points). `spans`: M's
    subscriber ranges, when the caller has them. `shards`: the files are rendered on them (RenderOnShards)."""
    changes = by_feed(channels, CHANGES) if graded else []
    notices = [(c, {"points": "points"}) for c in by_feed(channels, POINTS)]
    if graded and by_feed(channels, AT_RISK):
        if AT_RISK_TAG not in pack.tags:
            raise ChannelError(f"channel sms_at_risk tells the subscribers tagged {AT_RISK_TAG}, a tag pack "
                               f"{pack.name} (version {pack.version}) does not define: remove the channel from "
                               "the configuration or grade with a pack that has the tag")
        notices += [(c, {"tier": "to_tier"}) for c in by_feed(channels, AT_RISK)]
    sends = [_send(con, c, c.name, month, CHANGE, c.relpath(month)) for c in changes] + \
            [_send(con, c, c.name, month, NOTICE, c.relpath(month), told_as) for c, told_as in notices]

    def parts(span: SubsRange) -> list[Part]:
        records = [change_set(_in_force(con, month, c.changes, span), told_state(_sent(con, c.name, month, span)),
                              c.carries_entitlements) for c in changes]
        found = []
        if changes:
            context = change_context(con, month, pl.concat([r.select("subs_id") for r in records]), span)
            found = [(r, change_facts(month, r, context)) for r in records]
        for channel, told_as in notices:
            facts = (points_facts(con, month, span.of(expiring), span) if channel.feed == POINTS
                     else at_risk_facts(con, month, pack, span))
            found.append(_fresh(con, channel.name, month, facts, told_as, span))
        return found

    apart = RenderOnShards(shards, month, [(s.channel, s.relpath) for s in sends]) if shards and sends else None
    return _write_sets(con, sends, (spans or subscriber_ranges(con, month)) if sends else [], parts, folder, apart)


def nightly_sets(con: duckdb.DuckDBPyConnection, day: date, channels: list[Channel], unrated: str,
                 folder: Path) -> list[ChannelSet]:
    """The LOST notices of `day` not already told for its month, written under `folder` and recorded; none when
    no ACCT snapshot is dated that day. The day's first file is always written (empty when nobody was lost); a
    later one only with new notices."""
    if not scalar(con, "SELECT count(*) FROM ops.snapshot WHERE snapshot_date = ?", [day]):
        return []
    month = Month.of(day)
    lost = by_feed(channels, DAILY_LOST)
    sends = [_send(con, c, GATEWAY_OF.get(c.name, c.name), month, NIGHTLY_LOST, c.relpath(month, day)) for c in lost]

    def parts(span: SubsRange) -> list[Part]:
        found, facts = [], lost_facts(con, day, unrated)
        for send in sends:
            notices = new_notices(facts, told_state(_sent(con, send.told_to, month, span)))
            found.append((notices.select("subs_id", "from_tier", "to_tier", "change_type",
                                         entitlements_gained=pl.lit([], pl.List(pl.String)),
                                         entitlements_lost=pl.lit([], pl.List(pl.String))), notices))
        return found

    return _write_sets(con, sends, [EVERYONE], parts, folder)


def _send(con, channel: Channel, told_to: str, period: Month, kind: str, relpath: str,
          told_as: dict[str, str] | None = None) -> _Send:
    free = _free_relpath(con, relpath)
    return _Send(channel, told_to, period, kind, free, free == relpath, told_as or {})


def _write_sets(con, sends: list[_Send], spans: list[SubsRange], parts: Callable[[SubsRange], list[Part]],
                folder: Path, apart: RenderOnShards | None = None) -> list[ChannelSet]:
    """Renders and records every set range by range (`parts(span)`: each set's records and facts in that range),
    in order after everything told before, rendered here or on the shards (`apart`); returns the sets sent: a
    first file always, another only with records (the others' files are removed)."""
    seq = scalar(con, "SELECT coalesce(max(seq), 0) FROM ops.sent_record") + 1
    with ExitStack() as stack:
        writers = [stack.enter_context(FileWriter(s.channel, s.relpath, folder / s.relpath)) for s in sends]
        for span_no, span in enumerate(spans):
            for n, (send, writer, (records, facts)) in enumerate(zip(sends, writers, parts(span))):
                if apart is None:
                    writer.add(facts)
                else:
                    apart.add(span_no, n, facts)
                _record(con, send, seq + n, records)
        if apart is not None:
            apart.render_into(writers)
        files = [writer.finish() for writer in writers]
    sent = []
    for n, (send, out) in enumerate(zip(sends, files)):
        if not (out.records or send.first):
            out.kept.unlink()
            continue
        if out.records and n != len(sent):  # a set before it sent nothing: keep the numbers consecutive
            con.execute("UPDATE ops.sent_record SET seq = ? WHERE seq = ?", [seq + len(sent), seq + n])
        sent.append(ChannelSet(send.told_to, send.period, send.kind, out))
    return sent


def _fresh(con, channel: str, month: Month, facts: pl.DataFrame, told_as: dict[str, str], span: SubsRange) -> Part:
    """The notices of `facts` whose subscriber was not told the same (`told_as`: fact column -> the column of
    ops.sent_record that keeps it) for M."""
    told = (_sent(con, channel, month, span).sort("seq").group_by("subs_id", maintain_order=True).last()
            .select("subs_id", *told_as.values()).rename({v: k for k, v in told_as.items()}))
    fresh = facts.join(told, on=["subs_id", *told_as], how="anti", nulls_equal=True)
    return fresh.select("subs_id", *(pl.col(k).alias(v) for k, v in told_as.items())), fresh


def _record(con, send: _Send, seq: int, records: pl.DataFrame) -> None:
    """Records what a set tells its channel about some subscribers (ops.sent_record)."""
    if not records.height:
        return
    rows = records.with_columns(channel=pl.lit(send.told_to), period=pl.lit(send.period.first_day),
                                seq=pl.lit(seq), relpath=pl.lit(send.relpath))
    if "kind" not in rows.columns:
        rows = rows.with_columns(kind=pl.lit(send.kind))
    con.register("told_now", rows)
    try:
        columns = [c for c in (*CHANGE_COLUMNS, "points") if c in rows.columns]
        con.execute(f"INSERT INTO ops.sent_record (channel, period, seq, relpath, kind, {', '.join(columns)}) "
                    f"SELECT channel, period, seq, relpath, kind, {', '.join(columns)} FROM told_now "
                    "ORDER BY subs_id")
    finally:
        con.unregister("told_now")


def _in_force(con, month: Month, change_types: tuple[str, ...], span: SubsRange) -> pl.DataFrame:
    """The changes of M of the given types in a range: mart.grade_change, and mart.entitlement_change for
    ENTITLEMENTS."""
    return con.sql(f"""
        SELECT subs_id, from_tier, to_tier, change_type, entitlements_gained, entitlements_lost
        FROM (SELECT * FROM mart.grade_change WHERE grade_month = $m
              UNION ALL SELECT * FROM mart.entitlement_change WHERE grade_month = $m)
        WHERE list_contains($types, change_type) AND {span.sql()} ORDER BY subs_id""",
                   params={"m": month.first_day, "types": list(change_types), **span.params}).pl()


def told_counts(con: duckdb.DuckDBPyConnection, month: Month, channels: list[Channel],
                spans: list[SubsRange] | None = None) -> dict:
    """Per change channel, the subscribers whose told state for M is a change, with the change types it carries:
    what gate 3 compares with mart.grade_change (and mart.entitlement_change for ENTITLEMENTS). Counted range by
    range: a mass-change month has told millions."""
    spans = spans or subscriber_ranges(con, month)
    return {c.name: (sum(told_state(_sent(con, c.name, month, span)).height for span in spans), c.changes)
            for c in by_feed(channels, CHANGES)}


def _sent(con, channel: str, month: Month, span: SubsRange = EVERYONE) -> pl.DataFrame:
    return con.sql("SELECT seq, kind, subs_id, from_tier, to_tier, change_type, entitlements_gained, "
                   "entitlements_lost, points FROM ops.sent_record WHERE channel = $c AND period = $m "
                   f"AND {span.sql()} ORDER BY seq, subs_id",
                   params={"c": channel, "m": month.first_day, **span.params}).pl()


def _free_relpath(con, relpath: str) -> str:
    """The first of relpath, relpath_02, ... not yet written, owed or told."""
    taken = {r[0] for r in con.execute("SELECT relpath FROM ops.outbox_file UNION SELECT relpath FROM ops.sent_record "
                                       "UNION SELECT target FROM ops.owed WHERE effect = 'OUTBOX'").fetchall()}
    set_no = 1
    while numbered(relpath, set_no) in taken:
        set_no += 1
    return numbered(relpath, set_no)
