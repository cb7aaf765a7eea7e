"""The tier cascade of the six-star pack (transforms/grading.py over rules/six-star.yaml), one row per case.

Lines of rules.md: avg6 >= 300 / 150 / 80 / 30 yuan  <=>  sum6_fen >= 180000 / 90000 / 48000 / 18000 (6 * T * 100).
"""
from __future__ import annotations


import polars as pl
import pytest

from transforms.grade.engine import assign_tiers
from transforms.grade.rulepack import METRIC_CATALOGUE, load_pack
from transforms.core.resources import rules_dir

PACK = load_pack(rules_dir() / "six-star.yaml")

# An eligible MZONE subscriber with nothing else going on; each case changes what it tests.
BASE = {"status": "NORMAL", "subs_type": "PERSONAL", "brand": "MZONE", "region_code": "4110",
        "realname_flag": True, "vip_flag": False, "group_key_flag": False, "tenure_months": 24}

# subs_id: (changes to BASE, override tier or None, expected tier, reason, computed_tier, eligible)
CASES = {
    # row 3: VIP designation, whatever the spend
    1: ({"vip_flag": True}, None, "STAR6", "VIP_DESIGNATION", "STAR6", True),
    # row 4: GOTONE with prior_year_points >= 30000
    2: ({"brand": "GOTONE", "prior_year_points": 30000}, None, "STAR6", "POINTS", "STAR6", True),
    # 29999 points: row 4 misses, row 5 misses (sum6 0), row 6 GOTONE floor
    3: ({"brand": "GOTONE", "prior_year_points": 29999}, None, "STAR4", "GOTONE_FLOOR", "STAR4", True),
    # GOTONE at 180000: row 5 (STAR5) comes before the floor
    4: ({"brand": "GOTONE", "prior_year_points": 29999, "sum6_fen": 180000}, None, "STAR5", "AVG6", "STAR5", True),
    # GOTONE at 100000 >= 90000: the floor (row 6) matches before row 7, same tier, reason GOTONE_FLOOR
    5: ({"brand": "GOTONE", "sum6_fen": 100000}, None, "STAR4", "GOTONE_FLOOR", "STAR4", True),
    # avg6 exactly 300 yuan: 6 * 300 * 100 = 180000 -> STAR5; one fen short 179999 >= 90000 -> STAR4
    6: ({"sum6_fen": 180000}, None, "STAR5", "AVG6", "STAR5", True),
    7: ({"sum6_fen": 179999}, None, "STAR4", "AVG6", "STAR4", True),
    # 150 yuan: 90000 -> STAR4; 89999 >= 48000 -> STAR3
    8: ({"sum6_fen": 90000}, None, "STAR4", "AVG6", "STAR4", True),
    9: ({"sum6_fen": 89999}, None, "STAR3", "AVG6", "STAR3", True),
    # 80 yuan: 48000 -> STAR3; 47999 >= 18000 -> STAR2
    10: ({"sum6_fen": 48000}, None, "STAR3", "AVG6", "STAR3", True),
    11: ({"sum6_fen": 47999}, None, "STAR2", "AVG6", "STAR2", True),
    # 30 yuan: 18000 -> STAR2; 17999 -> otherwise STAR1
    12: ({"sum6_fen": 18000}, None, "STAR2", "AVG6", "STAR2", True),
    13: ({"sum6_fen": 17999}, None, "STAR1", "AVG6", "STAR1", True),
    # a refund month makes sum6 negative: -5000 < 18000 -> STAR1
    14: ({"sum6_fen": -5000, "cons_fen": -20000}, None, "STAR1", "AVG6", "STAR1", True),
    # eligibility, checked in order cancelled, type, real name, tenure
    15: ({"status": "CANCELLED", "subs_type": "IOT", "realname_flag": False, "tenure_months": 1, "vip_flag": True},
         None, "UNRATED", "INELIGIBLE_CANCELLED", "UNRATED", False),
    16: ({"subs_type": "IOT", "realname_flag": False, "tenure_months": 1}, None,
         "UNRATED", "INELIGIBLE_TYPE", "UNRATED", False),
    17: ({"realname_flag": False, "tenure_months": 1}, None, "UNRATED", "INELIGIBLE_REALNAME", "UNRATED", False),
    18: ({"tenure_months": 5, "sum6_fen": 180000}, None, "UNRATED", "INELIGIBLE_TENURE", "UNRATED", False),
    19: ({"tenure_months": 6}, None, "STAR1", "AVG6", "STAR1", True),  # 6 >= 6: rated, sum6 0 -> STAR1
    20: ({"status": "SUSPENDED", "sum6_fen": 48000}, None, "STAR3", "AVG6", "STAR3", True),  # only CANCELLED excludes
    # arrears cap: susp12 >= 3 -> at most STAR3
    21: ({"sum6_fen": 180000, "susp12": 3}, None, "STAR3", "ARREARS_CAP", "STAR3", True),
    22: ({"sum6_fen": 180000, "susp12": 2}, None, "STAR5", "AVG6", "STAR5", True),
    23: ({"vip_flag": True, "susp12": 3}, None, "STAR3", "ARREARS_CAP", "STAR3", True),
    24: ({"brand": "GOTONE", "prior_year_points": 30000, "susp12": 4}, None, "STAR3", "ARREARS_CAP", "STAR3", True),
    25: ({"sum6_fen": 18000, "susp12": 3}, None, "STAR2", "AVG6", "STAR2", True),  # below the cap: untouched
    26: ({"sum6_fen": 48000, "susp12": 5}, None, "STAR3", "AVG6", "STAR3", True),  # at the cap: not lowered
    27: ({"sum6_fen": 180000, "susp12_oneway": 9}, None, "STAR5", "AVG6", "STAR5", True),  # one-way does not count
    # overrides beat the rules and are not capped; eligibility beats overrides
    28: ({}, "STAR5", "STAR5", "OVERRIDE", "STAR1", True),
    29: ({"susp12": 4}, "STAR6", "STAR6", "OVERRIDE", "STAR1", True),
    30: ({"vip_flag": True}, "STAR2", "STAR2", "OVERRIDE", "STAR6", True),  # an override may also lower
    31: ({"tenure_months": 3}, "STAR6", "UNRATED", "INELIGIBLE_TENURE", "UNRATED", False),
    32: ({"status": "CANCELLED"}, "STAR4", "UNRATED", "INELIGIBLE_CANCELLED", "UNRATED", False),
}


