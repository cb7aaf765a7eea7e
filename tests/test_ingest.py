"""Ingestion into the warehouse: control totals, quarantine threshold, reconciliation, re-delivery,
idempotent reloads and the ACCT change history."""
from __future__ import annotations

import shutil
import subprocess
import sys
from datetime import date
from pathlib import Path

import duckdb
import pytest

from flows.cli import has_files_to_read
from tests.builders import Sub, deliver
from transforms.core.calendar import Month
from transforms.ingest.landing import scan_landing
from transforms.ingest.extracts import parse_extract_parts
from transforms.ingest.in_use import to_read
from transforms.ingest.load import ingest_delivery, reconciliation_failures
from transforms.warehouse.db import connect, in_any_order, snapshot_date_for

SAMPLES = Path(__file__).resolve().parent / "samples" / "landing"  # copied from the spec samples


@pytest.fixture
def home(tmp_path):
    return tmp_path


@pytest.fixture
def con(home):
    con = connect(home)
    yield con
    con.close()


def ingest_all(con, home):
    return [ingest_delivery(con, home, d, "test") for d in scan_landing(home).delivered]


def bill_lines(n: int, month: str = "202601") -> list[str]:
    return [f"S{i:07d}|{month}|RENT|{1000 + i}" for i in range(n)]


def test_spec_samples_load_cleanly(home, con):
    shutil.copytree(SAMPLES, home / "landing")
    results = ingest_all(con, home)
    assert [(r.file_name, r.status, r.loaded, r.quarantined) for r in results] == [
        ("SUSP_20260115.dat", "LOADED", 1, 0), ("REDEEM_20260120.dat", "LOADED", 1, 0),
        ("ACCT_20260131.dat", "LOADED", 4, 0), ("BILL_202601.dat", "LOADED", 10, 0)]
    assert reconciliation_failures(con) == []
    # The SUSP and REDEEM files came before any snapshot: their subscribers are orphans at load time.
    assert [r.orphans for r in results] == [1, 1, 0, 0]
    name = con.execute("SELECT cust_name FROM raw.subscriber_history WHERE subs_id = 'S0000101'").fetchone()
    assert name == ("王伟",)


@pytest.mark.parametrize("field, value, reason", [
    (1, "4", "RECORD_COUNT_MISMATCH"),   # 3 records delivered
    (2, "999", "SIZE_MISMATCH"),
    (3, "0" * 32, "MD5_MISMATCH"),
])
def test_control_file_that_lies_rejects_the_whole_file(home, con, field, value, reason):
    dat = deliver(home, "20260203", "BILL_202601.dat", bill_lines(3))
    chk = dat.with_suffix(".chk")
    parts = chk.read_text().strip().split("|")
    parts[field] = value
    chk.write_text("|".join(parts) + "\n")
    [result] = ingest_all(con, home)
    assert result.status == "REJECTED" and result.reason.startswith(reason)
    assert con.execute("SELECT count(*) FROM raw.bill").fetchone() == (0,)
    rows = con.execute("SELECT file_name, line_no, reason FROM ops.quarantine").fetchall()
    assert rows == [("BILL_202601.dat", None, reason)]


def test_quarantine_below_threshold_loads_the_rest_and_reconciles(home, con):
    lines = bill_lines(200)
    lines[57] = "S0000057|202601|RENT|12.50"   # 1 of 200 = 0.5% <= 1%
    deliver(home, "20260203", "BILL_202601.dat", lines)
    [result] = ingest_all(con, home)
    assert (result.status, result.loaded, result.quarantined) == ("LOADED", 199, 1)
    assert con.execute("SELECT line_no, raw_text, reason FROM ops.quarantine").fetchall() == [
        (58, "S0000057|202601|RENT|12.50", "BAD_INTEGER")]
    assert con.execute("SELECT count(*) FROM raw.bill").fetchone() == (199,)
    assert reconciliation_failures(con) == []


def test_quarantine_over_threshold_rejects_the_file(home, con):
    lines = bill_lines(50)
    lines[3] = "S0000003|202602|RENT|100"     # 1 of 50 = 2% > 1%: wrong month
    deliver(home, "20260203", "BILL_202601.dat", lines)
    [result] = ingest_all(con, home)
    assert result.status == "REJECTED" and result.reason.startswith("QUARANTINE_THRESHOLD")
    assert con.execute("SELECT count(*) FROM raw.bill").fetchone() == (0,)
    assert con.execute("SELECT line_no, reason FROM ops.quarantine ORDER BY line_no NULLS FIRST").fetchall() == [
        (None, "QUARANTINE_THRESHOLD"), (4, "MONTH_MISMATCH")]


