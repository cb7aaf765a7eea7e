"""Manual tier overrides end to end (extracts.md OVERRIDE, rules.md rule 2), with six-star and no Prefect.

The province runs on its real timeline: the monthly run of M happens after BILL_M arrives on the 3rd of M+1,
having ingested only what was delivered by then. Everyone opened 2020-01 (tenure far above 6); spend is RENT.

    P  10000 a month: sum6 60000 -> STAR3 by rules   OV1 STAR6 for 202607..202608
    Q  30000 a month: 180000 -> STAR5, but 3 two-way suspensions in 2026-02..04 -> ARREARS_CAP STAR3
                                                     OV2 STAR5 for 202607..202609
    R  10000 a month: STAR3 by rules                 OV3 STAR6 for 202606..202609, delivered 2026-06-01;
                                                     OV3 again on 2026-08-05: STAR2 for 202608..202609
    N  3000 a month: 18000 -> STAR2 by rules         OV4 STAR6 for 202606..202609; revoked (NONE) 2026-08-05
    U  50000 a month, not real-name registered       OV5 STAR6 for 202606..202609

OVERRIDE_20260805 arrives after June and July were graded and replaces OV3 and OV4, which covered them: like any
other correction it makes June and July stale, and they are regraded (as a backfill would) before August.
"""
from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from tests.builders import Province, Sub, deliver, query
from transforms.core.calendar import Month, month_range
from transforms.ingest.landing import scan_landing
from transforms.ingest.load import ingest_delivery
from transforms.runs.month_state import stale_months
from transforms.runs.monthly import MonthlyOptions, run_monthly
from transforms.grade.rulepack import load_pack
from transforms.warehouse.db import connect
from transforms.core.resources import rules_dir

# A handful of subscribers: a few changes trip the circuit breaker's share, accepted on purpose here.
ACCEPT = MonthlyOptions(accept_mass_change=True)

PACK = load_pack(rules_dir() / "six-star.yaml")
JAN, JUN, JUL, AUG, SEP = Month(2026, 1), Month(2026, 6), Month(2026, 7), Month(2026, 8), Month(2026, 9)


def build(home: Path) -> None:
    p = Province()
    p.join(Sub("P"), Sub("Q"), Sub("R"), Sub("N"), Sub("U", realname="N"))
    for month in month_range(JAN, SEP):
        for subs_id, fen in (("P", 10000), ("Q", 30000), ("R", 10000), ("N", 3000), ("U", 50000)):
            p.spend(month, subs_id, fen)
        p.close_month(month)
    p.write(home)
    deliver(home, "20260401", "SUSP_20260401.dat", ["E1|Q|20260210100000|ARREARS_TWOWAY",
                                                    "E2|Q|20260310100000|ARREARS_TWOWAY",
                                                    "E3|Q|20260331100000|ARREARS_TWOWAY"])
    deliver(home, "20260601", "OVERRIDE_20260601.dat", [
        "OV1|P|STAR6|202607|202608|key account campaign|张经理",
        "OV2|Q|STAR5|202607|202609|arrears disputed|张经理",
        "OV3|R|STAR6|202606|202609|retention|李主任",
        "OV4|N|STAR6|202606|202609|retention|李主任",
        "OV5|U|STAR6|202606|202609|retention|李主任",
    ])
    deliver(home, "20260805", "OVERRIDE_20260805.dat", [
        "OV3|R|STAR2|202608|202609|retention, reduced|王总监",
        "OV4|N|NONE|202606|202609|revoked|王总监",
    ])


