"""Channel files (outputs.md "Channel files"): the golden province of test_monthly_golden graded for July 2026,
its boss / sms / crm files checked line by line against the hand-worked July changes; the points-expiry notice
on a tiny hand-made ledger; the nightly LOST notice; configuration refusals; atomic, private, repeatable writes."""
from __future__ import annotations

import hashlib
import json
import re
import stat
from contextlib import ExitStack
from dataclasses import replace
from datetime import date
from pathlib import Path

import polars as pl
import pytest

from tests.builders import Sub, deliver
from tests.test_monthly_golden import ACCEPT, JUL, PACK, graded_golden
from transforms.core.resources import channels_config
from transforms.deliver.channels import CHANGES as CHANGE_FEED, POINTS, ChannelConfigError, ChannelError, by_feed, load_channels
from transforms.deliver.outbox import write_outbox
from transforms.deliver.render import OutFile
from transforms.deliver.sets import month_sets, nightly_sets, told_counts
from transforms.warehouse.inputs import points_expiring
from transforms.ingest.control import read_control, verify_control
from transforms.ingest.landing import scan_landing
from transforms.ingest.load import ingest_delivery
from transforms.runs.monthly import run_monthly
from transforms.runs.shards import InProcess
from transforms.grade.points import expiring_next_month
from transforms.warehouse.db import connect

CHANNELS = load_channels()
NO_EXPIRY = pl.DataFrame(schema={"subs_id": pl.String, "points": pl.Int64})


def first_files(con, folder: Path, channels=CHANNELS) -> list[OutFile]:
    """The first set of July's change channels, written under `folder` and recorded as told."""
    return [s.out for s in month_sets(con, JUL, PACK, by_feed(channels, CHANGE_FEED), True, NO_EXPIRY, folder)]


def kept_file(folder: Path, relpath: str, payload: bytes, records: int, control: bytes | None = None) -> OutFile:
    """An OutFile whose bytes wait in `folder`, as a run leaves it."""
    kept = folder / relpath
    kept.parent.mkdir(parents=True, exist_ok=True)
    kept.write_bytes(payload)
    return OutFile("boss" if relpath.startswith("boss") else "sms", relpath, kept, records,
                   hashlib.md5(payload).hexdigest(), control)
MSISDN = "13800000000"  # tests.builders.Sub: "138" + the digits of the subs_id (none here), padded to 8

# Entitlement changes of July by the six-star table (nobody is GROUP_KEY, so tiers alone decide): gained (+)
# then lost (-), each sorted.
ENTITLEMENTS = {
    "B": "+PHONE_MANAGER;+PRIORITY_COUNTER",  # STAR4 -> STAR5: the two "STAR5 and up" ones
    # STAR6 -> STAR1: everything but POINTS_REMINDER (STAR1 and up) is lost
    "D": "-ACCOUNT_MANAGER;-DELAYED_SUSPEND;-FREE_SIM_REPLACE;-HOTLINE_PRIORITY;-INTL_ROAMING_FAST;"
         "-NIGHT_NO_SUSPEND;-PHONE_MANAGER;-POINTS_GIFTS;-PRIORITY_COUNTER;-VIP_LOUNGE",
    "G": "-POINTS_REMINDER",  # STAR1 -> UNRATED
    # UNRATED -> STAR5: all but VIP_LOUNGE and ACCOUNT_MANAGER (STAR6 only)
    "K": "+DELAYED_SUSPEND;+FREE_SIM_REPLACE;+HOTLINE_PRIORITY;+INTL_ROAMING_FAST;+NIGHT_NO_SUSPEND;"
         "+PHONE_MANAGER;+POINTS_GIFTS;+POINTS_REMINDER;+PRIORITY_COUNTER",
    "S": "+HOTLINE_PRIORITY;+INTL_ROAMING_FAST;+PHONE_MANAGER;+PRIORITY_COUNTER",  # STAR3 -> STAR5
}
# Tags of July: K joined 2026-02, tenure 6 <= 12 (NEW_JOINER); S has 2 two-way suspensions in 2025-08..2026-07
# (ARREARS). B, D: no tag rule holds; G is absent from S(July): no assignment, no tags.
TAGS = {"B": "", "D": "", "G": "", "K": "NEW_JOINER", "S": "ARREARS"}
# The July changes of test_monthly_golden: subs_id, from, to, change type
CHANGES = [("B", "STAR4", "STAR5", "UPGRADE"), ("D", "STAR6", "STAR1", "DOWNGRADE"), ("G", "STAR1", "UNRATED", "LOST"),
           ("K", "UNRATED", "STAR5", "NEW"), ("S", "STAR3", "STAR5", "UPGRADE")]


@pytest.fixture(scope="module")
def graded(tmp_path_factory):
    home = tmp_path_factory.mktemp("channels")
    con, _ = graded_golden(home)
    yield home, con
    con.close()


@pytest.fixture(scope="module")
def july(graded):
    home, con = graded
    files = first_files(con, home / "owed")
    write_outbox(home, files)
    return home, con, {f.channel: f for f in files}