def test_loading_the_same_delivery_twice_changes_nothing(home, con):
    deliver(home, "20260203", "BILL_202601.dat", bill_lines(10))
    assert [r.status for r in ingest_all(con, home)] == ["LOADED"]
    before = con.execute("SELECT * FROM raw.bill ORDER BY ALL").fetchall()
    assert [r.status for r in ingest_all(con, home)] == ["UNCHANGED"]
    assert con.execute("SELECT * FROM raw.bill ORDER BY ALL").fetchall() == before
    assert con.execute("SELECT count(*) FROM ops.delivery").fetchone() == (1,)


def test_redelivery_supersedes_the_older_delivery_entirely(home, con):
    deliver(home, "20260203", "BILL_202601.dat", bill_lines(10))
    ingest_all(con, home)
    deliver(home, "20260210", "BILL_202601.dat", bill_lines(4))   # corrected file, a later day
    results = ingest_all(con, home)
    assert [(r.day, r.status) for r in results] == [(date(2026, 2, 3), "UNCHANGED"), (date(2026, 2, 10), "LOADED")]
    assert con.execute("SELECT count(*), min(file_name) FROM raw.bill").fetchone() == (4, "BILL_202601.dat")
    assert con.execute("SELECT day, status FROM ops.delivery ORDER BY day").fetchall() == [
        (date(2026, 2, 3), "SUPERSEDED"), (date(2026, 2, 10), "LOADED")]
    assert reconciliation_failures(con) == []


def test_pending_file_without_control_file_is_reported_not_loaded(home, con):
    dat = deliver(home, "20260203", "BILL_202601.dat", bill_lines(2))
    dat.with_suffix(".chk").unlink()
    scan = scan_landing(home)
    assert scan.delivered == [] and [p.dat_path for p in scan.pending] == [dat]


def test_utf8_declared_snapshot_among_gbk_files(home, con):
    deliver(home, "20260131", "ACCT_20260131.dat", [Sub("A").line()], encoding="GBK")
    deliver(home, "20260228", "ACCT_20260228.dat", [Sub("A").line().replace("王伟", "欧阳娜娜")], encoding="UTF-8")
    assert [r.status for r in ingest_all(con, home)] == ["LOADED", "LOADED"]
    names = con.execute("SELECT cust_name FROM raw.subscriber_history ORDER BY valid_from").fetchall()
    assert names == [("王伟",), ("欧阳娜娜",)]


def as_of(con, day: str) -> dict[str, str]:
    return dict(con.execute("SELECT subs_id, brand FROM raw.subscriber_history WHERE valid_from <= ? "
                            "AND (valid_to IS NULL OR valid_to > ?)", [day, day]).fetchall())


def test_snapshots_are_kept_as_changes(home, con):
    deliver(home, "20260131", "ACCT_20260131.dat", [Sub("A").line(), Sub("B").line(), Sub("C").line()])
    deliver(home, "20260228", "ACCT_20260228.dat",
            [Sub("A", brand="GOTONE").line(), Sub("B").line(), Sub("D").line()])
    ingest_all(con, home)
    # A changed (2 versions), B unchanged (1), C vanished (closed), D new (1): 5 rows, not 6.
    assert con.execute("SELECT count(*) FROM raw.subscriber_history").fetchone() == (5,)
    assert as_of(con, "2026-01-31") == {"A": "MZONE", "B": "MZONE", "C": "MZONE"}
    assert as_of(con, "2026-02-28") == {"A": "GOTONE", "B": "MZONE", "D": "MZONE"}
    assert snapshot_date_for(con, Month(2026, 2)) == date(2026, 2, 28)
    assert snapshot_date_for(con, Month(2026, 1)) == date(2026, 1, 31)


def test_redelivered_older_snapshot_rewinds_and_replays_later_ones(home, con):
    deliver(home, "20260131", "ACCT_20260131.dat", [Sub("A").line(), Sub("B").line()])
    deliver(home, "20260228", "ACCT_20260228.dat", [Sub("A").line(), Sub("B").line()])
    ingest_all(con, home)
    # January corrected afterwards (delivered in a later folder): B was EASYOWN in January.
    deliver(home, "20260305", "ACCT_20260131.dat", [Sub("A").line(), Sub("B", brand="EASYOWN").line()])
    assert [r.status for r in ingest_all(con, home)][-1] == "LOADED"
    assert as_of(con, "2026-01-31") == {"A": "MZONE", "B": "EASYOWN"}
    assert as_of(con, "2026-02-28") == {"A": "MZONE", "B": "MZONE"}   # February replayed on top
    assert con.execute("SELECT count(*) FROM raw.subscriber_history").fetchone() == (3,)
    assert reconciliation_failures(con) == []