def run_timeline(con, home: Path) -> dict[Month, list[tuple]]:
    """Each month graded after its BILL, stale months regraded first as the backfill does; returns each month's
    tiers (subs_id, tier, reason) as its first, timely run gave them."""
    timely = {}
    for month in month_range(JAN, SEP):
        up_to = (month + 1).first_day.replace(day=3)  # BILL_M arrives on the 3rd of M+1
        for d in scan_landing(home, up_to=up_to).delivered:
            assert ingest_delivery(con, home, d, "test").status in ("LOADED", "UNCHANGED")
        for stale in stale_months(con):
            run_monthly(con, stale, PACK, "regrade", ACCEPT)
        run_monthly(con, month, PACK, "test", ACCEPT)
        timely[month] = con.execute("SELECT subs_id, tier, reason FROM mart.tier_assignment WHERE grade_month = ? "
                                    "ORDER BY subs_id", [month.first_day]).fetchall()
    return timely


@pytest.fixture(scope="module")
def timeline(tmp_path_factory) -> tuple[Path, dict]:
    home = tmp_path_factory.mktemp("overrides")
    build(home)
    con = connect(home)
    try:
        timely = run_timeline(con, home)
    finally:
        con.close()
    return home, timely


@pytest.fixture(scope="module")
def home(timeline) -> Path:
    return timeline[0]


def graded(home: Path, subs_id: str) -> dict[str, tuple[str, str]]:
    rows = query(home, "SELECT grade_month, tier, reason FROM mart.tier_assignment WHERE subs_id = ? "
                       "ORDER BY grade_month", [subs_id])
    return {f"{m:%Y-%m}": (t, r) for m, t, r in rows}


def test_an_override_holds_only_from_its_first_to_its_last_month(home):
    assert graded(home, "P") == {
        "2026-06": ("STAR3", "AVG6"),       # before from_month 202607: the rules (sum6 60000)
        "2026-07": ("STAR6", "OVERRIDE"),   # from_month, inclusive
        "2026-08": ("STAR6", "OVERRIDE"),   # to_month, inclusive
        "2026-09": ("STAR3", "AVG6"),       # after to_month: the rules again
    }


def test_an_override_beats_the_arrears_cap(home):
    assert graded(home, "Q") == {
        "2026-06": ("STAR3", "ARREARS_CAP"),  # sum6 180000 is STAR5, capped: susp12 = 3
        "2026-07": ("STAR5", "OVERRIDE"),     # the override is never capped
        "2026-08": ("STAR5", "OVERRIDE"),
        "2026-09": ("STAR5", "OVERRIDE"),     # 2025-10..2026-09 still holds the 3 suspensions
    }
    computed = query(home, "SELECT computed_tier, susp12 FROM mart.tier_assignment "
                           "WHERE subs_id = 'Q' AND grade_month = ?", [SEP.first_day])
    assert computed == [("STAR3", 3)]  # what the rules and the cap alone would give


def timely_of(timely: dict, subs_id: str) -> dict[str, tuple[str, str]]:
    return {str(m): next((tier, reason) for s, tier, reason in rows if s == subs_id) for m, rows in timely.items()
            if m >= JUN}


def test_a_later_delivery_of_the_same_override_id_replaces_the_earlier(timeline):
    home, timely = timeline
    assert timely_of(timely, "R") == {
        "2026-06": ("STAR6", "OVERRIDE"),   # OV3 of 2026-06-01
        "2026-07": ("STAR6", "OVERRIDE"),   # graded 2026-08-03, before the replacement arrived
        "2026-08": ("STAR2", "OVERRIDE"),   # OV3 of 2026-08-05: STAR2 for 202608..202609
        "2026-09": ("STAR2", "OVERRIDE"),
    }
    assert graded(home, "R") == {           # the replacement holds for 202608..202609 only: June and July regraded
        "2026-06": ("STAR3", "AVG6"),
        "2026-07": ("STAR3", "AVG6"),
        "2026-08": ("STAR2", "OVERRIDE"),
        "2026-09": ("STAR2", "OVERRIDE"),
    }


def test_tier_none_revokes_an_override(timeline):
    home, timely = timeline
    assert timely_of(timely, "N")["2026-07"] == ("STAR6", "OVERRIDE")  # before the revocation arrived
    assert graded(home, "N") == {m: ("STAR2", "AVG6") for m in ("2026-06", "2026-07", "2026-08", "2026-09")}


