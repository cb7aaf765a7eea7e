"""A pack change effective mid-history: each month is graded (and regraded) with the version in force then."""
from __future__ import annotations

import shutil

import pytest

from tests.test_monthly_golden import JAN, JUL, JUN, build
from transforms.core.calendar import month_range
from transforms.ingest.landing import scan_landing
from transforms.ingest.load import ingest_delivery
from transforms.runs.monthly import MonthlyError, MonthlyOptions, run_monthly
from transforms.grade.packs import pack_in_force
from transforms.warehouse.db import connect
from transforms.core.resources import rules_dir

RULES = rules_dir()


@pytest.fixture(scope="module")
def graded(tmp_path_factory):
    rules = tmp_path_factory.mktemp("rules")
    shutil.copy(RULES / "six-star.yaml", rules / "six-star.yaml")
    text = (RULES / "six-star.yaml").read_text(encoding="utf-8")
    # From 2026-07 the STAR5 line rises from 300 to 350 yuan a month (6 x 350 x 100 = 210000 fen).
    changed = text.replace("sum6_fen >= 180000", "sum6_fen >= 210000")
    assert changed != text
    (rules / "six-star@2026-07.yaml").write_text("effective_from: 2026-07\n" + changed, encoding="utf-8")
    home = tmp_path_factory.mktemp("versions")
    build(home)
    con = connect(home)
    for d in scan_landing(home).delivered:
        ingest_delivery(con, home, d, "test")

    def grade(month, run_id="test"):
        options = MonthlyOptions(accept_mass_change=True,
                                 previous_pack=pack_in_force(rules, "six-star", month - 1))
        return run_monthly(con, month, pack_in_force(rules, "six-star", month), run_id, options)

    for m in month_range(JAN, JUL):
        grade(m)
    yield con, rules, grade
    con.close()


def tier_of(con, month, subs_id):
    return con.execute("SELECT tier, reason, rules_version FROM mart.tier_assignment WHERE grade_month = ? "
                       "AND subs_id = ?", [month.first_day, subs_id]).fetchall()[0]


def test_each_month_uses_the_version_in_force(graded):
    con, rules, _ = graded
    v1, v2 = (pack_in_force(rules, "six-star", m).version for m in (JUN, JUL))
    assert v1 != v2
    assert tier_of(con, JUN, "A") == ("STAR5", "AVG6", v1)   # 180000 >= 180000 under the old line
    assert tier_of(con, JUL, "A") == ("STAR4", "AVG6", v2)   # 180000 < 210000, >= 90000
    assert tier_of(con, JUL, "J") == ("STAR5", "AVG6", v2)   # 300000 >= 210000


def test_regrading_june_after_the_change_uses_the_old_version(graded):
    con, rules, grade = graded
    before = con.execute("SELECT * FROM mart.tier_assignment WHERE grade_month = ? ORDER BY ALL",
                         [JUN.first_day]).fetchall()
    grade(JUN, "regrade")
    assert con.execute("SELECT * FROM mart.tier_assignment WHERE grade_month = ? ORDER BY ALL",
                       [JUN.first_day]).fetchall() == before


def test_m_minus_1_graded_with_another_version_than_in_force_is_refused(graded):
    con, rules, _ = graded
    v2 = pack_in_force(rules, "six-star", JUL)
    with pytest.raises(MonthlyError, match="2026-06 is stale"):
        run_monthly(con, JUL, v2, "x", MonthlyOptions(accept_mass_change=True, previous_pack=v2))
