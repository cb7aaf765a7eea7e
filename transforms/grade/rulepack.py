"""Rule packs: versioned YAML files that hold a grading system as data (rules.md, "Grading rules").

A pack is read with a YAML composer that keeps every node's line (no Python objects are ever constructed, no
anchors, aliases or custom tags), checked against a fixed schema, and its conditions are parsed, type-checked
and compiled to Polars expressions by `transforms.grade.expr`. Any error raises PackError "<file>:<line>: <message>".

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

Metric catalogue (METRIC_CATALOGUE): the base metrics the engine provides for the grading month M, one row per
subscriber of the snapshot S(M). Money is integer fen; bool flags are the Y/N fields of ACCT.
    status str            NORMAL | SUSPENDED | CANCELLED, as of S(M)
    subs_type str         PERSONAL | IOT | DATACARD | TEST | FIXEDWL
    brand str             GOTONE | MZONE | EASYOWN
    region_code str
    realname_flag bool    real-name registered
    vip_flag bool         designated for social status or influence
    group_key_flag bool   key person of a group customer
    tenure_months int     months from the month of open_date to M, both counted
    cons_fen int          cons(M): BILL of M without GIFT and DEPOSIT items; may be negative
    sum3_fen int          cons(M-2) + ... + cons(M)
    sum6_fen int          cons(M-5) + ... + cons(M)   ("avg6 >= T yuan" is sum6_fen >= 600 * T)
    sum12_fen int         cons(M-11) + ... + cons(M)
    cons_prev5_fen int    cons(M-5) + ... + cons(M-1)
    cons_m5_fen int       cons(M-5), the month leaving the avg6 window next month
    data_fen int          DATA items of M
    roam_fen int          ROAM items of M
    roam_months6 int      months of M-5..M with ROAM items > 0
    susp12 int            ARREARS_TWOWAY events dated in M-11..M
    susp12_oneway int     ARREARS_ONEWAY events dated in M-11..M
    prior_year_points int points earned (accruals only) in the calendar year before M's year
    points_balance int    spendable points balance after the monthly run of M
    points_earned_12m int points earned for M-11..M
"""
from __future__ import annotations

import hashlib
import re
import textwrap
from dataclasses import dataclass, field
from fractions import Fraction
from pathlib import Path

import polars as pl
import yaml

from transforms.core.calendar import Month
from transforms.grade.expr import FUNCTIONS, ExprError, Node, check, compile_bool, compile_number, names_used, parse

METRIC_CATALOGUE: dict[str, str] = {
    "status": "str", "subs_type": "str", "brand": "str", "region_code": "str",
    "realname_flag": "bool", "vip_flag": "bool", "group_key_flag": "bool",
    "tenure_months": "int", "cons_fen": "int", "sum3_fen": "int", "sum6_fen": "int", "sum12_fen": "int",
    "cons_prev5_fen": "int", "cons_m5_fen": "int", "data_fen": "int", "roam_fen": "int", "roam_months6": "int",
    "susp12": "int", "susp12_oneway": "int",
    "prior_year_points": "int", "points_balance": "int", "points_earned_12m": "int",
}
# Names available to tags besides metrics: the graded result of the subscriber.
RESULT_TYPES = {"tier": "tier", "reason": "str"}
OTHERWISE = "otherwise"
MAX_TAGS, MAX_ENTITLEMENTS, MAX_TIERS = 48, 62, 64
_IDENT = re.compile(r"[A-Za-z][A-Za-z0-9_]*")  # a leading _ is kept for the engine's own columns
_RESERVED = {"and", "or", "not", "true", "false", OTHERWISE, "NONE", *FUNCTIONS, *RESULT_TYPES}
_FRAME_COLUMNS = {"subs_id", "tags", "eligible", "protected", "computed_tier"}  # columns next to tags
_DECIMAL = re.compile(r"[0-9]+(\.[0-9]+)?")
_STD_TAGS = {f"tag:yaml.org,2002:{t}" for t in ("str", "int", "float", "bool", "null", "map", "seq")}


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
    expiry_months: int
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

    def tier_index(self, tier: str) -> int:
        return self.tiers.index(tier)

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


