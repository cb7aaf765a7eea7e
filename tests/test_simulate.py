"""`tierflow simulate` and `tierflow rules check`, through flows.cli.main (neither needs Prefect).

A hand-made province of 8 subscribers, graded officially with six-star for 2026-06 and 2026-07; candidate packs
are small YAML files written here. Every expected count is worked out by hand in the comments.
"""
from __future__ import annotations

import hashlib
import re
from pathlib import Path

import pytest

from flows.cli import main
from tests.builders import Province, Sub, deliver
from transforms.core.calendar import Month, month_range
from transforms.ingest.landing import scan_landing
from transforms.ingest.load import ingest_delivery
from transforms.runs.monthly import MonthlyOptions, run_monthly
from transforms.grade.rulepack import load_pack
from transforms.warehouse.db import connect
from transforms.core.resources import rules_dir

# A handful of subscribers: a few changes trip the circuit breaker's share, accepted on purpose here.
ACCEPT = MonthlyOptions(accept_mass_change=True)

SIX_STAR_FILE = rules_dir() / "six-star.yaml"
SIX_STAR = load_pack(SIX_STAR_FILE)
JAN, MAY, JUN, JUL, AUG = (Month(2026, m) for m in (1, 5, 6, 7, 8))
STARS = ["UNRATED", "STAR1", "STAR2", "STAR3", "STAR4", "STAR5", "STAR6"]

COMMON = """
tiers: [UNRATED, STAR1, STAR2, STAR3, STAR4, STAR5, STAR6]
eligibility:
  - {when: "status = 'CANCELLED'", reason: INELIGIBLE_CANCELLED}
  - {when: "subs_type != 'PERSONAL'", reason: INELIGIBLE_TYPE}
  - {when: not realname_flag, reason: INELIGIBLE_REALNAME}
  - {when: tenure_months < 6, reason: INELIGIBLE_TENURE}
points:
  expiry_months: 36
  multipliers: {UNRATED: 0, STAR1: 1, STAR2: 1.5, STAR3: 2, STAR4: 2.5, STAR5: 3, STAR6: 5}
"""
# six-star without the points rule, the GOTONE floor and the arrears cap, with STAR5 from avg6 >= 250 yuan
# (6 x 250 x 100 = 150000); its entitlements drop VIP_LOUNGE and add BIRTHDAY_GIFT.
LITE_RULES = """
rules:
  - {when: vip_flag, tier: STAR6, reason: VIP_DESIGNATION}
  - {when: sum6_fen >= 150000, tier: STAR5, reason: AVG6}
  - {when: sum6_fen >= 90000, tier: STAR4, reason: AVG6}
  - {when: sum6_fen >= 48000, tier: STAR3, reason: AVG6}
  - {when: sum6_fen >= 18000, tier: STAR2, reason: AVG6}
  - {when: otherwise, tier: STAR1, reason: AVG6}
tags:
  GROUP_KEY: group_key_flag
entitlements:
  ACCOUNT_MANAGER: tier = STAR6 or GROUP_KEY
  PHONE_MANAGER: tier >= STAR5
  PRIORITY_COUNTER: tier >= STAR5 or GROUP_KEY
  INTL_ROAMING_FAST: tier >= STAR4
  HOTLINE_PRIORITY: tier >= STAR4
  NIGHT_NO_SUSPEND: tier >= STAR3
  DELAYED_SUSPEND: tier >= STAR3
  FREE_SIM_REPLACE: tier >= STAR3
  POINTS_GIFTS: tier >= STAR2
  POINTS_REMINDER: tier >= STAR1
  BIRTHDAY_GIFT: tier >= STAR5
"""
LITE = "pack: lite\nprotection_months: 0\n" + COMMON + LITE_RULES
LITE12 = "pack: lite12\nprotection_months: 12\n" + COMMON + LITE_RULES
BANDS = """
pack: bands
tiers: [OUT, LOW, MID, HIGH]
eligibility:
  - {when: "status = 'CANCELLED'", reason: INELIGIBLE_CANCELLED}
  - {when: "subs_type != 'PERSONAL'", reason: INELIGIBLE_TYPE}
  - {when: not realname_flag, reason: INELIGIBLE_REALNAME}
  - {when: tenure_months < 6, reason: INELIGIBLE_TENURE}
rules:
  - {when: sum6_fen >= 90000, tier: HIGH, reason: AVG6}
  - {when: sum6_fen >= 18000, tier: MID, reason: AVG6}
  - {when: otherwise, tier: LOW, reason: AVG6}
protection_months: 0
points: {expiry_months: 36, multipliers: {OUT: 0, LOW: 1, MID: 2, HIGH: 3}}
"""


