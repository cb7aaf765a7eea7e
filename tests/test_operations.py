"""Operating the pipeline (issue: runs nobody has to watch), through the flows on a hand-made province.

Six-star, everyone opened 2020-01 and spends RENT; BILL_M arrives on the 3rd of M+1, the ACCT snapshot at
each month's end; June 2026 is the first graded month (BILL 2026-01..06), then July:

    A1  10000 a month -> STAR3; July 40000: sum6 50000 + 40000 = 90000 -> STAR4 (UPGRADE)
    B2  10000 a month -> STAR3
    C3  10000 a month -> STAR3; CANCELLED in the July snapshot -> LOST (the nightly of 2026-07-31 told the SMS
        gateway, the July SMS file must not tell it again)
    D4   3000 a month -> STAR2, never changes
    F6  10000 a month -> STAR3; their July snapshot line has 14 fields: quarantined, version carried forward
    G7  10000 a month -> STAR3; an override naming tier STAR9 (not in six-star) is quarantined, July grades
    X.. 100 fillers at 10000 -> STAR3: they keep the breaker, the month-over-month totals and the ACCT
        quarantine share (1 bad line in 106, under 1%) quiet

A corrected BILL_202607 arrives on 2026-08-20, after July was graded: A1 spent 10000 (no change any more: a
REVERSAL of the UPGRADE sent) and B2 130000 (sum6 50000 + 130000 = 180000 -> STAR5, exactly the line).
"""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from flows.cli import main
from flows.pipeline import backfill_flow, nightly_flow
from tests.builders import Province, Sub, deliver, lines, query
from transforms.core.calendar import Month, month_range

pytestmark = pytest.mark.flow
JAN, JUN, JUL = Month(2026, 1), Month(2026, 6), Month(2026, 7)
FILLERS = [f"X{n}" for n in range(10, 110)]


def build(home: Path) -> None:
    p = Province()
    p.join(Sub("A1"), Sub("B2"), Sub("C3"), Sub("D4"), Sub("F6"), Sub("G7"), *(Sub(x) for x in FILLERS))
    for month in month_range(JAN, JUL):
        for s in ("A1", "B2", "C3", "F6", "G7", *FILLERS):
            p.spend(month, s, 40000 if (s, month) == ("A1", JUL) else 10000)
        p.spend(month, "D4", 3000)
        if month == JUL:
            p.change("C3", status="CANCELLED", cancel_date="20260715")
        p.close_month(month)
    p.write(home)
    july = [s.line() for s in p.snapshots[JUL]]
    july = [line.rsplit("|", 1)[0] if line.startswith("F6|") else line for line in july]  # 14 fields
    deliver(home, "20260731", "ACCT_20260731.dat", july)
    deliver(home, "20260710", "OVERRIDE_20260710.dat", ["OV9|G7|STAR9|202607|202607|campaign|张经理"])


def correct_july_bill(home: Path) -> None:
    rows = [f"{s}|202607|RENT|{10000 if s != 'B2' else 130000}"
            for s in ("A1", "B2", "C3", "F6", "G7", *FILLERS)] + ["D4|202607|RENT|3000"]
    deliver(home, "20260820", "BILL_202607.dat", rows)


@pytest.fixture(scope="module")
def province(tmp_path_factory, prefect_harness) -> Path:
    home = tmp_path_factory.mktemp("operations")
    build(home)
    backfill_flow(str(home), "2026-01", "2026-07")
    return home


def status(home: Path, capsys) -> str:
    capsys.readouterr()
    assert main(["status", "--home", str(home)]) == 0
    return capsys.readouterr().out


def test_a_cancellation_reaches_the_sms_gateway_once(province):
    outbox = province / "outbox"
    # the nightly of 2026-07-31: C3 held STAR3 (June's grading) and is cancelled in that day's snapshot
    assert [json.loads(x) for x in lines(outbox / "sms" / "daily" / "20260731" / "lost.jsonl")] == [
        {"msisdn": "13800000003", "template": "TIER_LOST",
         "parameters": {"from_tier": "STAR3", "to_tier": "UNRATED", "effective_date": "20260731"}}]
    # July's SMS file: A1's upgrade only, no second TIER_LOST for C3
    assert [json.loads(x)["template"] for x in lines(outbox / "sms" / "202607" / "notices.jsonl")] == ["TIER_UP"]
    # the counters and CRM have no nightly notice: they learn of the loss in July's files
    assert lines(outbox / "boss" / "202607" / "GRADE_CHG_202607.dat", "gbk") == [
        "A1|13800000001|STAR3|STAR4|UPGRADE|20260801|+HOTLINE_PRIORITY;+INTL_ROAMING_FAST",
        "C3|13800000003|STAR3|UNRATED|LOST|20260801|-DELAYED_SUSPEND;-FREE_SIM_REPLACE;-NIGHT_NO_SUSPEND;"
        "-POINTS_GIFTS;-POINTS_REMINDER"]


