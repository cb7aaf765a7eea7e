"""Channel configuration (`channels/channels.yaml`): which channels receive which records, in which format.

Channels are data: which change types each carries, which fields (from the whitelist below), format, encoding
and path pattern. Personal data: msisdn only in the BOSS and SMS channels; cust_name and cert_no never. What the
records hold is rendered by transforms.deliver.render, written by transforms.deliver.outbox.

Feeds, fixed by the channel name:
- changes (boss, sms, crm): the grade changes of a month;
- points_expiry: the points that expire at the end of next month;
- sms_lost_daily: nightly notices for rated subscribers cancelled in (or gone from) a day's snapshot.
"""
from __future__ import annotations

import re
from dataclasses import dataclass, field
from datetime import date
from pathlib import Path

import yaml

from transforms.core.calendar import Month
from transforms.core.resources import channels_config

OUTBOX = "outbox"

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
LIST_SEPARATOR = ";"


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
    check_relpath(_PLACEHOLDER.sub("x", pattern), ChannelConfigError, f"{where}: {pattern!r}")
    return pattern


def check_relpath(relpath: str, error: type[Exception], where: str) -> None:
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
