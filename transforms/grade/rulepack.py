"""Rule packs: versioned YAML files that hold a grading system as data (rules.md, "Grading rules").

A pack is composed to YAML nodes that keep their line (transforms.core.yamlnodes: no Python objects are ever
constructed, no anchors, aliases or custom tags), checked section by section against a fixed schema, and its
conditions are parsed, type-checked and compiled to Polars expressions by `transforms.grade.expr`. Any error
raises PackError "<file>:<line>: <message>".

Layout of a pack (see rules/six-star.yaml):

    pack: six-star                     # name
    description: ...                   # optional
    effective_from: '2026-07'          # only in a version file rules/<name>@2026-07.yaml (see pack_in_force)
    tiers: [UNRATED, STAR1, ...]       # lowest first; the first is the unrated tier; or {code: ..., label: ...}
    derived:                           # optional, in order; each may use the catalogue and earlier ones
      - {name: avg12_yuan, expr: floor(sum12_fen / 1200)}
    eligibility:                       # in order; the first condition that HOLDS makes a subscriber ineligible
      - {when: "status = 'CANCELLED'", reason: INELIGIBLE_CANCELLED}
    ranks:                             # optional: global ranks among eligible subscribers, ties by subs_id
      - {name: avg6_rank, by: sum6_fen, order: descending}   # exposes avg6_rank (1 = first) and avg6_rank_count
    rules:                             # first match wins; the last may be `when: otherwise`
      - {when: vip_flag, tier: STAR6, reason: VIP_DESIGNATION}
    caps:                              # optional: when the condition holds the tier is at most max_tier
      - {when: susp12 >= 3, max_tier: STAR3, reason: ARREARS_CAP}
    protection_months: 0
    points: {expiry_months: 36, multipliers: {UNRATED: 0, STAR1: 1, STAR2: 1.5, ...}}  # every tier, decimals
    tags:                              # optional; may also use `tier` and `reason` (the graded result)
      NAME: condition
      OTHER: {when: condition, assigning_rule_fails_with: {sum6_fen: sum6_fen - cons_m5_fen + cons_fen}}
    entitlements: {NAME: condition}    # optional; over `tier` and tag names only

docs/metrics.md is the guide for pack authors.

Metric catalogue (METRIC_CATALOGUE, METRIC_BILL_MONTHS): the base metrics the engine provides for the grading
month M, one row per subscriber of the snapshot S(M), listed in _CATALOGUE below with what each one means.
"""
from __future__ import annotations

import hashlib
import re
from contextlib import contextmanager
from dataclasses import dataclass, field
from fractions import Fraction
from pathlib import Path
from typing import Iterator

import polars as pl
import yaml

from transforms.core.calendar import Month
from transforms.core.yamlnodes import IDENTIFIER, Document, YamlError, line_of, read_text
from transforms.grade.expr import (FUNCTIONS, NUMERIC, ExprError, Node, check, compile_bool, compile_number,
                                   lower_bound, names_used, parse)

