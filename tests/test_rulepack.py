"""Loading rule packs (transforms/grade/rulepack.py): the shipped six-star pack, every kind of error with its line,
and what a pack tells the rest of the pipeline (grading window, eligibility reasons, points expiry)."""
from __future__ import annotations

import hashlib
from fractions import Fraction
from pathlib import Path

import polars as pl
import pytest

from transforms.core.calendar import Month
from transforms.core.resources import rules_dir
from transforms.grade.packs import pack_in_force, pack_versions
from flows.rules_cli import describe_pack
from transforms.grade.rulepack import METRIC_BILL_MONTHS, METRIC_CATALOGUE, PackError, load_pack, load_pack_text

SIX_STAR = rules_dir() / "six-star.yaml"

# A small valid pack; line numbers matter to the tests below (line 1 is "pack: mini").
MINI = """\
pack: mini
tiers: [NONE_YET, LOW, HIGH]
eligibility:
  - when: status = 'CANCELLED'
    reason: INELIGIBLE_CANCELLED
rules:
  - when: sum6_fen >= 180000
    tier: HIGH
    reason: AVG6
  - when: otherwise
    tier: LOW
    reason: AVG6
protection_months: 12
points:
  expiry_months: 24
  multipliers: {NONE_YET: 0, LOW: 1, HIGH: 1.25}
"""


def load_error(text: str, source: str = "packs/bad.yaml") -> str:
    with pytest.raises(PackError) as info:
        load_pack_text(text, source)
    return str(info.value)


def test_six_star_loads_as_in_rules_md():
    pack = load_pack(SIX_STAR)
    assert pack.name == "six-star"
    assert pack.tiers == ("UNRATED", "STAR1", "STAR2", "STAR3", "STAR4", "STAR5", "STAR6")
    assert pack.unrated == "UNRATED" and pack.tier_labels["STAR6"] == "六星"
    assert [e.reason for e in pack.eligibility] == [
        "INELIGIBLE_CANCELLED", "INELIGIBLE_TYPE", "INELIGIBLE_REALNAME", "INELIGIBLE_TENURE"]
    assert [(r.tier, r.reason) for r in pack.rules] == [
        ("STAR6", "VIP_DESIGNATION"), ("STAR6", "POINTS"), ("STAR5", "AVG6"), ("STAR4", "GOTONE_FLOOR"),
        ("STAR4", "AVG6"), ("STAR3", "AVG6"), ("STAR2", "AVG6"), ("STAR1", "AVG6")]
    assert pack.rules[-1].condition is None  # otherwise
    assert [(c.max_tier, c.reason, c.condition.text) for c in pack.caps] == [("STAR3", "ARREARS_CAP", "susp12 >= 3")]
    assert pack.protection_months == 0
    assert pack.points.expiry_months == 36
    assert pack.points.multipliers == {"UNRATED": 0, "STAR1": 1, "STAR2": Fraction(3, 2), "STAR3": 2,
                                       "STAR4": Fraction(5, 2), "STAR5": 3, "STAR6": 5}
    assert all(isinstance(k, Fraction) for k in pack.points.multipliers.values())
    assert list(pack.tags) == ["GROUP_KEY", "HIGH_DATA", "ROAMER", "NEW_JOINER", "ARREARS", "CHURN_RISK",
                               "DOWNGRADE_RISK"]
    assert list(pack.entitlements) == [
        "VIP_LOUNGE", "ACCOUNT_MANAGER", "PHONE_MANAGER", "PRIORITY_COUNTER", "INTL_ROAMING_FAST",
        "HOTLINE_PRIORITY", "NIGHT_NO_SUSPEND", "DELAYED_SUSPEND", "FREE_SIM_REPLACE", "POINTS_GIFTS",
        "POINTS_REMINDER"]
    assert pack.effective_from is None
    assert pack.version == hashlib.sha256(SIX_STAR.read_bytes()).hexdigest()[:12]


def test_six_star_metrics_used():
    pack = load_pack(SIX_STAR)
    assert pack.grading_metrics() == {"status", "subs_type", "realname_flag", "tenure_months", "vip_flag", "brand",
                                      "prior_year_points", "sum6_fen", "susp12"}
    assert pack.metrics_used() == pack.grading_metrics() | {
        "group_key_flag", "data_fen", "cons_fen", "roam_months6", "cons_prev5_fen", "cons_m5_fen"}
    assert pack.metrics_used() <= set(METRIC_CATALOGUE)