def test_boss_file_lines_and_control_file(july):
    home, _, _ = july
    dat = home / "outbox" / "boss" / "202607" / "GRADE_CHG_202607.dat"
    # effective date: the first day of M+1 = 20260801; G's msisdn comes from its last known version
    assert dat.read_bytes().decode("gbk").split("\n") == [
        f"{s}|{MSISDN}|{f}|{t}|{c}|20260801|{ENTITLEMENTS[s]}" for s, f, t, c in CHANGES] + [""]
    control = read_control(dat.with_suffix(".chk"))
    assert (control.file_name, control.record_count, control.encoding) == ("GRADE_CHG_202607.dat", 5, "GBK")
    verify_control(dat, control)  # size and MD5 agree with the file


def test_sms_notices_templates_and_parameters(july):
    home, _, _ = july
    lines = (home / "outbox" / "sms" / "202607" / "notices.jsonl").read_text(encoding="utf-8").splitlines()
    template = {"UPGRADE": "TIER_UP", "DOWNGRADE": "TIER_DOWN", "LOST": "TIER_LOST", "NEW": "TIER_NEW"}
    assert lines == [json.dumps({"msisdn": MSISDN, "template": template[c],
                                 "parameters": {"from_tier": f, "to_tier": t, "effective_date": "20260801"}},
                                separators=(",", ":")) for _, f, t, c in CHANGES]
    assert lines[0] == ('{"msisdn":"13800000000","template":"TIER_UP","parameters":'
                        '{"from_tier":"STAR4","to_tier":"STAR5","effective_date":"20260801"}}')


def test_crm_csv_has_header_rows_and_no_msisdn(july):
    home, _, _ = july
    text = (home / "outbox" / "crm" / "202607" / "grade_changes.csv").read_bytes().decode("utf-8")
    assert text.split("\n") == ["subs_id,from_tier,to_tier,change_type,region_code,manager_id,tags"] + [
        f"{s},{f},{t},{c},4110,,{TAGS[s]}" for s, f, t, c in CHANGES] + [""]  # region 4110, no manager
    assert MSISDN not in text


def test_counts_equal_grade_change_counts(july):
    _, con, files = july
    assert {name: f.records for name, f in files.items()} == {"boss": 5, "sms": 5, "crm": 5}
    changes = ("NEW", "UPGRADE", "DOWNGRADE", "LOST")
    assert told_counts(con, JUL, CHANNELS) == {"boss": (5, (*changes, "ENTITLEMENTS")), "sms": (5, changes),
                                               "crm": (5, changes)}


def test_channel_carries_only_its_change_types(graded, tmp_path):
    _, con = graded
    config = tmp_path / "channels.yaml"
    config.write_text(channels_config().read_text(encoding="utf-8").replace(
        "path: crm/{yyyymm}/grade_changes.csv\n    changes: [NEW, UPGRADE, DOWNGRADE, LOST]",
        "path: crm/{yyyymm}/grade_changes.csv\n    changes: [UPGRADE]"), encoding="utf-8")
    con.execute("BEGIN TRANSACTION")
    con.execute("DELETE FROM ops.sent_record")  # as if nothing had been sent yet
    sets = month_sets(con, JUL, PACK, load_channels(config), True, NO_EXPIRY, tmp_path / "owed")
    crm = [s.out for s in sets if s.channel == "crm"][0]
    con.execute("ROLLBACK")
    assert [line.split(",")[0] for line in crm.payload.decode().splitlines()[1:]] == ["B", "S"]
    assert crm.records == 2


def test_rerun_gives_byte_identical_files_left_in_place(july, tmp_path):
    home, con, files = july
    paths = [home / "outbox" / f.relpath for f in files.values()]
    paths.append(home / "outbox" / files["boss"].control_relpath)
    before = {p: (p.read_bytes(), p.stat().st_mtime_ns) for p in paths}
    run_monthly(con, JUL, PACK, "rerun", ACCEPT)
    assert month_sets(con, JUL, PACK, by_feed(CHANNELS, CHANGE_FEED), True, NO_EXPIRY,
                      tmp_path) == []  # nothing new to send
    assert list(tmp_path.rglob("*.*")) == []  # and leaves no file behind
    write_outbox(home, list(files.values()))  # the same bytes again: left in place
    assert {p: (p.read_bytes(), p.stat().st_mtime_ns) for p in paths} == before


def test_outbox_and_the_files_waiting_for_it_are_not_world_readable(july):
    home, _, _ = july
    for folder in (home / "outbox", home / "owed"):  # owed: where first_files kept them before delivery
        paths = [folder, *folder.rglob("*")]
        assert len(paths) >= 7
        for path in paths:
            mode = stat.S_IMODE(path.stat().st_mode)
            assert mode == (0o750 if path.is_dir() else 0o640), (path, oct(mode))


def test_a_sent_file_is_never_rewritten_with_other_content(tmp_path):
    old = kept_file(tmp_path / "owed-1", "boss/202607/X_202607.dat", b"A|1\n", 1, b"X_202607.dat|1|4|md5-old|GBK\n")
    write_outbox(tmp_path, [old])
    folder = tmp_path / "outbox" / "boss" / "202607"
    (folder / ".X_202607.dat.999.tmp").write_bytes(b"half written by a killed run")
    assert write_outbox(tmp_path, [old]) == [folder / "X_202607.dat", folder / "X_202607.chk"]  # same bytes: fine
    new = kept_file(tmp_path / "owed-2", old.relpath, b"A|2\nB|3\n", 2, b"X_202607.dat|2|8|md5-new|GBK\n")
    with pytest.raises(ChannelError, match="already sent with other content: refusing to overwrite"):
        write_outbox(tmp_path, [new])
    assert (folder / "X_202607.dat").read_bytes() == b"A|1\n"
    assert (folder / "X_202607.chk").read_bytes() == b"X_202607.dat|1|4|md5-old|GBK\n"


