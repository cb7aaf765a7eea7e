"""Tags and entitlements of the six-star pack (transforms/grading.py compute_tags, entitlements,
entitlement_changes), hand-computed from rules.md "Tags" and "Entitlements", each tag on and just off its line.

Lines used below: STAR5 sum6 >= 180000, STAR4 >= 90000, STAR3 >= 48000 (6 * T * 100 fen).
DOWNGRADE_RISK: sum6(M+1) = sum6 - cons_m5 + cons compared with the line of the rule that assigned the tier.
CHURN_RISK: tier >= STAR4 and cons < (prev5 / 5) / 2, i.e. cons * 10 < prev5.
"""
from __future__ import annotations


import polars as pl
import pytest

from transforms.grade.engine import apply_protection, assign_tiers, compute_tags, entitlement_changes, entitlements
from transforms.core.calendar import Month
from transforms.grade.rulepack import METRIC_CATALOGUE, load_pack, load_pack_text
from transforms.core.resources import rules_dir

SIX_STAR_PATH = rules_dir() / "six-star.yaml"
PACK = load_pack(SIX_STAR_PATH)
BASE = {"status": "NORMAL", "subs_type": "PERSONAL", "brand": "MZONE", "region_code": "4110",
        "realname_flag": True, "vip_flag": False, "group_key_flag": False, "tenure_months": 24}

# subs_id: (changes to BASE (all money 0 otherwise), expected tier, expected tags)
CASES = {
    # nothing: sum6 0 -> STAR1 (otherwise), no tag
    1: ({}, "STAR1", []),
    2: ({"group_key_flag": True}, "STAR1", ["GROUP_KEY"]),
    # HIGH_DATA: data * 2 >= cons and cons >= 10000 (100 yuan)
    3: ({"cons_fen": 10000, "data_fen": 5000}, "STAR1", ["HIGH_DATA"]),  # 5000 * 2 = 10000 >= 10000
    4: ({"cons_fen": 10000, "data_fen": 4999}, "STAR1", []),  # 9998 < 10000: under half
    5: ({"cons_fen": 9999, "data_fen": 9999}, "STAR1", []),  # all data, but 9999 < 10000
    # ROAMER: roaming in at least 3 of the 6 months
    6: ({"roam_months6": 3}, "STAR1", ["ROAMER"]),
    7: ({"roam_months6": 2}, "STAR1", []),
    # NEW_JOINER: tenure <= 12 (and >= 6 to be rated)
    8: ({"tenure_months": 12}, "STAR1", ["NEW_JOINER"]),
    9: ({"tenure_months": 13}, "STAR1", []),
    # ARREARS: susp12 >= 1 (one-way suspensions do not count)
    10: ({"susp12": 1}, "STAR1", ["ARREARS"]),
    11: ({"susp12_oneway": 4}, "STAR1", []),
    # CHURN_RISK at STAR4: sum6 105599 = 96000 + 9599 -> STAR4; 9599 * 10 = 95990 < 96000.
    # (DOWNGRADE off: 105599 - 19200 + 9599 = 95998 >= 90000)
    12: ({"sum6_fen": 105599, "cons_prev5_fen": 96000, "cons_fen": 9599, "cons_m5_fen": 19200}, "STAR4",
         ["CHURN_RISK"]),
    # 9600 * 10 = 96000, not below 96000 (sum6 105600, next 105600 - 19200 + 9600 = 96000 >= 90000)
    13: ({"sum6_fen": 105600, "cons_prev5_fen": 96000, "cons_fen": 9600, "cons_m5_fen": 19200}, "STAR4", []),
    # STAR3 is below STAR4: no CHURN_RISK although 0 < 60000 / 10; next 60000 - 12000 + 0 = 48000, on the line
    14: ({"sum6_fen": 60000, "cons_prev5_fen": 60000, "cons_m5_fen": 12000}, "STAR3", []),
    # DOWNGRADE_RISK: next 60000 - 12001 + 0 = 47999 < 48000 (STAR3's line)
    15: ({"sum6_fen": 60000, "cons_prev5_fen": 60000, "cons_m5_fen": 12001}, "STAR3", ["DOWNGRADE_RISK"]),
    # STAR5 one fen short next month: 180000 - 30001 + 30000 = 179999 < 180000; no churn (300000 >= 150000)
    16: ({"sum6_fen": 180000, "cons_prev5_fen": 150000, "cons_fen": 30000, "cons_m5_fen": 30001}, "STAR5",
         ["DOWNGRADE_RISK"]),
    # ... and exactly on it: 180000 - 30000 + 30000 = 180000
    17: ({"sum6_fen": 180000, "cons_prev5_fen": 150000, "cons_fen": 30000, "cons_m5_fen": 30000}, "STAR5", []),
    # GOTONE at STAR5 by AVG6: next 180000 - 1 + 0 = 179999 < 180000 -> at risk (the floor would catch it at
    # STAR4, still a fall); churn: STAR5 and 0 < 179999 / 10
    18: ({"brand": "GOTONE", "sum6_fen": 180000, "cons_prev5_fen": 179999, "cons_m5_fen": 1}, "STAR5",
         ["CHURN_RISK", "DOWNGRADE_RISK"]),
    # GOTONE floor (reason GOTONE_FLOOR, not an avg6 rule): no DOWNGRADE_RISK though next is 0; churn on
    19: ({"brand": "GOTONE", "sum6_fen": 90000, "cons_prev5_fen": 90000, "cons_m5_fen": 90000}, "STAR4",
         ["CHURN_RISK"]),
    # capped to STAR3 (reason ARREARS_CAP): not assigned by an avg6 rule, no DOWNGRADE_RISK; STAR3: no churn
    20: ({"sum6_fen": 180000, "susp12": 3, "cons_prev5_fen": 180000, "cons_m5_fen": 180000}, "STAR3",
         ["ARREARS"]),
    # the cap holds but does not lower STAR3 (reason stays AVG6): next 60000 - 60000 + 0 = 0 < 48000
    21: ({"sum6_fen": 60000, "susp12": 3, "cons_prev5_fen": 60000, "cons_m5_fen": 60000}, "STAR3",
         ["ARREARS", "DOWNGRADE_RISK"]),
    # STAR1 (`otherwise`) has no line: never at risk
    22: ({"sum6_fen": 17999, "cons_prev5_fen": 17999, "cons_m5_fen": 17999}, "STAR1", []),
    # every tag at once, in pack order: STAR4 (110001 = 100001 + 10000); data 10000 * 2 >= 10000 >= 10000;
    # 10000 * 10 = 100000 < 100001; next 110001 - 30002 + 10000 = 89999 < 90000
    23: ({"group_key_flag": True, "cons_fen": 10000, "data_fen": 10000, "roam_months6": 6, "tenure_months": 7,
          "susp12": 2, "sum6_fen": 110001, "cons_prev5_fen": 100001, "cons_m5_fen": 30002}, "STAR4",
         ["GROUP_KEY", "HIGH_DATA", "ROAMER", "NEW_JOINER", "ARREARS", "CHURN_RISK", "DOWNGRADE_RISK"]),
    # ineligible (tenure 5): UNRATED, no tags whatever holds
    24: ({"tenure_months": 5, "group_key_flag": True, "susp12": 1}, "UNRATED", []),
    25: ({"status": "CANCELLED", "roam_months6": 6}, "UNRATED", []),
}


