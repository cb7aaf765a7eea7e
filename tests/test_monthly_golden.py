"""End-to-end golden case for the monthly run (no Prefect): a hand-made province of 15 subscribers over
2026-01..2026-07, every expected value worked out by hand from rules.md in the comments."""
from __future__ import annotations

from pathlib import Path

import polars as pl
import pytest

from tests.builders import Province, Sub, deliver
from transforms.core.calendar import Month, month_range
from transforms.ingest.landing import scan_landing
from transforms.ingest.load import ingest_delivery
from transforms.runs.monthly import MonthlyError, MonthlyOptions, run_monthly
from transforms.quality.gates import GateFailed
from transforms.grade.rulepack import METRIC_CATALOGUE, load_pack
from transforms.warehouse import inputs, ranges
from transforms.warehouse.db import connect, snapshot_date_for
from transforms.warehouse.marts import write_tier_assignment
from transforms.core.resources import rules_dir

PACK = load_pack(rules_dir() / "six-star.yaml")
# These hand-made provinces are tiny: a few changes exceed the breaker's 5%, accepted on purpose here.
ACCEPT = MonthlyOptions(accept_mass_change=True)
JAN, JUN, JUL = Month(2026, 1), Month(2026, 6), Month(2026, 7)


def build(home: Path) -> None:
    p = Province()
    p.join(Sub("A"), Sub("B"), Sub("C", brand="GOTONE"), Sub("D", brand="EASYOWN", vip="Y"),
           Sub("E", brand="EASYOWN"), Sub("F", brand="EASYOWN"), Sub("G", brand="EASYOWN"),
           Sub("H", subs_type="IOT"), Sub("I", realname="N"), Sub("J", open_date="20260115"),
           Sub("L", subs_type="IOT"), Sub("R"), Sub("S"), Sub("T"))
    for month in month_range(JAN, JUL):
        if month == Month(2026, 2):
            p.join(Sub("K", open_date="20260201"))
        if month == JUN:
            p.change("L", status="CANCELLED", cancel_date="20260620")
        if month == JUL:
            p.leave("G")
            p.change("D", vip="N")
        for s in ("A", "S", "T"):
            p.spend(month, s, 30000)
        p.spend(month, "B", 29999 if month == JAN else 30000)
        p.spend(month, "C", 1000)
        p.spend(month, "E", 8000)
        if month == Month(2026, 3):  # F's 3000 fen made of several items
            p.spend(month, "F", 1500, "RENT")
            p.spend(month, "F", 2000, "DATA")
            p.spend(month, "F", -500, "DISCOUNT")
        else:
            p.spend(month, "F", 12345 if month == JUL else 3000)
        if month != JUL:
            p.spend(month, "G", 2999 if month == JAN else 3000)
        for s in ("H", "I", "J", "K"):
            if s in p.subscribers:
                p.spend(month, s, 50000)
        if month == Month(2026, 3):
            p.spend(month, "R", -5000, "ADJUST")
        if month == Month(2026, 2):  # gifted credit and deposits are not consumption
            p.spend(month, "B", 5000, "GIFT")
            p.spend(month, "B", 10000, "DEPOSIT")
        p.close_month(month)
    p.write(home)
    # S: three two-way suspensions inside 2025-07..2026-06 (the first on the window's first day);
    # T: one on 2025-06-30 (outside), two inside, and one-way suspensions that never count.
    deliver(home, "20250630", "SUSP_20250630.dat", ["E1|T|20250630235959|ARREARS_TWOWAY"])
    deliver(home, "20250701", "SUSP_20250701.dat", ["E2|S|20250701000000|ARREARS_TWOWAY"])
    deliver(home, "20251010", "SUSP_20251010.dat", ["E3|S|20251010100000|ARREARS_TWOWAY",
                                                    "E4|T|20251010100000|ARREARS_TWOWAY"])
    deliver(home, "20260305", "SUSP_20260305.dat", ["E5|S|20260305100000|ARREARS_TWOWAY",
                                                    "E6|T|20260305100000|ARREARS_TWOWAY",
                                                    "E7|T|20260305110000|ARREARS_ONEWAY",
                                                    "E8|T|20260305120000|ARREARS_ONEWAY",
                                                    "E9|T|20260305130000|ARREARS_ONEWAY"])
    # A redeems in July before any points exist: rejected whole, quarantined with its line.
    deliver(home, "20260710", "REDEEM_20260710.dat", ["R1|A|20260710120000|100|APP"], encoding="UTF-8")


