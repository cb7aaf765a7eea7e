"""The condition language of rule packs: a tokenizer, a recursive-descent parser, a type checker and a compiler
to Polars expressions.

A pack is data: this grammar is all it can say, so it can never run code or reach tables.

    or_expr    := and_expr ('or' and_expr)*
    and_expr   := not_expr ('and' not_expr)*
    not_expr   := 'not' not_expr | comparison
    comparison := additive [('=' | '!=' | '<' | '<=' | '>' | '>=') additive]     (no chaining)
    additive   := term (('+' | '-') term)*
    term       := unary (('*' | '/' | '//') unary)*
    unary      := '-' unary | primary
    primary    := INT | DECIMAL | 'string' | true | false | NAME | FUNC '(' args ')' | '(' or_expr ')'
    FUNC       := floor | min | max | abs

Arithmetic is exact: every numeric sub-expression compiles to an Int64 Polars expression over a constant positive
integer denominator, so `sum6_fen / 6 >= 30000` becomes `sum6_fen * 1 >= 30000 * 6`. Division is only by a constant.
Products must stay within Int64 (about 9.2e18: far above fen sums times small denominators).
Null metrics propagate (null comparisons are false in a when/then chain); the grading engine rejects null inputs.

A compile may substitute numeric names with other, precompiled values (`substitutes`): tags use it to ask whether a
rule would still hold if a metric took another value ("what if" re-evaluation, see rulepack.Tag).
"""
from __future__ import annotations

import math
import operator
import re
from dataclasses import dataclass
from fractions import Fraction
from typing import NamedTuple

import polars as pl

NUMERIC = frozenset({"int", "number"})  # 'int' for catalogue metrics, 'number' for computed values
FUNCTIONS = {"floor": 1, "abs": 1, "min": 2, "max": 2}
COMPARISONS = {"=": operator.eq, "!=": operator.ne, "<": operator.lt, "<=": operator.le,
               ">": operator.gt, ">=": operator.ge}
_KEYWORDS = {"and", "or", "not", "true", "false"}
_MAX_LITERAL = 2 ** 53  # refuses absurd literals; Int64 products of metrics and denominators are not checked
_TOKEN_RE = re.compile(r"""
    (?P<ws>[ \t\r\n]+)
  | (?P<num>[0-9]+(?:\.[0-9]+)?)
  | (?P<str>'[^'\n]*')
  | (?P<name>[A-Za-z_][A-Za-z0-9_]*)
  | (?P<op>//|<=|>=|!=|[=<>+\-*/(),])
""", re.VERBOSE)


class ExprError(Exception):
    def __init__(self, message: str, line: int, column: int):
        super().__init__(f"{message} (line {line}, column {column})")
        self.message, self.line, self.column = message, line, column


# --- syntax tree ----------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class Node:
    line: int
    column: int


@dataclass(frozen=True)
class Literal(Node):
    value: Fraction | str | bool  # numbers are exact fractions: 1.5 is Fraction(3, 2)


@dataclass(frozen=True)
class Name(Node):
    name: str


@dataclass(frozen=True)
class Unary(Node):
    op: str  # '-' or 'not'
    operand: Node


@dataclass(frozen=True)
class Binary(Node):
    op: str  # + - * / // and or
    left: Node
    right: Node


@dataclass(frozen=True)
class Compare(Node):
    op: str
    left: Node
    right: Node


@dataclass(frozen=True)
class Call(Node):
    func: str
    args: tuple[Node, ...]


# --- tokenizer and parser -------------------------------------------------------------------------------------

class _Token(NamedTuple):
    kind: str  # num, str, name, op, end
    text: str
    line: int
    column: int


def _tokenize(text: str, line: int, column: int) -> list[_Token]:
    tokens, pos = [], 0
    while True:
        here_line = line + text.count("\n", 0, pos)
        start_of_line = text.rfind("\n", 0, pos) + 1
        here_col = pos - start_of_line + (column if start_of_line == 0 else 1)
        if pos >= len(text):
            return tokens + [_Token("end", "", here_line, here_col)]
        m = _TOKEN_RE.match(text, pos)
        if not m:
            ch = text[pos]
            hint = "; strings use single quotes" if ch == '"' else ""
            if ch == "'":
                raise ExprError("unterminated string", here_line, here_col)
            raise ExprError(f"unexpected character {ch!r}{hint}", here_line, here_col)
        if m.lastgroup != "ws":
            tokens.append(_Token(m.lastgroup, m.group(), here_line, here_col))
        pos = m.end()


