"""Channel records (outputs.md "Channel files"): the facts of each feed and their bytes in each channel's format.

Rendering is set-based (DuckDB for the lookups, Polars for the records and lines) and deterministic: rows sorted
by subs_id, JSON with fixed key order and separators, `\\n` line ends, no timestamps, so a rerun produces
byte-identical files. Facts per feed:
- changes (boss, sms, crm): mart.grade_change rows of M (and mart.entitlement_change rows for a channel that
  selects ENTITLEMENTS), with msisdn / region_code / manager_id from S(M) (the last known version for a
  subscriber absent from S(M)) and tags from mart.tier_assignment of M;
- points_expiry: the points left at the end of M of the lot that expires at the end of M+1, for subscribers
  of S(M) who are not cancelled;
- sms_lost_daily: subscribers holding a rated tier on day D who are CANCELLED in, or vanished from, the ACCT
  snapshot of D, having been present and not cancelled in the snapshot before it;
- sms_at_risk: subscribers of S(M), not cancelled, whose tags of M hold DOWNGRADE_RISK, with their tier (code
  and the pack's label) and the line of the rule that assigned it (RulePack.rule_lines; null where none).
"""
from __future__ import annotations

import hashlib
import os
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import date
from pathlib import Path

import duckdb
import polars as pl

from transforms.core.calendar import Month
from transforms.core.files import FILE_MODE, make_private_dirs
from transforms.deliver.channels import AT_RISK_TAG, LIST_SEPARATOR, Channel, ChannelError
from transforms.grade.grading import ABSENT_REASON
from transforms.grade.rulepack import RulePack
from transforms.ingest.control import control_line
from transforms.warehouse.db import last_known_of, scalar, snapshot_date_for
from transforms.warehouse.ranges import EVERYONE, SubsRange


@dataclass(frozen=True)
class OutFile:
    channel: str
    relpath: str              # under <home>/outbox/
    kept: Path                # where its bytes wait until delivered (transforms.runs.owed.owed_folder)
    records: int
    md5: str
    control: bytes | None = None  # the `.chk` line, written after the payload

    @property
    def control_relpath(self) -> str:
        return str(Path(self.relpath).with_suffix(".chk"))

    @property
    def payload(self) -> bytes:
        """The file's bytes, read back (a file may be larger than memory: the outbox copies it by blocks)."""
        return self.kept.read_bytes()


# --- facts: one row per record, every whitelisted field, sorted by subs_id -----------------------------------------


def _snapshot_for(con, month: Month) -> date:
    snap = snapshot_date_for(con, month)
    if snap is None:
        raise ChannelError(f"no ACCT snapshot on or before {month.last_day}: no channel files for {month}")
    return snap


def change_context(con: duckdb.DuckDBPyConnection, month: Month, subs_ids: pl.DataFrame,
                   span: SubsRange = EVERYONE) -> pl.DataFrame:
    """What the change records of M say besides the change, for the subscribers of `subs_ids` (every change
    channel's records at once: the lookups below read the subscriber history), all in `span`: msisdn,
    region_code, manager_id from S(M) (the last known version when absent), tags of M and the reason of M's
    change. The range filter reaches the history's scan (below its window): a range reads only its rows."""
    if not scalar(con, "SELECT count(*) FROM mart.tier_assignment WHERE grade_month = ?", [month.first_day]):
        raise ChannelError(f"{month} is not graded: no channel files")
    con.register("channel_subs", subs_ids.select("subs_id").unique())
    try:
        return con.sql(f"""
            WITH who AS (SELECT subs_id, msisdn, region_code, manager_id
                         FROM ({last_known_of("$snap", "SELECT subs_id FROM channel_subs")}) WHERE {span.sql()}),
                 tags AS (SELECT subs_id, tags FROM mart.tier_assignment WHERE grade_month = $m AND {span.sql()}),
                 why AS (SELECT subs_id, reason FROM mart.grade_change WHERE grade_month = $m AND {span.sql()}
                         UNION ALL SELECT subs_id, reason FROM mart.entitlement_change
                         WHERE grade_month = $m AND {span.sql()})
            SELECT c.subs_id, who.msisdn, who.region_code, who.manager_id,
                   list_sort(coalesce(tags.tags, []::VARCHAR[])) AS tags, why.reason
            FROM channel_subs c LEFT JOIN who USING (subs_id) LEFT JOIN tags USING (subs_id)
            LEFT JOIN why USING (subs_id) WHERE {span.sql("c.subs_id")}""",
                       params={"m": month.first_day, "snap": _snapshot_for(con, month), **span.params}).pl()
    finally:
        con.unregister("channel_subs")