def graded_golden(home: Path):
    """Builds the scenario in home, loads every delivery and runs 2026-01..07; returns (con, results)."""
    build(home)
    con = connect(home)
    for d in scan_landing(home).delivered:
        assert ingest_delivery(con, home, d, "test").status == "LOADED"
    return con, {m: run_monthly(con, m, PACK, "test", ACCEPT) for m in month_range(JAN, JUL)}


@pytest.fixture(scope="module")
def graded(tmp_path_factory):
    con, results = graded_golden(tmp_path_factory.mktemp("golden"))
    yield con, results
    con.close()


def tiers(con, month: Month) -> dict[str, tuple[str, str]]:
    rows = con.execute("SELECT subs_id, tier, reason FROM mart.tier_assignment WHERE grade_month = ?",
                       [month.first_day]).fetchall()
    return {s: (t, r) for s, t, r in rows}


def test_months_before_the_window_is_complete_assign_no_tiers(graded):
    con, results = graded
    assert [results[m].graded for m in month_range(JAN, JUL)] == [False] * 5 + [True, True]
    assert con.execute("SELECT count(*) FROM mart.tier_assignment WHERE grade_month < ?",
                       [JUN.first_day]).fetchone()[0] == 0


def test_june_tiers_by_hand(graded):
    con, _ = graded
    assert tiers(con, JUN) == {
        "A": ("STAR5", "AVG6"),            # 6 x 30000 = 180000 = 6 x 300 yuan exactly
        "B": ("STAR4", "AVG6"),            # 29999 + 5 x 30000 = 179999: one fen short of 300; GIFT/DEPOSIT out
        "C": ("STAR4", "GOTONE_FLOOR"),    # GOTONE, 6000 fen
        "D": ("STAR6", "VIP_DESIGNATION"),
        "E": ("STAR3", "AVG6"),            # 48000 = 6 x 80 yuan exactly
        "F": ("STAR2", "AVG6"),            # 18000 = 6 x 30 yuan (March: 1500 + 2000 - 500)
        "G": ("STAR1", "AVG6"),            # 17999
        "H": ("UNRATED", "INELIGIBLE_TYPE"),
        "I": ("UNRATED", "INELIGIBLE_REALNAME"),
        "J": ("STAR5", "AVG6"),            # joined 2026-01: tenure(2026-06) = 6
        "K": ("UNRATED", "INELIGIBLE_TENURE"),  # joined 2026-02: tenure 5
        "L": ("UNRATED", "INELIGIBLE_CANCELLED"),  # cancelled IOT: cancelled is checked first
        "R": ("STAR1", "AVG6"),            # refund month: sum6 = -5000
        "S": ("STAR3", "ARREARS_CAP"),     # STAR5 by avg6, 3 two-way suspensions in 2025-07..2026-06
        "T": ("STAR5", "AVG6"),            # 2 two-way inside the window; one-way ones do not count
    }


def test_june_metrics_by_hand(graded):
    con, _ = graded
    rows = {r[0]: r[1:] for r in con.execute(
        "SELECT subs_id, sum6_fen, tenure_months, susp12 FROM mart.tier_assignment WHERE grade_month = ?",
        [JUN.first_day]).fetchall()}
    assert rows["B"] == (179999, 78, 0)   # opened 2020-01: (2026-2020) x 12 + 6 = 78 months
    assert rows["J"] == (300000, 6, 0)
    assert rows["R"] == (-5000, 78, 0)
    assert rows["S"] == (180000, 78, 3)
    assert rows["T"] == (180000, 78, 2)
    b_feb = con.execute("SELECT cons_fen, rent_fen, gift_fen, deposit_fen FROM mart.subscriber_month "
                        "WHERE month = '2026-02-01' AND subs_id = 'B'").fetchone()
    assert b_feb == (30000, 30000, 5000, 10000)
    f_mar = con.execute("SELECT cons_fen, rent_fen, data_fen, discount_fen FROM mart.subscriber_month "
                        "WHERE month = '2026-03-01' AND subs_id = 'F'").fetchone()
    assert f_mar == (3000, 1500, 2000, -500)


