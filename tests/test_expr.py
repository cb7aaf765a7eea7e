"""The condition language of rule packs (transforms/expr.py): parsing, types, exact arithmetic, rejections."""
from __future__ import annotations

from fractions import Fraction

import polars as pl
import pytest

from transforms.grade.expr import (Binary, Compare, ExprError, Literal, Name, Unary, check, compile_bool,
                             compile_number, names_used, parse)

TYPES = {"a": "bool", "b": "bool", "c": "bool", "sum6_fen": "int", "tenure_months": "int", "x": "int",
         "brand": "str", "tier": "tier"}
TIERS = ["UNRATED", "STAR1", "STAR2", "STAR3", "STAR4"]


def evaluate(text: str, **columns) -> list:
    frame = pl.DataFrame(columns) if columns else pl.DataFrame({"_": [0]})
    return frame.select(compile_bool(parse(text), TYPES, TIERS).alias("r"))["r"].to_list()


def number(text: str, **columns) -> tuple[list, int]:
    expr, den = compile_number(parse(text), TYPES, TIERS)
    return pl.DataFrame(columns).select(expr.alias("r"))["r"].to_list(), den


def rejected(text: str, types=TYPES) -> ExprError:
    with pytest.raises(ExprError) as info:
        compile_bool(parse(text), types, TIERS)
    return info.value


# --- precedence -----------------------------------------------------------------------------------------------

def test_arithmetic_precedence():
    assert evaluate("1 + 2 * 3 = 7") == [True]  # 2*3 first: 7, not 9
    assert evaluate("(1 + 2) * 3 = 9") == [True]
    assert evaluate("10 - 4 - 3 = 3") == [True]  # left associative: (10-4)-3
    assert evaluate("-2 * 3 = -6") == [True]
    assert evaluate("2 * -3 = -6") == [True]
    assert evaluate("7 // 2 * 2 = 6") == [True]  # (7//2)*2 = 3*2


def test_boolean_precedence_tree():
    # not binds tighter than and: (not a) and b
    tree = parse("not a and b")
    assert isinstance(tree, Binary) and tree.op == "and" and isinstance(tree.left, Unary)
    # and binds tighter than or: a or (b and c)
    tree = parse("a or b and c")
    assert tree.op == "or" and isinstance(tree.right, Binary) and tree.right.op == "and"
    # comparison binds tighter than not: not (x > 1)
    tree = parse("not x > 1")
    assert isinstance(tree, Unary) and isinstance(tree.operand, Compare)


def test_boolean_precedence_values():
    a, b, c = [True, True, False, False], [False, True, True, False], [False, True, False, True]
    # not a and b: (F,T,T,F)?  row0: F and F=F; row1: F and T=F; row2: T and T=T; row3: T and F=F
    assert evaluate("not a and b", a=a, b=b, c=c) == [False, False, True, False]
    # a or (b and c): row0 T; row1 T; row2 F or (T and F)=F; row3 F or (F and T)=F
    assert evaluate("a or b and c", a=a, b=b, c=c) == [True, True, False, False]
    # (a or b) and c: row0 T and F=F; row1 T; row2 T and F=F; row3 F
    assert evaluate("(a or b) and c", a=a, b=b, c=c) == [False, True, False, False]


# --- exact arithmetic -----------------------------------------------------------------------------------------

def test_avg6_threshold_is_exact():
    # avg6 >= 300 yuan: sum6 / 6 >= 30000 fen  <=>  sum6 >= 180000
    assert evaluate("sum6_fen / 6 >= 30000", sum6_fen=[180000, 179999]) == [True, False]
    expr_values, den = number("sum6_fen / 6", sum6_fen=[180000])
    assert (expr_values, den) == ([180000], 6)  # kept as 180000/6, never 30000.0


def test_half_tenure_is_exact():
    # 0.5 * 7 = 3.5 exactly: equal to 3.5, above 3.49, below 3.51
    assert evaluate("0.5 * tenure_months = 3.5", tenure_months=[7, 6]) == [True, False]
    assert evaluate("0.5 * tenure_months > 3.49", tenure_months=[7]) == [True]
    assert evaluate("0.5 * tenure_months < 3.51", tenure_months=[7]) == [True]
    assert number("0.5 * tenure_months", tenure_months=[7]) == ([7], 2)  # 7/2


def test_sum_of_fractions_uses_common_denominator():
    # x/2 + x/3 = 5x/6; x = 6 -> 5
    assert evaluate("x / 2 + x / 3 = 5", x=[6, 7]) == [True, False]
    assert number("x / 2 + x / 3", x=[6])[1] == 6