# name: (type, BILL months it reads: n is M-(n-1)..M). Money is integer fen; bool flags are the Y/N fields of
# ACCT. Every grading reads BILL_M, so snapshot fields, suspension counts and points balances count 1.
_CATALOGUE: dict[str, tuple[str, int]] = {
    "status": ("str", 1),               # NORMAL | SUSPENDED | CANCELLED, as of S(M)
    "subs_type": ("str", 1),            # PERSONAL | IOT | DATACARD | TEST | FIXEDWL
    "brand": ("str", 1),                # GOTONE | MZONE | EASYOWN
    "region_code": ("str", 1),
    "realname_flag": ("bool", 1),       # real-name registered
    "vip_flag": ("bool", 1),            # designated for social status or influence
    "group_key_flag": ("bool", 1),      # key person of a group customer
    "tenure_months": ("int", 1),        # months from the month of open_date to M, both counted
    "cons_fen": ("int", 1),             # cons(M): BILL of M without GIFT and DEPOSIT items; may be negative
    "sum3_fen": ("int", 3),             # cons(M-2) + ... + cons(M)
    "sum6_fen": ("int", 6),             # cons(M-5) + ... + cons(M)   ("avg6 >= T yuan" is sum6_fen >= 600 * T)
    "sum12_fen": ("int", 12),           # cons(M-11) + ... + cons(M)
    "cons_prev5_fen": ("int", 6),       # cons(M-5) + ... + cons(M-1)
    "cons_m5_fen": ("int", 6),          # cons(M-5), the month leaving the avg6 window next month
    "data_fen": ("int", 1),             # DATA items of M
    "roam_fen": ("int", 1),             # ROAM items of M
    "roam_months6": ("int", 6),         # months of M-5..M with ROAM items > 0
    "susp12": ("int", 1),               # ARREARS_TWOWAY events dated in M-11..M (events, not BILL)
    "susp12_oneway": ("int", 1),        # ARREARS_ONEWAY events dated in M-11..M
    "prior_year_points": ("int", 1),    # points earned (accruals only) in the calendar year before M's year
    "points_balance": ("int", 1),       # spendable points balance after the monthly run of M
    "points_earned_12m": ("int", 12),   # points earned for M-11..M: accruals of 12 BILL months
}
METRIC_CATALOGUE: dict[str, str] = {name: kind for name, (kind, _) in _CATALOGUE.items()}
METRIC_BILL_MONTHS: dict[str, int] = {name: months for name, (_, months) in _CATALOGUE.items()}
# Names available to tags besides metrics: the graded result of the subscriber.
RESULT_TYPES = {"tier": "tier", "reason": "str"}
OTHERWISE = "otherwise"
MAX_TAGS, MAX_ENTITLEMENTS, MAX_TIERS = 48, 62, 64
_RESERVED = frozenset({"and", "or", "not", "true", "false", OTHERWISE, "NONE", *FUNCTIONS, *RESULT_TYPES})
_FRAME_COLUMNS = frozenset({"subs_id", "tags", "eligible", "protected", "computed_tier"})  # columns next to tags
_DECIMAL = re.compile(r"[0-9]+(\.[0-9]+)?")
_REQUIRED_SECTIONS = ("pack", "tiers", "eligibility", "rules", "protection_months", "points")
_OPTIONAL_SECTIONS = ("description", "effective_from", "derived", "ranks", "caps", "tags", "entitlements")


class PackError(Exception):
    """A pack that cannot be used; the message starts with '<file>:<line>: '."""


@dataclass(frozen=True, eq=False)
class Condition:
    text: str
    line: int
    node: Node
    expr: pl.Expr
    metrics: frozenset[str]  # catalogue metrics it reads, through derived metrics


@dataclass(frozen=True, eq=False)
class Derived:
    name: str
    type: str  # 'number' or 'bool'
    text: str
    line: int
    node: Node
    expr: pl.Expr
    denominator: int | None  # constant positive denominator of a number; None for bool
    metrics: frozenset[str]


@dataclass(frozen=True, eq=False)
class Rank:
    """A global rank among eligible subscribers: `name` is 1 for the first, `name`_count the number ranked."""
    name: str
    text: str  # the `by` expression as written
    line: int
    key: pl.Expr  # Int64 numerator of `by` (its denominator is a positive constant, so order is kept)
    descending: bool  # True: the largest value ranks 1
    metrics: frozenset[str]

    @property
    def count_name(self) -> str:
        return f"{self.name}_count"


@dataclass(frozen=True, eq=False)
class Tag:
    """A tag holds when `condition` holds and, with `rule_fails` set, the rule that assigned the tier would not
    match if the substituted metrics took their substitute values."""
    name: str
    condition: Condition
    substitutes: dict[str, str]  # metric -> its substitute expression as written (empty: no what-if part)
    rule_fails: tuple[pl.Expr | None, ...] | None  # per rule: NOT(rule under substitutes); None for `otherwise`
    metrics: frozenset[str]


@dataclass(frozen=True, eq=False)
class Eligibility:
    condition: Condition  # holds -> the subscriber is ineligible
    reason: str


