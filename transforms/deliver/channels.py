"""Channel configuration (`channels/channels.yaml`): which channels receive which records, in which format.

Channels are data: which change types each carries, which fields (from the whitelist below), format, encoding
and path pattern, read through transforms.core.yamlnodes so that a refusal names the file, the line and the key
("channels/channels.yaml:31: channels[1] (sms).templates: ..."). Personal data: msisdn only in the BOSS and SMS
channels; cust_name and cert_no never. What the records hold is rendered by transforms.deliver.render, written by
transforms.deliver.outbox.

Feeds, fixed by the channel name:
- changes (boss, sms, crm): the grade changes of a month;
- points_expiry: the points that expire at the end of next month;
- sms_lost_daily: nightly notices for rated subscribers cancelled in (or gone from) a day's snapshot;
- sms_at_risk (opt-in: not in the default configuration): notice before the fact, each graded month, for the
  subscribers tagged DOWNGRADE_RISK, with their tier and the line of the rule that assigned it.

Change types of the changes feed: those of mart.grade_change, and ENTITLEMENTS (mart.entitlement_change: the
entitlements changed while the tier did not), only for a channel that carries the entitlements.
"""
from __future__ import annotations

import re
from dataclasses import dataclass, field
from datetime import date
from pathlib import Path

import yaml

from transforms.core.calendar import Month
from transforms.core.resources import channels_config
from transforms.core.yamlnodes import Document, Fields, YamlError, read_text
from transforms.grade import grading

OUTBOX = "outbox"

CHANGE_TYPES = (*grading.CHANGE_TYPES, grading.ENTITLEMENTS)  # what a changes channel may select
AT_RISK_TAG = "DOWNGRADE_RISK"  # the tag of the subscribers the at-risk feed tells
FORMATS = ("pipe_gbk_with_chk", "jsonl", "csv")
ENCODINGS = ("GBK", "UTF-8")
CHANGES, POINTS, DAILY_LOST, AT_RISK = "changes", "points_expiry", "daily_lost", "at_risk"
FEED_OF = {"boss": CHANGES, "sms": CHANGES, "crm": CHANGES, "points_expiry": POINTS, "sms_lost_daily": DAILY_LOST,
           "sms_at_risk": AT_RISK}
MSISDN_CHANNELS = frozenset({"boss", "sms", "points_expiry", "sms_lost_daily", "sms_at_risk"})  # BOSS and SMS
NEVER_FIELDS = frozenset({"cust_name", "cert_no"})
_COMMON = ("subs_id", "msisdn", "region_code", "manager_id", "template", "parameters")
FIELDS = {
    CHANGES: _COMMON + ("from_tier", "to_tier", "change_type", "reason", "effective_date", "grade_month",
                        "entitlements", "entitlements_gained", "entitlements_lost", "tags"),
    POINTS: _COMMON + ("points", "expiry_date"),
    DAILY_LOST: _COMMON + ("from_tier", "to_tier", "change_type", "reason", "effective_date"),
    AT_RISK: _COMMON + ("tier", "tier_label", "reason", "line_metric", "line", "grade_month"),
}
PARAMETERS = {
    CHANGES: ("from_tier", "to_tier", "change_type", "effective_date", "entitlements", "entitlements_gained",
              "entitlements_lost"),
    POINTS: ("points", "expiry_date"),
    DAILY_LOST: ("from_tier", "to_tier", "effective_date"),
    AT_RISK: ("tier", "tier_label", "line_metric", "line", "grade_month"),
}
PLACEHOLDERS = {CHANGES: ("yyyymm",), POINTS: ("yyyymm",), DAILY_LOST: ("yyyymm", "yyyymmdd"), AT_RISK: ("yyyymm",)}
REQUIRED_PLACEHOLDER = {CHANGES: "yyyymm", POINTS: "yyyymm", DAILY_LOST: "yyyymmdd", AT_RISK: "yyyymm"}
# The keys of a channel. A new key: list it here, read it in _parse_channel, give Channel a field for it.
_REQUIRED_KEYS = ("name", "format", "encoding", "path", "fields")
_OPTIONAL_KEYS = ("changes", "templates", "template", "parameters")  # needed or refused by the feed and fields
_PATH_CHARS = re.compile(r"^[A-Za-z0-9_.{}/-]+$")
_PLACEHOLDER = re.compile(r"\{([^{}]*)\}")
_TEMPLATE = re.compile(r"^[A-Z][A-Z0-9_]*$")
LIST_SEPARATOR = ";"
REVERSAL = "REVERSAL"  # the change type of a correction record that takes back a change sent before
_ENTITLEMENT_FIELDS = frozenset({"entitlements", "entitlements_gained", "entitlements_lost"})