def test_six_star_tags_load():
    pack = load_pack(SIX_STAR)
    frame = pl.DataFrame({"tier": ["STAR4", "STAR4", "STAR3"], "cons_fen": [9599, 9600, 0],
                          "cons_prev5_fen": [96000, 96000, 96000]})
    # CHURN_RISK: tier >= STAR4 and cons < prev5 / 5 / 2: 9599 < 96000/10 = 9600; 9600 is not; STAR3 is below STAR4
    assert frame.select(pack.tags["CHURN_RISK"].condition.expr.alias("r"))["r"].to_list() == [True, False, False]
    assert pack.tags["CHURN_RISK"].rule_fails is None and pack.tags["CHURN_RISK"].substitutes == {}
    down = pack.tags["DOWNGRADE_RISK"]
    assert down.condition.text == "reason = 'AVG6'"
    assert down.substitutes == {"sum6_fen": "sum6_fen - cons_m5_fen + cons_fen"}
    # one what-if expression per rule; `otherwise` (the last) cannot fail
    assert len(down.rule_fails) == len(pack.rules) == 8 and down.rule_fails[-1] is None
    rows = pl.DataFrame({"sum6_fen": [180000, 180000], "cons_m5_fen": [30000, 30000], "cons_fen": [29999, 30000]})
    # rule 3 (sum6_fen >= 180000) under sum6_fen := 180000 - 30000 + 29999 = 179999 fails; + 30000 = 180000 holds
    assert rows.select(down.rule_fails[2].alias("r"))["r"].to_list() == [True, False]
    assert down.metrics == {"cons_m5_fen", "cons_fen", "sum6_fen"}


def test_six_star_entitlements_evaluate():
    pack = load_pack(SIX_STAR)
    frame = pl.DataFrame({"tier": ["STAR6", "STAR5", "STAR3", "STAR1", "UNRATED"],
                          "GROUP_KEY": [False, False, True, False, False]})
    got = frame.select(**{name: c.expr for name, c in pack.entitlements.items()})
    assert got["VIP_LOUNGE"].to_list() == [True, False, False, False, False]
    assert got["ACCOUNT_MANAGER"].to_list() == [True, False, True, False, False]  # STAR6, or GROUP_KEY
    assert got["PRIORITY_COUNTER"].to_list() == [True, True, True, False, False]  # STAR5 and up, or GROUP_KEY
    assert got["HOTLINE_PRIORITY"].to_list() == [True, True, False, False, False]  # STAR4 and up
    assert got["FREE_SIM_REPLACE"].to_list() == [True, True, True, False, False]  # STAR3 and up
    assert got["POINTS_REMINDER"].to_list() == [True, True, True, True, False]  # STAR1 and up


def test_mini_pack_and_effective_from():
    pack = load_pack_text(MINI + "effective_from: '2026-07'\n", "mini.yaml")
    assert pack.tiers == ("NONE_YET", "LOW", "HIGH") and pack.unrated == "NONE_YET"
    assert pack.protection_months == 12 and pack.points.expiry_months == 24
    assert pack.points.multipliers["HIGH"] == Fraction(5, 4)
    assert pack.effective_from == Month(2026, 7)
    assert pack.source == "mini.yaml"


def test_version_is_the_content_hash(tmp_path):
    path = tmp_path / "p.yaml"
    path.write_text(MINI, encoding="utf-8")
    first = load_pack(path).version
    assert first == hashlib.sha256(MINI.encode("utf-8")).hexdigest()[:12] and len(first) == 12
    path.write_text(MINI + "# a comment changes the bytes\n", encoding="utf-8")
    assert load_pack(path).version != first
    path.write_text(MINI, encoding="utf-8")
    assert load_pack(path).version == first