def test_event_id_repeated_in_a_later_delivery_is_quarantined(home, con):
    deliver(home, "20260115", "SUSP_20260115.dat", ["E1|A|20260115100000|REQUEST"])
    deliver(home, "20260116", "SUSP_20260116.dat", ["E1|A|20260116100000|REQUEST", "E2|A|20260116100000|LOSS"])
    results = ingest_all(con, home)
    assert [(r.loaded, r.quarantined) for r in results] == [(1, 0), (1, 1)]
    assert con.execute("SELECT file_name, line_no, reason FROM ops.quarantine").fetchall() == [
        ("SUSP_20260116.dat", 1, "DUPLICATE_KEY")]
    assert reconciliation_failures(con) == []


def test_quarantine_exactly_at_the_threshold_is_not_over_it(home, con):
    lines = bill_lines(100)
    lines[0] = "S0000000|202601|RENT|"          # 1 of 100 = 1%: not more than 1%
    deliver(home, "20260203", "BILL_202601.dat", lines)
    [result] = ingest_all(con, home)
    assert (result.status, result.loaded, result.quarantined) == ("LOADED", 99, 1)


# --- a big file loads part by part -------------------------------------------------------------------------------

def in_small_parts(seen_rows: list[int] | None = None, con=None):
    """parse_extract_parts in parts of a few lines; with `seen_rows`, notes the raw.bill rows already in the
    (uncommitted) warehouse when each part is asked for."""
    def parse(*args):
        for part in parse_extract_parts(*args, chunk_bytes=64):
            if seen_rows is not None:
                seen_rows.append(con.execute("SELECT count(*) FROM raw.bill").fetchall()[0][0])
            yield part
    return parse


def test_a_bill_file_loads_part_by_part_as_it_loads_whole(home, con, tmp_path):
    lines = bill_lines(300)
    lines[7] = "S0000007|202601|RENT|7.5"        # 2 of 300 quarantined, in different parts
    lines[250] = "S0000250|202601|NOPE|1"
    dat = deliver(home, "20260203", "BILL_202601.dat", lines)
    seen: list[int] = []
    [result] = [ingest_delivery(con, home, d, "test", parse=in_small_parts(seen, con))
                for d in scan_landing(home).delivered]
    assert (result.status, result.loaded, result.quarantined) == ("LOADED", 298, 2)
    # Each part was in the warehouse before the next was parsed: the file is never held whole.
    assert len(seen) > 10 and seen == sorted(seen) and seen[-1] > 250
    rows = con.execute("SELECT * FROM raw.bill ORDER BY line_no").fetchall()
    whole = connect(tmp_path / "whole")
    shutil.copytree(home / "landing", tmp_path / "whole" / "landing")
    [ingest_delivery(whole, tmp_path / "whole", d, "test") for d in scan_landing(tmp_path / "whole").delivered]
    assert rows == whole.execute("SELECT * FROM raw.bill ORDER BY line_no").fetchall()
    assert con.execute("SELECT line_no, reason FROM ops.quarantine ORDER BY line_no").fetchall() == [
        (8, "BAD_INTEGER"), (251, "BAD_ENUM")]
    assert reconciliation_failures(con) == []
    whole.close()


def test_a_bill_file_over_the_threshold_in_its_last_part_leaves_nothing_loaded(home, con):
    lines = bill_lines(300)
    for n in (280, 290, 299, 295):                # 4 of 300 > 1%, all past the parts already loaded
        lines[n] = f"S{n:07d}|202512|RENT|1"
    deliver(home, "20260203", "BILL_202601.dat", bill_lines(10))
    ingest_all(con, home)                                       # an older delivery, superseded for a moment
    deliver(home, "20260210", "BILL_202601.dat", lines)
    [result] = [ingest_delivery(con, home, d, "test", parse=in_small_parts())
                for d in scan_landing(home).delivered if d.day == date(2026, 2, 10)]
    assert result.status == "REJECTED" and result.reason.startswith("QUARANTINE_THRESHOLD: 4 of 300")
    assert "first: line 281 MONTH_MISMATCH" in result.reason
    # The parts loaded before the count was known are rolled back; the older delivery stays in use.
    assert con.execute("SELECT count(*) FROM raw.bill").fetchone() == (10,)
    assert con.execute("SELECT day, status FROM ops.delivery ORDER BY day").fetchall() == [
        (date(2026, 2, 3), "LOADED"), (date(2026, 2, 10), "REJECTED")]
    assert con.execute("SELECT line_no, reason FROM ops.quarantine WHERE file_name = 'BILL_202601.dat' "
                       "ORDER BY line_no NULLS FIRST").fetchall() == [
        (None, "QUARANTINE_THRESHOLD"), (281, "MONTH_MISMATCH"), (291, "MONTH_MISMATCH"),
        (296, "MONTH_MISMATCH"), (300, "MONTH_MISMATCH")]