def test_june_metrics_read_in_ranges_of_two_subscribers_are_the_same(graded, monkeypatch):
    """grading_metrics reads range by range of subs_id (warehouse.ranges): the same frame, in the same order."""
    con, _ = graded
    snapshot = snapshot_date_for(con, JUN)
    whole = inputs.grading_metrics(con, JUN, snapshot)
    monkeypatch.setattr(ranges, "RANGE_SUBSCRIBERS", 2)
    assert len(ranges.subscriber_ranges(con, JUN)) >= 5
    assert inputs.grading_metrics(con, JUN, snapshot).equals(whole)
    assert whole["subs_id"].to_list() == sorted(whole["subs_id"].to_list()) and whole.height >= 10


@pytest.mark.parametrize("pack_file", sorted(p.name for p in rules_dir().glob("*.yaml")))
def test_july_metrics_a_pack_reads_are_those_of_the_whole_catalogue(graded, pack_file):
    """A monthly run computes only the metrics its pack reads and the tiers are stored with (inputs.metrics_read),
    the BILL aggregates over the pack's window alone (six-star: Feb..Jul, not Jan..Jul): the same values as the
    whole catalogue's, in the same order, and none of the others."""
    con, _ = graded
    pack = load_pack(rules_dir() / pack_file)
    snapshot = snapshot_date_for(con, JUL)
    names = inputs.metrics_read(pack)
    read = inputs.grading_metrics(con, JUL, snapshot, names)
    whole = inputs.grading_metrics(con, JUL, snapshot)
    assert read.equals(whole.select(read.columns))
    assert pack.metrics_used() | inputs.STORED_METRICS <= set(read.columns)
    assert set(whole.columns) - set(read.columns) == set(METRIC_CATALOGUE) - names - set(read.columns)
    assert whole.filter(pl.col("sum6_fen") != pl.col("sum12_fen")).height >= 3  # the 12-month window differs


def test_a_six_month_pack_computes_no_twelve_month_bill_metric(graded):
    """six-star reads 6 months of BILL: sum12_fen (12 months) and the 12-month lot sum are not computed."""
    names = inputs.metrics_read(PACK)
    assert {"sum6_fen", "cons_m5_fen", "susp12", "prior_year_points"} <= names
    assert not names & {"sum12_fen", "points_earned_12m", "sum3_fen"}
    con, _ = graded
    read = inputs.grading_metrics(con, JUL, snapshot_date_for(con, JUL), names)
    assert "sum12_fen" not in read.columns and "points_earned_12m" not in read.columns


GRADED_TABLES = ("tier_assignment", "grade_change", "entitlement_change", "tier_history", "tier_current",
                 "tier_summary")


def test_july_regraded_in_ranges_of_two_subscribers_writes_the_same_tables(graded, monkeypatch):
    """The local path grades and writes range by range of subs_id (warehouse.ranges): a regrade of July in ranges
    of two subscribers leaves every graded table as the one-range run wrote it, and reports the same counts."""
    con, results = graded
    before = {t: con.execute(f"SELECT * FROM mart.{t} ORDER BY ALL").fetchall() for t in GRADED_TABLES}
    monkeypatch.setattr(ranges, "RANGE_SUBSCRIBERS", 2)
    assert len(ranges.subscriber_ranges(con, JUL)) >= 5
    again = run_monthly(con, JUL, PACK, "ranges", ACCEPT)
    assert {t: con.execute(f"SELECT * FROM mart.{t} ORDER BY ALL").fetchall() for t in GRADED_TABLES} == before
    assert (again.subscribers, again.changes, again.tiers) == (results[JUL].subscribers, results[JUL].changes,
                                                               results[JUL].tiers)
    assert again.changes == {"DOWNGRADE": 1, "LOST": 1, "NEW": 1, "UPGRADE": 2}  # test_july_changes_by_hand