def test_derived_metrics_in_order_and_metrics_used():
    text = MINI.replace("rules:\n", """\
derived:
  - name: avg12_yuan
    expr: floor(sum12_fen / 1200)
  - name: score
    expr: avg12_yuan + 0.5 * tenure_months - 10 * susp12
rules:
  - when: score >= 100
    tier: HIGH
    reason: SCORE
""")
    pack = load_pack_text(text, "score.yaml")
    assert list(pack.derived) == ["avg12_yuan", "score"]
    assert pack.derived["score"].denominator == 2 and pack.derived["score"].type == "number"
    assert pack.grading_metrics() == {"status", "sum12_fen", "tenure_months", "susp12", "sum6_fen"}
    frame = pl.DataFrame({"sum12_fen": [120000, 119999], "tenure_months": [20, 20], "susp12": [1, 1]})
    # 120000/1200 = 100, + 10 - 10 = 100 >= 100; 119999 -> floor 99 -> 99 < 100
    assert frame.select(pack.rules[0].condition.expr.alias("r"))["r"].to_list() == [True, False]
    # a derived metric may only use earlier ones
    swapped = text.replace("avg12_yuan + 0.5", "later + 0.5").replace(
        "  - name: avg12_yuan\n    expr: floor(sum12_fen / 1200)\n", "")
    assert "unknown name 'later'" in load_error(swapped)


# --- errors name the file and the line ------------------------------------------------------------------------

def test_bad_expression_names_file_and_line():
    message = load_error(MINI.replace("sum6_fen >= 180000", "sum6_fen >= 180000; DROP TABLE x"))
    assert message.startswith("packs/bad.yaml:7: rule 1: unexpected character ';'")
    assert "column 29" in message  # '  - when: ' is 10 characters, then the 19th character of the condition


def test_type_error_names_file_and_line():
    message = load_error(MINI.replace("status = 'CANCELLED'", "status = 1"))
    assert message.startswith("packs/bad.yaml:4: eligibility check 1: cannot compare str with number")


def test_unknown_tier_names_file_and_line():
    assert load_error(MINI.replace("tier: HIGH", "tier: HIGHEST")).startswith(
        "packs/bad.yaml:8: unknown tier 'HIGHEST' in rule 1")
    assert load_error(MINI.replace("LOW: 1,", "LOWER: 1,")).startswith("packs/bad.yaml:16: unknown tier 'LOWER'")


def test_unknown_key_names_file_and_line():
    text = MINI.replace("    reason: AVG6\n  - when: otherwise", "    reason: AVG6\n    run: x\n  - when: otherwise")
    assert load_error(text).startswith("packs/bad.yaml:10: unknown key 'run' in rule 1")
    assert load_error(MINI + "python: os.system\n").startswith("packs/bad.yaml:17: unknown key 'python' in the pack")


def test_duplicate_tier_and_duplicate_key():
    assert load_error(MINI.replace("[NONE_YET, LOW, HIGH]", "[NONE_YET, LOW, LOW]")).startswith(
        "packs/bad.yaml:2: duplicate tier 'LOW'")
    assert load_error(MINI + "protection_months: 0\n").startswith(
        "packs/bad.yaml:17: duplicate key 'protection_months' in the pack")


@pytest.mark.parametrize("old, new, expected", [
    ("pack: mini\n", "", "packs/bad.yaml:1: the pack is missing 'pack'"),
    ("HIGH: 1.25", "HIGH: 1/4", "packs/bad.yaml:16: the multiplier of HIGH must be a decimal literal"),
    ("HIGH: 1.25", "HIGH: 1e3", "packs/bad.yaml:16: the multiplier of HIGH must be a decimal literal"),
    ("HIGH: 1.25", "HIGH: -1", "packs/bad.yaml:16: the multiplier of HIGH must be a decimal literal"),
    (", HIGH: 1.25", "", "packs/bad.yaml:16: multipliers are missing for HIGH"),
    ("  - when: sum6_fen >= 180000\n    tier: HIGH\n    reason: AVG6\n  - when: otherwise",
     "  - when: otherwise\n    tier: HIGH\n    reason: AVG6\n  - when: sum6_fen > 1",
     "packs/bad.yaml:7: rule 1: 'otherwise' must be the last rule"),
    ("protection_months: 12", "protection_months: -1", "packs/bad.yaml:13: protection_months must be a non-negative"),
    ("protection_months: 12", "protection_months: 1.5", "packs/bad.yaml:13: protection_months must be a non-negative"),
    ("[NONE_YET, LOW, HIGH]", "[NONE_YET, LOW, 'A B']", "packs/bad.yaml:2: tier 'A B' is not a valid name"),
    ("[NONE_YET, LOW, HIGH]", "[NONE_YET, LOW, HIGH, sum6_fen]", "packs/bad.yaml:2: tier 'sum6_fen' has the name"),
    ("[NONE_YET, LOW, HIGH]", "[ONLY]", "packs/bad.yaml:2: a pack needs the unrated tier and at least one"),
    ("pack: mini", "pack: !!python/object/apply:os.system ['ls']", "packs/bad.yaml:1: YAML tag"),
    ("pack: mini", "pack: &a mini", "packs/bad.yaml:1: invalid YAML: anchors and aliases are not allowed"),
    ("tiers: [NONE_YET, LOW, HIGH]", "tiers: [NONE_YET, LOW, HIGH\n",
     "packs/bad.yaml:4: invalid YAML: expected ',' or ']'"),
    ("when: status = 'CANCELLED'", "when: status = 'CANCELLED' or vip_flag.x",
     "packs/bad.yaml:4: eligibility check 1: unexpected character '.'"),
    ("when: sum6_fen >= 180000", "when: sum6_fen / sum6_fen >= 1",
     "packs/bad.yaml:7: rule 1: division is only allowed by a constant"),
    ("when: sum6_fen >= 180000", "when: sum6_fen", "packs/bad.yaml:7: rule 1: a condition must be bool"),
    ("when: sum6_fen >= 180000", "when: tier >= LOW", "packs/bad.yaml:7: rule 1: unknown name 'tier'"),
    ("when: sum6_fen >= 180000", 'when: "sum6_fen >= open(\'/etc/passwd\')"',
     "packs/bad.yaml:7: rule 1: unknown function 'open'"),
])
def test_pack_errors(old, new, expected):
    assert old in MINI
    assert load_error(MINI.replace(old, new, 1)).startswith(expected)


