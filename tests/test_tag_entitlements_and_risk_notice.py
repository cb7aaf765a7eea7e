"""Entitlement changes from a tag alone (row kind ENTITLEMENTS, mart.entitlement_change) and the opt-in
DOWNGRADE_RISK notice (channel sms_at_risk), on a province of two subscribers over 2026-01..07 (June is the first
graded month), every value worked out by hand from rules.md and channels/README.md:

- N spends 100 yuan every month: sum6 = 60000 fen >= 48000, < 90000 -> STAR3 (AVG6) in June and July. In July's
  snapshot N becomes a group key person (GROUP_KEY): still STAR3, so no grade change, but the six-star table
  gives ACCOUNT_MANAGER ("STAR6, or GROUP_KEY") and PRIORITY_COUNTER ("STAR5 and up, or GROUP_KEY").
- R spends 300, 400, 300, 300, 300, 300, 250 yuan in Jan..Jul. June: sum6 = 30000 + 40000 + 4 x 30000 = 190000
  >= 180000 -> STAR5 (AVG6); what-if sum6(Jul) = 190000 - 30000 (Jan) + 30000 (Jun) = 190000: not at risk.
  July: sum6 = 40000 + 4 x 30000 + 25000 = 185000 -> STAR5 (AVG6); what-if sum6(Aug) = 185000 - 40000 (Feb)
  + 25000 (Jul) = 170000 < 180000 -> DOWNGRADE_RISK; no other tag (CHURN_RISK: 25000 is not below half the
  average of Feb..Jun, 32000 / 2 = 16000). Its entitlements do not depend on DOWNGRADE_RISK: no ENTITLEMENTS row.
"""
from __future__ import annotations

import json
from pathlib import Path

import polars as pl
import pytest

from tests.builders import Province, Sub, deliver, lines
from tests.test_monthly_golden import JUN, PACK
from transforms.core.calendar import Month, month_range
from transforms.core.resources import channels_config, rules_dir
from transforms.deliver.channels import ChannelError, load_channels
from transforms.deliver.outbox import write_outbox
from transforms.deliver.sets import month_sets, told_counts
from transforms.grade.rulepack import load_pack
from transforms.ingest.landing import scan_landing
from transforms.ingest.load import ingest_delivery
from transforms.quality.gates import gate_outputs, outputs_frame
from transforms.runs.monthly import MonthlyOptions, run_monthly
from transforms.warehouse.db import connect

JAN, JUL = Month(2026, 1), Month(2026, 7)
R_SPENDING = {1: 30000, 2: 40000, 3: 30000, 4: 30000, 5: 30000, 6: 30000, 7: 25000}
MSISDN = "13800000000"  # tests.builders.Sub: "138" + the digits of the subs_id (none here), padded to 8
BOSS_N = f"N|{MSISDN}|STAR3|STAR3|ENTITLEMENTS|20260801|+ACCOUNT_MANAGER;+PRIORITY_COUNTER"
AT_RISK_R = {"msisdn": MSISDN, "template": "TIER_AT_RISK",
             "parameters": {"tier": "STAR5", "tier_label": "五星", "line_metric": "sum6_fen", "line": 180000,
                            "grade_month": "202607"}}


def at_risk_opted_in(tmp_path: Path) -> Path:
    """The shipped configuration with its commented sms_at_risk channel turned on."""
    text = channels_config().read_text(encoding="utf-8")
    head, commented = text.split("  # - name: sms_at_risk\n")
    block = "".join(line.replace("  #   ", "    ", 1) + "\n" for line in commented.splitlines())
    path = tmp_path / "channels.yaml"
    path.write_text(head + "  - name: sms_at_risk\n" + block, encoding="utf-8")
    return path


def build(home: Path, group_key_in_july: str = "Y") -> None:
    p = Province()
    p.join(Sub("N"), Sub("R"))
    for month in month_range(JAN, JUL):
        if month == JUL:
            p.change("N", group_key=group_key_in_july)
        p.spend(month, "N", 10000)
        p.spend(month, "R", R_SPENDING[month.month])
        p.close_month(month)
    p.write(home)


def load_all(con, home: Path) -> None:
    for delivery in scan_landing(home).delivered:
        assert ingest_delivery(con, home, delivery, "test").status in ("LOADED", "UNCHANGED")


@pytest.fixture(scope="module")
def graded(tmp_path_factory):
    home = tmp_path_factory.mktemp("tag_risk")
    build(home)
    options = MonthlyOptions(channels=tuple(load_channels(at_risk_opted_in(home))), files_folder=home / "owed",
                             accept_mass_change=True)
    con = connect(home)
    load_all(con, home)
    results = {m: run_monthly(con, m, PACK, "test", options) for m in month_range(JAN, JUL)}
    for result in results.values():
        write_outbox(home, result.files)
    yield home, con, options, results
    con.close()