@dataclass(frozen=True, eq=False)
class Rule:
    condition: Condition | None  # None: `otherwise`
    tier: str
    reason: str
    line: int


@dataclass(frozen=True, eq=False)
class Cap:
    condition: Condition
    max_tier: str
    reason: str


@dataclass(frozen=True, eq=False)
class Points:
    expiry_months: int  # points earned for M expire at the end of M + expiry_months
    multipliers: dict[str, Fraction]  # every tier, in tier order


@dataclass(frozen=True, eq=False)
class RulePack:
    name: str
    version: str  # first 12 hex digits of sha256 of the file bytes
    source: str
    tiers: tuple[str, ...]  # lowest first; tiers[0] is the unrated tier
    tier_labels: dict[str, str]
    derived: dict[str, Derived]
    eligibility: tuple[Eligibility, ...]
    rules: tuple[Rule, ...]
    caps: tuple[Cap, ...]
    protection_months: int
    points: Points
    tags: dict[str, Tag]
    entitlements: dict[str, Condition]
    ranks: tuple[Rank, ...] = ()
    effective_from: Month | None = None
    description: str = ""
    metric_types: dict[str, str] = field(default_factory=dict)  # catalogue + derived types, for later compiles

    @property
    def unrated(self) -> str:
        return self.tiers[0]

    @property
    def ineligible_reasons(self) -> frozenset[str]:
        """The reasons of the eligibility checks: a result has one of them exactly when it is ineligible (rules
        and caps cannot use them)."""
        return frozenset(e.reason for e in self.eligibility)

    @property
    def grading_window(self) -> int:
        """How many months of BILL grading month M needs, M-(n-1)..M: the longest window its metrics read.
        Until all are delivered the pack assigns no tiers (rules.md, "A pack's grading window")."""
        return max((METRIC_BILL_MONTHS[m] for m in self.metrics_used()), default=1)

    def tier_index(self, tier: str) -> int:
        return self.tiers.index(tier)

    def rule_lines(self) -> dict[tuple[str, str], tuple[str, Fraction]]:
        """(tier, reason) -> (metric, line) for the tiers a single rule assigns with that reason by a condition
        `metric >= line`: the line a subscriber holding that tier must keep (the DOWNGRADE_RISK notice). A
        (tier, reason) that several rules assign, or one assigned otherwise, has no line."""
        by_result: dict[tuple[str, str], list[Rule]] = {}
        for rule in self.rules:
            by_result.setdefault((rule.tier, rule.reason), []).append(rule)
        lines = {}
        for key, rules in by_result.items():
            bound = lower_bound(rules[0].condition.node) if len(rules) == 1 and rules[0].condition else None
            if bound is not None:
                lines[key] = bound
        return lines

    def eligibility_metrics(self) -> frozenset[str]:
        return frozenset().union(*(e.condition.metrics for e in self.eligibility))

    def rank_metrics(self) -> frozenset[str]:
        """Catalogue metrics the global rank pass reads (eligibility and rank keys)."""
        return self.eligibility_metrics().union(*(r.metrics for r in self.ranks))

    def grading_metrics(self) -> frozenset[str]:
        """Catalogue metrics the tier cascade reads (eligibility, ranks, rules, caps)."""
        conditions = [r.condition for r in self.rules if r.condition] + [c.condition for c in self.caps]
        return self.rank_metrics().union(*(c.metrics for c in conditions))

    def tag_metrics(self) -> frozenset[str]:
        """Catalogue metrics compute_tags reads: the tags' own, plus the cascade's when a tag re-evaluates rules."""
        what_if = any(t.rule_fails is not None for t in self.tags.values())
        base = self.grading_metrics() if what_if else self.rank_metrics() if self.ranks else frozenset()
        return base.union(*(t.metrics for t in self.tags.values()))

    def metrics_used(self) -> frozenset[str]:
        """Catalogue metrics the whole pack reads, tags and entitlements included."""
        extra = [c.metrics for c in (*self.tags.values(), *self.entitlements.values())]
        return self.grading_metrics().union(*extra, *(d.metrics for d in self.derived.values()))