def test_a_file_whose_kept_bytes_are_gone_is_refused_naming_them(tmp_path):
    out = kept_file(tmp_path / "owed", "boss/202607/X_202607.dat", b"A|1\n", 1, b"X_202607.dat|1|4|md5|GBK\n")
    out.kept.unlink()
    with pytest.raises(ChannelError, match=r"^outbox file boss/202607/X_202607.dat: its bytes, kept in .*owed/boss/"
                                           r"202607/X_202607.dat until delivered, are missing"):
        write_outbox(tmp_path, [out])
    assert not (tmp_path / "outbox" / "boss" / "202607" / "X_202607.dat").exists()


def test_crash_between_renames_leaves_the_data_file_without_its_control_file(tmp_path, monkeypatch):
    out = kept_file(tmp_path / "owed", "boss/202607/X_202607.dat", b"A|1\n", 1, b"X_202607.dat|1|4|md5|GBK\n")
    folder = tmp_path / "outbox" / "boss" / "202607"
    renames = []

    def killed_at_the_second(src, dst):
        if renames:
            raise OSError("killed")
        renames.append(dst)
        return real_replace(src, dst)
    real_replace = __import__("os").replace
    monkeypatch.setattr("transforms.deliver.outbox.os.replace", killed_at_the_second)
    with pytest.raises(OSError, match="killed"):
        write_outbox(tmp_path, [out])
    # the data is there, its control file is not: the receiver waits (a .dat counts once its .chk exists)
    assert (folder / "X_202607.dat").read_bytes() == b"A|1\n"
    assert not (folder / "X_202607.chk").exists()
    monkeypatch.undo()
    write_outbox(tmp_path, [out])  # the next run completes without cleanup
    assert sorted(p.name for p in folder.iterdir()) == ["X_202607.chk", "X_202607.dat"]


def test_write_refuses_paths_out_of_the_outbox(tmp_path):
    empty = kept_file(tmp_path / "owed", "sms/202607/n.jsonl", b"", 0)
    for bad in ("../escape.dat", "/etc/passwd", "sms/../../x.jsonl", "sms/.hidden"):
        with pytest.raises(ChannelError, match="outbox file"):
            write_outbox(tmp_path, [replace(empty, relpath=bad)])
    assert not (tmp_path / "outbox").exists()  # refused before writing anything
    outside = tmp_path / "elsewhere"
    outside.mkdir()
    (tmp_path / "outbox").mkdir()
    (tmp_path / "outbox" / "sms").symlink_to(outside)
    with pytest.raises(ChannelError, match="resolves outside"):
        write_outbox(tmp_path, [empty])
    assert list(outside.iterdir()) == []


# --- contact and owner from S(M), or the last known version -----------------------------------------------------

def test_change_rows_take_msisdn_region_and_manager_from_s_m_or_the_last_known_version(tmp_path):
    con = connect(tmp_path)
    con.execute("INSERT INTO ops.snapshot VALUES (DATE '2026-07-31', 'ACCT_20260731.dat', 1), "
                "(DATE '2026-08-31', 'ACCT_20260831.dat', 1)")
    _version(con, "X", "13900000001", valid_to=date(2026, 7, 10))  # X changed number on 2026-07-10
    _version(con, "X", "13900000002", valid_from=date(2026, 7, 10), valid_to=date(2026, 8, 31))
    _version(con, "X", "13900000003", valid_from=date(2026, 8, 31))  # after S(2026-07): not used
    _version(con, "Y", "13900000004", valid_to=date(2026, 5, 31))
    _version(con, "Y", "13900000005", valid_from=date(2026, 5, 31), valid_to=date(2026, 6, 30))  # gone 06-30
    con.execute("INSERT INTO mart.tier_assignment VALUES (DATE '2026-07-01', 'X', 'STAR2', 'AVG6', 'STAR2', "
                "FALSE, 18000, 78, 0, 0, ['ROAMER', 'ARREARS'], 'v1', '4110', NULL, NULL, NULL)")
    con.execute("INSERT INTO mart.grade_change VALUES "
                "(DATE '2026-07-01', 'Y', 'STAR3', 'UNRATED', 'LOST', 'ABSENT_FROM_SNAPSHOT', [], "
                "['NIGHT_NO_SUSPEND', 'DELAYED_SUSPEND'], '4110', 'MGR7'), "
                "(DATE '2026-07-01', 'X', 'STAR1', 'STAR2', 'UPGRADE', 'AVG6', ['POINTS_GIFTS'], [], '4110', 'MGR7')")
    files = {f.channel: f for f in first_files(con, tmp_path / "owed")}
    assert files["boss"].payload.decode("gbk").splitlines() == [
        "X|13900000002|STAR1|STAR2|UPGRADE|20260801|+POINTS_GIFTS",  # the version valid on 2026-07-31
        "Y|13900000005|STAR3|UNRATED|LOST|20260801|-DELAYED_SUSPEND;-NIGHT_NO_SUSPEND"]  # last known, sorted
    assert files["crm"].payload.decode().splitlines()[1:] == [
        "X,STAR1,STAR2,UPGRADE,4110,MGR7,ARREARS;ROAMER",  # tags sorted
        "Y,STAR3,UNRATED,LOST,4110,MGR7,"]
    con.close()