def build(home: Path) -> None:
    """Monthly spend (fen, RENT) 2026-01..07; everyone opened 2020-01 (tenure far above 6)."""
    p = Province()
    p.join(Sub("A"), Sub("B"), Sub("C", brand="GOTONE"), Sub("D", subs_type="IOT"), Sub("G"),
           Sub("K", group_key="Y"), Sub("S"), Sub("X"))
    for month in month_range(JAN, JUL):
        for subs_id, fen in (("A", 30000), ("B", 26000), ("C", 1000), ("D", 50000), ("G", 3000), ("K", 10000),
                             ("S", 30000)):
            p.spend(month, subs_id, fen)
        if month == JUL:
            p.spend(month, "X", -6000, "ADJUST")  # a refund month
        else:
            p.spend(month, "X", 30000)
        p.close_month(month)
    p.write(home)
    # S: three two-way suspensions in 2026-02..04, inside the 12-month window of June and July.
    deliver(home, "20260401", "SUSP_20260401.dat", ["E1|S|20260210100000|ARREARS_TWOWAY",
                                                    "E2|S|20260310100000|ARREARS_TWOWAY",
                                                    "E3|S|20260331100000|ARREARS_TWOWAY"])
    # G: an approved STAR6 override for July only.
    deliver(home, "20260701", "OVERRIDE_20260701.dat", ["OV1|G|STAR6|202607|202607|campaign|李经理"])


@pytest.fixture(scope="module")
def home(tmp_path_factory) -> Path:
    home = tmp_path_factory.mktemp("simulate")
    build(home)
    con = connect(home)
    try:
        for d in scan_landing(home).delivered:
            assert ingest_delivery(con, home, d, "test").status == "LOADED"
        for m in month_range(JAN, JUL):
            run_monthly(con, m, SIX_STAR, "test", ACCEPT)
    finally:
        con.close()  # the CLI opens the warehouse read-only: one process cannot mix both modes
    return home


@pytest.fixture(scope="module")
def packs(tmp_path_factory) -> dict[str, Path]:
    folder = tmp_path_factory.mktemp("packs")
    paths = {}
    for name, text in (("lite", LITE), ("lite12", LITE12), ("bands", BANDS)):
        paths[name] = folder / f"{name}.yaml"
        paths[name].write_text(text, encoding="utf-8")
    return paths


def simulate(home: Path, pack: Path, month: Month = JUL, *extra: str) -> int:
    return main(["simulate", "--home", str(home), "--month", str(month), "--rules", str(pack), *extra])


def out_dir(home: Path, pack: Path, month: Month = JUL) -> Path:
    loaded = load_pack(pack)
    return home / "simulations" / f"{month.compact}-{loaded.name}-{loaded.version}"


def read_matrix(path: Path) -> dict[tuple[str, str], int]:
    """Non-zero cells of migration.csv, totals left out."""
    header, *rows = [line.split(",") for line in path.read_text(encoding="utf-8").splitlines()]
    return {(row[0], header[j]): int(row[j]) for row in rows if row[0] != "total"
            for j in range(1, len(header) - 1) if int(row[j])}


def read_entitlements(path: Path) -> dict[str, tuple[int, int, int]]:
    header, *rows = [line.split(",") for line in path.read_text(encoding="utf-8").splitlines()]
    assert header == ["entitlement", "official", "candidate", "change"]
    return {name: (int(o), int(c), int(d)) for name, o, c, d in rows}


def official_july(home: Path) -> dict[str, tuple[str, str]]:
    con = connect(home, read_only=True)
    try:
        rows = con.execute("SELECT subs_id, tier, reason FROM mart.tier_assignment WHERE grade_month = ?",
                           [JUL.first_day]).fetchall()
    finally:
        con.close()
    return {s: (t, r) for s, t, r in rows}