def load_pack(path: Path) -> RulePack:
    path = Path(path)
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise PackError(f"{path}:0: cannot read the pack: {exc.strerror}") from None
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError:
        raise PackError(f"{path}:0: the pack is not UTF-8") from None
    return _Loader(str(path)).load(text, data)


def load_pack_text(text: str, source: str) -> RulePack:
    return _Loader(source).load(text, text.encode("utf-8"))


# --- YAML with lines ------------------------------------------------------------------------------------------

class _NodeLoader(yaml.SafeLoader):
    """Composes the node graph only (nothing is constructed); anchors and aliases are refused."""

    def compose_node(self, parent, index):
        event = self.peek_event()
        if isinstance(event, yaml.AliasEvent) or getattr(event, "anchor", None):
            raise yaml.MarkedYAMLError(None, None, "anchors and aliases are not allowed in a pack",
                                       event.start_mark)
        return super().compose_node(parent, index)


def _line(node: yaml.Node) -> int:
    return node.start_mark.line + 1


class _Loader:
    def __init__(self, source: str):
        self.source = source
        self.types: dict[str, str] = dict(METRIC_CATALOGUE)
        self.derived_nodes: dict[str, Node] = {}
        self.derived_metrics: dict[str, frozenset[str]] = {}
        self.tiers: tuple[str, ...] = ()
        self.lines: list[str] = []

    def fail(self, node: yaml.Node | int, message: str):
        line = node if isinstance(node, int) else _line(node)
        raise PackError(f"{self.source}:{line}: {message}")

    # schema helpers
    def entries(self, node, what: str) -> list[tuple[yaml.Node, str, yaml.Node]]:
        """(key node, key, value node) of a mapping, refusing duplicate keys (plain YAML keeps the last)."""
        if not isinstance(node, yaml.MappingNode):
            self.fail(node, f"{what} must be a mapping")
        seen, result = set(), []
        for key, value in node.value:
            name = self.scalar(key, f"a key of {what}")
            if name in seen:
                self.fail(key, f"duplicate key {name!r} in {what}")
            self.tagged(value)
            seen.add(name)
            result.append((key, name, value))
        return result

    def mapping(self, node, what: str, required: tuple = (), optional: tuple = ()) -> dict[str, yaml.Node]:
        """A mapping with a fixed set of keys: unknown keys and missing required keys are errors."""
        found = {}
        for key, name, value in self.entries(node, what):
            if name not in required and name not in optional:
                self.fail(key, f"unknown key {name!r} in {what} (expected {', '.join(required + optional)})")
            found[name] = value
        for name in required:
            if name not in found:
                self.fail(node, f"{what} is missing {name!r}")
        return found

    def sequence(self, node, what: str) -> list[yaml.Node]:
        if not isinstance(node, yaml.SequenceNode):
            self.fail(node, f"{what} must be a list")
        return node.value

    def tagged(self, node: yaml.Node) -> None:
        if node.tag not in _STD_TAGS:
            self.fail(node, f"YAML tag {node.tag!r} is not allowed in a pack")

    def scalar(self, node, what: str) -> str:
        self.tagged(node)
        if not isinstance(node, yaml.ScalarNode) or node.value == "":
            self.fail(node, f"{what} must be a non-empty value")
        return node.value

    def identifier(self, node, what: str) -> str:
        name = self.scalar(node, what)
        if not _IDENT.fullmatch(name) or name in _RESERVED:
            self.fail(node, f"{what} {name!r} is not a valid name")
        return name

    def integer(self, node, what: str) -> int:
        text = self.scalar(node, what)
        if not text.isdigit() or not text.isascii():
            self.fail(node, f"{what} must be a non-negative integer, got {text!r}")
        return int(text)

    def tier(self, node, what: str) -> str:
        name = self.scalar(node, what)
        if name not in self.tiers:
            self.fail(node, f"unknown tier {name!r} in {what} (tiers: {', '.join(self.tiers)})")
        return name

    def expression(self, node, what: str) -> Node:
        text = self.scalar(node, what)
        line, column = _line(node), node.start_mark.column + 1
        if node.style in ("|", ">"):  # re-indent the block as in the file so columns are file columns
            line, column = line + 1, 1
            first = self.lines[line - 1] if line <= len(self.lines) else ""
            text = textwrap.indent(text, " " * (len(first) - len(first.lstrip(" "))))
        elif node.style in ("'", '"'):
            column += 1
        try:
            return parse(text, line, column)
        except ExprError as exc:
            self.fail(exc.line, f"{what}: {exc.message} (column {exc.column})")

    def condition(self, node, what: str, types: dict[str, str] | None = None) -> Condition:
        parsed = self.expression(node, what)
        try:
            expr = compile_bool(parsed, types or self.types, self.tiers, self.derived_nodes)
        except ExprError as exc:
            self.fail(exc.line, f"{what}: {exc.message} (column {exc.column})")
        return Condition(node.value, _line(node), parsed, expr, self.metrics_of(parsed))

    def metrics_of(self, parsed: Node) -> frozenset[str]:
        names = names_used(parsed)
        through = [self.derived_metrics[n] for n in names if n in self.derived_metrics]
        return frozenset(n for n in names if n in METRIC_CATALOGUE).union(*through)

    # sections
    def load(self, text: str, data: bytes) -> RulePack:
        self.lines = text.splitlines()
        try:
            loader = _NodeLoader(text)
            try:
                root = loader.get_single_node()
            finally:
                loader.dispose()
        except yaml.MarkedYAMLError as exc:
            mark = exc.problem_mark or exc.context_mark
            raise PackError(f"{self.source}:{mark.line + 1 if mark else 0}: invalid YAML: {exc.problem}") from None
        except yaml.YAMLError as exc:
            raise PackError(f"{self.source}:0: invalid YAML: {exc}") from None
        if root is None:
            self.fail(1, "the pack is empty")
        top = self.mapping(root, "the pack",
                           required=("pack", "tiers", "eligibility", "rules", "protection_months", "points"),
                           optional=("description", "effective_from", "derived", "ranks", "caps", "tags",
                                     "entitlements"))
        # Order matters: each section sees the names of the earlier ones (ranks exist only after eligibility,
        # tags re-evaluate rules), whatever the order of the sections in the file.
        self.tiers, labels = self.load_tiers(top["tiers"])
        derived = self.load_derived(top["derived"]) if "derived" in top else {}
        eligibility = self.load_eligibility(top["eligibility"])
        ranks = self.load_ranks(top["ranks"]) if "ranks" in top else ()
        rules = self.load_rules(top["rules"])
        caps = self.load_caps(top["caps"]) if "caps" in top else ()
        tags = self.load_tags(top["tags"], rules) if "tags" in top else {}
        return RulePack(
            name=self.scalar(top["pack"], "pack"),
            version=hashlib.sha256(data).hexdigest()[:12],
            source=self.source,
            tiers=self.tiers,
            tier_labels=labels,
            derived=derived,
            eligibility=eligibility,
            rules=rules,
            caps=caps,
            protection_months=self.integer(top["protection_months"], "protection_months"),
            points=self.load_points(top["points"]),
            tags=tags,
            entitlements=self.load_entitlements(top["entitlements"], tags) if "entitlements" in top else {},
            ranks=ranks,
            effective_from=self.load_month(top["effective_from"]) if "effective_from" in top else None,
            description=self.scalar(top["description"], "description") if "description" in top else "",
            metric_types=dict(self.types),
        )

    def load_tiers(self, node) -> tuple[tuple[str, ...], dict[str, str]]:
        codes, labels = [], {}
        for item in self.sequence(node, "tiers"):
            if isinstance(item, yaml.MappingNode):
                fields = self.mapping(item, "a tier", required=("code",), optional=("label",))
                code_node = fields["code"]
                label = self.scalar(fields["label"], "label") if "label" in fields else None
            else:
                code_node, label = item, None
            code = self.identifier(code_node, "tier")
            if code in codes:
                self.fail(code_node, f"duplicate tier {code!r}")
            if code in METRIC_CATALOGUE:
                self.fail(code_node, f"tier {code!r} has the name of a metric")
            codes.append(code)
            labels[code] = label or code
        if len(codes) < 2:
            self.fail(node, "a pack needs the unrated tier and at least one rated tier")
        if len(codes) > MAX_TIERS:
            self.fail(node, f"a pack has at most {MAX_TIERS} tiers, found {len(codes)}")
        return tuple(codes), labels

    def load_derived(self, node) -> dict[str, Derived]:
        result = {}
        for item in self.sequence(node, "derived"):
            fields = self.mapping(item, "a derived metric", required=("name", "expr"))
            name = self.identifier(fields["name"], "derived metric")
            if name in self.types or name in self.tiers:
                self.fail(fields["name"], f"derived metric {name!r} is already defined")
            parsed = self.expression(fields["expr"], f"derived metric {name}")
            try:
                kind = check(parsed, self.types, self.tiers)
                if kind == "bool":
                    expr, den = compile_bool(parsed, self.types, self.tiers, self.derived_nodes), None
                elif kind == "number":
                    expr, den = compile_number(parsed, self.types, self.tiers, self.derived_nodes)
                else:
                    raise ExprError(f"a derived metric must be a number or a bool, got {kind}",
                                    parsed.line, parsed.column)
            except ExprError as exc:
                self.fail(exc.line, f"derived metric {name}: {exc.message} (column {exc.column})")
            metrics = self.metrics_of(parsed)
            result[name] = Derived(name, kind, fields["expr"].value, _line(item), parsed, expr, den, metrics)
            self.types[name], self.derived_nodes[name], self.derived_metrics[name] = kind, parsed, metrics
        return result

    def load_eligibility(self, node) -> tuple[Eligibility, ...]:
        result = []
        for i, item in enumerate(self.sequence(node, "eligibility"), 1):
            fields = self.mapping(item, f"eligibility check {i}", required=("when", "reason"))
            result.append(Eligibility(self.condition(fields["when"], f"eligibility check {i}"),
                                      self.identifier(fields["reason"], "reason")))
        return tuple(result)

    def load_rules(self, node) -> tuple[Rule, ...]:
        items, result = self.sequence(node, "rules"), []
        if not items:
            self.fail(node, "a pack needs at least one rule")
        for i, item in enumerate(items, 1):
            fields = self.mapping(item, f"rule {i}", required=("when", "tier", "reason"))
            when = fields["when"]
            if isinstance(when, yaml.ScalarNode) and when.value.strip() == OTHERWISE:
                if i != len(items):
                    self.fail(when, f"rule {i}: 'otherwise' must be the last rule")
                condition = None
            else:
                condition = self.condition(when, f"rule {i}")
            result.append(Rule(condition, self.tier(fields["tier"], f"rule {i}"),
                               self.identifier(fields["reason"], "reason"), _line(item)))
        return tuple(result)

    def load_caps(self, node) -> tuple[Cap, ...]:
        result = []
        for i, item in enumerate(self.sequence(node, "caps"), 1):
            fields = self.mapping(item, f"cap {i}", required=("when", "max_tier", "reason"))
            result.append(Cap(self.condition(fields["when"], f"cap {i}"),
                              self.tier(fields["max_tier"], f"cap {i}"), self.identifier(fields["reason"], "reason")))
        return tuple(result)

    def load_points(self, node) -> Points:
        fields = self.mapping(node, "points", required=("expiry_months", "multipliers"))
        given = {}
        for key, _, value in self.entries(fields["multipliers"], "multipliers"):
            tier = self.tier(key, "multipliers")
            text = self.scalar(value, f"the multiplier of {tier}")
            if not _DECIMAL.fullmatch(text):
                self.fail(value, f"the multiplier of {tier} must be a decimal literal like 1.5, got {text!r}")
            given[tier] = Fraction(text)
        missing = [t for t in self.tiers if t not in given]
        if missing:
            self.fail(fields["multipliers"], f"multipliers are missing for {', '.join(missing)}")
        return Points(self.integer(fields["expiry_months"], "expiry_months"), {t: given[t] for t in self.tiers})

    def load_ranks(self, node) -> tuple[Rank, ...]:
        result = []
        for i, item in enumerate(self.sequence(node, "ranks"), 1):
            fields = self.mapping(item, f"rank {i}", required=("name", "by", "order"), optional=("tie_break",))
            name = self.identifier(fields["name"], "rank")
            count = f"{name}_count"
            if any(n in self.types or n in self.tiers for n in (name, count)):
                self.fail(fields["name"], f"rank {name!r} or {count!r} is already defined")
            order = self.scalar(fields["order"], "order")
            if order not in ("ascending", "descending"):
                self.fail(fields["order"], f"rank {name}: order must be ascending or descending, got {order!r}")
            if "tie_break" in fields and self.scalar(fields["tie_break"], "tie_break") != "subs_id":
                self.fail(fields["tie_break"], f"rank {name}: ties are broken by subs_id only (tie_break: subs_id)")
            parsed = self.expression(fields["by"], f"rank {name}")
            try:
                key, _ = compile_number(parsed, self.types, self.tiers, self.derived_nodes)
            except ExprError as exc:
                self.fail(exc.line, f"rank {name}: {exc.message} (column {exc.column})")
            metrics = self.metrics_of(parsed)
            result.append(Rank(name, fields["by"].value, _line(item), key, order == "descending", metrics))
            for n in (name, count):
                self.types[n], self.derived_metrics[n] = "int", metrics
        return tuple(result)

    def load_tags(self, node, rules: tuple[Rule, ...]) -> dict[str, Tag]:
        types = {**self.types, **RESULT_TYPES}
        result = {}
        for key, name, value in self.entries(node, "tags"):
            if not _IDENT.fullmatch(name) or name in _RESERVED or name in types or name in self.tiers \
                    or name in _FRAME_COLUMNS:
                self.fail(key, f"tag {name!r} is not a valid name or clashes with a metric or tier")
            what = f"tag {name}"
            if not isinstance(value, yaml.MappingNode):
                condition = self.condition(value, what, types)
                result[name] = Tag(name, condition, {}, None, condition.metrics)
                continue
            fields = self.mapping(value, what, required=("when",), optional=("assigning_rule_fails_with",))
            condition = self.condition(fields["when"], what, types)
            substitutes, compiled, metrics = {}, {}, set(condition.metrics)
            if "assigning_rule_fails_with" in fields:
                for sub_key, metric, sub_value in self.entries(fields["assigning_rule_fails_with"], what):
                    if self.types.get(metric) not in ("int", "number"):
                        self.fail(sub_key, f"{what}: only a numeric metric can be substituted, not {metric!r}")
                    parsed = self.expression(sub_value, f"{what}, {metric}")
                    try:
                        compiled[metric] = compile_number(parsed, self.types, self.tiers, self.derived_nodes)
                    except ExprError as exc:
                        self.fail(exc.line, f"{what}, {metric}: {exc.message} (column {exc.column})")
                    substitutes[metric] = sub_value.value
                    metrics |= self.metrics_of(parsed)
            rule_fails = None
            if compiled:
                rule_fails = tuple(None if r.condition is None else ~compile_bool(
                    r.condition.node, self.types, self.tiers, self.derived_nodes, compiled) for r in rules)
            result[name] = Tag(name, condition, substitutes, rule_fails, frozenset(metrics))
        if len(result) > MAX_TAGS:  # the engine packs a row's tags and tier into one Int64
            self.fail(node, f"a pack has at most {MAX_TAGS} tags, found {len(result)}")
        return result

    def load_entitlements(self, node, tags: dict[str, Tag]) -> dict[str, Condition]:
        types = {"tier": "tier", **{tag: "bool" for tag in tags}}
        result = {}
        for key, name, value in self.entries(node, "entitlements"):
            if not _IDENT.fullmatch(name) or name in _RESERVED:
                self.fail(key, f"entitlement {name!r} is not a valid name")
            result[name] = self.condition(value, f"entitlement {name}", types)
        if len(result) > MAX_ENTITLEMENTS:  # a row's entitlements are one Int64 bit mask
            self.fail(node, f"a pack has at most {MAX_ENTITLEMENTS} entitlements, found {len(result)}")
        return result

    def load_month(self, node) -> Month:
        text = self.scalar(node, "effective_from")
        try:
            return Month.parse(text)
        except ValueError:
            self.fail(node, f"effective_from must be a month YYYY-MM, got {text!r}")