class _Parser:
    def __init__(self, tokens: list[_Token]):
        self.tokens, self.i = tokens, 0

    def peek(self) -> _Token:
        return self.tokens[self.i]

    def take(self) -> _Token:
        tok = self.tokens[self.i]
        self.i += 1
        return tok

    def at(self, *texts: str) -> bool:
        tok = self.peek()
        return tok.kind in ("op", "name") and tok.text in texts

    def expect(self, text: str) -> _Token:
        if not self.at(text):
            self.fail(f"expected {text!r}")
        return self.take()

    def fail(self, message: str):
        tok = self.peek()
        found = "end of expression" if tok.kind == "end" else repr(tok.text)
        raise ExprError(f"{message}, found {found}", tok.line, tok.column)

    def parse(self) -> Node:
        node = self.or_expr()
        if self.peek().kind != "end":
            self.fail("expected an operator or the end of the expression")
        return node

    def _left_assoc(self, ops: tuple[str, ...], operand) -> Node:
        node = operand()
        while self.at(*ops):
            tok = self.take()
            node = Binary(tok.line, tok.column, tok.text, node, operand())
        return node

    def or_expr(self) -> Node:
        return self._left_assoc(("or",), self.and_expr)

    def and_expr(self) -> Node:
        return self._left_assoc(("and",), self.not_expr)

    def not_expr(self) -> Node:
        if self.at("not"):
            tok = self.take()
            return Unary(tok.line, tok.column, "not", self.not_expr())
        return self.comparison()

    def comparison(self) -> Node:
        left = self.additive()
        if self.peek().kind == "op" and self.peek().text in COMPARISONS:
            tok = self.take()
            node = Compare(tok.line, tok.column, tok.text, left, self.additive())
            if self.peek().kind == "op" and self.peek().text in COMPARISONS:
                self.fail("comparisons cannot be chained (use 'and')")
            return node
        return left

    def additive(self) -> Node:
        return self._left_assoc(("+", "-"), self.term)

    def term(self) -> Node:
        return self._left_assoc(("*", "/", "//"), self.unary)

    def unary(self) -> Node:
        if self.at("-"):
            tok = self.take()
            return Unary(tok.line, tok.column, "-", self.unary())
        return self.primary()

    def primary(self) -> Node:
        tok = self.peek()
        if tok.kind in ("num", "str"):
            self.take()
            value = Fraction(tok.text) if tok.kind == "num" else tok.text[1:-1]
            return Literal(tok.line, tok.column, value)
        if tok.kind == "op" and tok.text == "(":
            self.take()
            node = self.or_expr()
            self.expect(")")
            return node
        if tok.kind == "name" and tok.text in ("true", "false"):
            self.take()
            return Literal(tok.line, tok.column, tok.text == "true")
        if tok.kind == "name" and tok.text not in _KEYWORDS:
            self.take()
            if self.at("("):
                return self.call(tok)
            return Name(tok.line, tok.column, tok.text)
        self.fail("expected a value")

    def call(self, name: _Token) -> Node:
        if name.text not in FUNCTIONS:
            raise ExprError(f"unknown function {name.text!r}", name.line, name.column)
        self.expect("(")
        args = [self.or_expr()]
        while self.at(","):
            self.take()
            args.append(self.or_expr())
        self.expect(")")
        if len(args) != FUNCTIONS[name.text]:
            raise ExprError(f"{name.text}() takes {FUNCTIONS[name.text]} argument(s), got {len(args)}",
                            name.line, name.column)
        return Call(name.line, name.column, name.text, tuple(args))


def parse(text: str, line: int = 1, column: int = 1) -> Node:
    """Parses a condition or a numeric expression; `line`/`column` place it in its file for error messages."""
    try:
        return _Parser(_tokenize(text, line, column)).parse()
    except RecursionError:
        raise ExprError("expression nested too deeply", line, column) from None


def _children(node: Node) -> tuple[Node, ...]:
    if isinstance(node, Unary):
        return (node.operand,)
    if isinstance(node, (Binary, Compare)):
        return node.left, node.right
    return node.args if isinstance(node, Call) else ()


def names_used(node: Node) -> set[str]:
    """Every identifier in the expression (metrics, derived metrics and tier names alike)."""
    if isinstance(node, Name):
        return {node.name}
    return set().union(*(names_used(child) for child in _children(node)))


# --- type checking --------------------------------------------------------------------------------------------