def test_an_override_naming_a_tier_not_in_the_pack_is_quarantined_and_the_month_grades(province, capsys):
    assert query(province, "SELECT file_name, line_no, reason, detail FROM ops.quarantine "
                           "WHERE reason = 'UNKNOWN_TIER'") == [
        ("OVERRIDE_20260710.dat", 1, "UNKNOWN_TIER",
         "field 3 tier: 'STAR9' is not a tier of pack six-star in force for 2026-07 "
         "(UNRATED, STAR1, STAR2, STAR3, STAR4, STAR5, STAR6)")]
    assert query(province, "SELECT tier, reason FROM mart.tier_assignment WHERE subs_id = 'G7' "
                           "AND grade_month = ?", [JUL.first_day]) == [("STAR3", "AVG6")]
    assert "quarantine UNKNOWN_TIER: 1 record(s)" in status(province, capsys)


def test_a_quarantined_snapshot_line_keeps_the_previous_version(province, capsys):
    assert query(province, "SELECT reason FROM ops.quarantine WHERE file_name = 'ACCT_20260731.dat'") == [
        ("FIELD_COUNT",)]
    assert query(province, "SELECT carried_forward FROM ops.delivery WHERE file_name = 'ACCT_20260731.dat' "
                           "AND status = 'LOADED'") == [(1,)]
    assert query(province, "SELECT tier FROM mart.tier_assignment WHERE subs_id = 'F6' AND grade_month = ?",
                 [JUL.first_day]) == [("STAR3",)]
    assert query(province, "SELECT count(*) FROM mart.grade_change WHERE subs_id = 'F6' AND grade_month = ?",
                 [JUL.first_day]) == [(0,)]  # never LOST because of a parse error
    assert "carried forward: 1 subscriber version(s)" in status(province, capsys)


def test_a_late_correction_reaches_the_channels_as_a_correction_set(province, capsys):
    outbox = province / "outbox"
    sent = {p: p.read_bytes() for p in outbox.rglob("*") if p.is_file()}
    correct_july_bill(province)
    report = status(province, capsys)
    assert "delivered, not loaded yet: 1 file(s)" in report
    assert ("re-delivery of a file used by 2026-07: makes 2026-07..2026-07 stale; "
            "run `tierflow backfill --start 2026-07 --end 2026-07`") in report
    backfill_flow(str(province), "2026-07", "2026-07")
    assert {p: p.read_bytes() for p in sent} == sent  # every file sent before is byte-identical
    new = sorted(str(p.relative_to(outbox)) for p in outbox.rglob("*") if p.is_file() and p not in sent)
    assert new == ["boss/202607/GRADE_CHG_202607_02.chk", "boss/202607/GRADE_CHG_202607_02.dat",
                   "crm/202607/grade_changes_02.csv", "sms/202607/notices_02.jsonl"]
    # only the difference: A1's upgrade taken back, B2's new upgrade; C3 (still LOST) gets nothing
    assert lines(outbox / "boss" / "202607" / "GRADE_CHG_202607_02.dat", "gbk") == [
        "A1|13800000001|STAR4|STAR3|REVERSAL|20260801|-HOTLINE_PRIORITY;-INTL_ROAMING_FAST",
        "B2|13800000002|STAR3|STAR5|UPGRADE|20260801|+HOTLINE_PRIORITY;+INTL_ROAMING_FAST;+PHONE_MANAGER;"
        "+PRIORITY_COUNTER"]
    assert (outbox / "boss" / "202607" / "GRADE_CHG_202607_02.chk").read_bytes().startswith(
        b"GRADE_CHG_202607_02.dat|2|")
    assert [json.loads(x)["template"] for x in lines(outbox / "sms" / "202607" / "notices_02.jsonl")] == [
        "TIER_CORRECTED", "TIER_UP"]
    assert lines(outbox / "crm" / "202607" / "grade_changes_02.csv")[1:] == [
        "A1,STAR4,STAR3,REVERSAL,4110,,", "B2,STAR3,STAR5,UPGRADE,4110,,"]
    assert "stale: none" in status(province, capsys)
    before = sorted(outbox.rglob("*"))
    backfill_flow(str(province), "2026-07", "2026-07")  # the same inputs again: nothing new is written
    assert sorted(outbox.rglob("*")) == before


def test_a_failing_run_prints_its_cause_first_and_no_traceback(province, cli_env):
    done = subprocess.run([sys.executable, "-m", "flows.cli", "monthly", "--month", "2026-09", "--home",
                           str(province)], env=cli_env, capture_output=True, text=True,
                          cwd=Path(__file__).resolve().parent.parent)
    assert done.returncode == 1
    assert done.stderr.splitlines() == ["tierflow monthly: error: BILL_202609 not delivered",
                                        "  (set TIERFLOW_DEBUG=1 for the traceback)"]
    assert query(province, "SELECT status, message FROM ops.run_ledger WHERE flow = 'monthly' "
                           "AND period = '2026-09'") == [("FAILED", "BILL_202609 not delivered")]


def test_the_nightly_run_that_loads_bill_m_grades_m(tmp_path, prefect_harness):
    home = tmp_path / "home"
    build(home)
    nightly_flow(str(home), "2026-07-31")  # everything up to July's snapshot: June is graded (BILL 06 on 07-03)
    assert query(home, "SELECT strftime(month, '%Y-%m'), graded FROM ops.month_state ORDER BY 1")[-1] == (
        "2026-06", True)
    summary = nightly_flow(str(home), "2026-08-03")  # BILL_202607 arrives: July is graded by the nightly run
    assert summary["graded"] == ["2026-07: graded 106 subscribers (LOST 1, UPGRADE 1)"]
