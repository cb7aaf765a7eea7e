"""The four quality gates (quality.md) on the hand-made golden province of test_monthly_golden.py.

Each failure case alters the graded warehouse inside a transaction that is rolled back afterwards, so all tests
share one build. Expected counts are worked out by hand from the scenario (see test_monthly_golden.py):
S(2026-07) holds 14 subscribers (A-L, R, S, T, K without G), 11 of them rated; June rated 11 (A B C D E F G J
R S T); July's grade_change rows are B, S (UPGRADE), D (DOWNGRADE), G (LOST), K (NEW).
"""
from __future__ import annotations

import json
import subprocess
import sys
import time
from contextlib import contextmanager
from dataclasses import replace
from pathlib import Path

import pandas as pd
import pytest

from flows import cli, pipeline
from tests.test_monthly_golden import JAN, JUL, JUN, PACK, graded_golden
from transforms.ingest import layouts
from transforms.quality import suites
from transforms.warehouse.marts import write_subscriber_month
from transforms.quality.gates import (GateFailed, gate_breaker, gate_grading_inputs, gate_outputs, gate_raw_file,
                                      grading_inputs_frame, outputs_frame, raw_file_frame)
from transforms.quality.suites import load_suite, run_suite
from transforms.warehouse.db import connect

WINDOW = 6  # six-star's grading window
CHANNELS = {"boss": 5, "crm": 5, "sms": (2, ["UPGRADE"])}   # July: 5 changes, 2 of them upgrades (B, S)


@pytest.fixture(scope="module")
def con(tmp_path_factory):
    home = tmp_path_factory.mktemp("quality")
    con, _ = graded_golden(home)
    yield con
    con.close()


@contextmanager
def altered(con, *statements: str):
    """The warehouse with some damage done, undone afterwards."""
    con.execute("BEGIN TRANSACTION")
    try:
        for sql in statements:
            con.execute(sql)
        yield
    finally:
        con.execute("ROLLBACK")


def failed_lines(result) -> list[str]:
    assert not result.success
    return [f.line() for f in result.failures]


# --- gate 1: raw files -----------------------------------------------------------------------------------------

@pytest.mark.parametrize("file_name", ["BILL_202607.dat", "ACCT_20260731.dat", "SUSP_20260305.dat",
                                       "REDEEM_20260710.dat"])
def test_raw_file_gate_passes_on_loaded_files(con, file_name):
    result = gate_raw_file(con, file_name)
    assert result.success, result.message()


def test_raw_file_gate_catches_broken_control_totals_counts_enums_and_dates(con, tmp_path):
    bill = "file_name = 'BILL_202607.dat'"
    with altered(con,
                 f"UPDATE ops.delivery SET quarantined = 1, md5 = NULL WHERE {bill}",
                 f"UPDATE raw.bill SET item_code = 'BONUS' WHERE {bill} AND subs_id = 'A'",
                 f"UPDATE raw.bill SET bill_month = '2026-06-01' WHERE {bill} AND subs_id = 'B'",
                 f"DELETE FROM raw.bill WHERE {bill} AND subs_id = 'C'"):
        result = gate_raw_file(con, "BILL_202607.dat", tmp_path)
    assert failed_lines(result) == [
        "expect_column_values_to_match_regex(md5): 1 of 1 unexpected, e.g. ['BILL_202607.dat: ']",
        # 11 records, 11 loaded + 1 quarantined
        "expect_column_pair_values_to_be_equal(loaded_plus_quarantined, record_count): 1 of 1 unexpected, "
        "e.g. ['BILL_202607.dat: (12, 11)']",
        # 11 loaded, C's row gone
        "expect_column_pair_values_to_be_equal(raw_rows, held_rows): 1 of 1 unexpected, "
        "e.g. ['BILL_202607.dat: (10, 11)']",
        "expect_column_values_to_be_between(bill_month_min): 1 of 1 unexpected, e.g. ['BILL_202607.dat: 20260601']",
        # distinct item codes left: BONUS, RENT
        "expect_column_values_to_be_in_set(item_code): 1 of 2 unexpected, e.g. ['BONUS']",
    ]
    assert (tmp_path / "raw_file_BILL_202607.json").is_file()