@pytest.mark.parametrize("msisdns, refusal", [
    (["139|0000001"], r"^boss: 1 value\(s\) of msisdn hold '\|' or a line break, e.g. subs_id X$"),
    (["139|0000001", "139\n0000002"], r"^boss: 2 value\(s\) of msisdn hold '\|' or a line break, e.g. subs_id X$"),
    (["139\U0001f600", "139\U0001f601"],
     r"^boss/202607/GRADE_CHG_202607\.dat: '\U0001f600' cannot be written in GBK$")])
@pytest.mark.parametrize("on_shards", [False, True])
def test_value_that_would_shift_boss_columns_stops_the_run(tmp_path, msisdns, refusal, on_shards):
    """A value a file cannot carry stops the run with the same message (the count over the file, the first in
    subs_id order) whether the file is rendered here or in parts on two shards (X alone: its row in the second
    part, the first empty; X and Y: one part each)."""
    con = connect(tmp_path)
    con.execute("INSERT INTO ops.snapshot VALUES (DATE '2026-07-31', 'ACCT_20260731.dat', 1)")
    for subs_id, msisdn in zip("XY", msisdns):
        _version(con, subs_id, msisdn)
        con.execute("INSERT INTO mart.tier_assignment VALUES (DATE '2026-07-01', ?, 'STAR2', 'AVG6', 'STAR2', "
                    "FALSE, 18000, 78, 0, 0, [], 'v1', '4110', NULL, NULL, NULL)", [subs_id])
        con.execute("INSERT INTO mart.grade_change VALUES (DATE '2026-07-01', ?, 'STAR1', 'STAR2', 'UPGRADE', "
                    "'AVG6', [], [], '4110', NULL)", [subs_id])
    shards = InProcess(2, tmp_path / "work" / "run") if on_shards else None
    with pytest.raises(ChannelError, match=refusal):
        month_sets(con, JUL, PACK, by_feed(CHANNELS, CHANGE_FEED), True, NO_EXPIRY, tmp_path / "owed",
                   shards=shards)
    con.close()


# --- points-expiry notice: a tiny hand-made ledger ------------------------------------------------------------

def _version(con, subs_id, msisdn, status="NORMAL", valid_from=date(2026, 1, 31), valid_to=None):
    con.execute("INSERT INTO raw.subscriber_history VALUES (?, ?, 'C1', '王伟', '410102198001010000', 'MZONE', "
                "'PERSONAL', ?, DATE '2020-01-15', NULL, TRUE, FALSE, FALSE, '4110', 'MGR7', ?, ?, 'ACCT', 1)",
                [subs_id, msisdn, status, valid_from, valid_to])


def test_points_expiry_notice_by_hand(tmp_path):
    con = connect(tmp_path)
    con.execute("INSERT INTO ops.snapshot VALUES (DATE '2026-07-31', 'ACCT_20260731.dat', 5)")
    for subs_id, msisdn in (("P1", "13900000001"), ("P2", "13900000002"), ("P6", "13900000006")):
        _version(con, subs_id, msisdn)
    _version(con, "P3", "13900000003", status="CANCELLED")
    _version(con, "P4", "13900000004", valid_to=date(2026, 6, 30))  # vanished before S(2026-07)
    # Graded for 2026-07: what expires at the end of 2026-08 is the lot earned for 2026-08 - 36 = 2023-08.
    lots = [("P1", "2023-08-01", 1000), ("P1", "2023-09-01", 500), ("P2", "2023-08-01", 300),
            ("P3", "2023-08-01", 400), ("P4", "2023-08-01", 200), ("P6", "2023-08-01", 80),
            ("P6", "2023-07-01", 700)]
    con.executemany("INSERT INTO staging.points_lot VALUES (?, CAST(? AS DATE), ?)", lots)
    moves = [("2025-03-01", "P1", "2023-08-01", 250, 0), ("2026-07-01", "P1", "2023-08-01", 100, 0),
             ("2026-08-01", "P1", "2023-08-01", 50, 0),  # after M: not counted
             ("2026-02-01", "P2", "2023-08-01", 300, 0),  # fully redeemed
             ("2026-07-01", "P6", "2023-07-01", 0, 700)]  # the 2023-07 lot expired at the end of July
    con.executemany("INSERT INTO staging.points_move VALUES (CAST(? AS DATE), ?, CAST(? AS DATE), ?, ?)", moves)
    expiring = points_expiring(con, JUL, PACK.points.expiry_months)
    assert expiring.rows() == [("P1", 650), ("P3", 400), ("P4", 200), ("P6", 80)]  # P1: 1000 - 250 - 100
    open_lots = con.sql("""
        SELECT l.subs_id, l.earn_month, l.earned - coalesce(sum(mv.redeemed + mv.expired), 0) AS remaining
        FROM staging.points_lot l LEFT JOIN staging.points_move mv
          ON mv.subs_id = l.subs_id AND mv.earn_month = l.earn_month AND mv.month <= DATE '2026-07-01'
        GROUP BY l.subs_id, l.earn_month, l.earned HAVING remaining > 0""").pl()
    assert expiring.equals(expiring_next_month(JUL, open_lots, 36))  # agrees with the points module
    [notice] = [s.out for s in month_sets(con, JUL, PACK, by_feed(CHANNELS, POINTS), False, expiring,
                                         tmp_path / "owed")]
    assert notice.relpath == "sms/202607/points_expiry.jsonl"
    # P3 cancelled, P4 not in S(M): no SMS; expiry date = last day of 2026-08
    assert notice.payload.decode().splitlines() == [
        '{"msisdn":"13900000001","template":"POINTS_EXPIRING","parameters":{"points":650,"expiry_date":"20260831"}}',
        '{"msisdn":"13900000006","template":"POINTS_EXPIRING","parameters":{"points":80,"expiry_date":"20260831"}}']
    assert notice.records == 2
    con.close()