class ChannelConfigError(ValueError):
    """A channel configuration is refused: "<file>:<line>: <key path>: <message>"."""


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

    @property
    def carries_entitlements(self) -> bool:
        """A change of entitlements alone changes what this channel shows (corrections compare them)."""
        return bool(_ENTITLEMENT_FIELDS & {*self.fields, *self.parameters})

    def relpath(self, month: Month, day: date | None = None) -> str:
        text = self.path.replace("{yyyymm}", month.compact)
        return text.replace("{yyyymmdd}", day.strftime("%Y%m%d")) if day else text


# --- configuration -----------------------------------------------------------------------------------------------

def load_channels(path: Path | None = None) -> list[Channel]:
    """Parses and validates a channel configuration (default: the shipped channels/channels.yaml)."""
    path = Path(path) if path is not None else channels_config()
    what = "the channel configuration"
    try:
        doc = Document(read_text(path, what), str(path), what)
        top = doc.mapping(doc.root, what, required=("channels",))
        items = doc.sequence(top["channels"], "channels")
        if not items:
            doc.fail(top["channels"], "channels must list at least one channel")
        channels = [_parse_channel(doc, f"channels[{i}]", item) for i, item in enumerate(items)]
        _check_distinct(doc, channels, items)
    except YamlError as exc:
        raise ChannelConfigError(str(exc)) from None
    return channels


def _parse_channel(doc: Document, where: str, node: yaml.Node) -> Channel:
    keys = doc.mapping(node, where, required=_REQUIRED_KEYS, optional=_OPTIONAL_KEYS)
    name = doc.choice(keys["name"], f"{where}.name", FEED_OF)
    where, feed = f"{where} ({name})", FEED_OF[name]
    fmt = doc.choice(keys["format"], f"{where}.format", FORMATS)
    fields = _fields(doc, f"{where}.fields", keys["fields"], name, feed, fmt)
    path = _path_pattern(doc, f"{where}.path", keys["path"], feed, fmt)
    changes = _names_from(keys, "changes", where, CHANGE_TYPES, "change type", needed=feed == CHANGES,
                          refusal="only the monthly change channels (boss, sms, crm) select change types")
    templates, template = _templates(keys, where, feed, fields, changes)
    parameters = _names_from(keys, "parameters", where, PARAMETERS[feed], "parameter",
                             needed="parameters" in fields, refusal="given, but `parameters` is not among the fields")
    if grading.ENTITLEMENTS in changes and not _ENTITLEMENT_FIELDS & {*fields, *parameters}:
        doc.fail(keys["changes"], f"{where}.changes: {grading.ENTITLEMENTS} rows say only which entitlements "
                                  "changed: the channel must carry entitlements, entitlements_gained or "
                                  "entitlements_lost among its fields or parameters")
    encoding = doc.choice(keys["encoding"], f"{where}.encoding", ENCODINGS)
    return Channel(name=name, feed=feed, format=fmt, encoding=encoding, path=path, fields=fields, changes=changes,
                   templates=templates, template=template, parameters=parameters)


def _given_if(keys: Fields, key: str, where: str, needed: bool, refusal: str) -> yaml.Node | None:
    """A key that some channels need (missing: an error) and the others must not give (`refusal` says why)."""
    if needed:
        return keys.need(key)
    if key in keys:
        keys.doc.fail(keys[key], f"{where}.{key}: {refusal}")
    return None


def _known(doc: Document, what: str, names: dict[str, yaml.Node], noun: str, allowed: tuple[str, ...]) -> None:
    for name, node in names.items():
        if name not in allowed:
            doc.fail(node, f"{what}: unknown {noun} {name!r} (allowed: {', '.join(allowed)})")


def _names_from(keys: Fields, key: str, where: str, allowed: tuple[str, ...], noun: str, needed: bool,
                refusal: str) -> tuple[str, ...]:
    """A list of distinct names out of `allowed`, given exactly when `needed`."""
    node = _given_if(keys, key, where, needed, refusal)
    if node is None:
        return ()
    names = keys.doc.names(node, f"{where}.{key}")
    _known(keys.doc, f"{where}.{key}", names, noun, allowed)
    return tuple(names)