def test_a_months_tiers_are_stored_in_subs_id_order_whatever_the_order_handed_in(graded):
    """mart.tier_assignment keeps a month's rows in subs_id order (range filters prune by it), written without a
    sort when the graded frame is in that order, as it is, and sorted when it is not."""
    con, _ = graded
    def stored():
        return [s for (s,) in con.execute("SELECT subs_id FROM mart.tier_assignment WHERE grade_month = ? "
                                          "ORDER BY rowid", [JUL.first_day]).fetchall()]
    as_graded = stored()
    assert as_graded == sorted(as_graded) and len(as_graded) >= 10
    rows = con.execute("SELECT * FROM mart.tier_assignment WHERE grade_month = ? ORDER BY ALL",
                       [JUL.first_day]).fetchall()
    metrics = inputs.grading_metrics(con, JUL, snapshot_date_for(con, JUL), inputs.metrics_read(PACK))
    assignment = con.sql("SELECT subs_id, tier, reason, computed_tier, protected, tags FROM mart.tier_assignment "
                         "WHERE grade_month = $m ORDER BY subs_id DESC", params={"m": JUL.first_day}).pl()
    con.execute("BEGIN")
    try:
        write_tier_assignment(con, JUL, PACK.version, metrics.reverse(), assignment, inputs.active_overrides(con, JUL))
        assert stored() == as_graded
        assert con.execute("SELECT * FROM mart.tier_assignment WHERE grade_month = ? ORDER BY ALL",
                           [JUL.first_day]).fetchall() == rows
    finally:
        con.execute("ROLLBACK")


def test_a_rank_pack_graded_in_ranges_ranks_the_whole_population(graded, monkeypatch):
    """abc ranks every eligible subscriber of S(M): graded range by range, the tiers equal one grading of all."""
    from transforms.grade.grading import GradingInputs, grade
    from transforms.runs.monthly import graded_by_range
    con, _ = graded
    abc = load_pack(rules_dir() / "abc.yaml")
    snapshot = snapshot_date_for(con, JUL)
    whole = grade(abc, GradingInputs(JUL, inputs.grading_metrics(con, JUL, snapshot), inputs.active_overrides(con, JUL),
                                     inputs.tier_spells(con, JUL), inputs.assignment_of(con, JUL - 1)), PACK)
    monkeypatch.setattr(ranges, "RANGE_SUBSCRIBERS", 2)
    parts = list(graded_by_range(con, JUL, abc, PACK, snapshot))
    assert len(parts) >= 5
    for name in ("assignment", "changes", "entitlement_changes"):
        assert pl.concat([getattr(graded, name) for *_, graded in parts]).equals(getattr(whole, name)), name
    assert whole.assignment["tier"].n_unique() >= 3  # the ranks spread the subscribers over several tiers


def test_first_graded_month_makes_every_rated_subscriber_new(graded):
    con, _ = graded
    rows = con.execute("SELECT change_type, count(*) FROM mart.grade_change WHERE grade_month = ? GROUP BY ALL",
                       [JUN.first_day]).fetchall()
    assert rows == [("NEW", 11)]  # A B C D E F G J R S T


def test_july_changes_by_hand(graded):
    con, _ = graded
    rows = con.execute("SELECT subs_id, from_tier, to_tier, change_type, reason FROM mart.grade_change "
                       "WHERE grade_month = ? ORDER BY subs_id", [JUL.first_day]).fetchall()
    assert rows == [
        ("B", "STAR4", "STAR5", "UPGRADE", "AVG6"),      # Jan's 29999 leaves the window: 180000
        ("D", "STAR6", "STAR1", "DOWNGRADE", "AVG6"),    # designation removed, sum6 0
        ("G", "STAR1", "UNRATED", "LOST", "ABSENT_FROM_SNAPSHOT"),  # absent from S(2026-07)
        ("K", "UNRATED", "STAR5", "NEW", "AVG6"),        # tenure 6 now; 6 x 50000
        ("S", "STAR3", "STAR5", "UPGRADE", "AVG6"),      # 2025-07-01 left the window: susp12 = 2
    ]