# --- configuration --------------------------------------------------------------------------------------------

def _config_with(tmp_path: Path, old: str, new: str) -> Path:
    text = channels_config().read_text(encoding="utf-8")
    assert old in text
    path = tmp_path / "channels.yaml"
    path.write_text(text.replace(old, new), encoding="utf-8")
    return path


@pytest.mark.parametrize("old, new, message", [
    ("path: sms/{yyyymm}/notices.jsonl", "path: ../sms/{yyyymm}/notices.jsonl",
     r"channels\[1\] \(sms\)\.path: .*'\.\.'"),
    ("path: sms/{yyyymm}/notices.jsonl", "path: sms/{yyyymm}/../../../notices.jsonl", r"\(sms\)\.path: .*'\.\.'"),
    ("path: sms/{yyyymm}/notices.jsonl", "path: /var/spool/sms/{yyyymm}.jsonl", r"\(sms\)\.path: .*relative"),
    ("path: sms/{yyyymm}/notices.jsonl", "path: sms/{user}/notices.jsonl", r"\(sms\)\.path: placeholder \{user\}"),
    ("path: sms/{yyyymm}/notices.jsonl", "path: sms/notices.jsonl", r"\(sms\)\.path: .*needs \{yyyymm\}"),
    ("fields: [subs_id, from_tier, to_tier, change_type, region_code, manager_id, tags]",
     "fields: [subs_id, msisdn, from_tier, to_tier, change_type, region_code, manager_id, tags]",
     r"channels\[2\] \(crm\)\.fields: msisdn is personal data"),
    ("fields: [subs_id, msisdn, from_tier", "fields: [subs_id, cert_no, from_tier",
     r"\(boss\)\.fields: cert_no is personal data"),
    ("fields: [subs_id, msisdn, from_tier", "fields: [subs_id, cust_name, from_tier",
     r"\(boss\)\.fields: cust_name is personal data"),
    ("fields: [subs_id, msisdn, from_tier", "fields: [subs_id, balance, from_tier",
     r"\(boss\)\.fields: unknown field 'balance'"),
    ("{NEW: TIER_NEW, UPGRADE: TIER_UP, DOWNGRADE: TIER_DOWN, LOST: TIER_LOST, REVERSAL: TIER_CORRECTED}",
     "{NEW: TIER_NEW, UPGRADE: TIER_UP, DOWNGRADE: TIER_DOWN, REVERSAL: TIER_CORRECTED}",
     r"\(sms\)\.templates is missing 'LOST'"),
    ("{NEW: TIER_NEW, UPGRADE: TIER_UP, DOWNGRADE: TIER_DOWN, LOST: TIER_LOST, REVERSAL: TIER_CORRECTED}",
     "{NEW: TIER_NEW, UPGRADE: TIER_UP, DOWNGRADE: TIER_DOWN, LOST: TIER_LOST}",
     r"\(sms\)\.templates is missing 'REVERSAL'"),
    ("changes: [NEW, UPGRADE, DOWNGRADE, LOST, ENTITLEMENTS]\n    fields: [subs_id, msisdn",
     "changes: [NEW, PROMOTED]\n    fields: [subs_id, msisdn", r"\(boss\)\.changes: unknown change type 'PROMOTED'"),
    ("path: crm/{yyyymm}/grade_changes.csv\n    changes: [NEW, UPGRADE, DOWNGRADE, LOST]",
     "path: crm/{yyyymm}/grade_changes.csv\n    changes: [NEW, ENTITLEMENTS]",
     r"channels\[2\] \(crm\)\.changes: ENTITLEMENTS rows say only which entitlements changed"),
    ("format: pipe_gbk_with_chk", "format: xml",
     r"\(boss\)\.format must be pipe_gbk_with_chk, jsonl or csv, got 'xml'"),
    ("path: sms/{yyyymm}/points_expiry.jsonl", "path: sms/{yyyymm}/notices.jsonl",
     r"channels sms and points_expiry would write the same file"),
])
def test_bad_configuration_is_rejected_naming_file_and_key(tmp_path, old, new, message):
    path = _config_with(tmp_path, old, new)
    with pytest.raises(ChannelConfigError, match=message) as caught:
        load_channels(path)
    assert re.match(rf"{re.escape(str(path))}:[1-9][0-9]*: ", str(caught.value))