def metrics_frame(cases: dict) -> pl.DataFrame:
    zero = {name: 0 for name, kind in METRIC_CATALOGUE.items() if kind == "int"}
    rows = [{"subs_id": f"S{subs_id:03d}", **zero, **BASE, **changes} for subs_id, (changes, *_) in cases.items()]
    return pl.DataFrame(rows, schema={"subs_id": pl.String, **{
        name: {"int": pl.Int64, "bool": pl.Boolean, "str": pl.String}[kind]
        for name, kind in METRIC_CATALOGUE.items()}})


def no_protection(assigned: pl.DataFrame) -> pl.DataFrame:
    empty = pl.DataFrame(schema={"subs_id": pl.String, "prev_tier": pl.String, "since_month": pl.Date})
    return apply_protection(assigned, empty, Month(2026, 7), PACK.tiers, PACK.protection_months)


def test_every_tag_on_and_off_its_line():
    metrics = metrics_frame(CASES)
    assigned = no_protection(assign_tiers(PACK, metrics))
    assert assigned["tier"].to_list() == [case[1] for case in CASES.values()]
    tags = compute_tags(PACK, metrics, assigned)
    assert tags.schema == pl.Schema({"subs_id": pl.String, "tags": pl.List(pl.String)})
    assert tags["subs_id"].to_list() == assigned["subs_id"].to_list()
    got = dict(zip(tags["subs_id"], tags["tags"].to_list()))
    wrong = {k: (got[f"S{k:03d}"], case[2]) for k, case in CASES.items() if got[f"S{k:03d}"] != case[2]}
    assert not wrong