def change_facts(month: Month, records: pl.DataFrame, context: pl.DataFrame) -> pl.DataFrame:
    """Every field a change channel may carry for the given records of M (corrections.CHANGE_COLUMNS + kind),
    with their `context` (change_context): the reason (REVERSAL for a reversal), the effective date, the
    entitlements sorted, and their BOSS form, sorted by subs_id."""
    facts = records.join(context, on="subs_id", how="left").select(
        "subs_id", "msisdn", "from_tier", "to_tier", "change_type",
        reason=pl.when(pl.col("kind") == "REVERSAL").then(pl.lit("REVERSAL")).otherwise(pl.col("reason")),
        effective_date=pl.lit((month + 1).first_day.strftime("%Y%m%d")), grade_month=pl.lit(month.compact),
        entitlements_gained=pl.col("entitlements_gained").list.sort(),
        entitlements_lost=pl.col("entitlements_lost").list.sort(),
        region_code="region_code", manager_id="manager_id", tags="tags").sort("subs_id")
    # BOSS form of the entitlement changes: gained then lost, each sorted, e.g. +VIP_LOUNGE;-NIGHT_NO_SUSPEND
    signed = pl.concat_list(pl.col("entitlements_gained").list.eval(pl.lit("+") + pl.element()),
                            pl.col("entitlements_lost").list.eval(pl.lit("-") + pl.element()))
    return facts.with_columns(entitlements=signed.list.join(LIST_SEPARATOR))


def points_facts(con: duckdb.DuckDBPyConnection, month: Month, expiring: pl.DataFrame,
                 span: SubsRange = EVERYONE) -> pl.DataFrame:
    """Expiring points (of the subscribers of `expiring` in `span`) of subscribers in S(M) who are not cancelled
    (a cancelled number may be reassigned)."""
    con.register("expiring_points", expiring.select("subs_id", pl.col("points").cast(pl.Int64)))
    try:
        return con.sql(f"""
            SELECT e.subs_id, h.msisdn, h.region_code, h.manager_id, e.points, $expiry AS expiry_date
            FROM expiring_points e JOIN raw.snapshot_as_of($snap) h USING (subs_id)
            WHERE e.points > 0 AND h.status <> 'CANCELLED' AND {span.sql("h.subs_id")}
            ORDER BY e.subs_id""", params={"snap": _snapshot_for(con, month),
                                           "expiry": (month + 1).last_day.strftime("%Y%m%d"), **span.params}).pl()
    finally:
        con.unregister("expiring_points")