# Two channels, the lines numbered by hand below (line 1 is "channels:").
SMALL = """\
channels:
  - name: boss
    format: pipe_gbk_with_chk
    encoding: GBK
    path: boss/{yyyymm}/GRADE_CHG_{yyyymm}.dat
    changes: [NEW, UPGRADE, DOWNGRADE, LOST]
    fields: [subs_id, msisdn, from_tier, to_tier, change_type, effective_date, entitlements]
  - name: sms
    format: jsonl
    encoding: UTF-8
    path: sms/{yyyymm}/notices.jsonl
    changes: [NEW, UPGRADE]
    fields:
      - msisdn
      - template
    templates: {NEW: TIER_NEW, UPGRADE: TIER_UP, REVERSAL: TIER_CORRECTED}
"""


@pytest.mark.parametrize("old, new, expected", [
    ("TIER_UP,", "tier_up,", "16: channels[1] (sms).templates.UPGRADE: 'tier_up' is not a template name"),
    ("      - template\n", "      - template\n      - cert_no\n",
     "16: channels[1] (sms).fields: cert_no is personal data"),  # the line of the list entry
    ("  - name: sms\n", "  - name: sms\n    colour: red\n", "9: unknown key 'colour' in channels[1] (expected name,"),
    ("    encoding: UTF-8\n", "", "8: channels[1] is missing 'encoding'"),  # the line where the channel starts
    ("path: sms/{yyyymm}/notices.jsonl", "path: boss/{yyyymm}/GRADE_CHG_{yyyymm}.dat",
     "8: channels boss and sms would write the same file"),
])
def test_an_error_names_its_line(tmp_path, old, new, expected):
    path = tmp_path / "channels.yaml"
    path.write_text(SMALL, encoding="utf-8")
    assert [c.name for c in load_channels(path)] == ["boss", "sms"]
    assert old in SMALL
    path.write_text(SMALL.replace(old, new), encoding="utf-8")
    with pytest.raises(ChannelConfigError) as caught:
        load_channels(path)
    assert str(caught.value).startswith(f"{path}:{expected}")


def test_configuration_is_data_not_code(tmp_path):
    path = tmp_path / "channels.yaml"
    path.write_text("channels: !!python/object/apply:os.system ['touch pwned']\n", encoding="utf-8")
    with pytest.raises(ChannelConfigError, match="1: YAML tag 'tag:yaml.org,2002:python/object/apply:os.system' is not "
                                                 "allowed"):
        load_channels(path)
    assert not (tmp_path / "pwned").exists()


# --- nightly LOST notices (mutates the module's warehouse: keep last) ----------------------------------------

def test_nightly_lost_notice_for_vanished_rated_subscriber_on_the_month_end_snapshot(graded, tmp_path):
    _, con = graded
    # G (STAR1 from the June grading, in effect in July) vanishes from ACCT_20260731; the night of 07-31 comes
    # before July's monthly run, whose files (sent in this module) would already tell the SMS gateway.
    con.execute("BEGIN TRANSACTION")
    con.execute("DELETE FROM ops.sent_record")
    [lost] = [s.out for s in nightly_sets(con, date(2026, 7, 31), CHANNELS, PACK.unrated, tmp_path)]
    con.execute("ROLLBACK")
    assert lost.relpath == "sms/daily/20260731/lost.jsonl"
    assert lost.payload.decode().splitlines() == [
        '{"msisdn":"13800000000","template":"TIER_LOST","parameters":'
        '{"from_tier":"STAR1","to_tier":"UNRATED","effective_date":"20260731"}}']
    # L was cancelled in ACCT_20260630, before any tier was in effect (the June tiers start 2026-07-01)
    assert [s.out.records for s in nightly_sets(con, date(2026, 6, 30), CHANNELS, PACK.unrated, tmp_path)] == [0]
    assert nightly_sets(con, date(2026, 7, 15), CHANNELS, PACK.unrated, tmp_path) == []  # no snapshot that day


def test_nightly_lost_notice_for_rated_subscriber_cancelled_in_a_later_snapshot(graded, tmp_path):
    home, con = graded
    # ACCT_20260810: A cancelled (its number now reads 13900000001), B and H gone, L still cancelled, G still
    # gone, everyone else unchanged.
    subs = [Sub("A", status="CANCELLED", cancel_date="20260809"), Sub("C", brand="GOTONE"),
            Sub("D", brand="EASYOWN"), Sub("E", brand="EASYOWN"), Sub("F", brand="EASYOWN"),
            Sub("I", realname="N"), Sub("J", open_date="20260115"), Sub("K", open_date="20260201"),
            Sub("L", subs_type="IOT", status="CANCELLED", cancel_date="20260620"), Sub("R"), Sub("S"), Sub("T")]
    lines = [s.line() for s in subs]
    lines[0] = lines[0].replace(f"|{MSISDN}|", "|13900000001|")
    deliver(home, "20260810", "ACCT_20260810.dat", lines)
    [delivery] = [d for d in scan_landing(home).delivered if d.name.file_name == "ACCT_20260810.dat"]
    assert ingest_delivery(con, home, delivery, "test").status == "LOADED"
    files = [s.out for s in nightly_sets(con, date(2026, 8, 10), CHANNELS, PACK.unrated, tmp_path)]
    # In effect on 2026-08-10: the July tiers. A STAR5 (cancelled: its number of that day), B STAR5 (vanished:
    # its last known number); H was UNRATED (IOT).
    assert [json.loads(line) for line in files[0].payload.decode().splitlines()] == [
        {"msisdn": "13900000001", "template": "TIER_LOST",
         "parameters": {"from_tier": "STAR5", "to_tier": "UNRATED", "effective_date": "20260810"}},
        {"msisdn": MSISDN, "template": "TIER_LOST",
         "parameters": {"from_tier": "STAR5", "to_tier": "UNRATED", "effective_date": "20260810"}}]
    write_outbox(home, files)
    assert nightly_sets(con, date(2026, 8, 10), CHANNELS, PACK.unrated, tmp_path) == []  # rerun: nothing new
    # the next snapshot still shows A cancelled and B gone: they were told once, on 2026-08-10
    deliver(home, "20260811", "ACCT_20260811.dat", lines)
    [delivery] = [d for d in scan_landing(home).delivered if d.name.file_name == "ACCT_20260811.dat"]
    assert ingest_delivery(con, home, delivery, "test").status == "LOADED"
    assert [s.out.records for s in nightly_sets(con, date(2026, 8, 11), CHANNELS, PACK.unrated, tmp_path)] == [0]


