"""The packs shipped in rules/ besides six-star (national-score, abc, points-level): hand-computed golden cases
for each, and the global ranks of abc staying correct when grading is split into shards."""
from __future__ import annotations

import random
from fractions import Fraction

import polars as pl
import pytest

from transforms.core.calendar import Month
from transforms.grade.engine import apply_protection, assign_tiers, compute_tags, rank_table
from transforms.grade.rulepack import METRIC_CATALOGUE, load_pack
from transforms.core.resources import rules_dir

RULES = rules_dir()
NATIONAL = load_pack(RULES / "national-score.yaml")
ABC = load_pack(RULES / "abc.yaml")
POINTS_LEVEL = load_pack(RULES / "points-level.yaml")
BASE = {"status": "NORMAL", "subs_type": "PERSONAL", "brand": "MZONE", "region_code": "4110",
        "realname_flag": True, "vip_flag": False, "group_key_flag": False, "tenure_months": 24}
SCHEMA = {"subs_id": pl.String, **{name: {"int": pl.Int64, "bool": pl.Boolean, "str": pl.String}[kind]
                                   for name, kind in METRIC_CATALOGUE.items()}}


def metrics_frame(rows: dict[str, dict]) -> pl.DataFrame:
    zero = {name: 0 for name, kind in METRIC_CATALOGUE.items() if kind == "int"}
    return pl.DataFrame([{"subs_id": s, **zero, **BASE, **changes} for s, changes in rows.items()], schema=SCHEMA)


def graded(pack, rows: dict[str, dict]) -> dict[str, tuple[str, str]]:
    result = assign_tiers(pack, metrics_frame(rows))
    return {s: (t, r) for s, t, r in result.select("subs_id", "tier", "reason").iter_rows()}


@pytest.mark.parametrize("pack", [NATIONAL, ABC, POINTS_LEVEL], ids=lambda p: p.name)
def test_every_shipped_pack_is_complete(pack):
    assert pack.tiers[0] == "UNRATED"
    assert list(pack.points.multipliers) == list(pack.tiers) and pack.points.multipliers["UNRATED"] == 0
    assert [e.reason for e in pack.eligibility] == [
        "INELIGIBLE_CANCELLED", "INELIGIBLE_TYPE", "INELIGIBLE_REALNAME", "INELIGIBLE_TENURE"]
    assert pack.rules[-1].condition is None  # everyone eligible gets a tier
    assert pack.tags and pack.entitlements and pack.effective_from is None
    assert pack.metrics_used() <= set(METRIC_CATALOGUE)


# --- national-score: floor(sum12 / 1200) + 0.5 * tenure - 10 * susp12 ---------------------------------------