def at_risk_facts(con: duckdb.DuckDBPyConnection, month: Month, pack: RulePack,
                  span: SubsRange = EVERYONE) -> pl.DataFrame:
    """Subscribers of S(M) in `span`, not cancelled, tagged DOWNGRADE_RISK in M: their tier, its label and the
    line to keep (metric and value of the rule that assigned the tier, when the pack states one)."""
    lines = pl.DataFrame([{"tier": tier, "reason": reason, "line_metric": metric, "line": int(line)}
                          for (tier, reason), (metric, line) in pack.rule_lines().items() if line.denominator == 1],
                         schema={"tier": pl.String, "reason": pl.String, "line_metric": pl.String, "line": pl.Int64})
    labels = pl.DataFrame({"tier": list(pack.tier_labels), "tier_label": list(pack.tier_labels.values())},
                          schema={"tier": pl.String, "tier_label": pl.String})
    con.register("rule_lines", lines)
    con.register("tier_labels", labels)
    try:
        return con.sql(f"""
            SELECT a.subs_id, h.msisdn, h.region_code, h.manager_id, a.tier, l.tier_label, a.reason,
                   r.line_metric, r.line, $grade_month AS grade_month
            FROM mart.tier_assignment a JOIN raw.snapshot_as_of($snap) h USING (subs_id)
            LEFT JOIN rule_lines r USING (tier, reason) LEFT JOIN tier_labels l USING (tier)
            WHERE a.grade_month = $m AND list_contains(a.tags, $tag) AND h.status <> 'CANCELLED'
              AND {span.sql("a.subs_id")}
            ORDER BY a.subs_id""", params={"m": month.first_day, "snap": _snapshot_for(con, month),
                                           "tag": AT_RISK_TAG, "grade_month": month.compact,
                                           **span.params}).pl()
    finally:
        con.unregister("rule_lines")
        con.unregister("tier_labels")


def lost_facts(con: duckdb.DuckDBPyConnection, day: date, unrated: str) -> pl.DataFrame:
    """Holders of a rated tier on `day` who are CANCELLED in, or vanished from, that day's snapshot, and were
    present and not cancelled in the snapshot before (so one cancellation gives one notice).

    The tier held on `day` comes from mart.tier_history (the spell in effect that day): in a nightly run it is
    mart.tier_current's tier, and a rerun of an old day gives the same answer. After a first snapshot only the
    subscribers whose version ended on `day` can be newly cancelled or gone (raw.subscriber_history changes only
    on snapshot dates): the day's few changes are looked at, not the whole history."""
    previous = scalar(con, "SELECT max(snapshot_date) FROM ops.snapshot WHERE snapshot_date < ?", [day])
    return con.sql(f"""
        WITH changed AS (SELECT DISTINCT subs_id FROM raw.subscriber_history WHERE valid_to = $d),
             held AS (
                SELECT subs_id, tier FROM mart.tier_history
                WHERE valid_from <= $d AND (valid_to IS NULL OR valid_to > $d) AND tier <> $unrated
                  AND (CAST($prev AS DATE) IS NULL OR subs_id IN (SELECT subs_id FROM changed))),
             on_day AS (SELECT subs_id, status AS status_on_day FROM raw.snapshot_as_of($d)
                        SEMI JOIN held USING (subs_id)),
             before AS (SELECT subs_id, status AS status_before FROM raw.snapshot_as_of($prev)
                        SEMI JOIN held USING (subs_id)),
             last_known AS (SELECT subs_id, msisdn, region_code, manager_id
                            FROM ({last_known_of("$d", "SELECT subs_id FROM held")}))
        SELECT held.subs_id, lk.msisdn, held.tier AS from_tier, $unrated AS to_tier, 'LOST' AS change_type,
               CASE WHEN on_day.subs_id IS NULL THEN $absent ELSE 'CANCELLED_IN_SNAPSHOT' END AS reason,
               $effective AS effective_date, lk.region_code, lk.manager_id
        FROM held LEFT JOIN on_day USING (subs_id) LEFT JOIN before USING (subs_id)
        LEFT JOIN last_known lk USING (subs_id)
        WHERE (on_day.subs_id IS NULL OR status_on_day = 'CANCELLED')
          AND (CAST($prev AS DATE) IS NULL OR coalesce(status_before, 'CANCELLED') <> 'CANCELLED')
        ORDER BY held.subs_id""", params={"d": day, "prev": previous, "unrated": unrated, "absent": ABSENT_REASON,
                                          "effective": day.strftime("%Y%m%d")}).pl()


# --- rendering ----------------------------------------------------------------------------------------------------