def test_a_file_rendered_in_chunks_is_the_same_bytes(monkeypatch, tmp_path):
    """A file's text is built RENDER_CHUNK_ROWS rows at a time (bounded memory for a month telling millions):
    any chunk size gives the same bytes, the CSV header once, the control line over the whole file."""
    from transforms.deliver import render as rendering
    records = pl.DataFrame({"subs_id": [f"S{k}" for k in range(7)], "from_tier": ["STAR1"] * 7,
                            "to_tier": ["STAR2"] * 6 + ["UNRATED"],
                            "change_type": ["UPGRADE"] * 6 + ["LOST"], "kind": ["CHANGE"] * 7,
                            "entitlements_gained": [["PRIORITY_COUNTER"]] * 6 + [[]],
                            "entitlements_lost": [[]] * 6 + [["POINTS_REMINDER"]]})
    context = pl.DataFrame({"subs_id": [f"S{k}" for k in range(7)], "msisdn": [f"1380000000{k}" for k in range(7)],
                            "region_code": ["4110"] * 7, "manager_id": ["经理7"] * 7,
                            "tags": [["ARREARS", "ROAMER"]] * 7, "reason": ["AVG6"] * 7})
    facts = rendering.change_facts(JUL, records, context)
    channels = by_feed(CHANNELS, CHANGE_FEED)
    assert {c.format for c in channels} == {"pipe_gbk_with_chk", "jsonl", "csv"}
    def render(channel, kept):
        with rendering.FileWriter(channel, f"{channel.name}.out", kept) as writer:
            writer.add(facts)
            return writer.finish()
    whole = [render(c, tmp_path / "whole" / c.name) for c in channels]
    monkeypatch.setattr(rendering, "RENDER_CHUNK_ROWS", 2)
    chunked = [render(c, tmp_path / "chunked" / c.name) for c in channels]
    assert [(f.payload, f.md5, f.control, f.records) for f in chunked] == [
        (f.payload, f.md5, f.control, f.records) for f in whole]
    assert all(f.payload.count(b"\n") >= 7 and f.records == 7 for f in whole)
    csv = next(f for f in chunked if f.relpath.startswith("crm")).payload.decode()
    assert csv.count("subs_id") == 1  # one header


def test_a_month_sent_range_by_range_is_the_same_files_and_records(graded, monkeypatch, tmp_path):
    """A month's sets are computed, written and recorded per range of subs_id (ranges.RANGE_SUBSCRIBERS): ranges
    of two subscribers give the same bytes, the same told records and the same counts for gate 3 as one range,
    a correction set included; and so do the files rendered in parts on 3 shards (RenderOnShards), in one range
    and in ranges of two."""
    from transforms.warehouse import ranges
    _, con = graded
    narrow = load_channels(_config_with(
        tmp_path, "path: crm/{yyyymm}/grade_changes.csv\n    changes: [NEW, UPGRADE, DOWNGRADE, LOST]",
        "path: crm/{yyyymm}/grade_changes.csv\n    changes: [NEW, UPGRADE]"))
    # G is absent from S(July), L cancelled in it: no notice for them
    expiring = pl.DataFrame({"subs_id": ["A", "G", "K", "L", "S"], "points": [10, 20, 30, 40, 50]})

    def first_then_correction(size: int, shards: InProcess | None = None) -> list:
        monkeypatch.setattr(ranges, "RANGE_SUBSCRIBERS", size)
        con.execute("BEGIN TRANSACTION")
        con.execute("DELETE FROM ops.sent_record")  # as if nothing had been sent yet
        sent = []
        # then a correction: crm carries DOWNGRADE and LOST too (D and G); the others have nothing new
        for n, channels in enumerate((narrow, CHANNELS)):
            sets = month_sets(con, JUL, PACK, channels, True, expiring, tmp_path / f"{size}-{n}-{bool(shards)}",
                              shards=shards)
            sent.append([(s.channel, s.out.relpath, s.out.records, s.out.payload, s.out.control) for s in sets])
        told = con.sql("SELECT * FROM ops.sent_record ORDER BY ALL").fetchall()
        counts = told_counts(con, JUL, CHANNELS)  # what gate 3 compares, summed over the ranges
        con.execute("ROLLBACK")
        return sent + [told, counts]

    one = first_then_correction(10**6)
    assert len(ranges.subscriber_ranges(con, JUL)) == 1
    assert first_then_correction(2) == one
    assert len(ranges.subscriber_ranges(con, JUL)) >= 5
    assert first_then_correction(10**6, InProcess(3, tmp_path / "run-1")) == one
    # the correction's files (each channel's, those without records then removed) in three parts each
    assert len(list((tmp_path / "run-1" / str(JUL) / "render").glob("lines-*"))) == 4 * 3
    assert first_then_correction(2, InProcess(3, tmp_path / "run-2")) == one
    first, correction, _, counts = one
    assert {name: count for name, (count, _) in counts.items()} == {"boss": 5, "sms": 5, "crm": 5}
    assert [f[:3] for f in first] == [("boss", "boss/202607/GRADE_CHG_202607.dat", 5),
                                      ("sms", "sms/202607/notices.jsonl", 5),
                                      ("crm", "crm/202607/grade_changes.csv", 3),  # B, K, S
                                      ("points_expiry", "sms/202607/points_expiry.jsonl", 3)]  # A, K, S
    assert [f[:3] for f in correction] == [("crm", "crm/202607/grade_changes_02.csv", 2)]