def test_the_official_july_is_what_the_comparisons_assume(home):
    assert official_july(home) == {
        "A": ("STAR5", "AVG6"),             # sum6 = 6 x 30000 = 180000
        "B": ("STAR4", "AVG6"),             # 6 x 26000 = 156000 < 180000
        "C": ("STAR4", "GOTONE_FLOOR"),     # 6000; no points in 2025
        "D": ("UNRATED", "INELIGIBLE_TYPE"),
        "G": ("STAR6", "OVERRIDE"),         # by rules 6 x 3000 = 18000: STAR2
        "K": ("STAR3", "AVG6"),             # 60000
        "S": ("STAR3", "ARREARS_CAP"),      # 180000 but 3 two-way suspensions
        "X": ("STAR4", "AVG6"),             # Feb..Jun 5 x 30000 - 6000 = 144000
    }


def test_migration_and_entitlements_by_hand(home, packs, capsys):
    assert simulate(home, packs["lite"]) == 0
    folder = out_dir(home, packs["lite"])
    # lite, July: A 180000 STAR5; B 156000 >= 150000 STAR5; C 6000 STAR1 (no floor); D UNRATED; G the override
    # STAR6; K 60000 STAR3; S 180000 STAR5 (no cap); X 144000 STAR4.
    assert read_matrix(folder / "migration.csv") == {
        ("UNRATED", "UNRATED"): 1,  # D
        ("STAR3", "STAR3"): 1,      # K
        ("STAR3", "STAR5"): 1,      # S
        ("STAR4", "STAR1"): 1,      # C
        ("STAR4", "STAR4"): 1,      # X
        ("STAR4", "STAR5"): 1,      # B
        ("STAR5", "STAR5"): 1,      # A
        ("STAR6", "STAR6"): 1,      # G
    }
    # official tiers: D U, K 3, S 3, C 4, X 4, B 4, A 5, G 6;  candidate: D U, C 1, K 3, X 4, B 5, S 5, A 5, G 6.
    # GROUP_KEY is K's tag in both (K is rated).
    assert read_entitlements(folder / "entitlements.csv") == {
        "VIP_LOUNGE": (1, 0, -1),          # G; the candidate has no such entitlement
        "ACCOUNT_MANAGER": (2, 2, 0),      # G + K (group key) both sides
        "PHONE_MANAGER": (2, 4, 2),        # A G  ->  A B S G
        "PRIORITY_COUNTER": (3, 5, 2),     # A G K  ->  A B S G K
        "INTL_ROAMING_FAST": (5, 5, 0),    # C X B A G  ->  X B S A G
        "HOTLINE_PRIORITY": (5, 5, 0),
        "NIGHT_NO_SUSPEND": (7, 6, -1),    # all rated, STAR3+  ->  C fell to STAR1
        "DELAYED_SUSPEND": (7, 6, -1),
        "FREE_SIM_REPLACE": (7, 6, -1),
        "POINTS_GIFTS": (7, 6, -1),        # STAR2+: C again
        "POINTS_REMINDER": (7, 7, 0),      # every rated subscriber
        "BIRTHDAY_GIFT": (0, 4, 4),        # candidate only: STAR5+ A B S G
    }
    out = capsys.readouterr().out
    assert "8 subscribers, 3 with another tier" in out  # B, C, S
    assert "official \\ candidate" in out and str(folder) in out


def test_migration_csv_layout(home, packs):
    assert simulate(home, packs["lite"]) == 0
    text = (out_dir(home, packs["lite"]) / "migration.csv").read_text(encoding="utf-8")
    assert text == (
        "official_tier,UNRATED,STAR1,STAR2,STAR3,STAR4,STAR5,STAR6,total\n"
        "UNRATED,1,0,0,0,0,0,0,1\n"
        "STAR1,0,0,0,0,0,0,0,0\n"
        "STAR2,0,0,0,0,0,0,0,0\n"
        "STAR3,0,0,0,1,0,1,0,2\n"
        "STAR4,0,1,0,0,1,1,0,3\n"
        "STAR5,0,0,0,0,0,1,0,1\n"
        "STAR6,0,0,0,0,0,0,1,1\n"
        "total,1,1,0,1,1,3,1,8\n")


