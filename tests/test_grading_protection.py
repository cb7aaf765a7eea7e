"""Downgrade protection (transforms/grading.py apply_protection, rules.md "Downgrade protection"): a rated
subscriber whose new tier is lower keeps the tier in effect while fewer than N months have passed since it was
attained; ineligibility is never protected; an upgrade is never held back. Graded month: 2026-07."""
from __future__ import annotations

from datetime import date

import polars as pl
import pytest

from transforms.core.calendar import Month
from transforms.grade.engine import apply_protection

JULY = Month(2026, 7)
TIERS = ["UNRATED", "STAR1", "STAR2", "STAR3", "STAR4", "STAR5", "STAR6"]

# subs_id, tier, reason, computed_tier, eligible  (as assign_tiers returns them)
ASSIGNED = [
    ("p1", "STAR3", "AVG6", "STAR3", True),
    ("p2", "STAR3", "AVG6", "STAR3", True),
    ("p3", "UNRATED", "INELIGIBLE_TENURE", "UNRATED", False),
    ("p4", "STAR5", "AVG6", "STAR5", True),
    ("p5", "STAR3", "AVG6", "STAR3", True),
    ("p6", "STAR2", "AVG6", "STAR2", True),
    ("p7", "STAR2", "OVERRIDE", "STAR6", True),
    ("p8", "STAR1", "AVG6", "STAR1", True),
    ("p9", "STAR1", "AVG6", "STAR1", True),
    ("p10", "UNRATED", "INELIGIBLE_CANCELLED", "UNRATED", False),
]
# subs_id, tier in effect during July (graded for June), grading month its spell began
PREVIOUS = [
    ("p1", "STAR5", date(2025, 8, 1)),   # attained 11 months before July
    ("p2", "STAR5", date(2025, 7, 1)),   # attained 12 months before July
    ("p3", "STAR5", date(2026, 6, 1)),   # attained last month, but now ineligible
    ("p4", "STAR3", date(2026, 6, 1)),   # going up
    ("p5", "STAR3", date(2026, 1, 1)),   # staying
    ("p7", "STAR5", date(2026, 5, 1)),   # an override lowers the tier
    ("p8", "STAR4", date(2026, 6, 1)),   # attained last month
    ("p9", "UNRATED", date(2026, 6, 1)), # was unrated: STAR1 is up
    ("p10", "STAR6", date(2026, 6, 1)),  # cancelled: never protected
]                                        # p6: no previous tier


def frames():
    assigned = pl.DataFrame(ASSIGNED, schema={"subs_id": pl.String, "tier": pl.String, "reason": pl.String,
                                              "computed_tier": pl.String, "eligible": pl.Boolean}, orient="row")
    previous = pl.DataFrame(PREVIOUS, schema={"subs_id": pl.String, "prev_tier": pl.String,
                                              "since_month": pl.Date}, orient="row")
    return assigned, previous


def test_protection_of_12_months():
    assigned, previous = frames()
    result = apply_protection(assigned, previous, JULY, TIERS, 12)
    assert result.columns == ["subs_id", "tier", "reason", "computed_tier", "eligible", "protected"]
    assert result.rows() == [
        ("p1", "STAR5", "PROTECTED", "STAR3", True, True),   # 2026-07 - 2025-08 = 11 < 12: keeps STAR5
        ("p2", "STAR3", "AVG6", "STAR3", True, False),       # 12 months: not < 12, falls to STAR3
        ("p3", "UNRATED", "INELIGIBLE_TENURE", "UNRATED", False, False),  # ineligible: never protected
        ("p4", "STAR5", "AVG6", "STAR5", True, False),       # STAR3 -> STAR5: an upgrade is never held back
        ("p5", "STAR3", "AVG6", "STAR3", True, False),       # same tier: nothing to protect
        ("p6", "STAR2", "AVG6", "STAR2", True, False),       # no tier in effect
        ("p7", "STAR2", "OVERRIDE", "STAR6", True, False),   # an override is an explicit decision: applies
        ("p8", "STAR4", "PROTECTED", "STAR1", True, True),   # 1 month < 12
        ("p9", "STAR1", "AVG6", "STAR1", True, False),       # UNRATED -> STAR1 is up
        ("p10", "UNRATED", "INELIGIBLE_CANCELLED", "UNRATED", False, False),
    ]


def test_protection_of_one_month_and_none():
    assigned, previous = frames()
    # N = 1: even last month's tier (1 month passed, not < 1) falls
    assert apply_protection(assigned, previous, JULY, TIERS, 1)["protected"].to_list() == [False] * 10
    # N = 2: only p8 (1 month) is held
    held = apply_protection(assigned, previous, JULY, TIERS, 2).filter("protected")
    assert held.select("subs_id", "tier").rows() == [("p8", "STAR4")]
    # N = 0 (six-star): the assignment is returned with protected false
    none = apply_protection(assigned, previous, JULY, TIERS, 0)
    assert none.drop("protected").equals(assigned) and not none["protected"].any()


def test_protection_keeps_row_order_and_refuses_duplicate_previous_rows():
    assigned, previous = frames()
    shuffled = assigned.reverse()
    assert apply_protection(shuffled, previous, JULY, TIERS, 12)["subs_id"].to_list() == \
        shuffled["subs_id"].to_list()
    with pytest.raises(pl.exceptions.ComputeError):  # two tiers in effect for one subscriber
        apply_protection(assigned, pl.concat([previous, previous.head(1)]), JULY, TIERS, 12)