def test_an_override_is_not_assigned_by_an_avg6_rule():
    # override STAR5 over a computed STAR5 (sum6 180000): reason OVERRIDE -> no DOWNGRADE_RISK although
    # next 180000 - 180000 + 0 = 0; CHURN_RISK on (STAR5, 0 < 180000 / 10)
    case = {30: ({"sum6_fen": 180000, "cons_prev5_fen": 180000, "cons_m5_fen": 180000}, "STAR5", [])}
    metrics = metrics_frame(case)
    assigned = no_protection(assign_tiers(PACK, metrics, pl.DataFrame({"subs_id": ["S030"], "tier": ["STAR5"]})))
    assert assigned["reason"].to_list() == ["OVERRIDE"]
    assert compute_tags(PACK, metrics, assigned)["tags"].to_list() == [["CHURN_RISK"]]


def test_tags_use_the_protected_tier():
    pack = load_pack_text(SIX_STAR_PATH.read_text(encoding="utf-8").replace(
        "protection_months: 0", "protection_months: 12"), "six-star-protected.yaml")
    # computed STAR2 (sum6 20000), held at STAR4 (attained 2026-03, 4 months before 2026-07): reason PROTECTED,
    # so no DOWNGRADE_RISK (next 20000 - 20000 = 0 < 18000 would be); CHURN_RISK judged at STAR4: 0 < 20000 / 10
    metrics = metrics_frame({40: ({"sum6_fen": 20000, "cons_prev5_fen": 20000, "cons_m5_fen": 20000}, "", [])})
    previous = pl.DataFrame({"subs_id": ["S040"], "prev_tier": ["STAR4"], "since_month": [Month(2026, 3).first_day]})
    assigned = apply_protection(assign_tiers(pack, metrics), previous, Month(2026, 7), pack.tiers, 12)
    assert assigned.select("tier", "reason", "computed_tier", "protected").row(0) == (
        "STAR4", "PROTECTED", "STAR2", True)
    assert compute_tags(pack, metrics, assigned)["tags"].to_list() == [["CHURN_RISK"]]


def test_compute_tags_refuses_missing_metrics():
    metrics = metrics_frame({1: CASES[1]})
    assigned = assign_tiers(PACK, metrics)
    with pytest.raises(ValueError, match="lacks cons_m5_fen"):
        compute_tags(PACK, metrics.drop("cons_m5_fen"), assigned)


# --- entitlements ---------------------------------------------------------------------------------------------

ALL = ["VIP_LOUNGE", "ACCOUNT_MANAGER", "PHONE_MANAGER", "PRIORITY_COUNTER", "INTL_ROAMING_FAST",
       "HOTLINE_PRIORITY", "NIGHT_NO_SUSPEND", "DELAYED_SUSPEND", "FREE_SIM_REPLACE", "POINTS_GIFTS",
       "POINTS_REMINDER"]
STAR3_UP = ["NIGHT_NO_SUSPEND", "DELAYED_SUSPEND", "FREE_SIM_REPLACE", "POINTS_GIFTS", "POINTS_REMINDER"]
STAR4_UP = ["INTL_ROAMING_FAST", "HOTLINE_PRIORITY"] + STAR3_UP
STAR5_UP = ["PHONE_MANAGER", "PRIORITY_COUNTER"] + STAR4_UP


def tier_frame(rows: list[tuple]) -> pl.DataFrame:
    return pl.DataFrame(rows, schema={"subs_id": pl.String, "tier": pl.String, "tags": pl.List(pl.String)},
                        orient="row")


def test_entitlements_from_tier_and_tags():
    frame = tier_frame([
        ("a", "STAR6", []), ("b", "STAR5", []), ("c", "STAR4", ["CHURN_RISK"]), ("d", "STAR3", []),
        ("e", "STAR2", []), ("f", "STAR1", []), ("g", "STAR1", ["GROUP_KEY", "ROAMER"]), ("h", "UNRATED", []),
        ("i", "UNRATED", None), ("j", "STAR2", ["GROUP_KEY"])])
    got = entitlements(PACK, frame)
    assert got.schema == pl.Schema({"subs_id": pl.String, "entitlements": pl.List(pl.String)})
    assert got.rows() == [
        ("a", ALL),                                     # STAR6: every entitlement, in pack order
        ("b", STAR5_UP),                                # STAR5 and up: all but VIP_LOUNGE, ACCOUNT_MANAGER
        ("c", STAR4_UP),                                # STAR4 and up
        ("d", STAR3_UP),                                # STAR3 and up
        ("e", ["POINTS_GIFTS", "POINTS_REMINDER"]),     # STAR2 and up
        ("f", ["POINTS_REMINDER"]),                     # STAR1 and up
        ("g", ["ACCOUNT_MANAGER", "PRIORITY_COUNTER", "POINTS_REMINDER"]),  # STAR1 + GROUP_KEY
        ("h", []), ("i", []),                           # UNRATED: nothing (no tags = none)
        ("j", ["ACCOUNT_MANAGER", "PRIORITY_COUNTER", "POINTS_GIFTS", "POINTS_REMINDER"]),  # STAR2 + GROUP_KEY
    ]


