"""Channel files (outbox): what the BOSS front end, the SMS gateway and CRM receive (outputs.md "Channel files").

Channels are data (`channels.yaml`): which change types each carries, which fields (from the whitelist below),
format, encoding and path pattern. Rendering is set-based (DuckDB for the facts, Polars for the lines) and
deterministic: rows sorted by subs_id, JSON with fixed key order and separators, `\\n` line ends, no timestamps,
so a rerun produces byte-identical files. Writing is atomic: each file is written aside, fsynced and renamed
over the old one, a control file after its data file. Personal data: msisdn only in the BOSS and SMS channels;
cust_name and cert_no never.

Feeds, fixed by the channel name:
- changes (boss, sms, crm): mart.grade_change rows of M, with msisdn / region_code / manager_id from S(M)
  (the last known version for a subscriber absent from S(M)) and tags from mart.tier_assignment of M;
- points_expiry: the points left at the end of M of the lot that expires at the end of M+1, for subscribers
  of S(M) who are not cancelled;
- sms_lost_daily: subscribers holding a rated tier on day D who are CANCELLED in, or vanished from, the ACCT
  snapshot of D, having been present and not cancelled in the snapshot before it.
"""
from __future__ import annotations

import hashlib
import os
import re
from dataclasses import dataclass, field
from datetime import date
from pathlib import Path

import duckdb
import polars as pl
import yaml

from transforms.core.calendar import Month
from transforms.core.resources import channels_config
from transforms.warehouse.db import scalar, snapshot_date_for

OUTBOX = "outbox"
DIR_MODE, FILE_MODE = 0o750, 0o640  # the outbox carries msisdn: never world-readable

CHANGE_TYPES = ("NEW", "UPGRADE", "DOWNGRADE", "LOST")
FORMATS = ("pipe_gbk_with_chk", "jsonl", "csv")
ENCODINGS = ("GBK", "UTF-8")
CHANGES, POINTS, DAILY_LOST = "changes", "points_expiry", "daily_lost"
FEED_OF = {"boss": CHANGES, "sms": CHANGES, "crm": CHANGES, "points_expiry": POINTS, "sms_lost_daily": DAILY_LOST}
MSISDN_CHANNELS = frozenset({"boss", "sms", "points_expiry", "sms_lost_daily"})  # BOSS and the SMS gateway
NEVER_FIELDS = frozenset({"cust_name", "cert_no"})
_COMMON = ("subs_id", "msisdn", "region_code", "manager_id", "template", "parameters")
FIELDS = {
    CHANGES: _COMMON + ("from_tier", "to_tier", "change_type", "reason", "effective_date", "grade_month",
                        "entitlements", "entitlements_gained", "entitlements_lost", "tags"),
    POINTS: _COMMON + ("points", "expiry_date"),
    DAILY_LOST: _COMMON + ("from_tier", "to_tier", "change_type", "reason", "effective_date"),
}
PARAMETERS = {
    CHANGES: ("from_tier", "to_tier", "change_type", "effective_date", "entitlements", "entitlements_gained",
              "entitlements_lost"),
    POINTS: ("points", "expiry_date"),
    DAILY_LOST: ("from_tier", "to_tier", "effective_date"),
}
PLACEHOLDERS = {CHANGES: ("yyyymm",), POINTS: ("yyyymm",), DAILY_LOST: ("yyyymm", "yyyymmdd")}
REQUIRED_PLACEHOLDER = {CHANGES: "yyyymm", POINTS: "yyyymm", DAILY_LOST: "yyyymmdd"}
_KEYS = {"name", "format", "encoding", "path", "changes", "fields", "templates", "template", "parameters"}
_PATH_CHARS = re.compile(r"^[A-Za-z0-9_.{}/-]+$")
_PLACEHOLDER = re.compile(r"\{([^{}]*)\}")
_TEMPLATE = re.compile(r"^[A-Z][A-Z0-9_]*$")
_LIST_SEPARATOR = ";"


class ChannelConfigError(ValueError):
    """A channel configuration is refused; the message names the file and the key."""


class ChannelError(Exception):
    """A channel file cannot be produced or written (a value the format cannot carry, a path out of the outbox)."""