def test_raw_file_gate_catches_duplicate_keys_and_future_dates(con):
    with altered(con, "UPDATE raw.susp SET event_id = 'E3' WHERE event_id = 'E4'"):
        assert failed_lines(gate_raw_file(con, "SUSP_20251010.dat")) == [
            "expect_column_pair_values_to_be_equal(distinct_keys, raw_rows): 1 of 1 unexpected, "
            "e.g. ['SUSP_20251010.dat: (1, 2)']"]  # E3 twice: 1 distinct key in 2 rows
    with altered(con, "UPDATE raw.subscriber_history SET open_date = '2026-08-15' "
                      "WHERE subs_id = 'A' AND valid_to IS NULL"):
        assert failed_lines(gate_raw_file(con, "ACCT_20260731.dat")) == [
            "expect_column_values_to_be_between(open_date_max): 1 of 1 unexpected, "
            "e.g. ['ACCT_20260731.dat: 20260815']"]


def test_raw_file_enum_sets_are_the_extract_layouts(con):
    _, params = raw_file_frame(con, "ACCT_20260731.dat")
    assert {k: params[k] for k in ("brands", "subs_types", "statuses", "bill_items", "susp_types")} == {
        "brands": list(layouts.BRANDS), "subs_types": list(layouts.SUBS_TYPES), "statuses": list(layouts.STATUSES),
        "bill_items": list(layouts.BILL_ITEMS), "susp_types": list(layouts.SUSP_TYPES)}


# --- gate 2: grading inputs ------------------------------------------------------------------------------------

@pytest.mark.parametrize("month", [JAN, JUN, JUL])
def test_grading_inputs_pass_including_the_first_month_of_history(con, month):
    # January has no December aggregates: its ratio checks are skipped, not failed against 0.
    result = gate_grading_inputs(con, month, WINDOW)
    assert result.success, result.message()


def test_a_bill_holding_half_the_province_fails(con):
    # July's BILL without A B C E F H: S T (2 x 30000) + I J K (3 x 50000) = 210000 fen from 5 subscribers,
    # against June's 335000 fen from 12: 210000 / 335000 = 0.6269 and 5 / 12 = 0.4167, both under 0.8.
    with altered(con, "DELETE FROM raw.bill WHERE file_name = 'BILL_202607.dat' "
                      "AND subs_id IN ('A', 'B', 'C', 'E', 'F', 'H')"):
        write_subscriber_month(con, JUL, True)
        result = gate_grading_inputs(con, JUL, WINDOW)
    assert failed_lines(result) == [
        "expect_column_values_to_be_between(consumption_ratio): 1 of 1 unexpected, e.g. ['2026-07: 0.6269']",
        "expect_column_values_to_be_between(billed_subscribers_ratio): 1 of 1 unexpected, e.g. ['2026-07: 0.4167']",
    ]


def test_a_missing_or_rejected_bill_in_the_window_fails(con):
    with altered(con, "DELETE FROM ops.delivery WHERE file_name = 'BILL_202603.dat'"):
        assert failed_lines(gate_grading_inputs(con, JUL, WINDOW)) == [
            "expect_column_values_to_be_in_set(bill_status): 1 of 6 unexpected, e.g. ['2026-03: MISSING']"]
    with altered(con, "UPDATE ops.delivery SET status = 'REJECTED' WHERE file_name = 'BILL_202604.dat'"):
        assert failed_lines(gate_grading_inputs(con, JUL, WINDOW)) == [
            "expect_column_values_to_be_in_set(bill_status): 1 of 6 unexpected, e.g. ['2026-04: REJECTED']"]


def test_duplicated_subscriber_month_row_and_stale_snapshot_fail(con):
    # A's July row twice: 12 rows for 11 subscribers.
    with altered(con, "INSERT INTO mart.subscriber_month SELECT * FROM mart.subscriber_month "
                      "WHERE month = '2026-07-01' AND subs_id = 'A'"):
        assert failed_lines(gate_grading_inputs(con, JUL, WINDOW)) == [
            "expect_column_pair_values_to_be_equal(distinct_subscribers, subscriber_rows): 1 of 1 unexpected, "
            "e.g. ['2026-07: (11, 12)']"]
    # Without the 2026-07-31 snapshot, S(2026-07) is the June one.
    with altered(con, "DELETE FROM ops.snapshot WHERE snapshot_date = '2026-07-31'"):
        assert failed_lines(gate_grading_inputs(con, JUL, WINDOW)) == [
            "expect_column_pair_values_to_be_equal(snapshot_month, month): 1 of 6 unexpected, "
            "e.g. [\"2026-07: ('2026-06', '2026-07')\"]"]