@pytest.mark.parametrize("in_id_order", [False, True], ids=["hash-join", "sorted-merge"])
def test_entitlement_changes_gained_and_lost(in_id_order):
    previous = tier_frame([
        ("a", "STAR3", []), ("b", "STAR5", []), ("c", "STAR4", []), ("e", "STAR1", []),
        ("f", "STAR6", ["GROUP_KEY"]), ("g", "STAR1", []), ("k", "STAR2", ["GROUP_KEY"])])
    current = tier_frame([
        ("g", "STAR1", ["GROUP_KEY"]), ("f", "UNRATED", []), ("d", "STAR2", []), ("c", "STAR4", ["CHURN_RISK"]),
        ("b", "STAR2", ["GROUP_KEY"]), ("a", "STAR4", []), ("h", "UNRATED", []), ("k", "STAR2", ["GROUP_KEY"])])
    if in_id_order:  # both sides sorted by subs_id take the linear merge; otherwise a hash join
        previous, current = previous.sort("subs_id"), current.sort("subs_id")
    got = entitlement_changes(PACK, previous, current)
    assert got.columns == ["subs_id", "entitlements_gained", "entitlements_lost"]
    assert got.rows() == [
        # STAR3 -> STAR4: the two STAR4 entitlements
        ("a", ["INTL_ROAMING_FAST", "HOTLINE_PRIORITY"], []),
        # STAR5 -> STAR2 + GROUP_KEY: gains ACCOUNT_MANAGER; keeps PRIORITY_COUNTER (GROUP_KEY), POINTS_*;
        # loses PHONE_MANAGER and the STAR4/STAR3 ones
        ("b", ["ACCOUNT_MANAGER"], ["PHONE_MANAGER", "INTL_ROAMING_FAST", "HOTLINE_PRIORITY", "NIGHT_NO_SUSPEND",
                                    "DELAYED_SUSPEND", "FREE_SIM_REPLACE"]),
        # c: STAR4 both months (a tag that grants nothing changed): no row
        # d: only in current, STAR2
        ("d", ["POINTS_GIFTS", "POINTS_REMINDER"], []),
        # e: only in previous, STAR1
        ("e", [], ["POINTS_REMINDER"]),
        # f: STAR6 -> UNRATED loses everything
        ("f", [], ALL),
        # g: same tier, GROUP_KEY gained
        ("g", ["ACCOUNT_MANAGER", "PRIORITY_COUNTER"], []),
        # h: UNRATED only in current: nothing either side; k unchanged: no rows
    ]


def test_entitlement_changes_with_an_empty_side():
    current = tier_frame([("a", "STAR2", [])])
    empty = current.clear()
    assert entitlement_changes(PACK, empty, current).rows() == [("a", ["POINTS_GIFTS", "POINTS_REMINDER"], [])]
    assert entitlement_changes(PACK, current, empty).rows() == [("a", [], ["POINTS_GIFTS", "POINTS_REMINDER"])]
    assert entitlement_changes(PACK, empty, empty).height == 0


def test_entitlement_changes_refuses_two_rows_for_a_subscriber():
    previous = tier_frame([("a", "STAR2", []), ("a", "STAR3", []), ("b", "STAR1", [])])
    with pytest.raises(ValueError, match="more than one row for a subscriber"):
        entitlement_changes(PACK, previous, tier_frame([("a", "STAR2", [])]))


def test_entitlement_changes_across_pack_versions():
    # the previous month was graded with a pack whose STAR3 also had LOUNGE_LITE, dropped by the current pack
    old_text = SIX_STAR_PATH.read_text(encoding="utf-8").replace(
        "  POINTS_REMINDER: tier >= STAR1", "  POINTS_REMINDER: tier >= STAR1\n  LOUNGE_LITE: tier >= STAR3")
    old_pack = load_pack_text(old_text, "six-star-old.yaml")
    same = tier_frame([("a", "STAR3", []), ("b", "STAR2", [])])
    got = entitlement_changes(PACK, same, same, previous_pack=old_pack)
    # a: STAR3 both months, loses only LOUNGE_LITE (listed after the current pack's names); b: no change
    assert got.rows() == [("a", [], ["LOUNGE_LITE"])]