@dataclass(frozen=True)
class Channel:
    name: str
    feed: str
    format: str
    encoding: str
    path: str
    fields: tuple[str, ...]
    changes: tuple[str, ...] = ()
    templates: dict[str, str] = field(default_factory=dict)  # change type -> template (changes feed)
    template: str | None = None                               # the one template of the other feeds
    parameters: tuple[str, ...] = ()

    def relpath(self, month: Month, day: date | None = None) -> str:
        text = self.path.replace("{yyyymm}", month.compact)
        return text.replace("{yyyymmdd}", day.strftime("%Y%m%d")) if day else text


@dataclass(frozen=True)
class OutFile:
    channel: str
    relpath: str              # under <home>/outbox/
    payload: bytes
    records: int
    control: bytes | None = None  # the `.chk` line, written after the payload

    @property
    def control_relpath(self) -> str:
        return str(Path(self.relpath).with_suffix(".chk"))

    @property
    def md5(self) -> str:
        return hashlib.md5(self.payload).hexdigest()


# --- configuration -----------------------------------------------------------------------------------------------

def load_channels(path: Path | None = None) -> list[Channel]:
    """Parses and validates a channel configuration (default: the shipped channels/channels.yaml)."""
    path = Path(path) if path is not None else channels_config()
    try:
        doc = yaml.safe_load(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError) as exc:
        raise ChannelConfigError(f"{path}: cannot read: {exc}") from None
    except yaml.YAMLError as exc:
        raise ChannelConfigError(f"{path}: not valid YAML: {exc}") from None
    if not isinstance(doc, dict) or set(doc) != {"channels"}:
        raise ChannelConfigError(f"{path}: expected one top-level key `channels` (a list of channels)")
    nodes = doc["channels"]
    if not isinstance(nodes, list) or not nodes:
        raise ChannelConfigError(f"{path}: channels: expected a non-empty list")
    channels = [_parse_channel(f"{path}: channels[{i}]", node) for i, node in enumerate(nodes)]
    _check_distinct(path, channels)
    return channels


def _parse_channel(where: str, node) -> Channel:
    if not isinstance(node, dict):
        raise ChannelConfigError(f"{where}: expected a mapping")
    name = node.get("name")
    if not isinstance(name, str) or name not in FEED_OF:
        raise ChannelConfigError(f"{where}.name: {name!r} is not a known channel (one of {', '.join(FEED_OF)})")
    where = f"{where} ({name})"
    unknown = sorted(set(node) - _KEYS, key=str)
    if unknown:
        raise ChannelConfigError(f"{where}.{unknown[0]}: unknown key (allowed: {', '.join(sorted(_KEYS))})")
    feed = FEED_OF[name]
    fmt = _choice(where, node, "format", FORMATS)
    fields = _fields(where, node, name, feed, fmt)
    path = _path_pattern(where, node.get("path"), feed)
    if fmt == "pipe_gbk_with_chk" and not path.endswith(".dat"):
        raise ChannelConfigError(f"{where}.path: a file with a control file must end in .dat, got {path!r}")
    changes = _changes(where, node, feed)
    templates, template = _templates(where, node, feed, fields, changes)
    return Channel(name=name, feed=feed, format=fmt, encoding=_choice(where, node, "encoding", ENCODINGS),
                   path=path, fields=fields, changes=changes, templates=templates, template=template,
                   parameters=_parameters(where, node, feed, fields))


def _choice(where: str, node: dict, key: str, allowed: tuple[str, ...]) -> str:
    value = node.get(key)
    if value not in allowed:
        raise ChannelConfigError(f"{where}.{key}: {value!r} is not one of {', '.join(allowed)}")
    return value


def _names(where: str, value, key: str) -> tuple[str, ...]:
    if not isinstance(value, list) or not value or not all(isinstance(v, str) for v in value):
        raise ChannelConfigError(f"{where}.{key}: expected a non-empty list of names")
    if len(set(value)) != len(value):
        raise ChannelConfigError(f"{where}.{key}: duplicate entries in {value}")
    return tuple(value)