def test_the_window_is_the_callers(con):
    # BILL_202603 missing: outside a 3-month window (May..July), inside six-star's 6 months (failed above).
    assert list(grading_inputs_frame(con, JUL, 3)["month"]) == ["2026-05", "2026-06", "2026-07"]
    with altered(con, "DELETE FROM ops.delivery WHERE file_name = 'BILL_202603.dat'"):
        assert gate_grading_inputs(con, JUL, 3).success
    with pytest.raises(ValueError, match="grading window"):
        gate_grading_inputs(con, JUL, 0)


# --- gate 3: outputs -------------------------------------------------------------------------------------------

def test_outputs_pass_for_both_graded_months(con, tmp_path):
    assert gate_outputs(con, JUN, PACK, {"boss": 11}).success  # June: 11 NEW
    result = gate_outputs(con, JUL, PACK, CHANNELS, tmp_path)
    assert result.success, result.message()
    assert result.message() == "gate outputs passed (5 expectations)"


def test_a_tier_outside_the_pack_fails_with_subscriber_counts(con):
    with altered(con, "UPDATE mart.tier_assignment SET tier = 'STAR9' WHERE grade_month = '2026-07-01' "
                      "AND subs_id = 'A'"):
        lines = failed_lines(gate_outputs(con, JUL, PACK))
    assert "expect_column_values_to_be_in_set(tier): 1 of 14 unexpected, e.g. ['STAR9']" in lines
    # A's STAR5 -> STAR9 now has no grade_change row: 5 stored + 1 expected-only
    assert "expect_column_values_to_be_in_set(grade_change): 1 of 6 unexpected, e.g. ['MISSING_ROW']" in lines


def test_unrated_without_an_ineligibility_reason_fails(con):
    with altered(con, "UPDATE mart.tier_assignment SET tier = 'UNRATED' WHERE grade_month = '2026-07-01' "
                      "AND subs_id = 'E'"):
        lines = failed_lines(gate_outputs(con, JUL, PACK))
    assert ("expect_column_values_to_be_in_set(unrated_rule): 1 of 14 unexpected, "
            "e.g. ['UNRATED with reason AVG6']") in lines


def test_the_unrated_rule_follows_the_packs_eligibility_reasons(con):
    cancelled_only = replace(PACK, eligibility=tuple(e for e in PACK.eligibility
                                                     if e.reason == "INELIGIBLE_CANCELLED"))
    assert failed_lines(gate_outputs(con, JUL, cancelled_only)) == [
        "expect_column_values_to_be_in_set(unrated_rule): 2 of 14 unexpected, "
        "e.g. ['UNRATED with reason INELIGIBLE_REALNAME', 'UNRATED with reason INELIGIBLE_TYPE']"]
    # No naming convention: reasons without the INELIGIBLE_ prefix do as well when the pack gives them.
    unprefixed = replace(PACK, eligibility=tuple(replace(e, reason=e.reason.removeprefix("INELIGIBLE_"))
                                                 for e in PACK.eligibility))
    with altered(con, "UPDATE mart.tier_assignment SET reason = replace(reason, 'INELIGIBLE_', '') "
                      "WHERE grade_month = '2026-07-01'"):
        result = gate_outputs(con, JUL, unprefixed)
    assert result.success, result.message()


def test_missing_duplicated_and_foreign_tier_rows_fail(con):
    with altered(con,
                 "INSERT INTO mart.tier_assignment SELECT * FROM mart.tier_assignment "
                 "WHERE grade_month = '2026-07-01' AND subs_id = 'A'",
                 "DELETE FROM mart.tier_assignment WHERE grade_month = '2026-07-01' AND subs_id = 'C'",
                 "INSERT INTO mart.tier_assignment SELECT grade_month, 'ZZ', tier, reason, computed_tier, protected, "
                 "sum6_fen, tenure_months, prior_year_points, susp12, tags, rules_version, region_code, NULL, NULL, NULL "
                 "FROM mart.tier_assignment WHERE grade_month = '2026-07-01' AND subs_id = 'R'"):
        lines = failed_lines(gate_outputs(con, JUL, PACK))
    # 14 subscribers of S(M) + ZZ: 12 with one row, A twice, C none, ZZ not in S(M)
    assert lines[0] == ("expect_column_values_to_be_in_set(assignment): 3 of 15 unexpected, "
                        "e.g. ['DUPLICATED', 'MISSING', 'NOT_IN_SNAPSHOT']")


