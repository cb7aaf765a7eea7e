"""`tierflow report` (outputs.md "Reports"): the figures on the page against independent SQL over the published
copy, the CSV lists, byte-identical pages, and clear failures. No browser here: tests/test_report_browser.py
opens the page as a person would.

The province is tests/test_monthly_golden.py's (15 subscribers, 2026-06 and 2026-07 graded, every July change
worked out by hand there), with what a pipeline run adds and the golden build lacks: a few deliveries of July
and June that quarantine or reject, and the run ledger of July's regrading.
"""
from __future__ import annotations

import base64
import csv
import io
import json
import re
import shutil
from pathlib import Path

import duckdb
import pytest

from flows.cli import main
from tests.builders import deliver
from tests.test_monthly_golden import ACCEPT, JUL, JUN, PACK, graded_golden
from transforms.core.calendar import Month
from transforms.ingest.landing import scan_landing
from transforms.ingest.load import ingest_delivery
from transforms.report.monthly_page import write_report
from transforms.runs.ledger import finish_run, start_run
from transforms.runs.monthly import run_monthly
from transforms.runs.publish import publish, published_path
from transforms.warehouse.db import connect

ACCEPT_REASON = "hand-made province: 2 changes of 11 exceed 5%"
CHANGES_BY_HAND = {"NEW": ["K"], "UPGRADE": ["B", "S"], "DOWNGRADE": ["D"], "LOST": ["G"]}  # golden July
LATE_FILES = {  # delivered after the runs: (day, file name, lines, what the load does)
    "rejected": ("20260720", "SUSP_20260720.dat", ["E20|A|20260720100000|ARREARS_ONEWAY"]),
    "bad_line": ("20260721", "SUSP_20260721.dat",
                 [f"E3{i:02d}|A|20260721100000|ARREARS_ONEWAY" for i in range(100)]
                 + ["E399|A|20260721100000|NO_SUCH_TYPE"]),  # 1 of 101 bad: under the 1% that rejects a file
    "june_rejected": ("20260615", "SUSP_20260615.dat", ["E40|A|20260615100000|ARREARS_ONEWAY"]),
}
_BUILT: dict[str, Path] = {}


def golden_report_home(tmp_path_factory) -> Path:
    """The province, graded, with its ledger and late files, published; built once per session (the browser
    tests share it)."""
    if "home" not in _BUILT:
        home = tmp_path_factory.mktemp("report-golden")
        con, _ = graded_golden(home)
        try:
            deliver_late_files(con, home)
            # July's SUSP file changed July's inputs: regraded, as a backfill would (same tiers: one-way
            # suspensions do not count), so July is current again and simulate accepts it
            record_july_runs(con, run_monthly(con, JUL, PACK, "test", ACCEPT))
            publish(con, home)
        finally:
            con.close()
        _BUILT["home"] = home
    return _BUILT["home"]


def record_july_runs(con, result) -> None:
    """The ledger rows flows.pipeline.grade_month writes: an earlier successful run without acceptance, a
    failed one, then the latest successful run, whose checks the report must show."""
    checks = {"graded": result.graded, "tiers": result.tiers, "changes": result.changes, "points": result.points,
              "gates": result.checks}
    for status, extra in (("SUCCESS", {}), ("FAILED", {"failed_gate": result.checks[-1]}),
                          ("SUCCESS", {"accepted_mass_change": ACCEPT_REASON})):
        run_id = start_run(con, "monthly", str(JUL), "six-star", "test")
        finish_run(con, run_id, status, result.line(), checks=(checks if status == "SUCCESS" else {}) | extra)


def deliver_late_files(con, home: Path) -> None:
    for day, name, lines in LATE_FILES.values():
        path = deliver(home, day, name, lines)
        if name in (LATE_FILES["rejected"][1], LATE_FILES["june_rejected"][1]):
            path.write_bytes(path.read_bytes() + b"E99|A|20260720100000|ARREARS_ONEWAY\n")  # not what .chk says
    names = {name for _, name, _ in LATE_FILES.values()}
    statuses = {d.name.file_name: ingest_delivery(con, home, d, "test").status
                for d in scan_landing(home).delivered if d.name.file_name in names}
    assert statuses == {"SUSP_20260720.dat": "REJECTED", "SUSP_20260721.dat": "LOADED",
                        "SUSP_20260615.dat": "REJECTED"}