def metrics_frame(cases: dict) -> pl.DataFrame:
    zero = {name: 0 for name, kind in METRIC_CATALOGUE.items() if kind == "int"}
    rows = [{"subs_id": subs_id, **zero, **BASE, **changes} for subs_id, (changes, *_) in cases.items()]
    return pl.DataFrame(rows, schema={"subs_id": pl.Int64, **{
        name: {"int": pl.Int64, "bool": pl.Boolean, "str": pl.String}[kind]
        for name, kind in METRIC_CATALOGUE.items()}})


def overrides_frame(cases: dict) -> pl.DataFrame:
    rows = [(subs_id, case[1]) for subs_id, case in cases.items() if case[1]]
    return pl.DataFrame(rows + [(999, "STAR6")], schema={"subs_id": pl.Int64, "tier": pl.String}, orient="row")


def test_every_case_of_the_six_star_table():
    result = assign_tiers(PACK, metrics_frame(CASES), overrides_frame(CASES))
    assert result.columns == ["subs_id", "tier", "reason", "computed_tier", "eligible"]
    assert result.schema["tier"] == pl.String and result.schema["eligible"] == pl.Boolean
    assert result["subs_id"].to_list() == list(CASES)  # one row per subscriber, input order, 999 not added
    got = {row[0]: tuple(row[1:]) for row in result.iter_rows()}
    expected = {subs_id: tuple(case[2:]) for subs_id, case in CASES.items()}
    wrong = {k: (got[k], expected[k]) for k in CASES if got[k] != expected[k]}
    assert not wrong


def test_without_overrides_the_rules_apply():
    result = assign_tiers(PACK, metrics_frame({k: CASES[k] for k in (28, 29, 30)}))
    # 28: sum6 0 -> STAR1; 29: STAR1 (susp12 4 caps at STAR3, STAR1 is below); 30: VIP -> STAR6
    assert result.select("tier", "reason").rows() == [("STAR1", "AVG6"), ("STAR1", "AVG6"),
                                                      ("STAR6", "VIP_DESIGNATION")]
    empty = pl.DataFrame(schema={"subs_id": pl.Int64, "tier": pl.String})
    assert assign_tiers(PACK, metrics_frame({28: CASES[28]}), empty)["tier"].to_list() == ["STAR1"]


def test_only_the_metrics_the_cascade_reads_are_required():
    frame = metrics_frame({6: CASES[6]}).select("subs_id", *sorted(PACK.grading_metrics()))
    assert assign_tiers(PACK, frame)["tier"].to_list() == ["STAR5"]


def test_bad_inputs_are_refused():
    frame = metrics_frame({6: CASES[6], 7: CASES[7]})
    with pytest.raises(ValueError, match="lacks sum6_fen"):
        assign_tiers(PACK, frame.drop("sum6_fen"))
    with pytest.raises(ValueError, match="null values: sum6_fen"):
        assign_tiers(PACK, frame.with_columns(sum6_fen=pl.when(pl.col("subs_id") == 7).then(None)
                                              .otherwise(pl.col("sum6_fen"))))
    with pytest.raises(ValueError, match="vip_flag is String, expected bool"):
        assign_tiers(PACK, frame.with_columns(vip_flag=pl.lit("Y")))
    with pytest.raises(ValueError, match="not in pack six-star: STAR9"):
        assign_tiers(PACK, frame, pl.DataFrame({"subs_id": [6], "tier": ["STAR9"]}))
    with pytest.raises(ValueError, match="more than one override"):
        assign_tiers(PACK, frame, pl.DataFrame({"subs_id": [6, 6], "tier": ["STAR2", "STAR3"]}))