NATIONAL_CASES = {
    # subs: (metrics, tier, tags)
    # 105600/1200 = 88, + 24/2 = 100 >= 100: on STAR4's line, so one more suspension (90) would drop it
    "n01": ({"sum12_fen": 105600}, "STAR4", ["SUSPENSION_SENSITIVE"]),
    "n02": ({"sum12_fen": 105599}, "STAR3", []),  # floor(87.99..) = 87, + 12 = 99 -> [60, 100); 89 >= 60
    "n03": ({"sum12_fen": 104400, "tenure_months": 25}, "STAR3", []),  # 87 + 12.5 = 99.5 < 100; 89.5 >= 60
    "n04": ({"sum12_fen": 104400, "tenure_months": 26}, "STAR4", ["SUSPENSION_SENSITIVE"]),  # 87 + 13 = 100; 90
    # 98 + 12 - 10 = 100 -> STAR4; one more suspension: 90 < 100 -> SUSPENSION_SENSITIVE
    "n05": ({"sum12_fen": 117600, "susp12": 1}, "STAR4", ["ARREARS", "SUSPENSION_SENSITIVE"]),
    # 150 + 12 - 30 = 132 -> STAR4 (no cap in this pack); 122 >= 100: not sensitive
    "n06": ({"sum12_fen": 180000, "susp12": 3}, "STAR4", ["ARREARS"]),
    "n07": ({"sum12_fen": 836400, "tenure_months": 6}, "STAR7", ["NEW_JOINER", "SUSPENSION_SENSITIVE"]),  # 697+3=700
    "n08": ({"sum12_fen": 848400, "tenure_months": 6}, "STAR7", ["NEW_JOINER"]),  # 707 + 3 = 710; 700 >= 700
    "n09": ({"sum12_fen": 465600}, "STAR6", ["SUSPENSION_SENSITIVE"]),  # 388 + 12 = 400; 390 < 400
    "n10": ({"sum12_fen": 465599}, "STAR5", []),                   # 387 + 12 = 399 >= 200; 389 >= 200
    "n11": ({"sum12_fen": 225600}, "STAR5", ["SUSPENSION_SENSITIVE"]),  # 188 + 12 = 200; 190 < 200
    "n12": ({"sum12_fen": 57600}, "STAR3", ["SUSPENSION_SENSITIVE"]),  # 48 + 12 = 60; 50 < 60
    "n13": ({"sum12_fen": 21600}, "STAR2", ["SUSPENSION_SENSITIVE"]),  # 18 + 12 = 30; 20 < 30
    "n14": ({"sum12_fen": 21600, "tenure_months": 23}, "STAR1", []),  # 18 + 11.5 = 29.5 < 30; STAR1 has no line
    "n15": ({"sum12_fen": -1}, "STAR1", []),                       # floor(-1/1200) = -1, + 12 = 11
    "n16": ({"sum12_fen": 10 ** 7, "tenure_months": 5}, "UNRATED", []),  # ineligible: tenure 5 < 6
}


def test_national_score_bands():
    metrics = metrics_frame({s: c[0] for s, c in NATIONAL_CASES.items()})
    assigned = assign_tiers(NATIONAL, metrics)
    assert dict(zip(assigned["subs_id"], assigned["tier"])) == {s: c[1] for s, c in NATIONAL_CASES.items()}
    assert set(assigned.filter(pl.col("eligible"))["reason"]) == {"SCORE"}
    tags = compute_tags(NATIONAL, metrics, assigned.with_columns(protected=pl.lit(False)))
    assert dict(zip(tags["subs_id"], tags["tags"].to_list())) == {s: c[2] for s, c in NATIONAL_CASES.items()}


def test_national_score_protects_for_12_months():
    assert NATIONAL.protection_months == 12
    # computed STAR4 (n01, score 100) against STAR5 held since 2025-08 / 2025-07, graded 2026-07:
    # 11 months passed -> kept; 12 -> falls
    metrics = metrics_frame({"p1": {"sum12_fen": 105600}, "p2": {"sum12_fen": 105600}})
    previous = pl.DataFrame({"subs_id": ["p1", "p2"], "prev_tier": ["STAR5", "STAR5"],
                             "since_month": [Month(2025, 8).first_day, Month(2025, 7).first_day]})
    result = apply_protection(assign_tiers(NATIONAL, metrics), previous, Month(2026, 7), NATIONAL.tiers,
                              NATIONAL.protection_months)
    assert result.select("subs_id", "tier", "reason", "protected").rows() == [
        ("p1", "STAR5", "PROTECTED", True), ("p2", "STAR4", "SCORE", False)]


# --- points-level: points earned in 12 months -----------------------------------------------------------------

def test_points_level_lines():
    got = graded(POINTS_LEVEL, {
        "p1": {"points_earned_12m": 12000}, "p2": {"points_earned_12m": 11999},
        "p3": {"points_earned_12m": 6000}, "p4": {"points_earned_12m": 5999},
        "p5": {"points_earned_12m": 2400}, "p6": {"points_earned_12m": 2399},
        "p7": {"points_balance": 99999},  # a large balance but nothing earned in 12 months: qualifying is earned
        "p8": {"points_earned_12m": 50000, "subs_type": "IOT"}})
    assert got == {"p1": ("PLATINUM", "POINTS_12M"), "p2": ("GOLD", "POINTS_12M"), "p3": ("GOLD", "POINTS_12M"),
                   "p4": ("SILVER", "POINTS_12M"), "p5": ("SILVER", "POINTS_12M"), "p6": ("BASIC", "POINTS_12M"),
                   "p7": ("BASIC", "POINTS_12M"), "p8": ("UNRATED", "INELIGIBLE_TYPE")}
    assert POINTS_LEVEL.protection_months == 12
    assert POINTS_LEVEL.points.multipliers["SILVER"] == Fraction(5, 4)