def test_july_points_use_the_tier_in_effect_during_july(graded):
    con, _ = graded
    earned = dict(con.execute("SELECT subs_id, earned FROM mart.points_balance WHERE month = ? AND earned > 0",
                              [JUL.first_day]).fetchall())
    assert earned == {
        "A": 900,    # STAR5 (k=3): 30000 x 3 / 100
        "B": 750,    # STAR4 (k=2.5): 30000 x 2.5 / 100
        "C": 25,     # STAR4: 1000 x 2.5 / 100
        "E": 160,    # STAR3 (k=2): 8000 x 2 / 100
        "F": 186,    # STAR2 (k=1.5): ceil(12345 x 1.5 / 100) = ceil(185.175)
        "J": 1500,   # STAR5: 50000 x 3 / 100
        "S": 600,    # STAR3 during July (capped in June): 30000 x 2 / 100
        "T": 900,    # STAR5
    }  # D spent 0, G left, R refunded nothing positive, H/I/K/L were unrated in June (k = 0)


def test_redemption_beyond_the_balance_is_quarantined_with_its_line(graded):
    con, _ = graded
    rows = con.execute("SELECT file_name, line_no, reason, period FROM ops.quarantine "
                       "WHERE reason = 'INSUFFICIENT_POINTS'").fetchall()
    assert [(f, ln, r, str(p)) for f, ln, r, p in rows] == [
        ("REDEEM_20260710.dat", 1, "INSUFFICIENT_POINTS", "2026-07-01")]
    assert con.execute("SELECT redeemed, balance FROM mart.points_balance WHERE month = ? AND subs_id = 'A'",
                       [JUL.first_day]).fetchone() == (0, 900)


def test_history_current_and_summary(graded):
    con, _ = graded
    current = {s: (t, str(since)) for s, t, since in con.execute(
        "SELECT subs_id, tier, since_month FROM mart.tier_current").fetchall()}
    assert current["A"] == ("STAR5", "2026-06-01")
    assert current["B"] == ("STAR5", "2026-07-01")
    assert "G" not in current
    spells = con.execute("SELECT tier, valid_from, valid_to FROM mart.tier_history WHERE subs_id = 'B' "
                         "ORDER BY valid_from").fetchall()
    assert [(t, str(f), str(to)) for t, f, to in spells] == [
        ("STAR4", "2026-07-01", "2026-08-01"), ("STAR5", "2026-08-01", "None")]
    star5 = con.execute("SELECT subscribers, unchanged, new_in, upgraded_in, downgraded_in FROM mart.tier_summary "
                        "WHERE grade_month = ? AND tier = 'STAR5'", [JUL.first_day]).fetchone()
    assert star5 == (6, 3, 1, 2, 0)  # A J T unchanged, K new, B S upgraded
    lost = con.execute("SELECT lost_from FROM mart.tier_summary WHERE grade_month = ? AND tier = 'STAR1'",
                       [JUL.first_day]).fetchone()
    assert lost == (1,)  # G


def test_rerun_of_a_month_is_idempotent(graded):
    con, _ = graded
    before = con.execute("SELECT * FROM mart.tier_assignment ORDER BY ALL").fetchall()
    changes = con.execute("SELECT * FROM mart.grade_change ORDER BY ALL").fetchall()
    points = con.execute("SELECT * FROM mart.points_balance ORDER BY ALL").fetchall()
    run_monthly(con, JUL, PACK, "rerun", ACCEPT)
    assert con.execute("SELECT * FROM mart.tier_assignment ORDER BY ALL").fetchall() == before
    assert con.execute("SELECT * FROM mart.grade_change ORDER BY ALL").fetchall() == changes
    assert con.execute("SELECT * FROM mart.points_balance ORDER BY ALL").fetchall() == points


def test_monthly_without_bill_fails_clearly(graded):
    con, _ = graded
    with pytest.raises(MonthlyError, match="BILL_202608 not delivered"):
        run_monthly(con, Month(2026, 8), PACK, "test", ACCEPT)


def test_mass_downgrade_is_blocked_by_the_breaker_and_changes_nothing(graded):
    con, _ = graded
    before = con.execute("SELECT * FROM mart.tier_assignment ORDER BY ALL").fetchall()
    # July: DOWNGRADE D + LOST G = 2 of the 11 rated in June = 18% > 5%
    with pytest.raises(GateFailed, match=r"circuit_breaker failed: .*downgrade_lost_share.*2026-07: 0.1818"):
        run_monthly(con, JUL, PACK, "not accepted")
    assert con.execute("SELECT * FROM mart.tier_assignment ORDER BY ALL").fetchall() == before