def test_floor_of_negative_goes_down():
    # floor(-7 / 2) = floor(-3.5) = -4 (not -3, truncation)
    assert evaluate("floor(x / 2) = -4", x=[-7]) == [True]
    assert evaluate("x // 2 = -4", x=[-7]) == [True]
    assert evaluate("floor(x / 2) = 3", x=[7]) == [True]
    assert number("floor(x / 2)", x=[-7]) == ([-4], 1)
    # dividing by a negative constant keeps the denominator positive: -7 / -2 = 3.5 > 3
    assert evaluate("x / -2 > 3", x=[-7]) == [True]


def test_min_max_abs():
    # min(x, 0.5), max(-x, 1), abs(x) at x = -3: -3, 3, 3
    assert evaluate("min(x, 0.5) = -3 and max(-x, 1) = 3 and abs(x) = 3", x=[-3]) == [True]
    # at x = 2: min = 0.5, max(-2, 1) = 1
    assert evaluate("min(x, 0.5) = 0.5 and max(-x, 1) = 1", x=[2]) == [True]


def test_score_with_tenure_half_points_and_penalty():
    # score = floor(sum12/1200) + 0.5 * tenure - 10 * susp: 120000/1200 = 100, + 3.5 - 10 = 93.5
    types = {**TYPES, "sum12_fen": "int", "susp12": "int"}
    expr = compile_bool(parse("floor(sum12_fen / 1200) + 0.5 * tenure_months - 10 * susp12 >= 93.5"),
                        types, TIERS)
    frame = pl.DataFrame({"sum12_fen": [120000, 121199, 119999], "tenure_months": [7, 6, 7], "susp12": [1, 1, 1]})
    # row1: 100 + 3 - 10 = 93 < 93.5; row2: floor(99.99) = 99 + 3.5 - 10 = 92.5
    assert frame.select(expr.alias("r"))["r"].to_list() == [True, False, False]


def test_comparisons_of_strings_bools_and_tiers():
    assert evaluate("brand = 'GOTONE'", brand=["GOTONE", "MZONE"]) == [True, False]
    assert evaluate("brand != 'GOTONE'", brand=["GOTONE", "MZONE"]) == [False, True]
    assert evaluate("a = true", a=[True, False]) == [True, False]
    # tiers compare by pack order: STAR3 < STAR4 although both are strings
    assert evaluate("tier >= STAR4", tier=["STAR4", "STAR3", "UNRATED"]) == [True, False, False]
    assert evaluate("STAR2 < tier", tier=["STAR3", "STAR2"]) == [True, False]


def test_names_used_and_check():
    assert names_used(parse("tier >= STAR4 and brand = 'GOTONE' or x / 2 > sum6_fen")) == {
        "tier", "STAR4", "brand", "x", "sum6_fen"}
    assert check(parse("x + 1"), TYPES) == "number"
    assert check(parse("x > 1"), TYPES) == "bool"
    assert check(parse("brand"), TYPES) == "str"
    assert parse("1.5") == Literal(1, 1, Fraction(3, 2))  # decimals are exact fractions


# --- type errors and unknown names ----------------------------------------------------------------------------

@pytest.mark.parametrize("text, message", [
    ("x and a", "'and' needs bool, got number"),
    ("not x", "'not' needs bool"),
    ("a + 1 > 0", "'+' needs a number, got bool"),
    ("brand = 1", "cannot compare str with number"),
    ("brand > 'A'", "str values can only be compared with = or !="),
    ("tier = 'STAR4'", "cannot compare tier with str"),
    ("tier > 3", "cannot compare tier with number"),
    ("a < b", "bool values can only be compared"),
    ("x + 1", "a condition must be bool, got number"),
    ("brand", "a condition must be bool, got str"),
    ("floor(a) > 1", "floor() needs a number, got bool"),
])
def test_type_errors(text, message):
    assert message in rejected(text).message


def test_unknown_names_and_tiers():
    assert rejected("foo > 1").message == "unknown name 'foo'"
    assert rejected("tier >= STAR9").message == "unknown tier 'STAR9'"
    assert rejected("STAR4 = STAR3").message == "unknown name 'STAR4'"  # no tier on either side
    assert rejected("x = STAR4").message == "unknown name 'STAR4'"


def test_division_only_by_nonzero_constant():
    assert rejected("x / sum6_fen > 1").message == "division is only allowed by a constant"
    assert rejected("x // tenure_months > 1").message == "division is only allowed by a constant"
    assert rejected("x / (2 - 2) > 1").message == "division by zero"
    assert evaluate("x / (4 - 2) = 3", x=[6]) == [True]  # a constant expression is fine