# --- abc: Pareto classes by rank of avg6 among rated subscribers ----------------------------------------------

# 11 rated subscribers, two unrated ones with the largest sums (not ranked, not counted).
ABC_ROWS = {"a01": 50000, "a02": 90000, "a03": 90000, "a04": 10, "a05": 70000, "a06": 70000, "a07": 70000,
            "a08": -500, "a09": 0, "a10": 20000, "a11": 90000}


def abc_metrics() -> pl.DataFrame:
    rows = {s: {"sum6_fen": v} for s, v in ABC_ROWS.items()}
    rows |= {"x1": {"sum6_fen": 10 ** 7, "subs_type": "IOT"}, "x2": {"sum6_fen": 10 ** 7, "tenure_months": 3}}
    return metrics_frame(rows)


def test_abc_ranks_among_rated_with_ties_by_subs_id():
    table = rank_table(ABC, abc_metrics())
    # descending sum6, equal sums by subs_id: a02, a03, a11 (90000), a05, a06, a07 (70000), a01, a10, a04, a09, a08
    order = ["a02", "a03", "a11", "a05", "a06", "a07", "a01", "a10", "a04", "a09", "a08"]
    assert table.sort("avg6_rank").rows() == [(s, i, 11) for i, s in enumerate(order, 1)]


def test_abc_classes():
    got = graded(ABC, {s: {"sum6_fen": v} for s, v in ABC_ROWS.items()}
                 | {"x1": {"sum6_fen": 10 ** 7, "subs_type": "IOT"}, "x2": {"sum6_fen": 10 ** 7, "tenure_months": 3}})
    # 11 ranked: A if rank * 100 <= 20 * 11 = 220 (ranks 1-2); B if <= 770 (ranks 3-7); C ranks 8-11.
    # a11 ties a02/a03 at 90000 but ranks 3rd by subs_id: B.
    assert got == {"a02": ("A", "PARETO_TOP20"), "a03": ("A", "PARETO_TOP20"),
                   "a11": ("B", "PARETO_NEXT50"), "a05": ("B", "PARETO_NEXT50"), "a06": ("B", "PARETO_NEXT50"),
                   "a07": ("B", "PARETO_NEXT50"), "a01": ("B", "PARETO_NEXT50"),
                   "a10": ("C", "PARETO_LAST30"), "a04": ("C", "PARETO_LAST30"), "a09": ("C", "PARETO_LAST30"),
                   "a08": ("C", "PARETO_LAST30"),
                   "x1": ("UNRATED", "INELIGIBLE_TYPE"), "x2": ("UNRATED", "INELIGIBLE_TENURE")}


def test_abc_fractions_round_down():
    # 7 ranked: 20% of 7 = 1.4 -> rank 1 A (100 <= 140, 200 > 140); 70% = 4.9 -> ranks 2-4 B (400 <= 490 < 500)
    got = graded(ABC, {f"s{i}": {"sum6_fen": 1000 - i} for i in range(1, 8)})
    assert [got[f"s{i}"][0] for i in range(1, 8)] == ["A", "B", "B", "B", "C", "C", "C"]


def random_population(n: int, seed: int) -> pl.DataFrame:
    rng = random.Random(seed)
    rows = {}
    for i in range(n):
        changes = {"sum6_fen": rng.choice([0, 100, 5000, 5000, 18000, 90000, -300]) + rng.randrange(3)}
        if rng.random() < 0.1:
            changes["tenure_months"] = rng.randrange(6)  # ineligible
        rows[f"{rng.randrange(10 ** 9):09d}-{i}"] = changes
    return metrics_frame(rows)