@contextmanager
def _as_pack_error() -> Iterator[None]:
    try:
        yield
    except YamlError as exc:
        raise PackError(str(exc)) from None


def load_pack(path: Path) -> RulePack:
    path = Path(path)
    with _as_pack_error():
        text = read_text(path, "the pack")
    return load_pack_text(text, str(path))


def load_pack_text(text: str, source: str) -> RulePack:
    with _as_pack_error():
        return _read_pack(Document(text, source, "the pack"))


# --- what each section sees -------------------------------------------------------------------------------------

class _Scope:
    """The names a section of a pack may read: the catalogue, the tiers, and what the sections loaded before it
    defined (derived metrics, ranks). Its compiles turn an ExprError into the pack's file:line error."""

    def __init__(self, doc: Document, tiers: tuple[str, ...]):
        self.doc, self.tiers = doc, tiers
        self.types: dict[str, str] = dict(METRIC_CATALOGUE)
        self.derived_nodes: dict[str, Node] = {}  # inlined where a derived metric is read
        self.reads: dict[str, frozenset[str]] = {}  # defined name -> the catalogue metrics behind it

    def defines(self, name: str) -> bool:
        return name in self.types or name in self.tiers

    def define(self, name: str, kind: str, metrics: frozenset[str], node: Node | None = None) -> None:
        self.types[name], self.reads[name] = kind, metrics
        if node is not None:
            self.derived_nodes[name] = node

    @contextmanager
    def compiling(self, what: str) -> Iterator[None]:
        try:
            yield
        except ExprError as exc:
            self.doc.fail(exc.line, f"{what}: {exc.message} (column {exc.column})")

    def parse_scalar(self, node: yaml.Node, what: str) -> Node:
        """Raises ExprError: call it under `compiling`."""
        return parse(*self.doc.located(node, what))

    def bool_expr(self, parsed: Node, types: dict[str, str] | None = None,
                  substitutes: dict[str, tuple[pl.Expr, int]] | None = None) -> pl.Expr:
        return compile_bool(parsed, types or self.types, self.tiers, self.derived_nodes, substitutes)

    def number_expr(self, parsed: Node) -> tuple[pl.Expr, int]:
        return compile_number(parsed, self.types, self.tiers, self.derived_nodes)

    def condition(self, node: yaml.Node, what: str, types: dict[str, str] | None = None) -> Condition:
        with self.compiling(what):
            parsed = self.parse_scalar(node, what)
            expr = self.bool_expr(parsed, types)
        return Condition(node.value, line_of(node), parsed, expr, self.metrics_of(parsed))

    def number(self, node: yaml.Node, what: str) -> tuple[Node, pl.Expr, int]:
        with self.compiling(what):
            parsed = self.parse_scalar(node, what)
            return (parsed, *self.number_expr(parsed))

    def metrics_of(self, parsed: Node) -> frozenset[str]:
        names = names_used(parsed)
        return frozenset(n for n in names if n in METRIC_CATALOGUE).union(
            *(self.reads[n] for n in names if n in self.reads))

    def tier(self, node: yaml.Node, what: str) -> str:
        name = self.doc.scalar(node, what)
        if name not in self.tiers:
            self.doc.fail(node, f"unknown tier {name!r} in {what} (tiers: {', '.join(self.tiers)})")
        return name


def _name(doc: Document, node: yaml.Node, what: str) -> str:
    """A name a pack defines: tier, derived metric, rank, reason, entitlement."""
    return doc.identifier(node, what, _RESERVED)


def _at_most(doc: Document, node: yaml.Node, found: int, limit: int, what: str) -> None:
    if found > limit:
        doc.fail(node, f"a pack has at most {limit} {what}, found {found}")


# --- sections ---------------------------------------------------------------------------------------------------