def _boss_facts(*msisdns: str) -> pl.DataFrame:
    return pl.DataFrame({"subs_id": [f"S{k}" for k in range(len(msisdns))], "msisdn": list(msisdns),
                         "from_tier": "STAR1", "to_tier": "STAR2", "change_type": "UPGRADE",
                         "effective_date": "20260801", "entitlements": ""})


OK = "13800000001"


@pytest.mark.parametrize("shards, ranges, expected", [
    # 2 shards: each range's rows in two slices, one per part. Met first: a.dat's in the first range's second
    # slice, though b.dat's is in its first slice, and part 1 also holds a.dat's in the second range.
    (2, [[(OK, "139\U0001f601"), ("139\U0001f600", OK)], [("139\U0001f602", OK), (OK, OK)]],
     "boss/a.dat: '\U0001f601' cannot be written in GBK"),
    # 3 shards, 2 ranges: part 1 holds the first range's third slice then the second range's first. Met first:
    # b.dat's in the first range, though a.dat's (in the second range) comes first in part 1's list.
    (3, [[(OK, OK, OK), (OK, OK, "139\U0001f600")], [("139\U0001f601", OK, OK), (OK, OK, OK)]],
     "boss/b.dat: '\U0001f600' cannot be written in GBK")])
def test_the_first_refusal_of_parts_rendered_on_shards_is_the_one_the_local_path_meets(tmp_path, shards, ranges,
                                                                                        expected):
    """Files rendered in parts on shards raise the refusal the local path (range by range, then file by file)
    meets first."""
    from transforms.deliver.render import FileWriter
    from transforms.runs.shards import RenderOnShards
    boss = next(c for c in CHANNELS if c.name == "boss")
    files = [(boss, "boss/a.dat"), (boss, "boss/b.dat")]
    ranges = [[_boss_facts(*msisdns) for msisdns in files_of_range] for files_of_range in ranges]

    def local() -> str:
        with ExitStack() as stack, pytest.raises(ChannelError) as refused:
            writers = [stack.enter_context(FileWriter(c, r, tmp_path / "local" / r)) for c, r in files]
            for parts in ranges:
                for writer, part in zip(writers, parts):
                    writer.add(part)
        return str(refused.value)

    apart = RenderOnShards(InProcess(shards, tmp_path / "work" / "run"), JUL, files)
    for span_no, parts in enumerate(ranges):
        for n, part in enumerate(parts):
            apart.add(span_no, n, part)
    with ExitStack() as stack, pytest.raises(ChannelError) as refused:
        apart.render_into([stack.enter_context(FileWriter(c, r, tmp_path / "apart" / r)) for c, r in files])
    assert str(refused.value) == local() == expected


@pytest.mark.parametrize("on_shards", [False, True])
def test_a_csv_file_without_records_is_its_header_alone(tmp_path, on_shards):
    """A month's first CSV file is written when nothing changed: its header line, nothing else, however it is
    rendered."""
    from transforms.deliver.render import FileWriter
    from transforms.runs.shards import RenderOnShards
    crm = next(c for c in CHANNELS if c.name == "crm")
    nothing = pl.DataFrame(schema={"subs_id": pl.String, "from_tier": pl.String, "to_tier": pl.String,
                                   "change_type": pl.String, "region_code": pl.String, "manager_id": pl.String,
                                   "tags": pl.List(pl.String)})
    with FileWriter(crm, "crm/x.csv", tmp_path / "crm" / "x.csv") as writer:
        if on_shards:
            apart = RenderOnShards(InProcess(2, tmp_path / "work" / "run"), JUL, [(crm, "crm/x.csv")])
            apart.add(0, 0, nothing)
            apart.render_into([writer])
        else:
            writer.add(nothing)
        out = writer.finish()
    assert out.payload == b"subs_id,from_tier,to_tier,change_type,region_code,manager_id,tags\n"
    assert out.records == 0