def _fields(where: str, node: dict, name: str, feed: str, fmt: str) -> tuple[str, ...]:
    fields = _names(where, node.get("fields"), "fields")
    for f in fields:
        if f in NEVER_FIELDS:
            raise ChannelConfigError(f"{where}.fields: {f} is personal data and never leaves the warehouse")
        if f == "msisdn" and name not in MSISDN_CHANNELS:
            raise ChannelConfigError(f"{where}.fields: msisdn is personal data, allowed only in the BOSS and SMS "
                                     f"channels ({', '.join(sorted(MSISDN_CHANNELS))}), not in {name}")
        if f not in FIELDS[feed]:
            raise ChannelConfigError(f"{where}.fields: unknown field {f!r} (allowed: {', '.join(FIELDS[feed])})")
    if "parameters" in fields and fmt != "jsonl":
        raise ChannelConfigError(f"{where}.fields: parameters is a JSON object, only for format jsonl")
    return fields


def _changes(where: str, node: dict, feed: str) -> tuple[str, ...]:
    if feed != CHANGES:
        if "changes" in node:
            raise ChannelConfigError(f"{where}.changes: only the monthly change channels (boss, sms, crm) "
                                     "select change types")
        return ()
    changes = _names(where, node.get("changes"), "changes")
    bad = [c for c in changes if c not in CHANGE_TYPES]
    if bad:
        raise ChannelConfigError(f"{where}.changes: unknown change type {bad[0]!r} "
                                 f"(one of {', '.join(CHANGE_TYPES)})")
    return changes


def _templates(where: str, node: dict, feed: str, fields: tuple[str, ...],
               changes: tuple[str, ...]) -> tuple[dict[str, str], str | None]:
    """Changes feed: `templates` maps every carried change type to a template; the others: one `template`."""
    key, other = ("templates", "template") if feed == CHANGES else ("template", "templates")
    if other in node:
        raise ChannelConfigError(f"{where}.{other}: this channel takes `{key}`")
    if "template" not in fields:
        if key in node:
            raise ChannelConfigError(f"{where}.{key}: given, but `template` is not among the fields")
        return {}, None
    value = node.get(key)
    if feed != CHANGES:
        return {}, _template_name(f"{where}.template", value)
    if not isinstance(value, dict) or set(value) != set(changes):
        raise ChannelConfigError(f"{where}.templates: expected a mapping with exactly the carried change types "
                                 f"{', '.join(changes)}, got {value!r}")
    return {c: _template_name(f"{where}.templates.{c}", value[c]) for c in changes}, None


def _template_name(where: str, value) -> str:
    if not isinstance(value, str) or not _TEMPLATE.match(value):
        raise ChannelConfigError(f"{where}: {value!r} is not a template name (upper-case identifier)")
    return value


def _parameters(where: str, node: dict, feed: str, fields: tuple[str, ...]) -> tuple[str, ...]:
    if "parameters" not in fields:
        if "parameters" in node:
            raise ChannelConfigError(f"{where}.parameters: given, but `parameters` is not among the fields")
        return ()
    params = _names(where, node.get("parameters"), "parameters")
    bad = [p for p in params if p not in PARAMETERS[feed]]
    if bad:
        raise ChannelConfigError(f"{where}.parameters: unknown parameter {bad[0]!r} "
                                 f"(allowed: {', '.join(PARAMETERS[feed])})")
    return params


def _path_pattern(where: str, pattern, feed: str) -> str:
    """A relative path under <home>/outbox/ with only the feed's date placeholders; no `..`, no hidden names."""
    where = f"{where}.path"
    if not isinstance(pattern, str) or not pattern:
        raise ChannelConfigError(f"{where}: expected a path pattern such as boss/{{yyyymm}}/GRADE_CHG_{{yyyymm}}.dat")
    if pattern.startswith("/") or "\\" in pattern or ":" in pattern:
        raise ChannelConfigError(f"{where}: {pattern!r} must be relative: files stay under <home>/{OUTBOX}/")
    for name in _PLACEHOLDER.findall(pattern):
        if name not in PLACEHOLDERS[feed]:
            raise ChannelConfigError(f"{where}: placeholder {{{name}}} not allowed "
                                     f"(only {', '.join('{' + p + '}' for p in PLACEHOLDERS[feed])})")
    if "{" + REQUIRED_PLACEHOLDER[feed] + "}" not in pattern:
        raise ChannelConfigError(f"{where}: {pattern!r} needs {{{REQUIRED_PLACEHOLDER[feed]}}}, "
                                 "or every period would overwrite the same file")
    _check_relpath(_PLACEHOLDER.sub("x", pattern), ChannelConfigError, f"{where}: {pattern!r}")
    return pattern