def test_an_ineligible_subscriber_stays_unrated_despite_an_override(home):
    assert graded(home, "U") == {m: ("UNRATED", "INELIGIBLE_REALNAME")
                                 for m in ("2026-06", "2026-07", "2026-08", "2026-09")}


def test_override_changes_reach_grade_change(home):
    rows = query(home, "SELECT grade_month, subs_id, from_tier, to_tier, change_type, reason FROM mart.grade_change "
                       "WHERE grade_month > ? ORDER BY grade_month, subs_id", [JUN.first_day])
    assert [(f"{m:%Y-%m}", *rest) for m, *rest in rows] == [
        ("2026-07", "P", "STAR3", "STAR6", "UPGRADE", "OVERRIDE"),
        ("2026-07", "Q", "STAR3", "STAR5", "UPGRADE", "OVERRIDE"),
        ("2026-08", "R", "STAR3", "STAR2", "DOWNGRADE", "OVERRIDE"),
        ("2026-09", "P", "STAR6", "STAR3", "DOWNGRADE", "AVG6"),
    ]


def test_the_override_behind_a_tier_is_published_with_its_reason_and_approver(home):
    rows = query(home, "SELECT grade_month, subs_id, override_id, override_reason, override_approved_by "
                       "FROM mart.tier_assignment WHERE reason = 'OVERRIDE' AND grade_month = ? ORDER BY subs_id",
                 [AUG.first_day])
    assert rows == [(AUG.first_day, "P", "OV1", "key account campaign", "张经理"),
                    (AUG.first_day, "Q", "OV2", "arrears disputed", "张经理"),
                    (AUG.first_day, "R", "OV3", "retention, reduced", "王总监")]
    assert query(home, "SELECT count(*) FROM mart.tier_assignment WHERE reason <> 'OVERRIDE' "
                       "AND override_id IS NOT NULL") == [(0,)]


def test_raw_override_keeps_every_delivered_record_with_its_approver(home):
    rows = query(home, "SELECT file_name, line_no, override_id, subs_id, tier, from_month, to_month, reason, "
                       "approved_by FROM raw.override ORDER BY file_name, line_no")
    assert [(f, ln, o, s, t, f"{a:%Y%m}", f"{b:%Y%m}", r, by) for f, ln, o, s, t, a, b, r, by in rows] == [
        ("OVERRIDE_20260601.dat", 1, "OV1", "P", "STAR6", "202607", "202608", "key account campaign", "张经理"),
        ("OVERRIDE_20260601.dat", 2, "OV2", "Q", "STAR5", "202607", "202609", "arrears disputed", "张经理"),
        ("OVERRIDE_20260601.dat", 3, "OV3", "R", "STAR6", "202606", "202609", "retention", "李主任"),
        ("OVERRIDE_20260601.dat", 4, "OV4", "N", "STAR6", "202606", "202609", "retention", "李主任"),
        ("OVERRIDE_20260601.dat", 5, "OV5", "U", "STAR6", "202606", "202609", "retention", "李主任"),
        ("OVERRIDE_20260805.dat", 1, "OV3", "R", "STAR2", "202608", "202609", "retention, reduced", "王总监"),
        ("OVERRIDE_20260805.dat", 2, "OV4", "N", "NONE", "202606", "202609", "revoked", "王总监"),
    ]


def test_nothing_is_left_stale_and_a_regrade_changes_nothing(home, tmp_path):
    copy = tmp_path / "copy"
    shutil.copytree(home, copy)
    con = connect(copy)
    try:
        assert stale_months(con) == []
        before = con.execute("SELECT * FROM mart.tier_assignment WHERE grade_month = ? ORDER BY ALL",
                             [JUL.first_day]).fetchall()
        run_monthly(con, JUL, PACK, "regrade", ACCEPT)
        assert con.execute("SELECT * FROM mart.tier_assignment WHERE grade_month = ? ORDER BY ALL",
                           [JUL.first_day]).fetchall() == before
    finally:
        con.close()