# --- rejection of anything outside the grammar ----------------------------------------------------------------

@pytest.mark.parametrize("text, message", [
    ("__import__('os')", "unknown function '__import__'"),
    ("__import__('os').system('ls') = 0", "unexpected character '.'"),  # the tokenizer stops it first
    ("eval('1') = 1", "unknown function 'eval'"),
    ("sum6_fen; DROP TABLE x", "unexpected character ';'"),
    ("sum6_fen > 1; DROP TABLE subscriber", "unexpected character ';'"),
    ("sum6_fen > 1 -- comment", "unknown name 'comment'"),  # parsed as 1 - (-comment): still refused
    ("brand = 'x' OR 1 = 1", "expected an operator or the end"),
    ("brand = 'x'' or ''1'='1'", "expected an operator or the end"),
    ("`sum6_fen` > 1", "unexpected character '`'"),
    ("brand.upper() = 'X'", "unexpected character '.'"),
    ("x[0] > 1", "unexpected character '['"),
    ('brand = "GOTONE"', "strings use single quotes"),
    ("brand = 'GOTONE", "unterminated string"),
    ("x > 1e3", "expected an operator or the end"),
    ("x > .5", "unexpected character '.'"),
    ("x ** 2 > 1", "expected a value"),
    ("lambda: 1", "unexpected character ':'"),
    ("1 < x < 3", "comparisons cannot be chained"),
    ("(x > 1", "expected ')'"),
    ("x > 1)", "expected an operator or the end"),
    ("floor(x, 2) > 1", "floor() takes 1 argument(s), got 2"),
    ("min(x) > 1", "min() takes 2 argument(s), got 1"),
    ("(x)(1) > 1", "expected an operator or the end"),
    ("x >", "expected a value, found end of expression"),
    ("", "expected a value"),
    ("x > 1 # comment", "unexpected character '#'"),
    ("x > 1 \\", "unexpected character '\\\\'"),
    ("x = 1 and", "expected a value"),
])
def test_rejections(text, message):
    with pytest.raises(ExprError) as info:
        compile_bool(parse(text), TYPES, TIERS)
    assert message in str(info.value)


def test_absurd_nesting_and_literals_are_refused():
    with pytest.raises(ExprError, match="nested too deeply"):
        parse("(" * 5000 + "x" + ")" * 5000 + " > 1")
    with pytest.raises(ExprError, match="nested too deeply"):
        parse("not " * 5000 + "a")
    assert "number too large" in rejected("x > 99999999999999999999").message


def test_error_line_and_column():
    err = rejected("x > 1 and\n  brand > 'A'")
    assert (err.line, err.column) == (2, 9)  # the '>' of line 2
    with pytest.raises(ExprError) as info:
        parse("x > 1;", line=40, column=11)  # placed in a file: ';' is the 6th character from column 11
    assert (info.value.line, info.value.column) == (40, 16)
    assert "(line 40, column 16)" in str(info.value)
    with pytest.raises(ExprError) as info:
        parse("x > 1 and\n y ? 2", line=40, column=11)  # columns restart at 1 on later lines
    assert (info.value.line, info.value.column) == (41, 4)


def test_tree_nodes_carry_positions():
    tree = parse("sum6_fen >= 180000")
    assert tree == Compare(1, 10, ">=", Name(1, 1, "sum6_fen"), Literal(1, 13, Fraction(180000)))


def test_substitutes_replace_a_name_everywhere_it_is_read():
    # x := x - 1 (a "what if" value), also where x is read through a derived metric d = x / 2
    substitutes = {"x": compile_number(parse("x - 1"), TYPES, TIERS)}
    derived = {"d": parse("x / 2")}
    types = {**TYPES, "d": "number"}
    frame = pl.DataFrame({"x": [5, 6]})
    plain = compile_bool(parse("d >= 3"), types, TIERS, derived)
    what_if = compile_bool(parse("d >= 3"), types, TIERS, derived, substitutes)
    # plain: 5/2 = 2.5 < 3, 6/2 = 3 >= 3; what if: 4/2 = 2 < 3, 5/2 = 2.5 < 3
    assert frame.select(plain.alias("p"), what_if.alias("w")).rows() == [(False, False), (True, False)]
    # a fractional substitute stays exact: x := x / 3 -> 6/3 = 2 = 2, 5/3 != 2
    thirds = {"x": compile_number(parse("x / 3"), TYPES, TIERS)}
    assert frame.select(compile_bool(parse("x = 2"), TYPES, TIERS, None, thirds).alias("r"))["r"].to_list() == [
        False, True]