def test_entitlements_only_see_tier_and_tags():
    base = MINI + "tags:\n  BIG: sum6_fen >= 100\nentitlements:\n  LOUNGE: tier >= HIGH or BIG\n"
    pack = load_pack_text(base, "ok.yaml")
    assert pack.entitlements["LOUNGE"].text == "tier >= HIGH or BIG"
    assert load_error(base.replace("or BIG", "or vip_flag")).startswith(
        "packs/bad.yaml:20: entitlement LOUNGE: unknown name 'vip_flag'")
    assert load_error(base.replace("BIG: sum6_fen", "HIGH: sum6_fen")).startswith(
        "packs/bad.yaml:18: tag 'HIGH' is not a valid name or clashes")


def test_empty_and_unreadable_files(tmp_path):
    assert load_error("", "empty.yaml").startswith("empty.yaml:1: the pack is empty")
    assert load_error("- a\n- b\n", "list.yaml").startswith("list.yaml:1: the pack must be a mapping")
    (tmp_path / "latin.yaml").write_bytes(b"pack: caf\xe9\n")
    with pytest.raises(PackError, match="latin.yaml:0: the pack is not UTF-8"):
        load_pack(tmp_path / "latin.yaml")
    with pytest.raises(PackError, match="missing.yaml:0: cannot read"):
        load_pack(tmp_path / "missing.yaml")


def test_error_inside_a_block_condition_names_its_line():
    text = MINI.replace("  - when: sum6_fen >= 180000\n",
                        "  - when: |\n      sum6_fen >= 180000\n      and vip_flag = 'Y'\n")
    # line 7 '  - when: |', line 8 the first line of the block, line 9 the comparison of bool with str
    assert load_error(text).startswith("packs/bad.yaml:9: rule 1: cannot compare bool with str (column 20)")


# --- ranks and what-if tags -------------------------------------------------------------------------------------

RANKED = MINI.replace("rules:\n", """\
ranks:
  - name: spend_rank
    by: sum6_fen / 6
    order: descending
    tie_break: subs_id
rules:
  - when: spend_rank * 2 <= spend_rank_count
    tier: HIGH
    reason: TOP_HALF
""")


def test_ranks_load_and_are_visible_to_rules_and_tags():
    pack = load_pack_text(RANKED + "tags:\n  FIRST: spend_rank = 1\n", "ranked.yaml")
    assert [(r.name, r.count_name, r.descending, r.text) for r in pack.ranks] == [
        ("spend_rank", "spend_rank_count", True, "sum6_fen / 6")]
    assert pack.rank_metrics() == {"status", "sum6_fen"}  # eligibility + the rank key
    assert pack.grading_metrics() == {"status", "sum6_fen"}
    assert pack.metric_types["spend_rank"] == "int" and pack.metric_types["spend_rank_count"] == "int"