def _check_relpath(relpath: str, error: type[Exception], where: str) -> None:
    if not _PATH_CHARS.match(relpath) or "{" in relpath or "}" in relpath:
        raise error(f"{where}: only letters, digits, _ . - / and the date placeholders are allowed")
    for part in relpath.split("/"):
        if part in ("", ".", ".."):
            raise error(f"{where}: no empty, '.' or '..' path components: files stay under <home>/{OUTBOX}/")
        if part.startswith("."):
            raise error(f"{where}: hidden names are reserved for files being written")


def _check_distinct(path: Path, channels: list[Channel]) -> None:
    owner: dict[str, str] = {}
    for channel in channels:
        if channel.name in owner.values():
            raise ChannelConfigError(f"{path}: channel {channel.name} is configured twice")
        rel = channel.relpath(Month(2000, 1), date(2000, 1, 1))
        files = [rel, str(Path(rel).with_suffix(".chk"))] if channel.format == "pipe_gbk_with_chk" else [rel]
        for f in files:
            if f in owner:
                raise ChannelConfigError(f"{path}: channels {owner[f]} and {channel.name} would write the same "
                                         f"file ({f} for 2000-01)")
            owner[f] = channel.name


def by_feed(channels: list[Channel], feed: str) -> list[Channel]:
    return [c for c in channels if c.feed == feed]


# --- facts: one row per record, every whitelisted field, sorted by subs_id -----------------------------------------

def _snapshot_for(con, month: Month) -> date:
    snap = snapshot_date_for(con, month)
    if snap is None:
        raise ChannelError(f"no ACCT snapshot on or before {month.last_day}: no channel files for {month}")
    return snap


def change_facts(con: duckdb.DuckDBPyConnection, month: Month) -> pl.DataFrame:
    """Grade changes of M with the subscriber's contact and owner from S(M) (last known version when absent)."""
    if not scalar(con, "SELECT count(*) FROM mart.tier_assignment WHERE grade_month = ?", [month.first_day]):
        raise ChannelError(f"{month} is not graded: no channel files")
    facts = con.sql("""
        WITH chg AS (SELECT * FROM mart.grade_change WHERE grade_month = $m),
             who AS (
                SELECT h.subs_id, h.msisdn, h.region_code, h.manager_id
                FROM raw.subscriber_history h SEMI JOIN chg USING (subs_id)
                WHERE h.valid_from <= $snap
                QUALIFY row_number() OVER (PARTITION BY h.subs_id ORDER BY h.valid_from DESC) = 1),
             tags AS (SELECT subs_id, tags FROM mart.tier_assignment WHERE grade_month = $m)
        SELECT chg.subs_id, who.msisdn, chg.from_tier, chg.to_tier, chg.change_type, chg.reason,
               $effective AS effective_date, $grade_month AS grade_month,
               list_sort(chg.entitlements_gained) AS entitlements_gained,
               list_sort(chg.entitlements_lost) AS entitlements_lost,
               who.region_code, who.manager_id, list_sort(coalesce(tags.tags, []::VARCHAR[])) AS tags
        FROM chg LEFT JOIN who USING (subs_id) LEFT JOIN tags USING (subs_id)
        ORDER BY chg.subs_id""", params={
        "m": month.first_day, "snap": _snapshot_for(con, month),
        "effective": (month + 1).first_day.strftime("%Y%m%d"), "grade_month": month.compact}).pl()
    # BOSS form of the entitlement changes: gained then lost, each sorted, e.g. +VIP_LOUNGE;-NIGHT_NO_SUSPEND
    signed = pl.concat_list(pl.col("entitlements_gained").list.eval(pl.lit("+") + pl.element()),
                            pl.col("entitlements_lost").list.eval(pl.lit("-") + pl.element()))
    return facts.with_columns(entitlements=signed.list.join(_LIST_SEPARATOR))