def _read_pack(doc: Document) -> RulePack:
    top = doc.mapping(doc.root, "the pack", required=_REQUIRED_SECTIONS, optional=_OPTIONAL_SECTIONS)
    # Order matters: each section sees the names of the earlier ones (ranks exist only after eligibility, tags
    # re-evaluate rules), whatever the order of the sections in the file.
    tiers, labels = _tiers(doc, top["tiers"])
    scope = _Scope(doc, tiers)
    derived = _derived(scope, top["derived"]) if "derived" in top else {}
    eligibility = _eligibility(scope, top["eligibility"])
    ineligible = frozenset(e.reason for e in eligibility)
    ranks = _ranks(scope, top["ranks"]) if "ranks" in top else ()
    rules = _rules(scope, top["rules"], ineligible)
    caps = _caps(scope, top["caps"], ineligible) if "caps" in top else ()
    tags = _tags(scope, top["tags"], rules) if "tags" in top else {}
    return RulePack(
        name=doc.scalar(top["pack"], "pack"),
        version=hashlib.sha256(doc.text.encode("utf-8")).hexdigest()[:12],
        source=doc.source,
        tiers=tiers,
        tier_labels=labels,
        derived=derived,
        eligibility=eligibility,
        rules=rules,
        caps=caps,
        protection_months=doc.integer(top["protection_months"], "protection_months"),
        points=_points(scope, top["points"]),
        tags=tags,
        entitlements=_entitlements(scope, top["entitlements"], tags) if "entitlements" in top else {},
        ranks=ranks,
        effective_from=_month(doc, top["effective_from"]) if "effective_from" in top else None,
        description=doc.scalar(top["description"], "description") if "description" in top else "",
        metric_types=dict(scope.types),
    )


def _tiers(doc: Document, node: yaml.Node) -> tuple[tuple[str, ...], dict[str, str]]:
    labels: dict[str, str] = {}
    for item in doc.sequence(node, "tiers"):
        code_node, label = _tier_entry(doc, item)
        code = _name(doc, code_node, "tier")
        if code in labels:
            doc.fail(code_node, f"duplicate tier {code!r}")
        if code in METRIC_CATALOGUE:
            doc.fail(code_node, f"tier {code!r} has the name of a metric")
        labels[code] = label or code
    if len(labels) < 2:
        doc.fail(node, "a pack needs the unrated tier and at least one rated tier")
    _at_most(doc, node, len(labels), MAX_TIERS, "tiers")
    return tuple(labels), labels


def _tier_entry(doc: Document, item: yaml.Node) -> tuple[yaml.Node, str | None]:
    """A tier is a bare code or {code: ..., label: ...}: its code node and label."""
    if not isinstance(item, yaml.MappingNode):
        return item, None
    fields = doc.mapping(item, "a tier", required=("code",), optional=("label",))
    return fields["code"], doc.scalar(fields["label"], "label") if "label" in fields else None


def _derived(scope: _Scope, node: yaml.Node) -> dict[str, Derived]:
    result = {}
    for item in scope.doc.sequence(node, "derived"):
        fields = scope.doc.mapping(item, "a derived metric", required=("name", "expr"))
        name = _name(scope.doc, fields["name"], "derived metric")
        if scope.defines(name):
            scope.doc.fail(fields["name"], f"derived metric {name!r} is already defined")
        parsed, kind, expr, denominator = _derived_value(scope, fields["expr"], f"derived metric {name}")
        metrics = scope.metrics_of(parsed)
        result[name] = Derived(name, kind, fields["expr"].value, line_of(item), parsed, expr, denominator, metrics)
        scope.define(name, kind, metrics, parsed)
    return result


def _derived_value(scope: _Scope, node: yaml.Node, what: str) -> tuple[Node, str, pl.Expr, int | None]:
    """A derived metric's parsed expression, its type ('number' or 'bool'), compiled expression and denominator."""
    with scope.compiling(what):
        parsed = scope.parse_scalar(node, what)
        kind = check(parsed, scope.types, scope.tiers)
        if kind == "bool":
            return parsed, kind, scope.bool_expr(parsed), None
        if kind == "number":
            return (parsed, kind, *scope.number_expr(parsed))
        raise ExprError(f"a derived metric must be a number or a bool, got {kind}", parsed.line, parsed.column)