def _fields(doc: Document, what: str, node: yaml.Node, name: str, feed: str, fmt: str) -> tuple[str, ...]:
    fields = doc.names(node, what)
    for f, item in fields.items():  # personal data first: cert_no is refused as such, not as an unknown field
        if f in NEVER_FIELDS:
            doc.fail(item, f"{what}: {f} is personal data and never leaves the warehouse")
        if f == "msisdn" and name not in MSISDN_CHANNELS:
            doc.fail(item, f"{what}: msisdn is personal data, allowed only in the BOSS and SMS channels "
                           f"({', '.join(sorted(MSISDN_CHANNELS))}), not in {name}")
    _known(doc, what, fields, "field", FIELDS[feed])
    if "parameters" in fields and fmt != "jsonl":
        doc.fail(fields["parameters"], f"{what}: parameters is a JSON object, only for format jsonl")
    return tuple(fields)


def _templates(keys: Fields, where: str, feed: str, fields: tuple[str, ...],
               changes: tuple[str, ...]) -> tuple[dict[str, str], str | None]:
    """Changes feed: `templates` maps every carried change type, and REVERSAL (a correction taking back a change
    sent before), to a template; the others: one `template`."""
    key, other = ("templates", "template") if feed == CHANGES else ("template", "templates")
    _given_if(keys, other, where, needed=False, refusal=f"this channel takes `{key}`")
    node = _given_if(keys, key, where, needed="template" in fields,
                     refusal="given, but `template` is not among the fields")
    if node is None:
        return {}, None
    if feed != CHANGES:
        return {}, _template_name(keys.doc, node, f"{where}.template")
    kinds = (*changes, REVERSAL)
    by_change = keys.doc.mapping(node, f"{where}.templates", required=kinds)
    return {c: _template_name(keys.doc, by_change[c], f"{where}.templates.{c}") for c in kinds}, None


def _template_name(doc: Document, node: yaml.Node, what: str) -> str:
    value = doc.scalar(node, what)
    if not _TEMPLATE.match(value):
        doc.fail(node, f"{what}: {value!r} is not a template name (upper-case identifier)")
    return value


def _path_pattern(doc: Document, what: str, node: yaml.Node, feed: str, fmt: str) -> str:
    """A relative path under <home>/outbox/ with only the feed's date placeholders; no `..`, no hidden names."""
    pattern = doc.scalar(node, what)
    if pattern.startswith("/") or "\\" in pattern or ":" in pattern:
        doc.fail(node, f"{what}: {pattern!r} must be relative: files stay under <home>/{OUTBOX}/")
    for name in _PLACEHOLDER.findall(pattern):
        if name not in PLACEHOLDERS[feed]:
            doc.fail(node, f"{what}: placeholder {{{name}}} not allowed "
                           f"(only {', '.join('{' + p + '}' for p in PLACEHOLDERS[feed])})")
    if "{" + REQUIRED_PLACEHOLDER[feed] + "}" not in pattern:
        doc.fail(node, f"{what}: {pattern!r} needs {{{REQUIRED_PLACEHOLDER[feed]}}}, "
                       "or every period would overwrite the same file")
    problem = _relpath_problem(_PLACEHOLDER.sub("x", pattern))
    if problem:
        doc.fail(node, f"{what}: {pattern!r}: {problem}")
    if fmt == "pipe_gbk_with_chk" and not pattern.endswith(".dat"):
        doc.fail(node, f"{what}: a file with a control file must end in .dat, got {pattern!r}")
    return pattern


def check_relpath(relpath: str, error: type[Exception], where: str) -> None:
    problem = _relpath_problem(relpath)
    if problem:
        raise error(f"{where}: {problem}")


def _relpath_problem(relpath: str) -> str | None:
    """Why a path relative to the outbox is refused, or None."""
    if not _PATH_CHARS.match(relpath) or "{" in relpath or "}" in relpath:
        return "only letters, digits, _ . - / and the date placeholders are allowed"
    for part in relpath.split("/"):
        if part in ("", ".", ".."):
            return f"no empty, '.' or '..' path components: files stay under <home>/{OUTBOX}/"
        if part.startswith("."):
            return "hidden names are reserved for files being written"
    return None


def _check_distinct(doc: Document, channels: list[Channel], nodes: list[yaml.Node]) -> None:
    owner: dict[str, str] = {}  # file -> the channel writing it
    for channel, node in zip(channels, nodes):
        if channel.name in owner.values():
            doc.fail(node, f"channel {channel.name} is configured twice")
        rel = channel.relpath(Month(2000, 1), date(2000, 1, 1))
        files = [rel, str(Path(rel).with_suffix(".chk"))] if channel.format == "pipe_gbk_with_chk" else [rel]
        for f in files:
            if f in owner:
                doc.fail(node, f"channels {owner[f]} and {channel.name} would write the same file ({f} for 2000-01)")
            owner[f] = channel.name


def by_feed(channels: list[Channel], feed: str) -> list[Channel]:
    return [c for c in channels if c.feed == feed]