def points_expiring(con: duckdb.DuckDBPyConnection, month: Month, expiry_months: int = 36) -> pl.DataFrame:
    """subs_id, points: what is left at the end of M of the lot that expires at the end of M+1 (earned minus
    what the monthly runs up to M redeemed or expired from it).

    Same result as points.expiring_next_month over the open lots after M, computed in DuckDB: Polars' group_by
    over millions of string keys costs seconds on 2 cores, this a fraction of one."""
    return con.sql("""
        WITH lot AS (SELECT subs_id, sum(earned) AS earned FROM staging.points_lot
                     WHERE earn_month = $lot GROUP BY subs_id),
             used AS (SELECT subs_id, sum(redeemed + expired) AS used FROM staging.points_move
                      WHERE earn_month = $lot AND month <= $m GROUP BY subs_id)
        SELECT subs_id, CAST(earned - coalesce(used, 0) AS BIGINT) AS points
        FROM lot LEFT JOIN used USING (subs_id)
        WHERE earned - coalesce(used, 0) > 0
        ORDER BY subs_id""", params={"m": month.first_day, "lot": (month + 1 - expiry_months).first_day}).pl()


def points_facts(con: duckdb.DuckDBPyConnection, month: Month, expiring: pl.DataFrame) -> pl.DataFrame:
    """Expiring points of subscribers in S(M) who are not cancelled (a cancelled number may be reassigned)."""
    con.register("expiring_points", expiring.select("subs_id", pl.col("points").cast(pl.Int64)))
    try:
        return con.sql("""
            SELECT e.subs_id, h.msisdn, h.region_code, h.manager_id, e.points, $expiry AS expiry_date
            FROM expiring_points e JOIN raw.subscriber_history h
              ON h.subs_id = e.subs_id AND h.valid_from <= $snap AND (h.valid_to IS NULL OR h.valid_to > $snap)
            WHERE e.points > 0 AND h.status <> 'CANCELLED'
            ORDER BY e.subs_id""", params={"snap": _snapshot_for(con, month),
                                           "expiry": (month + 1).last_day.strftime("%Y%m%d")}).pl()
    finally:
        con.unregister("expiring_points")


def lost_facts(con: duckdb.DuckDBPyConnection, day: date, unrated: str = "UNRATED") -> pl.DataFrame:
    """Holders of a rated tier on `day` who are CANCELLED in, or vanished from, that day's snapshot, and were
    present and not cancelled in the snapshot before (so one cancellation gives one notice).

    The tier held on `day` comes from mart.tier_history (the spell in effect that day): in a nightly run it is
    mart.tier_current's tier, and a rerun of an old day gives the same answer."""
    previous = scalar(con, "SELECT max(snapshot_date) FROM ops.snapshot WHERE snapshot_date < ?", [day])
    return con.sql("""
        WITH held AS (
                SELECT subs_id, tier FROM mart.tier_history
                WHERE valid_from <= $d AND (valid_to IS NULL OR valid_to > $d) AND tier <> $unrated),
             versions AS (
                SELECT h.* FROM raw.subscriber_history h SEMI JOIN held USING (subs_id) WHERE h.valid_from <= $d),
             on_day AS (SELECT subs_id, status AS status_on_day FROM versions
                        WHERE valid_to IS NULL OR valid_to > $d),
             before AS (SELECT subs_id, status AS status_before FROM versions
                        WHERE valid_from <= $prev AND (valid_to IS NULL OR valid_to > $prev)),
             last_known AS (SELECT subs_id, msisdn, region_code, manager_id FROM versions
                            QUALIFY row_number() OVER (PARTITION BY subs_id ORDER BY valid_from DESC) = 1)
        SELECT held.subs_id, lk.msisdn, held.tier AS from_tier, $unrated AS to_tier, 'LOST' AS change_type,
               CASE WHEN on_day.subs_id IS NULL THEN 'ABSENT_FROM_SNAPSHOT' ELSE 'INELIGIBLE_CANCELLED' END
                   AS reason,
               $effective AS effective_date, lk.region_code, lk.manager_id
        FROM held LEFT JOIN on_day USING (subs_id) LEFT JOIN before USING (subs_id)
        LEFT JOIN last_known lk USING (subs_id)
        WHERE (on_day.subs_id IS NULL OR status_on_day = 'CANCELLED')
          AND (CAST($prev AS DATE) IS NULL OR coalesce(status_before, 'CANCELLED') <> 'CANCELLED')
        ORDER BY held.subs_id""", params={"d": day, "prev": previous, "unrated": unrated,
                                          "effective": day.strftime("%Y%m%d")}).pl()