def assign_tiers_in_parts(pack, metrics: pl.DataFrame, shards: int,
                         overrides: pl.DataFrame | None = None) -> pl.DataFrame:
    """assign_tiers over `shards` parts of the subscribers (by hash of subs_id), each with its part of the rank
    table of everyone: what a shard of transforms.runs.shards relies on (ranks= of assign_tiers)."""
    if shards < 1:
        raise ValueError(f"shards must be at least 1, got {shards}")
    shard_of = (pl.col("subs_id").hash(seed=0) % shards).alias("_shard")
    table = rank_table(pack, metrics) if pack.ranks else None
    parts = metrics.with_row_index("_row").with_columns(shard_of).partition_by(
        "_shard", as_dict=True, maintain_order=True)
    rank_parts = {} if table is None else table.with_columns(shard_of).partition_by(
        "_shard", as_dict=True, maintain_order=True)
    results = []
    for key, part in parts.items():
        part_ranks = None if table is None else rank_parts.get(key, table.clear()).drop("_shard", strict=False)
        graded = assign_tiers(pack, part.drop("_row", "_shard"), overrides, part_ranks)
        results.append(graded.with_columns(part["_row"]))
    if not results:
        return assign_tiers(pack, metrics, overrides)
    return pl.concat(results).sort("_row").drop("_row")


def test_sharded_grading_equals_the_global_one():
    metrics = random_population(3000, seed=11)  # many equal sums: ties everywhere
    whole = assign_tiers(ABC, metrics)
    for shards in (1, 2, 7):
        assert assign_tiers_in_parts(ABC, metrics, shards).equals(whole)
    rated = int(metrics.select((pl.col("tenure_months") >= 6).sum()).item())
    counts = dict(whole.group_by("tier").len().iter_rows())
    # exactly floor(20% of n) A and floor(70% of n) - floor(20% of n) B
    assert counts["A"] == rated * 20 // 100 and counts["B"] == rated * 70 // 100 - rated * 20 // 100
    assert counts["C"] + counts["A"] + counts["B"] == rated and counts["UNRATED"] == 3000 - rated
    # a shard graded on its own (local ranks) would be wrong: the global pass matters
    shard = metrics.filter(pl.col("subs_id").hash(seed=0) % 7 == 0)
    alone = assign_tiers(ABC, shard)
    assert not alone.equals(whole.join(shard.select("subs_id"), on="subs_id", how="semi", maintain_order="left"))


def test_ranks_do_not_depend_on_row_order_or_on_how_they_reach_a_shard():
    metrics = random_population(2000, seed=3)  # random subs_id order: ranks sort on (sum6, subs_id)
    by_id = metrics.sort("subs_id")            # subs_id order: an ordinal rank on sum6 alone
    assert not metrics["subs_id"].is_sorted() and by_id["subs_id"].is_sorted()
    assert rank_table(ABC, metrics).sort("subs_id").equals(rank_table(ABC, by_id))
    assert assign_tiers(ABC, metrics).sort("subs_id").equals(assign_tiers(ABC, by_id))
    # a part graded with the whole rank table (not aligned with the part: joined by subs_id) is the same as
    # with its aligned slice, and as the corresponding rows of the whole
    table, part = rank_table(ABC, by_id), by_id.filter(pl.col("tenure_months") % 3 == 0)
    joined = assign_tiers(ABC, part, ranks=table)
    aligned = assign_tiers(ABC, part, ranks=table.join(part.select("subs_id"), on="subs_id", how="semi",
                                                        maintain_order="left"))
    whole = assign_tiers(ABC, by_id).join(part.select("subs_id"), on="subs_id", how="semi", maintain_order="left")
    assert joined.equals(whole) and aligned.equals(whole)


def test_rank_tags_use_the_global_ranks():
    metrics = random_population(2000, seed=5)
    assigned = assign_tiers(ABC, metrics)
    tags = compute_tags(ABC, metrics, assigned)
    rated = int(metrics.select((pl.col("tenure_months") >= 6).sum()).item())
    top1 = tags.filter(pl.col("tags").list.contains("TOP1"))
    assert top1.height == rated // 100  # rank * 100 <= n
    table = rank_table(ABC, metrics)
    assert set(top1["subs_id"]) == set(table.filter(pl.col("avg6_rank") <= rated // 100)["subs_id"])