# Rows turned into text at a time: a file's bytes go to disk chunk by chunk, so that a month telling most
# subscribers (the first graded month, a mass regrade: 8.5M NEW records at 10M subscribers) never holds a file
# in memory, nor a text column per field of all its rows.
RENDER_CHUNK_ROWS = 500_000
COPY_BLOCK_BYTES = 1 << 20  # a part rendered apart is appended to its file by blocks


class FileWriter:
    """One channel file, written part by part to `kept` (each part's facts sorted by subs_id, the parts in
    subs_id order): the same bytes however the facts are split, and whether a part is added here (`add`) or was
    rendered apart (render_part, then `append`). Use as a context manager; `finish` makes the file durable and
    returns it. `part`: the lines of a part of the file only (no CSV header; render_part)."""

    def __init__(self, channel: Channel, relpath: str, kept: Path, part: bool = False):
        self.channel, self.relpath, self.kept = channel, relpath, kept
        self.records = 0
        self._md5, self._size = hashlib.md5(), 0
        self._bad: dict[str, tuple[int, object]] = {}  # column -> (values holding | or a line break, first subs_id)
        make_private_dirs(kept.parent)  # the file carries msisdn, as the outbox does
        self._file = open(kept, "wb")
        os.fchmod(self._file.fileno(), FILE_MODE)
        if channel.format == "csv" and not part:  # the header names the fields: the same with or without rows
            self._write(_text(channel, pl.DataFrame(schema=dict.fromkeys(channel.fields, pl.String)), header=True))

    def __enter__(self) -> FileWriter:
        return self

    def __exit__(self, *exc) -> None:
        self._file.close()

    def add(self, facts: pl.DataFrame) -> None:
        self.add_rows(file_rows(self.channel, facts))

    def add_rows(self, rows: pl.DataFrame) -> None:
        """Rows of file_rows, rendered and written."""
        for chunk in rows.iter_slices(RENDER_CHUNK_ROWS):
            if self.channel.format == "pipe_gbk_with_chk":
                self._note_bad_values(chunk)
            self._write(_text(self.channel, chunk, header=False))
            self.records += chunk.height

    def append(self, lines: Path, part: RenderedPart) -> None:
        """The lines of a part rendered apart (render_part wrote them to `lines`), after what was written."""
        with open(lines, "rb") as source:
            while block := source.read(COPY_BLOCK_BYTES):
                self._write_bytes(block)
        self.records += part.records
        for column, (count, first) in part.bad:
            known = self._bad.get(column)
            self._bad[column] = (count, first) if known is None else (known[0] + count, known[1])

    def finish(self) -> OutFile:
        for column in self.channel.fields:  # named by subs_id, never by the value (it may be personal data)
            if column in self._bad:
                count, subs_id = self._bad[column]
                who = f", e.g. subs_id {subs_id}" if subs_id is not None else ""
                raise ChannelError(f"{self.channel.name}: {count} value(s) of {column} hold '|' or a line break{who}")
        self._file.flush()
        os.fsync(self._file.fileno())
        self._file.close()
        md5, control = self._md5.hexdigest(), None
        if self.channel.format == "pipe_gbk_with_chk":
            control = control_line(Path(self.relpath).name, self.records, self._size, md5, self.channel.encoding)
        return OutFile(self.channel.name, self.relpath, self.kept, self.records, md5, control)

    def _write(self, text: str) -> None:
        self._write_bytes(_encode(self.channel, self.relpath, text))

    def _write_bytes(self, data: bytes) -> None:
        self._file.write(data)
        self._md5.update(data)
        self._size += len(data)

    def _note_bad_values(self, chunk: pl.DataFrame) -> None:
        """extracts.md record format: `|` separated, empty field = null. A value holding `|` or a line break
        would shift the columns for the receiver, so it stops the run instead (counted over the whole file)."""
        text = _as_text(chunk, empty_as_null=False)
        for column in chunk.columns:
            found = text.filter(pl.col(column).str.contains(r"[|\r\n]"))
            if found.height:
                count, first = self._bad.get(column, (0, found["subs_id"][0] if "subs_id" in found.columns else None))
                self._bad[column] = (count + found.height, first)