def test_candidate_protection_uses_the_official_tier_history(home, packs):
    # Official June (first graded month, every spell began with it): C STAR4 (floor), X STAR5 (180000).
    # lite12 in July: C by rules STAR1 < STAR4 and X STAR4 < STAR5, both held for 1 month < 12: protected.
    assert simulate(home, packs["lite12"]) == 0
    matrix = read_matrix(out_dir(home, packs["lite12"]) / "migration.csv")
    assert matrix[("STAR4", "STAR4")] == 1  # C kept STAR4
    assert matrix[("STAR4", "STAR5")] == 2  # B by rules, X kept STAR5
    assert ("STAR4", "STAR1") not in matrix


def test_a_pack_with_other_tiers_lists_all_tiers_of_both_and_drops_foreign_overrides(home, packs, capsys):
    assert simulate(home, packs["bands"]) == 0
    folder = out_dir(home, packs["bands"])
    header = (folder / "migration.csv").read_text(encoding="utf-8").splitlines()[0]
    assert header == "official_tier,OUT,LOW,MID,HIGH,total"
    # bands: A 180000 B 156000 S 180000 X 144000 HIGH; C 6000 LOW; G 18000 MID (its STAR6 override cannot
    # apply: bands has no STAR6); K 60000 MID; D OUT.
    assert read_matrix(folder / "migration.csv") == {
        ("UNRATED", "OUT"): 1, ("STAR3", "MID"): 1, ("STAR3", "HIGH"): 1, ("STAR4", "LOW"): 1,
        ("STAR4", "HIGH"): 2, ("STAR5", "HIGH"): 1, ("STAR6", "MID"): 1}
    assert read_entitlements(folder / "entitlements.csv")["POINTS_REMINDER"] == (7, 0, -7)  # bands has none
    assert "1 override(s) name tiers pack bands does not have (STAR6): ignored" in capsys.readouterr().out


def tree_digest(home: Path) -> dict[str, str]:
    """MD5 of every file of the home except the simulations' own outputs."""
    return {str(p.relative_to(home)): hashlib.md5(p.read_bytes()).hexdigest()
            for p in sorted(home.rglob("*")) if p.is_file() and "simulations" not in p.relative_to(home).parts}


def test_simulate_leaves_the_warehouse_and_outbox_byte_identical(home, packs):
    outbox = home / "outbox" / "crm" / "202607"
    outbox.mkdir(parents=True, exist_ok=True)
    (outbox / "grade_changes.csv").write_text("subs_id,from_tier,to_tier\n", encoding="utf-8")
    before = tree_digest(home)
    assert "warehouse.duckdb" in before
    for name in ("lite", "lite12", "bands"):
        assert simulate(home, packs[name]) == 0
    assert tree_digest(home) == before  # no byte changed and no file appeared (no WAL, no outbox file)


def test_outputs_are_deterministic_and_the_page_is_self_contained(home, packs, tmp_path):
    assert simulate(home, packs["lite"], JUL, "--out", str(tmp_path / "one")) == 0
    assert simulate(home, packs["lite"], JUL, "--out", str(tmp_path / "two")) == 0
    for name in ("migration.csv", "entitlements.csv", "movers.csv", "simulation.html"):
        assert (tmp_path / "one" / name).read_bytes() == (tmp_path / "two" / name).read_bytes()
    page = (tmp_path / "one" / "simulation.html").read_text(encoding="utf-8")
    assert page.startswith("<!DOCTYPE html>") and '<table id="migration">' in page
    # plotly.js is inlined once; no element loads anything (tests/test_report_browser.py opens pages offline)
    assert page.count("plotly.js v") == 1 and "<link" not in page
    assert not re.search(r"<(script|img|iframe)[^>]*\ssrc=", page)
    assert 'id="chart-migration"' in page and 'id="chart-regions"' in page  # the plotly heat map, per region
    assert "background:rgba(" in page  # the table coloured by direction
    assert sorted(p.name for p in (tmp_path / "one").iterdir()) == [
        "entitlements.csv", "migration.csv", "movers.csv", "simulation.html"]
    # B, C and S move (test_migration_and_entitlements_by_hand); every builder subscriber is in region 4110
    assert (tmp_path / "one" / "movers.csv").read_text(encoding="utf-8") == (
        "subs_id,region_code,official_tier,candidate_tier\n"
        "B,4110,STAR4,STAR5\n"
        "C,4110,STAR4,STAR1\n"
        "S,4110,STAR3,STAR5\n")