@pytest.mark.parametrize("old, new, expected", [
    ("order: descending", "order: down", "packs/bad.yaml:9: rank spend_rank: order must be ascending or"),
    ("tie_break: subs_id", "tie_break: sum3_fen", "packs/bad.yaml:10: rank spend_rank: ties are broken by subs_id"),
    ("by: sum6_fen / 6", "by: brand", "packs/bad.yaml:8: rank spend_rank: expected a number, got str"),
    ("name: spend_rank", "name: sum6_fen", "packs/bad.yaml:7: rank 'sum6_fen' or 'sum6_fen_count' is already"),
    # ranks exist only after eligibility: an eligibility check cannot read one
    ("when: status = 'CANCELLED'", "when: spend_rank > 5",
     "packs/bad.yaml:4: eligibility check 1: unknown name 'spend_rank'"),
])
def test_rank_errors(old, new, expected):
    assert old in RANKED
    assert load_error(RANKED.replace(old, new, 1)).startswith(expected)


WHAT_IF = MINI + """\
tags:
  AT_RISK:
    when: reason = 'AVG6'
    assigning_rule_fails_with:
      sum6_fen: sum6_fen - cons_m5_fen + cons_fen
"""


def test_what_if_tag_loads():
    tag = load_pack_text(WHAT_IF, "ok.yaml").tags["AT_RISK"]
    assert tag.substitutes == {"sum6_fen": "sum6_fen - cons_m5_fen + cons_fen"}
    assert len(tag.rule_fails) == 2 and tag.rule_fails[1] is None  # rule 2 is `otherwise`
    frame = pl.DataFrame({"sum6_fen": [180000, 180000], "cons_m5_fen": [1, 0], "cons_fen": [0, 0]})
    # rule 1 sum6_fen >= 180000 with sum6_fen := 180000 - 1 + 0 = 179999 fails; 180000 - 0 + 0 holds
    assert frame.select(tag.rule_fails[0].alias("r"))["r"].to_list() == [True, False]


@pytest.mark.parametrize("old, new, expected", [
    ("      sum6_fen: sum6_fen", "      brand: sum6_fen",
     "packs/bad.yaml:21: tag AT_RISK: only a numeric metric can be substituted, not 'brand'"),
    ("sum6_fen - cons_m5_fen + cons_fen", "brand", "packs/bad.yaml:21: tag AT_RISK, sum6_fen: expected a number"),
    ("    assigning_rule_fails_with:", "    rule_fails:", "packs/bad.yaml:20: unknown key 'rule_fails' in tag"),
    ("  AT_RISK:", "  subs_id:", "packs/bad.yaml:18: tag 'subs_id' is not a valid name"),
])
def test_what_if_tag_errors(old, new, expected):
    assert old in WHAT_IF
    assert load_error(WHAT_IF.replace(old, new, 1)).startswith(expected)


# --- versions: rules/<name>.yaml and rules/<name>@YYYY-MM.yaml ------------------------------------------------

def write_versions(rules_dir: Path, versions: dict[str, str]) -> None:
    rules_dir.mkdir(exist_ok=True)
    for file_name, text in versions.items():
        (rules_dir / file_name).write_text(text, encoding="utf-8")


def test_the_version_in_force_changes_mid_history(tmp_path):
    base = SIX_STAR.read_text(encoding="utf-8")
    july = base.replace("pack: six-star\n", "pack: six-star\neffective_from: '2026-07'\n").replace(
        "sum6_fen >= 180000", "sum6_fen >= 150000")  # STAR5 line lowered from 300 to 250 yuan
    january = july.replace("'2026-07'", "2027-01")
    write_versions(tmp_path, {"six-star.yaml": base, "six-star@2026-07.yaml": july,
                              "six-star@2027-01.yaml": january, "six-star-lite.yaml": MINI})
    assert [(m, p.name) for m, p in pack_versions(tmp_path, "six-star")] == [
        (None, "six-star.yaml"), (Month(2026, 7), "six-star@2026-07.yaml"),
        (Month(2027, 1), "six-star@2027-01.yaml")]  # six-star-lite is another pack
    line = {}
    for month in (Month(2025, 1), Month(2026, 6), Month(2026, 7), Month(2026, 12), Month(2027, 1), Month(2030, 5)):
        pack = pack_in_force(tmp_path, "six-star", month)
        line[str(month)] = (pack.effective_from, pack.rules[2].condition.text)
    assert line == {
        "2025-01": (None, "sum6_fen >= 180000"), "2026-06": (None, "sum6_fen >= 180000"),  # before the change
        "2026-07": (Month(2026, 7), "sum6_fen >= 150000"), "2026-12": (Month(2026, 7), "sum6_fen >= 150000"),
        "2027-01": (Month(2027, 1), "sum6_fen >= 150000"), "2030-05": (Month(2027, 1), "sum6_fen >= 150000")}
    assert pack_in_force(tmp_path, "six-star", Month(2026, 7)).version != \
        pack_in_force(tmp_path, "six-star", Month(2026, 6)).version