def test_grade_change_rows_deleted_altered_or_invented_fail(con):
    with altered(con, "DELETE FROM mart.grade_change WHERE grade_month = '2026-07-01' AND subs_id = 'D'"):
        assert failed_lines(gate_outputs(con, JUL, PACK)) == [
            "expect_column_values_to_be_in_set(grade_change): 1 of 5 unexpected, e.g. ['MISSING_ROW']"]
    with altered(con,
                 "UPDATE mart.grade_change SET to_tier = 'STAR2' WHERE grade_month = '2026-07-01' AND subs_id = 'D'",
                 "INSERT INTO mart.grade_change "
                 "VALUES ('2026-07-01', 'A', 'STAR5', 'STAR5', 'UPGRADE', 'AVG6', [], [], '4110', NULL)"):
        assert failed_lines(gate_outputs(con, JUL, PACK)) == [
            "expect_column_values_to_be_in_set(grade_change): 2 of 6 unexpected, "
            "e.g. ['UNEXPECTED_ROW', 'WRONG_TO_TIER']"]


def test_channel_counts_that_differ_from_grade_change_fail(con):
    result = gate_outputs(con, JUL, PACK, {"boss": 4, "crm": 5, "sms": (1, ["UPGRADE"])})
    assert failed_lines(result) == [
        "expect_column_pair_values_to_be_equal(channel_records, grade_change_records): 2 of 3 unexpected, "
        "e.g. ['boss: (4, 5)', 'sms: (1, 2)']"]
    with pytest.raises(GateFailed, match="boss: \\(4, 5\\)") as raised:
        result.raise_if_failed()
    assert raised.value.result is result
    with pytest.raises(ValueError, match="change types"):
        gate_outputs(con, JUL, PACK, {"sms": (2, ["PROMOTED"])})


# --- gate 4: circuit breaker -----------------------------------------------------------------------------------

def test_breaker_passes_the_first_graded_month(con):
    result = gate_breaker(con, JUN, PACK, accepted=False)
    assert result.success and not result.accepted
    assert result.statistics["observed"]["rated_base"] == 0  # May has no tiers: nothing to compare with


def test_mass_downgrade_is_blocked_unless_accepted(con, tmp_path):
    # D downgraded + G lost = 2 of June's 11 rated = 0.1818 > 0.05
    result = gate_breaker(con, JUL, PACK, accepted=False, results_dir=tmp_path)
    assert result.message() == ("gate circuit_breaker failed: expect_column_values_to_be_between("
                                "downgrade_lost_share): 1 of 1 unexpected, e.g. ['2026-07: 0.1818']")
    assert result.statistics["observed"] == {"rated_base": 11, "downgrades": 1, "lost": 1,
                                             "downgrade_lost_share": 0.1818}
    accepted = gate_breaker(con, JUL, PACK, accepted=True)
    assert accepted.success and accepted.accepted and accepted.failures
    assert accepted.message().startswith("gate circuit_breaker accepted by the operator despite: ")
    accepted.raise_if_failed()


@pytest.mark.parametrize("extra_rated, passes", [(29, True), (28, False)])
def test_breaker_share_boundary(con, extra_rated, passes):
    # 2 changes over 11 + 29 = 40 rated is exactly 5% (passes: only above fails); over 39 it is 5.13%.
    with altered(con, f"""INSERT INTO mart.tier_assignment
                          SELECT '2026-06-01', 'X' || i, 'STAR1', 'AVG6', 'STAR1', false, 0, 80, 0, 0, [], 'v', '4110',
                                 NULL, NULL, NULL
                          FROM range({extra_rated}) t(i)"""):
        result = gate_breaker(con, JUL, PACK, accepted=False)
    assert result.success is passes, result.message()


# --- run_suite -------------------------------------------------------------------------------------------------

def test_run_suite_substitutes_placeholders_and_writes_the_results(con, tmp_path):
    frame = outputs_frame(con, JUL, PACK, CHANNELS)
    short_pack = ["UNRATED", "STAR1"]
    result = run_suite("outputs", frame, {"tiers": short_pack}, tmp_path)
    # with a two-tier pack: STAR2 1 + STAR3 1 + STAR4 1 + STAR5 6 = 9 of the 14 July tiers are outside it
    assert result.failures[0].line() == ("expect_column_values_to_be_in_set(tier): 9 of 14 unexpected, "
                                         "e.g. ['STAR2', 'STAR3', 'STAR4', 'STAR5']")
    assert result.results_path == tmp_path / "outputs.json"
    saved = json.loads(result.results_path.read_text(encoding="utf-8"))
    tier_check = [r for r in saved["results"] if r["expectation_config"]["kwargs"].get("column") == "tier"][0]
    assert tier_check["expectation_config"]["kwargs"]["value_set"] == short_pack
    assert tier_check["result"]["unexpected_count"] == 4  # frame rows (tier groups), not subscribers
    assert saved["tierflow_params"] == {"tiers": short_pack}
    # rerun: the same file byte for byte
    first = result.results_path.read_bytes()
    run_suite("outputs", frame, {"tiers": short_pack}, tmp_path)
    assert result.results_path.read_bytes() == first
    # the suite kept in the process keeps its parameter: the whole pack passes again
    assert run_suite("outputs", frame, {"tiers": list(PACK.tiers)}).success