def _eligibility(scope: _Scope, node: yaml.Node) -> tuple[Eligibility, ...]:
    checks = []
    for i, item in enumerate(scope.doc.sequence(node, "eligibility"), 1):
        what = f"eligibility check {i}"
        fields = scope.doc.mapping(item, what, required=("when", "reason"))
        checks.append(Eligibility(scope.condition(fields["when"], what), _name(scope.doc, fields["reason"], "reason")))
    return tuple(checks)


def _ranks(scope: _Scope, node: yaml.Node) -> tuple[Rank, ...]:
    return tuple(_rank(scope, item, f"rank {i}") for i, item in enumerate(scope.doc.sequence(node, "ranks"), 1))


def _rank(scope: _Scope, item: yaml.Node, what: str) -> Rank:
    doc = scope.doc
    fields = doc.mapping(item, what, required=("name", "by", "order"), optional=("tie_break",))
    name = _name(doc, fields["name"], "rank")
    count = f"{name}_count"
    if scope.defines(name) or scope.defines(count):
        doc.fail(fields["name"], f"rank {name!r} or {count!r} is already defined")
    order = doc.choice(fields["order"], f"rank {name}: order", ("ascending", "descending"))
    if "tie_break" in fields and doc.scalar(fields["tie_break"], "tie_break") != "subs_id":
        doc.fail(fields["tie_break"], f"rank {name}: ties are broken by subs_id only (tie_break: subs_id)")
    parsed, key, _ = scope.number(fields["by"], f"rank {name}")
    metrics = scope.metrics_of(parsed)
    for defined in (name, count):
        scope.define(defined, "int", metrics)
    return Rank(name, fields["by"].value, line_of(item), key, order == "descending", metrics)


def _rules(scope: _Scope, node: yaml.Node, ineligible: frozenset[str]) -> tuple[Rule, ...]:
    items = scope.doc.sequence(node, "rules")
    if not items:
        scope.doc.fail(node, "a pack needs at least one rule")
    return tuple(_rule(scope, item, i, i == len(items), ineligible) for i, item in enumerate(items, 1))


def _rule(scope: _Scope, item: yaml.Node, i: int, last: bool, ineligible: frozenset[str]) -> Rule:
    what = f"rule {i}"
    fields = scope.doc.mapping(item, what, required=("when", "tier", "reason"))
    when = fields["when"]
    if isinstance(when, yaml.ScalarNode) and when.value.strip() == OTHERWISE:
        if not last:
            scope.doc.fail(when, f"{what}: 'otherwise' must be the last rule")
        condition = None
    else:
        condition = scope.condition(when, what)
    return Rule(condition, scope.tier(fields["tier"], what), _result_reason(scope.doc, fields["reason"], ineligible),
                line_of(item))


def _caps(scope: _Scope, node: yaml.Node, ineligible: frozenset[str]) -> tuple[Cap, ...]:
    caps = []
    for i, item in enumerate(scope.doc.sequence(node, "caps"), 1):
        what = f"cap {i}"
        fields = scope.doc.mapping(item, what, required=("when", "max_tier", "reason"))
        caps.append(Cap(scope.condition(fields["when"], what), scope.tier(fields["max_tier"], what),
                        _result_reason(scope.doc, fields["reason"], ineligible)))
    return tuple(caps)


def _result_reason(doc: Document, node: yaml.Node, ineligible: frozenset[str]) -> str:
    """The reason of a rule or cap: never an eligibility reason, which marks ineligible results."""
    reason = _name(doc, node, "reason")
    if reason in ineligible:
        doc.fail(node, f"reason {reason!r} is an eligibility reason: a rule or cap needs its own")
    return reason


def _points(scope: _Scope, node: yaml.Node) -> Points:
    fields = scope.doc.mapping(node, "points", required=("expiry_months", "multipliers"))
    expiry = scope.doc.integer(fields["expiry_months"], "expiry_months")
    if expiry < 1:
        scope.doc.fail(fields["expiry_months"], "expiry_months must be at least 1")
    return Points(expiry, _multipliers(scope, fields["multipliers"]))