def test_great_expectations_is_warmed_up_for_a_file_to_read_never_for_a_known_one(home, con, monkeypatch):
    """A nightly with nothing new must not pay GE's import: only a delivery that will be read starts it."""
    import transforms.ingest.load as load
    started = []
    monkeypatch.setattr(load, "warm_up_in_background", lambda: started.append(True))
    deliver(home, "20260203", "BILL_202601.dat", bill_lines(10))
    assert [r.status for r in ingest_all(con, home)] == ["LOADED"] and started == [True]
    assert [r.status for r in ingest_all(con, home)] == ["UNCHANGED"] and started == [True]


def _lie_about_md5(dat: Path) -> None:
    chk = dat.with_suffix(".chk")
    parts = chk.read_text().strip().split("|")
    chk.write_text("|".join(parts[:3] + ["0" * 32] + parts[4:]) + "\n")


def test_a_wrong_md5_found_after_the_lines_are_loaded_rejects_the_file_as_unread(home, con):
    """The MD5 is computed while the file is parsed and loaded: a mismatch rolls the load back, and it wins over
    the lines' own findings (the file is not the one described, so none of its lines is reported)."""
    lines = bill_lines(50)
    lines[3] = lines[9] = "S0000003|202601|RENT|x"       # 2 of 50 bad: over the threshold too
    _lie_about_md5(deliver(home, "20260203", "BILL_202601.dat", lines))
    [result] = ingest_all(con, home)
    assert result.status == "REJECTED" and result.reason.startswith("MD5_MISMATCH")
    assert con.execute("SELECT count(*) FROM raw.bill").fetchone() == (0,)
    assert con.execute("SELECT line_no, reason FROM ops.quarantine").fetchall() == [(None, "MD5_MISMATCH")]


def test_a_file_refused_for_its_md5_is_not_read_again_the_next_night(home, con):
    _lie_about_md5(deliver(home, "20260203", "BILL_202601.dat", bill_lines(10)))
    assert [r.status for r in ingest_all(con, home)] == ["REJECTED"]

    def must_not_parse(*args):
        raise AssertionError("a file refused unread was parsed again")
    [again] = [ingest_delivery(con, home, d, "test", parse=must_not_parse) for d in scan_landing(home).delivered]
    assert (again.status, again.reason) == ("UNCHANGED", "rejected before")
    assert con.execute("SELECT count(*) FROM ops.delivery").fetchone() == (1,)


def test_bill_rows_go_in_in_any_order_and_the_connection_keeps_order_afterwards(home, con):
    """raw.bill is only aggregated, so its insert may reorder rows (db.in_any_order); every later statement of the
    connection keeps insertion order again, also after a failed load."""
    seen = []
    con.execute("CREATE TEMP TABLE probe (x INTEGER)")
    with pytest.raises(duckdb.Error):
        with in_any_order(con):
            seen.append(con.execute("SELECT current_setting('preserve_insertion_order')").fetchone()[0])
            con.execute("INSERT INTO probe VALUES ('not a number')")
    assert seen == [False]
    assert con.execute("SELECT current_setting('preserve_insertion_order')").fetchone() == (True,)
    deliver(home, "20260203", "BILL_202601.dat", bill_lines(30))
    assert [r.status for r in ingest_all(con, home)] == ["LOADED"]
    assert con.execute("SELECT current_setting('preserve_insertion_order')").fetchone() == (True,)
    assert con.execute("SELECT line_no FROM raw.bill ORDER BY line_no").fetchall() == [(n,) for n in range(1, 31)]


