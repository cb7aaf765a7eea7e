"""The engine's contract around the six-star cascade (transforms/grade/engine.py assign_tiers): output shape and
order, overrides given or not, which metrics are required, bad inputs refused. The cascade itself (every row of
the rules.md table, its lines and the arrears cap) is in rules/cases/six-star.yaml, run by test_pack_cases.py.
"""
from __future__ import annotations


import polars as pl
import pytest

from transforms.grade.engine import assign_tiers
from transforms.grade.rulepack import METRIC_CATALOGUE, load_pack
from transforms.core.resources import rules_dir

PACK = load_pack(rules_dir() / "six-star.yaml")

# An eligible MZONE subscriber with nothing else going on; each row changes what it needs.
BASE = {"status": "NORMAL", "subs_type": "PERSONAL", "brand": "MZONE", "region_code": "4110",
        "realname_flag": True, "vip_flag": False, "group_key_flag": False, "tenure_months": 24}
ROWS = {  # subs_id: changes to BASE
    6: {"sum6_fen": 180000},   # STAR5 by avg6
    7: {"sum6_fen": 179999},   # STAR4 by avg6
    28: {},                    # STAR1, or its override
    29: {"susp12": 4},         # STAR1 (the cap does not raise), or its override
    30: {"vip_flag": True},    # STAR6, or its override
    31: {"tenure_months": 3},  # ineligible, override or not
}


def metrics_frame(rows: dict) -> pl.DataFrame:
    zero = {name: 0 for name, kind in METRIC_CATALOGUE.items() if kind == "int"}
    return pl.DataFrame([{"subs_id": subs_id, **zero, **BASE, **changes} for subs_id, changes in rows.items()],
                        schema={"subs_id": pl.Int64, **{
                            name: {"int": pl.Int64, "bool": pl.Boolean, "str": pl.String}[kind]
                            for name, kind in METRIC_CATALOGUE.items()}})


def test_one_row_per_subscriber_in_input_order():
    overrides = pl.DataFrame({"subs_id": [30, 999, 28, 31], "tier": ["STAR2", "STAR6", "STAR5", "STAR6"]})
    result = assign_tiers(PACK, metrics_frame(ROWS), overrides)
    assert result.columns == ["subs_id", "tier", "reason", "computed_tier", "eligible"]
    assert result.schema["tier"] == pl.String and result.schema["eligible"] == pl.Boolean
    assert result.rows() == [  # the override of 999 (not in the metrics) adds no row
        (6, "STAR5", "AVG6", "STAR5", True), (7, "STAR4", "AVG6", "STAR4", True),
        (28, "STAR5", "OVERRIDE", "STAR1", True), (29, "STAR1", "AVG6", "STAR1", True),
        (30, "STAR2", "OVERRIDE", "STAR6", True), (31, "UNRATED", "INELIGIBLE_TENURE", "UNRATED", False)]


def test_without_overrides_the_rules_apply():
    result = assign_tiers(PACK, metrics_frame({k: ROWS[k] for k in (28, 29, 30)}))
    # 28: sum6 0 -> STAR1; 29: STAR1 (susp12 4 caps at STAR3, STAR1 is below); 30: VIP -> STAR6
    assert result.select("tier", "reason").rows() == [("STAR1", "AVG6"), ("STAR1", "AVG6"),
                                                      ("STAR6", "VIP_DESIGNATION")]
    empty = pl.DataFrame(schema={"subs_id": pl.Int64, "tier": pl.String})
    assert assign_tiers(PACK, metrics_frame({28: ROWS[28]}), empty)["tier"].to_list() == ["STAR1"]


def test_only_the_metrics_the_cascade_reads_are_required():
    frame = metrics_frame({6: ROWS[6]}).select("subs_id", *sorted(PACK.grading_metrics()))
    assert assign_tiers(PACK, frame)["tier"].to_list() == ["STAR5"]


def test_bad_inputs_are_refused():
    frame = metrics_frame({6: ROWS[6], 7: ROWS[7]})
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