def with_downgrade_risk(home: Path, folder: Path) -> Path:
    """A home whose published copy is `home`'s with A and J (STAR5, region 4110) and E (STAR3, moved to region
    4111) tagged DOWNGRADE_RISK in July: the golden province has nobody at risk."""
    target = published_path(folder)
    target.parent.mkdir(parents=True)
    shutil.copy(published_path(home), target)
    con = duckdb.connect(str(target))
    try:
        # the published tables are views over Parquet files: this copy holds the tier rows as its own table
        con.execute("CREATE TABLE mart.assigned AS SELECT * FROM mart.tier_assignment")
        con.execute("DROP VIEW mart.tier_assignment")
        con.execute("ALTER TABLE mart.assigned RENAME TO tier_assignment")
        con.execute("""UPDATE mart.tier_assignment SET tags = list_append(tags, 'DOWNGRADE_RISK')
                       WHERE grade_month = ? AND subs_id IN ('A', 'E', 'J')""", [JUL.first_day])
        con.execute("UPDATE mart.tier_assignment SET region_code = '4111' WHERE grade_month = ? AND subs_id = 'E'",
                    [JUL.first_day])
    finally:
        con.close()
    return folder


@pytest.fixture(scope="module")
def home(tmp_path_factory) -> Path:
    return golden_report_home(tmp_path_factory)


@pytest.fixture(scope="module")
def page(home) -> str:
    return write_report(home, JUL).read_text(encoding="utf-8")


@pytest.fixture(scope="module")
def data(page) -> dict:
    return page_data(page)


@pytest.fixture(scope="module")
def published(home):
    con = duckdb.connect(str(published_path(home)), read_only=True)
    yield con
    con.close()


def page_data(page: str) -> dict:
    """The figures the page embeds in its JSON block."""
    match = re.search(r'<script type="application/json" id="report-data">(.*?)</script>', page, re.S)
    return json.loads(match.group(1))


def csv_links(page: str) -> dict[str, str]:
    """download file name -> the CSV text of its data: link (without the byte order mark)."""
    links = re.findall(r'href="data:text/csv;charset=utf-8;base64,([A-Za-z0-9+/=]+)" download="([^"]+)"', page)
    return {name: base64.b64decode(payload).decode("utf-8").removeprefix("\ufeff") for payload, name in links}


# --- the figures against SQL -----------------------------------------------------------------------------------

def test_distribution_per_month_and_tier_is_the_published_tier_assignment(data, published):
    expected = published.execute("""
        SELECT strftime(grade_month, '%Y-%m'), tier, count(*) FROM mart.tier_assignment
        WHERE grade_month <= ? GROUP BY ALL""", [JUL.first_day]).fetchall()
    shown = [(r["month"], r["tier"], r["subscribers"]) for r in data["distribution"]]
    assert sorted(shown) == sorted(expected)
    assert {m for m, _, _ in shown} == {"2026-06", "2026-07"}  # the graded months, none before
    assert sum(n for m, _, n in shown if m == "2026-07") == 14  # S(2026-07): 15 less G, who left


def test_each_change_list_has_the_published_changes(page, data, published):
    lists = csv_links(page)
    for change_type, by_hand in CHANGES_BY_HAND.items():
        rows = published.execute("""
            SELECT subs_id, change_type, from_tier, to_tier, coalesce(region_code, ''), coalesce(manager_id, ''),
                   reason FROM mart.grade_change WHERE grade_month = ? AND change_type = ? ORDER BY subs_id""",
                                 [JUL.first_day, change_type]).fetchall()
        assert [r[0] for r in rows] == by_hand
        assert data["changes"][change_type] == len(rows)
        listed = list(csv.reader(io.StringIO(lists[f"tierflow-2026-07-{change_type.lower()}.csv"])))
        assert listed[0] == ["subs_id", "change_type", "from_tier", "from_label", "to_tier", "to_label",
                             "region_code", "manager_id", "reason"]
        assert [(s, c, f, t, g, m, r) for s, c, f, _, t, _, g, m, r in listed[1:]] == rows
    assert next(csv.reader(io.StringIO(lists["tierflow-2026-07-downgrade.csv"].splitlines()[1]))) == [
        "D", "DOWNGRADE", "STAR6", "六星", "STAR1", "一星", "4110", "", "AVG6"]