def test_run_suite_refuses_missing_parameters_and_bad_suite_names(tmp_path):
    empty = connect(tmp_path)
    with pytest.raises(ValueError, match=r"suite outputs needs parameter 'tiers' \(given: \['other'\]\)"):
        run_suite("outputs", pd.DataFrame(), {"other": 1})
    with pytest.raises(ValueError, match="invalid suite name"):
        run_suite("../outputs", pd.DataFrame(), {})
    with pytest.raises(ValueError, match="never been delivered"):
        gate_raw_file(empty, "BILL_209901.dat")


@pytest.fixture
def probe_suite(tmp_path, monkeypatch):
    """Writes expectations/probe.json (in a folder of its own) holding one expectation of column c."""
    monkeypatch.setattr(suites, "expectations_dir", lambda: tmp_path)

    def write(type_: str, **kwargs):
        expectation = {"type": type_, "kwargs": {"column": "c", **kwargs}}
        (tmp_path / "probe.json").write_text(json.dumps({"name": "probe", "meta": {}, "expectations": [expectation]}))
    return write


@pytest.mark.parametrize("value_set", [{"$param": "codes"}, [{"$PARAMETER": "codes"}], {"$PARAMETER": 1}])
def test_a_kwarg_dict_that_ge_would_not_substitute_is_refused(probe_suite, value_set):
    # GE compares values with such a dict as it is: the check would fail without saying why.
    probe_suite("expect_column_values_to_be_in_set", value_set=value_set)
    with pytest.raises(ValueError, match=r"suite probe, expectation 1 \(expect_column_values_to_be_in_set\), "
                                         r"value_set: .* is not a value"):
        run_suite("probe", pd.DataFrame({"c": ["a"]}), {"codes": ["a"]})


def test_an_expectation_ge_cannot_build_is_an_error_not_dropped(probe_suite):
    probe_suite("expect_column_values_to_be_purple")
    with pytest.raises(ValueError, match=r"suite probe, expectation 1 \(expect_column_values_to_be_purple\) "
                                         r"is invalid"):
        run_suite("probe", pd.DataFrame({"c": ["a"]}), {})


def test_a_changed_suite_is_rebuilt_in_the_running_process(probe_suite):
    frame = pd.DataFrame({"c": ["a", "b"]})
    probe_suite("expect_column_values_to_be_in_set", value_set=["a"])
    assert not run_suite("probe", frame, {}).success
    probe_suite("expect_column_values_to_be_in_set", value_set={"$PARAMETER": "codes"})
    assert run_suite("probe", frame, {"codes": ["a", "b"]}).success


@pytest.mark.parametrize("suite", ["raw_file", "grading_inputs", "outputs", "circuit_breaker"])
def test_each_suite_documents_its_parameters(suite):
    spec = load_suite(suite)
    used = {value["$PARAMETER"] for e in spec["expectations"] for value in e["kwargs"].values()
            if isinstance(value, dict)}
    assert used == set(spec["meta"]["params"])


def test_great_expectations_warms_up_once_on_a_thread_and_the_gate_uses_it():
    """A fresh process (this one has GE already): warm_up_in_background imports GE on one thread however often
    it is called, and run_suite afterwards validates with that context instead of importing GE itself."""
    script = """
import sys, threading
from transforms.quality import suites
assert "great_expectations" not in sys.modules
suites.warm_up_in_background(); suites.warm_up_in_background()
threads = [t for t in threading.enumerate() if t.name == "great-expectations-import"]
assert len(threads) == 1, threads
threads[0].join()
assert "great_expectations" in sys.modules and suites._ge.cache_info().currsize == 1
import pandas as pd
try:
    suites.run_suite("outputs", pd.DataFrame(), {})  # the suite is built in the warmed context, then refused
except ValueError as refused:
    assert "needs parameter 'tiers'" in str(refused), refused
info = suites._ge.cache_info()
print(info.misses, info.hits)
"""
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert done.stdout.split() == ["1", "1"]  # one context built (by the thread), then found by the gate