def test_a_tag_alone_gives_an_entitlements_row_not_a_grade_change(graded):
    _, con, _, results = graded
    assert con.execute("SELECT count(*) FROM mart.grade_change WHERE grade_month = ?", [JUL.first_day]).fetchall() \
        == [(0,)]
    assert con.execute("""SELECT subs_id, from_tier, to_tier, change_type, reason, entitlements_gained,
                                 entitlements_lost FROM mart.entitlement_change""").fetchall() == [
        ("N", "STAR3", "STAR3", "ENTITLEMENTS", "AVG6", ["ACCOUNT_MANAGER", "PRIORITY_COUNTER"], [])]
    assert results[JUL].changes == {"ENTITLEMENTS": 1}
    assert results[JUN].changes == {"NEW": 2}


def test_the_boss_file_carries_it_and_the_channels_without_entitlements_do_not(graded):
    home, _, _, _ = graded
    outbox = home / "outbox"
    assert lines(outbox / "boss" / "202607" / "GRADE_CHG_202607.dat", "gbk") == [BOSS_N]
    assert lines(outbox / "sms" / "202607" / "notices.jsonl") == []
    assert lines(outbox / "crm" / "202607" / "grade_changes.csv") == [
        "subs_id,from_tier,to_tier,change_type,region_code,manager_id,tags"]


def test_gate_3_counts_the_entitlements_row_for_boss_and_checks_it(graded):
    _, con, options, _ = graded
    channels = list(options.channels)
    frame = outputs_frame(con, JUL, PACK, told_counts(con, JUL, channels))
    counts = frame.dropna(subset=["channel_records"]).set_index("label")
    assert counts[["channel_records", "grade_change_records"]].to_dict("index") == {
        "boss": {"channel_records": 1, "grade_change_records": 1},  # N's ENTITLEMENTS row
        "crm": {"channel_records": 0, "grade_change_records": 0}, "sms": {"channel_records": 0,
                                                                         "grade_change_records": 0}}
    assert set(frame["grade_change"].dropna()) == {"CONSISTENT"}
    con.execute("BEGIN")
    try:  # R's tier changed in a second row of its own: the gate names both faults
        con.execute("INSERT INTO mart.grade_change SELECT grade_month, 'R', 'STAR5', 'STAR4', 'DOWNGRADE', 'AVG6', "
                    "[], [], NULL, NULL FROM mart.entitlement_change")
        con.execute("INSERT INTO mart.entitlement_change SELECT grade_month, 'R', 'STAR5', 'STAR5', 'ENTITLEMENTS', "
                    "'AVG6', [], [], NULL, NULL FROM mart.entitlement_change")
        result = gate_outputs(con, JUL, PACK, told_counts(con, JUL, channels))
        faults = set(outputs_frame(con, JUL, PACK)["grade_change"].dropna())
    finally:
        con.execute("ROLLBACK")
    assert not result.success
    assert {"UNEXPECTED_ROW", "ENTITLEMENTS_WITH_A_TIER_CHANGE"} <= faults


def test_the_at_risk_notice_names_the_tier_and_the_line_to_keep(graded):
    home, _, _, _ = graded
    sms = home / "outbox" / "sms"
    assert [json.loads(line) for line in lines(sms / "202607" / "at_risk.jsonl")] == [AT_RISK_R]
    assert lines(sms / "202606" / "at_risk.jsonl") == []  # graded, nobody at risk
    assert not (sms / "202605" / "at_risk.jsonl").exists()  # not graded: no notice


def test_a_corrected_snapshot_reverses_the_entitlements_and_tells_no_one_twice(graded):
    home, con, options, _ = graded
    # July's snapshot re-delivered: N was not a group key person after all.
    corrected = Province()
    corrected.join(Sub("N"), Sub("R"))
    deliver(home, "20260805", "ACCT_20260731.dat", [s.line() for s in corrected.subscribers.values()])
    load_all(con, home)
    result = run_monthly(con, JUL, PACK, "regrade", options)
    write_outbox(home, result.files)
    outbox = home / "outbox"
    # the reversal of the change sent: from/to as sent, swapped; entitlements the opposite of what was sent
    assert lines(outbox / "boss" / "202607" / "GRADE_CHG_202607_02.dat", "gbk") == [
        f"N|{MSISDN}|STAR3|STAR3|REVERSAL|20260801|-ACCOUNT_MANAGER;-PRIORITY_COUNTER"]
    assert lines(outbox / "boss" / "202607" / "GRADE_CHG_202607.dat", "gbk") == [BOSS_N]  # never rewritten
    assert con.execute("SELECT count(*) FROM mart.entitlement_change").fetchall() == [(0,)]
    # R is still at risk with the same tier: no second notice, no correction file for sms or crm
    assert sorted(f.relpath for f in result.files) == ["boss/202607/GRADE_CHG_202607_02.dat"]


def test_the_at_risk_channel_refuses_a_pack_without_the_tag(graded):
    _, con, options, _ = graded
    points_level = load_pack(rules_dir() / "points-level.yaml")
    assert "DOWNGRADE_RISK" not in points_level.tags
    no_expiry = pl.DataFrame(schema={"subs_id": pl.String, "points": pl.Int64})
    with pytest.raises(ChannelError, match=r"sms_at_risk .* DOWNGRADE_RISK, a tag pack points-level"):
        month_sets(con, JUL, points_level, list(options.channels), True, no_expiry, options.files_folder)