def test_a_long_change_list_goes_beside_the_page_and_back_in_when_short(home, tmp_path, monkeypatch, published):
    """Over EMBEDDED_LIST_ROWS a list is a CSV file beside the page, linked by its name (a first graded month at
    10M would embed 8M NEW); the page still shows its first LIST_ROWS rows. Short again, it is embedded and the
    file it left goes."""
    import transforms.report.monthly as figures
    import transforms.report.monthly_page as page_module
    monkeypatch.setattr(page_module, "EMBEDDED_LIST_ROWS", 1)
    monkeypatch.setattr(figures, "LIST_ROWS", 1)
    page = write_report(home, JUL, tmp_path / "long.html").read_text(encoding="utf-8")
    embedded = csv_links(page)
    for change_type, by_hand in CHANGES_BY_HAND.items():
        file = f"tierflow-2026-07-{change_type.lower()}.csv"
        beside = tmp_path / file
        assert beside.exists() == (len(by_hand) > 1) == (file not in embedded), change_type
        text = beside.read_text(encoding="utf-8") if beside.exists() else "\ufeff" + embedded[file]
        assert text.startswith("\ufeff")
        assert [r[0] for r in csv.reader(io.StringIO(text.removeprefix("\ufeff")))][1:] == by_hand
        if beside.exists():
            assert f'href="{file}" download="{file}"' in page
            assert oct(beside.stat().st_mode & 0o777) == "0o640"
        section = page[page.index(f'id="list-{change_type.lower()}"'):]
        section = section[:section.index("</table>")]
        assert [s for s in by_hand if f'<td class="text">{s}</td>' in section] == by_hand[:1]
    monkeypatch.setattr(page_module, "EMBEDDED_LIST_ROWS", 20_000)
    page = write_report(home, JUL, tmp_path / "long.html").read_text(encoding="utf-8")
    assert not list(tmp_path.glob("*.csv")) and len(csv_links(page)) == 1 + len(CHANGES_BY_HAND)


def test_changes_by_region_and_manager_add_up_to_the_lists(data, published):
    expected = published.execute("""SELECT region_code, change_type, count(*) FROM mart.grade_change
                                    WHERE grade_month = ? GROUP BY ALL""", [JUL.first_day]).fetchall()
    assert sorted((r["region_code"], r["change_type"], r["subscribers"]) for r in data["by_region"]) == sorted(expected)
    # the builder's subscribers have no account manager: all of July's five changes count under none
    assert sum(r["subscribers"] for r in data["by_manager"] if r["manager_id"] is None) == 5


def test_points_liability_and_what_expires_next_month(data, published):
    liability, expiring = published.execute("""SELECT sum(balance), sum(expiring_next_month) FROM mart.points_balance
                                               WHERE month = ?""", [JUL.first_day]).fetchone()
    assert data["points"]["liability"] == liability == 900 + 750 + 25 + 160 + 186 + 1500 + 600 + 900  # golden July
    assert data["points"]["expiring_next_month"] == expiring == 0  # nothing is 35 months old yet


def test_migration_matrix_is_every_tier_pair_and_its_off_diagonal_is_the_changes(data, published):
    cells = {(r["from_tier"], r["to_tier"]): r["subscribers"] for r in data["migration"]}
    assert len(cells) == len(data["tiers"]) ** 2
    changes = dict(((f, t), n) for f, t, n in published.execute("""
        SELECT from_tier, to_tier, count(*) FROM mart.grade_change WHERE grade_month = ? GROUP BY ALL""",
                                                                [JUL.first_day]).fetchall())
    assert {k: n for k, n in cells.items() if n and k[0] != k[1]} == changes
    unchanged = dict(((t, t), n) for t, n in published.execute("""
        SELECT j.tier, count(*) FROM mart.tier_assignment j JOIN mart.tier_assignment p
          ON p.subs_id = j.subs_id AND p.tier = j.tier AND p.grade_month = ?
        WHERE j.grade_month = ? AND j.tier <> 'UNRATED' GROUP BY ALL""", [JUN.first_day, JUL.first_day]).fetchall())
    assert {k: n for k, n in cells.items() if n and k[0] == k[1] != "UNRATED"} == unchanged
    # everyone of S(June) or S(July) once; unrated or absent on a side counts as UNRATED there
    assert sum(cells.values()) == published.execute("""
        SELECT count(DISTINCT subs_id) FROM mart.tier_assignment WHERE grade_month IN (?, ?)""",
                                                    [JUN.first_day, JUL.first_day]).fetchone()[0] == 15
    assert cells[("STAR5", "STAR5")] == 3  # A J T (golden: STAR5 of July, 3 unchanged)


def test_downgrade_risk_counts_are_the_tagged_subscribers(data, published):
    expected = published.execute("""SELECT tier, region_code, count(*) FROM mart.tier_assignment
                                    WHERE grade_month = ? AND list_contains(tags, 'DOWNGRADE_RISK') GROUP BY ALL""",
                                 [JUL.first_day]).fetchall()
    assert sorted((r["tier"], r["region_code"], r["subscribers"]) for r in data["downgrade_risk"]) == sorted(expected)


def test_downgrade_risk_by_tier_and_region_when_some_are_at_risk(home, tmp_path):
    page = write_report(with_downgrade_risk(home, tmp_path), JUL).read_text(encoding="utf-8")
    assert [(r["tier"], r["region_code"], r["subscribers"]) for r in page_data(page)["downgrade_risk"]] == [
        ("STAR3", "4111", 1), ("STAR5", "4110", 2)]  # lowest tier first
    assert 'id="chart-risk"' in page