# --- rendering ----------------------------------------------------------------------------------------------------

def render_month(con: duckdb.DuckDBPyConnection, month: Month, channels: list[Channel]) -> list[OutFile]:
    """The monthly change files (boss, sms, crm as configured) of graded month M."""
    targets = by_feed(channels, CHANGES)
    if not targets:
        return []
    facts = change_facts(con, month)
    return [render(c, facts.filter(pl.col("change_type").is_in(list(c.changes))), c.relpath(month))
            for c in targets]


def render_points_expiry(con: duckdb.DuckDBPyConnection, month: Month, channels: list[Channel],
                         expiring: pl.DataFrame) -> list[OutFile]:
    """The points-expiry notices of M; `expiring` is subs_id, points (see points_expiring)."""
    targets = by_feed(channels, POINTS)
    if not targets:
        return []
    facts = points_facts(con, month, expiring)
    return [render(c, facts, c.relpath(month)) for c in targets]


def render_nightly_lost(con: duckdb.DuckDBPyConnection, day: date, channels: list[Channel],
                        unrated: str = "UNRATED") -> list[OutFile]:
    """The LOST notices of `day`; none when no ACCT snapshot is dated that day (nothing to compare)."""
    targets = by_feed(channels, DAILY_LOST)
    if not targets or not scalar(con, "SELECT count(*) FROM ops.snapshot WHERE snapshot_date = ?", [day]):
        return []
    facts = lost_facts(con, day, unrated)
    return [render(c, facts, c.relpath(Month.of(day), day)) for c in targets]


def render(channel: Channel, facts: pl.DataFrame, relpath: str) -> OutFile:
    """One channel file from its facts (already sorted by subs_id)."""
    rows = facts.with_columns(**_derived_columns(channel)).select(channel.fields)
    if channel.format == "jsonl":
        text = _joined_lines(rows.select(line=pl.struct(channel.fields).struct.json_encode()))
    elif channel.format == "csv":
        text = _as_text(rows, empty_as_null=True).write_csv(line_terminator="\n", quote_style="necessary")
    else:
        text = _joined_lines(_pipe_lines(channel, _as_text(rows, empty_as_null=False)))
    payload = _encode(channel, relpath, text)
    control = None
    if channel.format == "pipe_gbk_with_chk":
        control = (f"{Path(relpath).name}|{rows.height}|{len(payload)}|{hashlib.md5(payload).hexdigest()}|"
                   f"{channel.encoding}\n").encode("ascii")
    return OutFile(channel.name, relpath, payload, rows.height, control)


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
        text = col.list.join(_LIST_SEPARATOR) if isinstance(dtype, pl.List) else col.cast(pl.Utf8)
        if empty_as_null:
            text = pl.when(text == "").then(None).otherwise(text)
        exprs.append(text.alias(name))
    return rows.select(exprs)


def _pipe_lines(channel: Channel, rows: pl.DataFrame) -> pl.DataFrame:
    """extracts.md record format: `|` separated, empty field = null. A value holding `|` or a line break
    would shift the columns for the receiver, so it stops the run instead."""
    for column in rows.columns:
        bad = rows.filter(pl.col(column).str.contains(r"[|\r\n]"))
        if bad.height:  # named by subs_id, never by the value (it may be personal data)
            who = f", e.g. subs_id {bad['subs_id'][0]}" if "subs_id" in bad.columns else ""
            raise ChannelError(f"{channel.name}: {bad.height} value(s) of {column} hold '|' or a line break{who}")
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