_CONST_OPS = {"+": operator.add, "-": operator.sub, "*": operator.mul, "/": operator.truediv,
              "//": lambda a, b: Fraction(a // b)}
_CONST_FUNCS = {"floor": lambda a: Fraction(math.floor(a)), "abs": abs, "min": min, "max": max}


def _const(node: Node) -> Fraction | None:
    """The exact value of a constant numeric sub-expression, else None (also for bad constants: check reports)."""
    if isinstance(node, Literal) and isinstance(node.value, Fraction):
        return node.value
    if isinstance(node, Unary) and node.op == "-":
        value = _const(node.operand)
        return None if value is None else -value
    if isinstance(node, Binary) and node.op in _CONST_OPS:
        function, dividing = _CONST_OPS[node.op], node.op in ("/", "//")
    elif isinstance(node, Call):
        function, dividing = _CONST_FUNCS[node.func], False
    else:
        return None
    values = [_const(child) for child in _children(node)]
    if any(v is None for v in values) or (dividing and values[1] == 0):
        return None
    return function(*values)


def lower_bound(node: Node) -> tuple[str, Fraction] | None:
    """(metric, line) when the condition is `metric >= line` with a constant line, else None: the line a
    subscriber must stay at or above to keep what the condition gives."""
    if isinstance(node, Compare) and node.op == ">=" and isinstance(node.left, Name):
        line = _const(node.right)
        return None if line is None else (node.left.name, line)
    return None


def _is_tier_literal(node: Node, metric_types: dict[str, str]) -> bool:
    return isinstance(node, Name) and node.name not in metric_types


def check(node: Node, metric_types: dict[str, str], tier_names=None) -> str:
    """The type of the expression: 'number', 'bool', 'str' or 'tier'; raises ExprError on any misuse.
    `tier_names`, when given, validates bare tier names compared with a tier."""
    def err(message: str, at: Node = node):
        raise ExprError(message, at.line, at.column)

    if isinstance(node, Literal):
        if isinstance(node.value, Fraction):
            if max(abs(node.value.numerator), node.value.denominator) > _MAX_LITERAL:
                err("number too large")
            return "number"
        return "bool" if isinstance(node.value, bool) else "str"
    if isinstance(node, Name):
        if node.name not in metric_types:
            err(f"unknown name {node.name!r}")
        kind = metric_types[node.name]
        return "number" if kind in NUMERIC else kind
    if isinstance(node, Compare):
        return _check_compare(node, metric_types, tier_names)
    logical = getattr(node, "op", None) in ("not", "and", "or")
    what = f"{node.func}()" if isinstance(node, Call) else f"'{node.op}'"
    for child in _children(node):
        found = check(child, metric_types, tier_names)
        if found not in ({"bool"} if logical else NUMERIC):
            err(f"{what} needs {'bool' if logical else 'a number'}, got {found}", child)
    if isinstance(node, Binary) and node.op in ("/", "//"):
        divisor = _const(node.right)
        if divisor is None:
            err("division is only allowed by a constant", node.right)
        if divisor == 0:
            err("division by zero", node.right)
    return "bool" if logical else "number"


def _check_compare(node: Compare, metric_types: dict[str, str], tier_names) -> str:
    left_lit, right_lit = (_is_tier_literal(n, metric_types) for n in (node.left, node.right))
    lt = "tier" if left_lit else check(node.left, metric_types, tier_names)
    rt = "tier" if right_lit else check(node.right, metric_types, tier_names)
    if left_lit and (right_lit or rt != "tier"):
        raise ExprError(f"unknown name {node.left.name!r}", node.left.line, node.left.column)
    if right_lit and lt != "tier":
        raise ExprError(f"unknown name {node.right.name!r}", node.right.line, node.right.column)
    for lit_side, side in ((left_lit, node.left), (right_lit, node.right)):
        if lit_side and tier_names is not None and side.name not in tier_names:
            raise ExprError(f"unknown tier {side.name!r}", side.line, side.column)
    if lt != rt:
        raise ExprError(f"cannot compare {lt} with {rt}", node.line, node.column)
    if lt in ("str", "bool") and node.op not in ("=", "!="):
        raise ExprError(f"{lt} values can only be compared with = or !=", node.line, node.column)
    return "bool"


# --- compilation to Polars ------------------------------------------------------------------------------------

def _lit(value: int) -> pl.Expr:
    return pl.lit(value, dtype=pl.Int64)


def _scale(expr: pl.Expr, factor: int) -> pl.Expr:
    return expr if factor == 1 else expr * _lit(factor)


class _Compiler:
    def __init__(self, metric_types: dict[str, str], tier_order, derived, substitutes=None):
        self.types, self.tiers, self.derived = metric_types, list(tier_order), derived or {}
        self.substitutes = substitutes or {}

    def number(self, node: Node) -> tuple[pl.Expr, int]:
        const = _const(node)
        if const is not None:
            return _lit(const.numerator), const.denominator
        if isinstance(node, Name):
            if node.name in self.substitutes:  # checked first: also reaches names read through derived metrics
                return self.substitutes[node.name]
            if node.name in self.derived:
                return self.number(self.derived[node.name])
            return pl.col(node.name).cast(pl.Int64), 1
        if isinstance(node, Unary):
            expr, den = self.number(node.operand)
            return -expr, den
        if isinstance(node, Call):
            return self.call(node)
        a, da = self.number(node.left)
        if node.op in ("+", "-"):
            b, db = self.number(node.right)
            common = math.lcm(da, db)
            a, b = _scale(a, common // da), _scale(b, common // db)
            return (a + b if node.op == "+" else a - b), common
        if node.op == "*":
            b, db = self.number(node.right)
            return a * b, da * db
        divisor = _const(node.right)  # (a/da) / (p/q) = a*q / (da*p), denominator kept positive
        num = _scale(a, divisor.denominator * (1 if divisor > 0 else -1))
        den = da * abs(divisor.numerator)
        return (num, den) if node.op == "/" else (num // _lit(den), 1)  # Polars // floors toward -inf

    def call(self, node: Call) -> tuple[pl.Expr, int]:
        args = [self.number(a) for a in node.args]
        if node.func == "floor":
            expr, den = args[0]
            return (expr, 1) if den == 1 else (expr // _lit(den), 1)
        if node.func == "abs":
            return args[0][0].abs(), args[0][1]
        common = math.lcm(*(den for _, den in args))
        scaled = [_scale(expr, common // den) for expr, den in args]
        pick = pl.min_horizontal if node.func == "min" else pl.max_horizontal
        return pick(*scaled), common

    def boolean(self, node: Node) -> pl.Expr:
        if isinstance(node, Literal):
            return pl.lit(node.value, dtype=pl.Boolean)
        if isinstance(node, Name):
            if node.name in self.derived:
                return self.boolean(self.derived[node.name])
            return pl.col(node.name)
        if isinstance(node, Unary):
            return ~self.boolean(node.operand)
        if isinstance(node, Binary):
            a, b = self.boolean(node.left), self.boolean(node.right)
            return a & b if node.op == "and" else a | b
        return self.compare(node)

    def compare(self, node: Compare) -> pl.Expr:
        op = COMPARISONS[node.op]
        kind = "tier" if _is_tier_literal(node.left, self.types) else check(node.left, self.types)
        if kind == "number":
            (a, da), (b, db) = self.number(node.left), self.number(node.right)
            return op(_scale(a, db), _scale(b, da))  # a/da op b/db  <=>  a*db op b*da, as da, db > 0
        if kind == "tier":
            return op(self.tier_index(node.left), self.tier_index(node.right))
        return op(self.scalar(node.left), self.scalar(node.right))

    def tier_index(self, node: Node) -> pl.Expr:
        if _is_tier_literal(node, self.types):
            if node.name not in self.tiers:
                raise ExprError(f"unknown tier {node.name!r}", node.line, node.column)
            return _lit(self.tiers.index(node.name))
        # via an Enum of the tiers: an unknown tier is an error, and a column already of that Enum costs nothing
        return pl.col(node.name).cast(pl.Enum(self.tiers)).to_physical().cast(pl.Int64)

    def scalar(self, node: Node) -> pl.Expr:
        if isinstance(node, Literal) and isinstance(node.value, str):
            return pl.lit(node.value, dtype=pl.String)
        if isinstance(node, Name) and self.types.get(node.name) == "str":
            return pl.col(node.name)
        return self.boolean(node)


def compile_bool(node: Node, metric_types: dict[str, str], tier_order, derived=None, substitutes=None) -> pl.Expr:
    """A Boolean Polars expression. `derived`: name -> parsed Node of the pack's derived metrics (inlined).
    `substitutes`: numeric name -> (Int64 numerator expression, positive denominator) used in its place."""
    kind = check(node, metric_types, tier_order)
    if kind != "bool":
        raise ExprError(f"a condition must be bool, got {kind}", node.line, node.column)
    return _Compiler(metric_types, tier_order, derived, substitutes).boolean(node)


def compile_number(node: Node, metric_types: dict[str, str], tier_order=(), derived=None) -> tuple[pl.Expr, int]:
    """(Int64 numerator expression, constant positive denominator) of a numeric expression."""
    kind = check(node, metric_types, tier_order)
    if kind not in NUMERIC:
        raise ExprError(f"expected a number, got {kind}", node.line, node.column)
    return _Compiler(metric_types, tier_order, derived).number(node)