def test_orphans_are_the_distinct_subscribers_no_snapshot_ever_knew(home, con):
    """Orphans (extracts.md): subscribers of a file that no snapshot version names, each counted once; one who
    left (their version closed) is known, not an orphan (BILL, and a small file, counted by other SQL)."""
    deliver(home, "20260131", "ACCT_20260131.dat", [Sub("A").line(), Sub("B").line(), Sub("C").line()])
    deliver(home, "20260201", "ACCT_20260201.dat", [Sub("A").line(), Sub("B").line()])   # C left
    deliver(home, "20260202", "SUSP_20260202.dat", [
        "E1|A|20260202080000|ARREARS_TWOWAY", "E2|C|20260202090000|ARREARS_TWOWAY",   # known, or known before
        "E3|X|20260202100000|ARREARS_TWOWAY", "E4|X|20260202110000|ARREARS_TWOWAY",   # X twice, Z once
        "E5|Z|20260202120000|ARREARS_TWOWAY"])
    deliver(home, "20260203", "BILL_202601.dat", [
        "A|202601|RENT|100", "A|202601|DATA|50", "C|202601|RENT|10",                   # known, or known before
        "X|202601|RENT|1", "X|202601|DATA|2", "X|202601|ROAM|3", "Y|202601|RENT|4"])   # X three times, Y once
    results = ingest_all(con, home)
    assert [(r.file_name, r.orphans) for r in results] == [
        ("ACCT_20260131.dat", 0), ("ACCT_20260201.dat", 0), ("SUSP_20260202.dat", 2), ("BILL_202601.dat", 2)]


def test_to_read_is_what_the_night_would_read(home, con):
    """in_use.to_read names the deliveries ingest_delivery would read: not one recorded before under its control
    file, nor one older than the delivery of its file in use; a new day's file, a newer re-delivery and a malformed
    control file are to read."""
    shutil.copytree(SAMPLES, home / "landing")
    ingest_all(con, home)
    assert to_read(con, scan_landing(home).delivered) == []
    deliver(home, "20260201", "SUSP_20260201.dat", ["E9|S0000102|20260201120000|ARREARS_TWOWAY"])
    deliver(home, "20260125", "BILL_202601.dat", bill_lines(3))  # older than the one of 20260203 in use
    deliver(home, "20260205", "BILL_202601.dat", bill_lines(4))  # newer: it replaces it
    (home / "landing" / "20260115" / "SUSP_20260115.chk").write_text("not a control file")

    def named():
        return [(f"{d.day:%m%d}", d.name.file_name) for d in to_read(con, scan_landing(home).delivered)]
    assert named() == [("0115", "SUSP_20260115.dat"), ("0201", "SUSP_20260201.dat"), ("0205", "BILL_202601.dat")]
    statuses = [ingest_delivery(con, home, d, "test").status for d in scan_landing(home).delivered]
    assert statuses.count("LOADED") == 2 and "REJECTED" in statuses
    assert named() == [("0115", "SUSP_20260115.dat")]  # still malformed: counted to read, though refused before


def test_the_nightly_command_starts_great_expectations_early_only_for_a_night_with_files_to_read(home):
    """`tierflow nightly` starts its validation process first when the landing holds a file to read
    (cli.has_files_to_read), not for a night with nothing new, nor when another process holds the warehouse
    (a read-only look cannot be had then: the run waits for the lock and starts it at its first file)."""
    shutil.copytree(SAMPLES, home / "landing")
    assert has_files_to_read(home, "2026-01-31")  # no warehouse yet
    con = connect(home)
    ingest_all(con, home)
    con.close()
    assert not has_files_to_read(home, "2026-02-03")
    deliver(home, "20260204", "SUSP_20260204.dat", ["E9|S0000102|20260204120000|ARREARS_TWOWAY"])
    assert not has_files_to_read(home, "2026-02-03") and has_files_to_read(home, "2026-02-04")
    hold = (f"import duckdb, time; con = duckdb.connect({str(home / 'warehouse.duckdb')!r}); "
            "print('open', flush=True); time.sleep(60)")
    writer = subprocess.Popen([sys.executable, "-c", hold], stdout=subprocess.PIPE, text=True)
    try:
        assert writer.stdout.readline().strip() == "open"
        assert not has_files_to_read(home, "2026-02-04")
    finally:
        writer.kill()
        writer.wait()