def test_tier_labels_come_from_the_pack(data, page):
    assert data["labels"] == {"UNRATED": "未评级", "STAR1": "一星", "STAR2": "二星", "STAR3": "三星",
                              "STAR4": "四星", "STAR5": "五星", "STAR6": "六星"}
    assert all(label in page for label in ("新增", "升级", "降级", "不符合资格", "六星"))


# --- data quality ----------------------------------------------------------------------------------------------

def test_gates_are_those_of_the_latest_successful_run(data):
    quality = data["quality"]
    assert quality["run_found"]
    assert [(g["gate"], g["success"], g["accepted"]) for g in quality["gates"]] == [
        ("grading_inputs", True, False), ("outputs", True, False), ("circuit_breaker", True, True)]
    breaker = quality["gates"][-1]
    assert breaker["statistics"]["observed"] == {"rated_base": 11, "downgrades": 1, "lost": 1,
                                                 "downgrade_lost_share": 0.1818}  # D and G of the 11 rated in June
    assert quality["accepted_reason"] == ACCEPT_REASON  # the latest run's, not the earlier one without it


def test_quarantine_and_rejected_files_are_those_of_the_month(data):
    quality = data["quality"]
    assert [(q["file_name"], q["day"], q["reason"], q["whole_file"], q["records"]) for q in quality["quarantine"]] == [
        ("REDEEM_20260710.dat", None, "INSUFFICIENT_POINTS", False, 1),  # found by July's run (golden)
        ("SUSP_20260720.dat", "2026-07-20", "SIZE_MISMATCH", True, 1),  # the line appended after its .chk
        ("SUSP_20260721.dat", "2026-07-21", "BAD_ENUM", False, 1)]      # NO_SUCH_TYPE
    assert [(r["file_name"], r["day"]) for r in quality["rejected"]] == [("SUSP_20260720.dat", "2026-07-20")]
    assert quality["rejected"][0]["reason"].startswith("SIZE_MISMATCH: ")  # as ops.delivery says


def test_the_page_shows_each_gate_with_its_figures(page):
    for text in ("grading_inputs", "circuit_breaker", "accepted", "downgrade_lost_share: 0.1818", ACCEPT_REASON,
                 "SUSP_20260720.dat", "INSUFFICIENT_POINTS"):
        assert text in page
    assert "SUSP_20260615.dat" not in page  # June's rejected file belongs to June's report


# --- the page as a file ----------------------------------------------------------------------------------------

def test_report_command_writes_the_default_path(home, capsys):
    assert main(["report", "--home", str(home), "--month", "2026-07"]) == 0
    path = home / "reports" / "202607.html"
    assert capsys.readouterr().out.startswith(f"wrote {path} (")
    assert oct(path.stat().st_mode & 0o777) == "0o640"


def test_the_page_is_byte_identical_for_the_same_published_data(home, tmp_path):
    first = write_report(home, JUL, tmp_path / "one.html").read_bytes()
    con = connect(home)  # publish again: a new file, the same data
    try:
        publish(con, home)
    finally:
        con.close()
    assert write_report(home, JUL, tmp_path / "two.html").read_bytes() == first


def test_the_page_is_self_contained_and_holds_no_personal_data_nor_run_ids(page, published):
    assert page.count("plotly.js v") == 1  # the bundle inlined once
    assert "<link" not in page and not re.search(r"<(script|img|iframe)[^>]*\ssrc=", page)
    run_ids = [r[0] for r in published.execute("SELECT run_id FROM ops.run_ledger").fetchall()]
    assert run_ids and not any(run_id in page for run_id in run_ids)
    ours = page[page.index("</head>"):]  # what tierflow wrote, after the plotly bundle
    assert not re.search(r"\d{2}:\d{2}:\d{2}", ours)  # no timestamp
    for personal in ("王伟", "41010219800101", "13800000"):  # builders.Sub: name, cert_no, msisdn
        assert personal not in page


@pytest.mark.parametrize(("month", "why"), [
    (Month(2026, 5), "2026-05 has not been graded (was processed without tiers"),
    (Month(2026, 8), "2026-08 has not been graded (was never processed)"),
])
def test_a_month_without_tiers_fails_clearly(home, capsys, month, why):
    assert main(["report", "--home", str(home), "--month", str(month)]) == 1
    err = capsys.readouterr().err
    assert err.startswith("tierflow report: error: ") and why in err


def test_without_a_published_copy_the_command_says_what_to_run(tmp_path, capsys):
    assert main(["report", "--home", str(tmp_path), "--month", "2026-07"]) == 1
    assert "no published copy" in capsys.readouterr().err