@pytest.mark.parametrize(("month", "why"), [
    (MAY, "2026-05 has not been graded officially (was processed without tiers"),  # BILL window Dec..May
    (AUG, "2026-08 has not been graded officially (was never processed)"),
])
def test_a_month_must_be_graded_officially_first(home, packs, capsys, month, why):
    assert simulate(home, packs["lite"], month) == 1
    err = capsys.readouterr().err
    assert err.startswith("tierflow simulate: error: ") and why in err
    assert f"tierflow monthly --month {month}" in err


def test_an_official_pack_not_in_rules_is_asked_for(home, packs, tmp_path, capsys):
    # Official July was graded with six-star; pointed at another official pack, simulate refuses.
    assert simulate(home, packs["lite"], JUL, "--official", str(packs["bands"]), "--out", str(tmp_path)) == 1
    assert f"was graded with pack six-star version {SIX_STAR.version}, not with bands" in capsys.readouterr().err


def test_an_invalid_candidate_fails_with_its_file_and_line(home, tmp_path, capsys):
    bad = tmp_path / "bad.yaml"
    bad.write_text(LITE.replace("sum6_fen >= 90000", "sum6_fen >= 'x'"), encoding="utf-8")
    assert simulate(home, bad) == 1
    line = next(i for i, row in enumerate(LITE.splitlines(), 1) if "sum6_fen >= 90000" in row)
    assert f"{bad}:{line}: " in capsys.readouterr().err


# --- rules check -----------------------------------------------------------------------------------------------

def test_rules_check_prints_tiers_rules_and_metrics(capsys):
    assert main(["rules", "check", str(SIX_STAR_FILE)]) == 0
    out = capsys.readouterr().out.splitlines()
    assert out[0] == f"pack six-star, version {SIX_STAR.version} ({SIX_STAR_FILE}): valid"
    assert ("tiers, lowest first: UNRATED (未评级), STAR1 (一星), STAR2 (二星), STAR3 (三星), "
            "STAR4 (四星), STAR5 (五星), STAR6 (六星)") in out
    assert "  3. sum6_fen >= 180000  ->  STAR5, AVG6" in out
    assert "  8. otherwise  ->  STAR1, AVG6" in out
    assert "  susp12 >= 3  ->  at most STAR3, ARREARS_CAP" in out
    assert "  not realname_flag  ->  UNRATED, INELIGIBLE_REALNAME" in out
    assert ("points: expire after 36 months; multipliers UNRATED 0, STAR1 1, STAR2 1.5, STAR3 2, STAR4 2.5, "
            "STAR5 3, STAR6 5") in out
    metrics = next(line for line in out if line.startswith("metrics used: ")).removeprefix("metrics used: ")
    assert "sum6_fen" in metrics.split(", ") and "susp12" in metrics.split(", ")


def test_rules_check_by_name_finds_the_pack_in_rules(capsys):
    assert main(["rules", "check", "six-star"]) == 0
    assert capsys.readouterr().out.startswith("pack six-star, version ")


def test_rules_check_of_an_invalid_pack_names_file_and_line(tmp_path, capsys):
    bad = tmp_path / "bad.yaml"
    text = LITE.replace("sum6_fen >= 48000", "sum6_fen >= 48000 and __import__")
    bad.write_text(text, encoding="utf-8")
    line = next(i for i, row in enumerate(text.splitlines(), 1) if "__import__" in row)
    assert main(["rules", "check", str(bad)]) == 1
    captured = capsys.readouterr()
    assert captured.out == ""
    assert captured.err.startswith(f"{bad}:{line}: ")


def test_rules_check_of_a_pack_with_an_unknown_metric(tmp_path, capsys):
    bad = tmp_path / "bad.yaml"
    bad.write_text(LITE.replace("vip_flag, tier", "shoe_size > 40, tier"), encoding="utf-8")
    assert main(["rules", "check", str(bad)]) == 1
    err = capsys.readouterr().err
    line = next(i for i, row in enumerate(LITE.splitlines(), 1) if "vip_flag, tier" in row)
    assert err.startswith(f"{bad}:{line}: ") and "shoe_size" in err