def test_the_look_for_files_to_read_imports_nothing_of_the_load(home):
    """has_files_to_read runs before the nightly's validation process starts: it imports neither the load
    (its parsing, the gates) nor Polars, pandas or GE, whose ~0.6 s would delay that process (measured at 1M:
    0.22-0.26 s for the look against 0.75-0.95 s with the load's imports)."""
    shutil.copytree(SAMPLES, home / "landing")
    con = connect(home)
    ingest_all(con, home)
    con.close()
    deliver(home, "20260204", "SUSP_20260204.dat", ["E9|S0000102|20260204120000|ARREARS_TWOWAY"])
    heavy = ["transforms.ingest.load", "polars", "pandas", "great_expectations"]
    look = ("import sys; from flows.cli import has_files_to_read; "
            f"print(has_files_to_read({str(home)!r}, '2026-02-04'), [m for m in {heavy!r} if m in sys.modules])")
    out = subprocess.run([sys.executable, "-c", look], capture_output=True, text=True, check=True,
                         cwd=Path(__file__).resolve().parents[1])
    assert out.stdout.split() == ["True", "[]"]


def _snapshot_lines() -> list[str]:
    return (SAMPLES / "20260131" / "ACCT_20260131.dat").read_bytes().decode("gbk").splitlines()


def test_the_next_snapshot_is_parsed_ahead_one_at_a_time_giving_what_a_parse_in_place_gives(home, con, tmp_path):
    """nightly.ingest's parse (load.ParseAhead) starts the first ACCT snapshot to read on a thread before the
    files delivered ahead of it load, the second only once the first was ingested, none already recorded; the
    warehouse is the one a parse in place gives."""
    import threading
    import time
    from transforms.ingest.load import ParseAhead
    shutil.copytree(SAMPLES, home / "landing")  # SUSP 0115, REDEEM 0120, ACCT 0131, BILL 0203
    deliver(home, "20260228", "ACCT_20260228.dat", _snapshot_lines()[:-1])  # S0000104 gone by February
    calls: list[tuple[str, str]] = []

    def parse(path, name, encoding, day):
        calls.append((name.file_name, threading.current_thread().name))
        return parse_extract_parts(path, name, encoding, day)

    def ahead_calls() -> list[str]:
        time.sleep(0.2)  # a thread started is seen calling
        return [file for file, thread in calls if thread == "parse-ahead"]

    deliveries = scan_landing(home).delivered
    ahead = ParseAhead(con, deliveries, parse)
    seen = [ahead_calls()]
    results = []
    for delivery in deliveries:
        results.append(ingest_delivery(con, home, delivery, "test", parse=ahead))
        ahead.ingested(delivery)
        seen.append(ahead_calls())
    assert seen == [["ACCT_20260131.dat"]] * 3 + [["ACCT_20260131.dat", "ACCT_20260228.dat"]] * 3
    assert [file for file, thread in calls if thread != "parse-ahead"] == [
        "SUSP_20260115.dat", "REDEEM_20260120.dat", "BILL_202601.dat"]  # parsed where they load
    assert [r.status for r in results] == ["LOADED"] * 5

    in_place = tmp_path / "in-place"
    shutil.copytree(home / "landing", in_place / "landing")
    plain = connect(in_place)
    try:
        assert [r.line() for r in ingest_all(plain, in_place)] == [r.line() for r in results]
        history = "SELECT * FROM raw.subscriber_history ORDER BY ALL"
        assert con.sql(history).fetchall() == plain.sql(history).fetchall()
    finally:
        plain.close()
    calls.clear()
    ParseAhead(con, scan_landing(home).delivered, parse)
    assert ahead_calls() == []  # both snapshots are recorded: nothing to read


def test_an_error_parsing_a_snapshot_ahead_is_raised_where_it_loads(home, con):
    from transforms.ingest.load import ParseAhead
    shutil.copytree(SAMPLES, home / "landing")

    def parse(path, name, encoding, day):
        if name.kind == "ACCT":
            raise RuntimeError("the disk is gone")
        return parse_extract_parts(path, name, encoding, day)

    deliveries = scan_landing(home).delivered
    ahead = ParseAhead(con, deliveries, parse)
    susp, redeem, acct, bill = deliveries
    assert [ingest_delivery(con, home, d, "test", parse=ahead).status for d in (susp, redeem)] == ["LOADED"] * 2
    with pytest.raises(RuntimeError, match="the disk is gone"):
        ingest_delivery(con, home, acct, "test", parse=ahead)
    assert con.execute("SELECT count(*) FROM raw.subscriber_history").fetchall() == [(0,)]
    assert con.execute("SELECT file_name FROM ops.delivery ORDER BY 1").fetchall() == [
        ("REDEEM_20260120.dat",), ("SUSP_20260115.dat",)]