# --- checks -------------------------------------------------------------------------------------------------------

def count_mismatches(con: duckdb.DuckDBPyConnection, month: Month, channels: list[Channel],
                     files: list[OutFile]) -> list[str]:
    """quality.md gate 3: each change file holds as many records (and lines) as grade_change has rows of the
    change types it carries. Empty when every file agrees."""
    counts = dict(con.execute("SELECT change_type, count(*) FROM mart.grade_change WHERE grade_month = ? "
                              "GROUP BY ALL", [month.first_day]).fetchall())
    produced = {f.channel: f for f in files}
    problems = []
    for channel in by_feed(channels, CHANGES):
        expected = sum(counts.get(t, 0) for t in channel.changes)
        out = produced.get(channel.name)
        if out is None:
            problems.append(f"{channel.name}: no file rendered for {month}")
            continue
        lines = out.payload.count(b"\n") - (1 if channel.format == "csv" else 0)
        if out.records != expected or lines != expected:
            problems.append(f"{out.relpath}: {out.records} records in {lines} lines, grade_change has {expected} "
                            f"({', '.join(channel.changes)})")
    return problems


# --- writing ------------------------------------------------------------------------------------------------------

def write_outbox(home: Path, files: list[OutFile]) -> list[Path]:
    """Writes each file atomically under <home>/outbox/ and returns the paths (a control file after its data).

    Each file is written aside (hidden name, same directory), fsynced and renamed over the old one; an old
    control file is removed before its data file changes, so a reader never pairs new data with an old control
    file. A file whose bytes are already in place is left untouched. Leftovers of a killed run are removed.
    """
    for out in files:  # refuse a bad path before writing anything
        _check_relpath(out.relpath, ChannelError, f"outbox file {out.relpath!r}")
    Path(home).mkdir(parents=True, exist_ok=True)
    root = Path(home) / OUTBOX
    _make_dirs(root, Path(home))
    written: list[Path] = []
    for out in files:
        target = _target(root, out.relpath)
        parts = [(target, out.payload)]
        if out.control is not None:
            parts.append((_target(root, out.control_relpath), out.control))
        _replace_all(parts)
        written.extend(p for p, _ in parts)
    return written


def _make_dirs(path: Path, stop: Path) -> None:
    """Creates the missing directories down to `path`, each 0o750 whatever the umask."""
    missing = []
    while not path.exists() and path != stop and path != path.parent:
        missing.append(path)
        path = path.parent
    for directory in reversed(missing):
        directory.mkdir(mode=DIR_MODE, exist_ok=True)
        os.chmod(directory, DIR_MODE)


def _target(root: Path, relpath: str) -> Path:
    _check_relpath(relpath, ChannelError, f"outbox file {relpath!r}")
    target = root / relpath
    if not target.parent.resolve().is_relative_to(root.resolve()):  # checked before creating anything
        raise ChannelError(f"outbox file {relpath!r} resolves outside {root} (symbolic link?)")
    _make_dirs(target.parent, root)
    return target


def _replace_all(parts: list[tuple[Path, bytes]]) -> None:
    if all(_holds(path, data) for path, data in parts):
        return  # rerun: the same bytes are already delivered
    temps = [_write_aside(path, data) for path, data in parts]
    for path, _ in parts[1:]:
        path.unlink(missing_ok=True)  # the old control file goes first
    for (path, _), tmp in zip(parts, temps):
        os.replace(tmp, path)
    _fsync_dir(parts[0][0].parent)


def _holds(path: Path, data: bytes) -> bool:
    try:
        return path.stat().st_size == len(data) and path.read_bytes() == data
    except FileNotFoundError:
        return False


def _write_aside(path: Path, data: bytes) -> Path:
    for stale in path.parent.glob(f".{path.name}.*.tmp"):
        stale.unlink(missing_ok=True)  # a run killed while writing left it
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW, FILE_MODE)
    try:
        os.fchmod(fd, FILE_MODE)
        view = memoryview(data)
        while view:
            view = view[os.write(fd, view):]
        os.fsync(fd)
    finally:
        os.close(fd)
    return tmp


def _fsync_dir(directory: Path) -> None:
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