def test_version_files_must_agree_with_their_pack(tmp_path):
    dated = MINI.replace("pack: mini\n", "pack: mini\neffective_from: '2026-08'\n")
    write_versions(tmp_path / "a", {"mini@2026-07.yaml": dated})
    with pytest.raises(PackError, match="mini@2026-07.yaml:0: the file name says effective_from: '2026-07', "
                                        "the pack says 2026-08"):
        pack_in_force(tmp_path / "a", "mini", Month(2026, 9))
    write_versions(tmp_path / "b", {"mini.yaml": dated})  # the undated file is in force from the beginning
    with pytest.raises(PackError, match="the file name says no effective_from, the pack says 2026-08"):
        pack_in_force(tmp_path / "b", "mini", Month(2026, 9))
    write_versions(tmp_path / "c", {"mini.yaml": MINI.replace("pack: mini", "pack: other")})
    with pytest.raises(PackError, match="mini.yaml:1: the file holds pack 'other', expected 'mini'"):
        pack_in_force(tmp_path / "c", "mini", Month(2026, 9))
    write_versions(tmp_path / "d", {"mini@2026-13.yaml": MINI})
    with pytest.raises(PackError, match="mini@2026-13.yaml:0: a pack version file is named"):
        pack_in_force(tmp_path / "d", "mini", Month(2026, 9))
    write_versions(tmp_path / "e", {"mini@2026-08.yaml": dated})  # no version before August
    with pytest.raises(PackError, match="no version of pack 'mini' is in force for 2026-07"):
        pack_in_force(tmp_path / "e", "mini", Month(2026, 7))
    assert pack_in_force(tmp_path / "e", "mini", Month(2026, 8)).effective_from == Month(2026, 8)
    with pytest.raises(PackError, match="no rule pack 'nothing'"):
        pack_in_force(tmp_path / "e", "nothing", Month(2026, 8))


def test_limits_on_tags_and_entitlements():
    many_tags = MINI + "tags:\n" + "".join(f"  T{i}: sum6_fen > {i}\n" for i in range(49))
    assert load_error(many_tags).startswith("packs/bad.yaml:18: a pack has at most 48 tags, found 49")
    many = MINI + "entitlements:\n" + "".join(f"  E{i}: tier >= LOW\n" for i in range(63))
    assert load_error(many).startswith("packs/bad.yaml:18: a pack has at most 62 entitlements, found 63")
    # a leading underscore is kept for the engine's own columns
    assert load_error(MINI.replace("[NONE_YET, LOW, HIGH]", "[_HIDDEN, LOW, HIGH]")).startswith(
        "packs/bad.yaml:2: tier '_HIDDEN' is not a valid name")


def test_the_packs_in_docs_metrics_md_load():
    text = (Path(__file__).resolve().parent.parent / "docs" / "metrics.md").read_text(encoding="utf-8")
    blocks = [b.split("```", 1)[0] for b in text.split("```yaml\n")[1:]]
    packs = [b for b in blocks if b.startswith("pack:")]
    assert len(packs) == 2  # the layout and the complete example
    loaded = [load_pack_text(b, f"docs/metrics.md block {i}") for i, b in enumerate(packs)]
    assert [p.name for p in loaded] == ["my-pack", "spend-bands"]
    assert loaded[1].tags["SLIPPING"].rule_fails is not None and loaded[1].protection_months == 6


# --- what other code reads from the pack instead of assuming six-star --------------------------------------------

@pytest.mark.parametrize("name, months", [("six-star", 6), ("national-score", 12), ("abc", 6), ("points-level", 12)])
def test_grading_window_of_each_shipped_pack(name, months):
    assert load_pack(rules_dir() / f"{name}.yaml").grading_window == months