# --- the validation process (transforms.quality.validator) ------------------------------------------------------

def run_script(script: str, timeout: int = 180) -> subprocess.CompletedProcess:
    """A fresh Python process (this one has GE already) running `script`."""
    return subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=timeout)


def test_a_suite_validated_in_the_validation_process_is_as_validated_here(con, tmp_path):
    """In a fresh process that started its validation process: July's outputs with a two-tier pack fail there as
    they fail here, with the same results file byte for byte, a suite's refusal is raised in the run, GE is never
    imported by the run; once that process is killed the run says so and validates itself, again the same."""
    frame = outputs_frame(con, JUL, PACK, CHANNELS)
    frame.to_pickle(tmp_path / "frame.pkl")
    here = run_suite("outputs", frame, {"tiers": ["UNRATED", "STAR1"]}, tmp_path / "here")
    script = f"""
import json, sys
import pandas as pd
from transforms.quality import suites
frame = pd.read_pickle({str(tmp_path / "frame.pkl")!r})
suites.start_validator()
there = suites.run_suite("outputs", frame, {{"tiers": ["UNRATED", "STAR1"]}}, {str(tmp_path / "there")!r})
try:
    suites.run_suite("outputs", frame, {{"other": 1}})
except ValueError as refused:
    print("refused:", refused)
assert "great_expectations" not in sys.modules
suites._validator.process.kill()
suites._validator.process.wait()
itself = suites.run_suite("outputs", frame, {{"tiers": ["UNRATED", "STAR1"]}}, {str(tmp_path / "itself")!r})
assert "great_expectations" in sys.modules
print(json.dumps([r.message() for r in (there, itself)]))
"""
    done = run_script(script)
    assert done.returncode == 0, done.stderr
    refused, messages = done.stdout.splitlines()
    assert refused == "refused: suite outputs needs parameter 'tiers' (given: ['other'])"
    assert json.loads(messages) == [here.message()] * 2 and not here.success
    assert "the validation process (pid " in done.stderr and "validating in this process" in done.stderr
    for where in ("there", "itself"):
        assert (tmp_path / where / "outputs.json").read_bytes() == here.results_path.read_bytes(), where


def test_the_validation_process_ends_with_the_run_that_started_it(tmp_path):
    """A run killed (kill -9) leaves no validation process behind: its end of the pipe closes with it."""
    script = """
import os, signal
from transforms.quality import suites
suites.start_validator()
print(suites._validator.process.pid, flush=True)
os.kill(os.getpid(), signal.SIGKILL)
"""
    done = run_script(script)
    assert done.returncode == -9
    pid = int(done.stdout)  # GE's import first: the child reads its pipe after it
    deadline = time.monotonic() + 60
    while not ended(pid) and time.monotonic() < deadline:
        time.sleep(0.2)
    assert ended(pid)


def ended(pid: int) -> bool:
    """The process is gone, or a zombie waiting for whoever adopted it."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] == "Z"
    except FileNotFoundError:
        return True


def test_a_nightly_starts_the_validation_process_at_its_first_file_to_read():
    """After validate_in_a_process (the CLI's nightly), warm_up_in_background starts the validation process, once,
    and no import thread; without it, nothing is started."""
    script = """
import sys, threading
from transforms.quality import suites
suites.validate_in_a_process()
assert suites._validator is None
suites.warm_up_in_background(); first = suites._validator
suites.warm_up_in_background()
assert first is not None and suites._validator is first and first.process.poll() is None
assert not [t for t in threading.enumerate() if t.name == "great-expectations-import"]
assert "great_expectations" not in sys.modules
print("ok")
"""
    done = run_script(script)
    assert done.returncode == 0 and done.stdout.strip() == "ok", done.stderr


def test_a_backfill_starts_its_validation_process_unless_a_dry_run(monkeypatch, tmp_path):
    """`tierflow backfill` starts the validation process first, `--dry-run` (it only lists) does not."""
    started = []
    monkeypatch.setattr(cli, "_validate_beside", lambda: started.append(True))
    monkeypatch.setattr(pipeline, "backfill_flow", lambda *args: ["2025-01: would be graded"])
    command = ["backfill", "--home", str(tmp_path), "--start", "2025-01", "--end", "2025-01"]
    assert cli.main(command + ["--dry-run"]) == 0 and started == []
    assert cli.main(command) == 0 and started == [True]