def _multipliers(scope: _Scope, node: yaml.Node) -> dict[str, Fraction]:
    given = {}
    for key, _, value in scope.doc.entries(node, "multipliers"):
        tier = scope.tier(key, "multipliers")
        text = scope.doc.scalar(value, f"the multiplier of {tier}")
        if not _DECIMAL.fullmatch(text):
            scope.doc.fail(value, f"the multiplier of {tier} must be a decimal literal like 1.5, got {text!r}")
        given[tier] = Fraction(text)
    missing = [t for t in scope.tiers if t not in given]
    if missing:
        scope.doc.fail(node, f"multipliers are missing for {', '.join(missing)}")
    return {t: given[t] for t in scope.tiers}


def _tags(scope: _Scope, node: yaml.Node, rules: tuple[Rule, ...]) -> dict[str, Tag]:
    types = {**scope.types, **RESULT_TYPES}
    taken = _RESERVED | _FRAME_COLUMNS | set(types) | set(scope.tiers)
    tags = {}
    for key, name, value in scope.doc.entries(node, "tags"):
        if not IDENTIFIER.fullmatch(name) or name in taken:
            scope.doc.fail(key, f"tag {name!r} is not a valid name or clashes with a metric or tier")
        tags[name] = _tag(scope, name, value, types, rules)
    _at_most(scope.doc, node, len(tags), MAX_TAGS, "tags")  # the engine packs a row's tags and tier into one Int64
    return tags


def _tag(scope: _Scope, name: str, node: yaml.Node, types: dict[str, str], rules: tuple[Rule, ...]) -> Tag:
    """A tag is a condition, or {when: condition, assigning_rule_fails_with: {metric: what-if value}}."""
    what = f"tag {name}"
    when, what_if = node, None
    if isinstance(node, yaml.MappingNode):
        fields = scope.doc.mapping(node, what, required=("when",), optional=("assigning_rule_fails_with",))
        when, what_if = fields["when"], fields.get("assigning_rule_fails_with")
    condition = scope.condition(when, what, types)
    written, compiled, metrics = _substitutes(scope, what_if, what) if what_if else ({}, {}, frozenset())
    if not compiled:
        return Tag(name, condition, {}, None, condition.metrics)
    rule_fails = tuple(None if r.condition is None else ~scope.bool_expr(r.condition.node, substitutes=compiled)
                       for r in rules)
    return Tag(name, condition, written, rule_fails, condition.metrics | metrics)


def _substitutes(scope: _Scope, node: yaml.Node,
                 what: str) -> tuple[dict[str, str], dict[str, tuple[pl.Expr, int]], frozenset[str]]:
    """Of a what-if tag: metric -> its value as written, metric -> (compiled value, denominator), and the
    catalogue metrics the values read."""
    written, compiled, metrics = {}, {}, set()
    for key, metric, value in scope.doc.entries(node, what):
        if scope.types.get(metric) not in NUMERIC:
            scope.doc.fail(key, f"{what}: only a numeric metric can be substituted, not {metric!r}")
        parsed, expr, denominator = scope.number(value, f"{what}, {metric}")
        written[metric], compiled[metric] = value.value, (expr, denominator)
        metrics |= scope.metrics_of(parsed)
    return written, compiled, frozenset(metrics)


def _entitlements(scope: _Scope, node: yaml.Node, tags: dict[str, Tag]) -> dict[str, Condition]:
    types = {"tier": "tier", **{tag: "bool" for tag in tags}}
    entitlements = {}
    for key, name, value in scope.doc.entries(node, "entitlements"):
        _name(scope.doc, key, "entitlement")
        entitlements[name] = scope.condition(value, f"entitlement {name}", types)
    _at_most(scope.doc, node, len(entitlements), MAX_ENTITLEMENTS, "entitlements")  # one Int64 bit mask a row
    return entitlements


def _month(doc: Document, node: yaml.Node) -> Month:
    text = doc.scalar(node, "effective_from")
    try:
        return Month.parse(text)
    except ValueError:
        doc.fail(node, f"effective_from must be a month YYYY-MM, got {text!r}")