@pytest.mark.parametrize("old, new, months", [
    ("", "", 6),  # sum6_fen in rule 1
    ("sum6_fen >= 180000", "cons_fen >= 30000", 1),
    ("sum6_fen >= 180000", "sum3_fen >= 90000", 3),
    # the only 12-month metric behind a derived metric, a tag or a what-if value
    ("rules:\n", "derived:\n  - {name: avg12, expr: sum12_fen / 12}\nrules:\n", 12),
    ("protection_months: 12\n", "protection_months: 12\ntags:\n  LOYAL: points_earned_12m > 1000\n", 12),
    ("protection_months: 12\n", "protection_months: 12\ntags:\n  SLIPPING:\n    when: reason = 'AVG6'\n"
     "    assigning_rule_fails_with: {sum6_fen: sum12_fen / 2}\n", 12),
    ("sum6_fen >= 180000", "susp12 >= 3", 1),  # susp12 counts events, not bills
])
def test_grading_window_is_the_longest_window_the_pack_reads(old, new, months):
    assert load_pack_text(MINI.replace(old, new), "window.yaml").grading_window == months


def test_rules_check_prints_the_grading_window():
    assert describe_pack(load_pack(rules_dir() / "national-score.yaml"))[-1] == \
        "grading window: 12 months of BILL (M-11..M)"
    assert describe_pack(load_pack(SIX_STAR))[-1] == "grading window: 6 months of BILL (M-5..M)"
    one_month = load_pack_text(MINI.replace("sum6_fen >= 180000", "cons_fen >= 30000"), "one.yaml")
    assert describe_pack(one_month)[-1] == "grading window: 1 month of BILL (M)"


def test_docs_metric_table_gives_the_catalogue_windows():
    text = (Path(__file__).resolve().parent.parent / "docs" / "metrics.md").read_text(encoding="utf-8")
    rows = [line.split(" | ") for line in text.splitlines() if line.startswith("| `")]
    assert {row[0].strip("| `"): int(row[2]) for row in rows} == METRIC_BILL_MONTHS
    assert set(METRIC_BILL_MONTHS) == set(METRIC_CATALOGUE)


def test_ineligible_reasons_are_the_eligibility_reasons():
    assert load_pack(SIX_STAR).ineligible_reasons == {
        "INELIGIBLE_CANCELLED", "INELIGIBLE_TYPE", "INELIGIBLE_REALNAME", "INELIGIBLE_TENURE"}
    assert load_pack_text(MINI, "mini.yaml").ineligible_reasons == {"INELIGIBLE_CANCELLED"}
    # a rule or cap giving one would make "reason in ineligible_reasons" wrong for a rated subscriber
    assert load_error(MINI.replace("    reason: AVG6\n", "    reason: INELIGIBLE_CANCELLED\n", 1)).startswith(
        "packs/bad.yaml:9: reason 'INELIGIBLE_CANCELLED' is an eligibility reason")
    capped = MINI + "caps:\n  - {when: susp12 >= 3, max_tier: LOW, reason: INELIGIBLE_CANCELLED}\n"
    assert load_error(capped).startswith("packs/bad.yaml:18: reason 'INELIGIBLE_CANCELLED' is an eligibility reason")


def test_points_expiry_comes_from_the_pack():
    assert load_pack(SIX_STAR).points.expiry_months == 36
    assert load_pack(rules_dir() / "points-level.yaml").points.expiry_months == 24
    assert load_error(MINI.replace("expiry_months: 24", "expiry_months: 0")).startswith(
        "packs/bad.yaml:15: expiry_months must be at least 1")


def test_rule_lines_are_the_plain_lower_bounds_of_single_rules():
    # six-star: the four AVG6 rules with a line (rows 5, 7, 8, 9); VIP and POINTS are not `metric >= constant`,
    # GOTONE_FLOOR has no condition on a metric's line, STAR1 is `otherwise`
    pack = load_pack(rules_dir() / "six-star.yaml")
    assert pack.rule_lines() == {("STAR5", "AVG6"): ("sum6_fen", 180000), ("STAR4", "AVG6"): ("sum6_fen", 90000),
                                 ("STAR3", "AVG6"): ("sum6_fen", 48000), ("STAR2", "AVG6"): ("sum6_fen", 18000)}