@dataclass(frozen=True)
class RenderedPart:
    """What render_part wrote: its records, the values that would shift a pipe file's columns (column, (count,
    first subs_id)), and the refusal that stopped it (a value the file's encoding cannot carry) with the piece it
    was met in."""
    records: int
    bad: tuple[tuple[str, tuple[int, object]], ...] = ()
    refusal: str | None = None
    refused_in: int = 0


def file_rows(channel: Channel, facts: pl.DataFrame) -> pl.DataFrame:
    """The facts as the channel's file carries them: its fields, in order, the template and parameters made."""
    return facts.with_columns(**_derived_columns(channel)).select(channel.fields)


def render_part(channel: Channel, relpath: str, pieces: Iterable[pl.DataFrame], lines: Path) -> RenderedPart:
    """Pieces of rows of file_rows (a part of the file `relpath`, in subs_id order) rendered to `lines`, for
    FileWriter.append: the bytes FileWriter.add writes for them. A refusal is returned, not raised, so that the
    file's writer raises the first in file order."""
    with FileWriter(channel, relpath, lines, part=True) as writer:
        for piece, rows in enumerate(pieces):
            try:
                writer.add_rows(rows)
            except ChannelError as exc:
                return RenderedPart(writer.records, refusal=str(exc), refused_in=piece)
    return RenderedPart(writer.records, tuple(writer._bad.items()))


def _text(channel: Channel, rows: pl.DataFrame, header: bool) -> str:
    """The lines of some rows in the channel's format (with the CSV header when `header`)."""
    if channel.format == "jsonl":
        return _joined_lines(rows.select(line=pl.struct(channel.fields).struct.json_encode()))
    if channel.format == "csv":
        return _as_text(rows, empty_as_null=True).write_csv(line_terminator="\n", quote_style="necessary",
                                                             include_header=header)
    return _joined_lines(_pipe_lines(_as_text(rows, empty_as_null=False)))


def _derived_columns(channel: Channel) -> dict[str, pl.Expr]:
    extra = {}
    if channel.templates:
        extra["template"] = pl.col("change_type").replace_strict(channel.templates, return_dtype=pl.Utf8)
    elif channel.template:
        extra["template"] = pl.lit(channel.template, pl.Utf8)
    if channel.parameters:
        extra["parameters"] = pl.struct(list(channel.parameters))
    return extra


def _as_text(rows: pl.DataFrame, empty_as_null: bool) -> pl.DataFrame:
    """Every column as text: lists joined with ';', numbers in decimal, null kept (written empty)."""
    exprs = []
    for name, dtype in rows.schema.items():
        col = pl.col(name)
        text = col.list.join(LIST_SEPARATOR) if isinstance(dtype, pl.List) else col.cast(pl.Utf8)
        if empty_as_null:
            text = pl.when(text == "").then(None).otherwise(text)
        exprs.append(text.alias(name))
    return rows.select(exprs)


def _pipe_lines(rows: pl.DataFrame) -> pl.DataFrame:
    return rows.select(line=pl.concat_str([pl.col(c).fill_null("") for c in rows.columns], separator="|"))


def _joined_lines(lines: pl.DataFrame) -> str:
    if lines.height == 0:
        return ""
    return lines.select(pl.col("line").str.join("\n")).item() + "\n"


def _encode(channel: Channel, relpath: str, text: str) -> bytes:
    try:
        return text.encode("gbk" if channel.encoding == "GBK" else "utf-8")
    except UnicodeEncodeError as exc:
        raise ChannelError(f"{relpath}: {text[exc.start:exc.end]!r} cannot be written in {channel.encoding}") \
            from None
