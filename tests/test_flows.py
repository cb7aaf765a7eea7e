"""Flows and CLI end to end on a small generated province (one Prefect test harness for the session)."""
from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pytest

from flows.cli import main
from flows.pipeline import backfill_flow
from tests.builders import deliver
from transforms.core.calendar import Month
from transforms.synth.generate import generate_province
from transforms.ingest.layouts import parse_extract_name
from transforms.warehouse.db import connect

pytestmark = pytest.mark.flow
MART_TABLES = ["subscriber_month", "points_balance", "tier_assignment", "tier_current", "tier_history",
               "grade_change", "tier_summary"]


def table_digest(home: Path) -> dict[str, str]:
    con = connect(home, read_only=True)
    try:
        return {t: hashlib.sha256(repr(con.execute(f"SELECT * FROM mart.{t} ORDER BY ALL").fetchall()).encode())
                .hexdigest() for t in MART_TABLES}
    finally:
        con.close()


@pytest.fixture(scope="module")
def province(tmp_path_factory, prefect_harness):
    home = tmp_path_factory.mktemp("province")
    generate_province(home, subscribers=400, start=Month(2025, 1), months=8, seed=7)
    lines = backfill_flow(str(home), "2025-01", "2025-08")
    return home, lines


def test_backfill_grades_every_month_with_a_complete_window(province):
    home, lines = province
    con = connect(home, read_only=True)
    try:
        states = con.execute("SELECT strftime(month, '%Y-%m'), graded FROM ops.month_state ORDER BY 1").fetchall()
        assert states == [(f"2025-0{m}", m >= 6) for m in range(1, 9)]
        # exactly one tier per subscriber of S(M), for every graded month
        for month, snapshot_count in con.execute("""
                SELECT a.grade_month, count(*) FROM mart.tier_assignment a GROUP BY ALL ORDER BY 1""").fetchall():
            s_m = con.execute("SELECT subscribers FROM ops.snapshot WHERE snapshot_date = "
                              "last_day(CAST(? AS DATE))", [month]).fetchone()[0]
            assert snapshot_count == s_m
        assert con.execute("SELECT count(DISTINCT change_type) FROM mart.grade_change "
                           "WHERE grade_month = '2025-06-01'").fetchone() == (1,)   # first graded: all NEW
        assert con.execute("SELECT count(*) FROM ops.run_ledger WHERE status <> 'SUCCESS'").fetchone() == (0,)
    finally:
        con.close()


def test_each_delivery_in_the_ledger_times_its_files_publication_and_reports(province):
    """Where a delivery's time goes (bench/ reads it): a deliver row of ops.run_ledger times its channel files,
    its publication and its reports, within its total; the backfill's last one published and wrote reports."""
    home, _ = province
    con = connect(home, read_only=True)
    try:
        rows = [json.loads(t) for (t,) in con.execute(
            "SELECT timings FROM ops.run_ledger WHERE flow = 'deliver' ORDER BY started_at").fetchall()]
    finally:
        con.close()
    assert rows and all({"files", "reports"} <= set(r["steps"]) for r in rows)
    assert all(sum(r["steps"].values()) <= r["seconds"] + 0.005 for r in rows)
    published = [r for r in rows if "publish" in r["steps"]]
    assert published and published[-1]["steps"]["reports"] > 0


def test_each_ingest_in_the_ledger_times_the_kinds_of_file_it_read(province):
    """An ingest row of ops.run_ledger times its deliveries by kind (a step per kind of the files it loaded),
    the reconciliation and the snapshots' notices, within its total."""
    home, _ = province
    con = connect(home, read_only=True)
    try:
        rows = [(json.loads(t), json.loads(f)) for t, f in con.execute(
            "SELECT timings, input_files FROM ops.run_ledger WHERE flow = 'ingest' ORDER BY started_at").fetchall()]
    finally:
        con.close()
    loaded = [(timings, {parse_extract_name(f["file"]).kind.lower() for f in files}) for timings, files in rows
              if files]
    assert loaded and any({"acct", "bill"} <= kinds for _, kinds in loaded)
    assert all(kinds | {"reconcile", "notices"} <= set(timings["steps"]) for timings, kinds in loaded)
    assert all(sum(t["steps"].values()) <= t["seconds"] + 0.005 for t, _ in rows)


def test_second_backfill_changes_nothing(province):
    home, _ = province
    before = table_digest(home)
    lines = backfill_flow(str(home), "2025-01", "2025-08")
    assert all(line.endswith("up to date") for line in lines)
    assert table_digest(home) == before


def test_status_names_graded_months(province, capsys):
    home, _ = province
    assert main(["status", "--home", str(home)]) == 0
    out = capsys.readouterr().out
    assert "graded: 2025-06 .. 2025-08 (3 month(s)" in out
    assert "stale: none" in out


def test_monthly_for_an_undelivered_month_fails_with_a_one_line_cause(province, capsys):
    home, _ = province
    assert main(["monthly", "--month", "2025-09", "--home", str(home)]) == 1
    err = capsys.readouterr().err
    assert err.splitlines()[0] == "tierflow monthly: error: BILL_202509 not delivered"


def test_redelivered_bill_marks_months_stale_until_the_backfill_named(province, capsys):
    home, _ = province
    first = sorted((home / "landing").glob("*/BILL_202507.dat"))[0]
    lines = first.read_bytes().decode("gbk").splitlines()
    lines[0] = lines[0].rsplit("|", 1)[0] + "|999999"   # a corrected amount
    deliver(home, "20250920", "BILL_202507.dat", lines)
    assert main(["nightly", "--day", "2025-09-20", "--home", str(home)]) == 0
    capsys.readouterr()
    main(["status", "--home", str(home)])
    assert "STALE: 2025-07, 2025-08 - run `tierflow backfill --start 2025-07 --end 2025-08`" in capsys.readouterr().out
    backfill_flow(str(home), "2025-07", "2025-08")
    main(["status", "--home", str(home)])
    assert "stale: none" in capsys.readouterr().out
