"""Parsing delivered extracts (transforms/extracts.py): typed records, quarantine reasons, hostile inputs."""
from __future__ import annotations

import io
import time
from datetime import date, datetime
from pathlib import Path

import polars as pl
import pytest

from transforms.ingest.control import encode_records, read_control, write_delivery
from transforms.ingest.extracts import (ParsedFile, follow_on, join_parts, line_ranges, parse_extract,
                                        parse_extract_parts, parse_extract_range)
from transforms.ingest.layouts import KINDS, ExtractName, parse_extract_name

SAMPLES = Path(__file__).resolve().parent / "samples" / "landing"  # copied from the spec samples

FIELDS = {
    "ACCT": ["subs_id", "msisdn", "cust_id", "cust_name", "cert_no", "brand", "subs_type", "status", "open_date",
             "cancel_date", "realname_flag", "group_key_flag", "vip_flag", "region_code", "manager_id"],
    "BILL": ["subs_id", "bill_month", "item_code", "amount_fen"],
    "SUSP": ["event_id", "subs_id", "event_time", "susp_type"],
    "REDEEM": ["txn_id", "subs_id", "txn_time", "points", "channel"],
    "OVERRIDE": ["override_id", "subs_id", "tier", "from_month", "to_month", "reason", "approved_by"],
}
VALID = {
    "ACCT": ["S0000101", "13812345678", "C0000051", "王伟", "410102198001011234", "GOTONE", "PERSONAL", "NORMAL",
             "20120315", "", "Y", "N", "N", "4110", "M007"],
    "BILL": ["S0000101", "202601", "RENT", "18800"],
    "SUSP": ["E00000017", "S0000102", "20260115093012", "ARREARS_TWOWAY"],
    "REDEEM": ["R00000042", "S0000101", "20260115143055", "1200", "APP"],
    "OVERRIDE": ["O0001", "S0000101", "STAR5", "202602", "202604", "VIP retention", "M007"],
}
FILE_NAMES = {"ACCT": "ACCT_20260131.dat", "BILL": "BILL_202601.dat", "SUSP": "SUSP_20260115.dat",
              "REDEEM": "REDEEM_20260115.dat", "OVERRIDE": "OVERRIDE_20260115.dat"}
DELIVERY_DAY = {"ACCT": date(2026, 1, 31), "BILL": date(2026, 2, 3), "SUSP": date(2026, 1, 15),
                "REDEEM": date(2026, 1, 15), "OVERRIDE": date(2026, 1, 15)}


def record(kind: str, **changes: str) -> str:
    """A valid record of `kind` with some fields replaced."""
    values = dict(zip(FIELDS[kind], VALID[kind]))
    assert set(changes) <= set(values)
    values.update(changes)
    return "|".join(values.values())


def deliver(tmp_path: Path, kind: str, lines: list[str] | None = None, encoding: str = "GBK",
            payload: bytes | None = None) -> Path:
    if payload is None:
        payload = encode_records(lines, encoding)
    count = payload.count(b"\n") + (not payload.endswith(b"\n") and len(payload) > 0)
    return write_delivery(tmp_path / "landing", FILE_NAMES[kind], payload, count, encoding)


def parse(dat: Path, encoding: str = "GBK", day: date | None = None, **kwargs) -> ParsedFile:
    name = parse_extract_name(dat.name)
    parsed = parse_extract(dat, name, encoding, day or DELIVERY_DAY[name.kind], **kwargs)
    # Nothing is ever dropped: every line is a record or a quarantine row, exactly once.
    assert parsed.records.height + parsed.quarantine.height == parsed.record_count
    lines = sorted(parsed.records["line_no"].to_list() + parsed.quarantine["line_no"].to_list())
    assert lines == list(range(1, parsed.record_count + 1))
    return parsed


def quarantined(parsed: ParsedFile) -> list[tuple[int, str]]:
    return list(zip(parsed.quarantine["line_no"].to_list(), parsed.quarantine["reason"].to_list()))


def detail_of(parsed: ParsedFile, line_no: int) -> str:
    return parsed.quarantine.filter(pl.col("line_no") == line_no)["detail"].item()


def raw_of(parsed: ParsedFile, line_no: int) -> str:
    return parsed.quarantine.filter(pl.col("line_no") == line_no)["raw_text"].item()


# ---------------------------------------------------------------------------------------- file names

def test_parse_extract_name_accepts_the_five_kinds():
    assert parse_extract_name("BILL_202601.dat") == ExtractName("BILL", "202601", "BILL_202601.dat")
    assert parse_extract_name("ACCT_20260131.dat") == ExtractName("ACCT", "20260131", "ACCT_20260131.dat")
    assert parse_extract_name("SUSP_20240229.dat").period == "20240229"       # leap day
    assert [parse_extract_name(FILE_NAMES[k]).kind for k in KINDS] == list(KINDS)


@pytest.mark.parametrize("file_name", [
    "BILL_20260131.dat", "ACCT_202601.dat", "ACCT_20260230.dat", "SUSP_20250229.dat", "BILL_202613.dat",
    "BILL_202600.dat", "FOO_20260131.dat", "acct_20260131.dat", "ACCT_20260131.chk", "ACCT_20260131.dat.bak",
    "../ACCT_20260131.dat", "ACCT_20260131.dat\n", "ACCT_2026013.dat", "",
])
def test_parse_extract_name_rejects_unknown_or_invalid(file_name):
    with pytest.raises(ValueError):
        parse_extract_name(file_name)


# ------------------------------------------------------------------------------------------- samples

def parse_sample(file_name: str) -> ParsedFile:
    dat = next(SAMPLES.glob(f"*/{file_name}"))
    control = read_control(dat.with_suffix(".chk"))
    day = date(int(dat.parent.name[:4]), int(dat.parent.name[4:6]), int(dat.parent.name[6:]))
    parsed = parse(dat, control.encoding, day)
    assert parsed.record_count == control.record_count
    assert parsed.quarantine.height == 0
    return parsed


def test_sample_acct():
    acct = parse_sample("ACCT_20260131.dat").records
    assert acct.schema == pl.Schema({
        "subs_id": pl.String, "msisdn": pl.String, "cust_id": pl.String, "cust_name": pl.String,
        "cert_no": pl.String, "brand": pl.String, "subs_type": pl.String, "status": pl.String,
        "open_date": pl.Date, "cancel_date": pl.Date, "realname_flag": pl.Boolean, "group_key_flag": pl.Boolean,
        "vip_flag": pl.Boolean, "region_code": pl.String, "manager_id": pl.String, "line_no": pl.Int64})
    assert acct["subs_id"].to_list() == ["S0000101", "S0000102", "S0000103", "S0000104"]
    assert acct["line_no"].to_list() == [1, 2, 3, 4]
    first = acct.row(0, named=True)
    assert first["cust_name"] == "王伟"                       # GBK decoded
    assert first["open_date"] == date(2012, 3, 15)
    assert first["cancel_date"] is None and first["manager_id"] == "M007"
    assert (first["realname_flag"], first["group_key_flag"], first["vip_flag"]) == (True, False, False)
    assert acct.row(1, named=True)["cert_no"] == "41010219900202234X"
    assert acct.row(1, named=True)["manager_id"] is None      # empty last field = null
    cancelled = acct.row(3, named=True)
    assert cancelled["status"] == "CANCELLED" and cancelled["cancel_date"] == date(2026, 1, 12)
    assert cancelled["group_key_flag"] is True


def test_sample_bill():
    bill = parse_sample("BILL_202601.dat").records
    assert bill.schema == pl.Schema({"subs_id": pl.String, "bill_month": pl.Date, "item_code": pl.String,
                                     "amount_fen": pl.Int64, "line_no": pl.Int64})
    assert bill.height == 10
    assert bill.row(2) == ("S0000101", date(2026, 1, 1), "DISCOUNT", -3000, 3)
    assert bill["bill_month"].unique().to_list() == [date(2026, 1, 1)]
    # 18800 + 12050 - 3000 + 5000 + 5800 + 1220 + 310 + 1000 + 8800 - 800 = 49180
    assert bill["amount_fen"].sum() == 49180
    # Two VOICE rows of S0000102 are both kept (BILL has no key): 1220 and 310.
    assert bill.filter(pl.col("item_code") == "VOICE")["amount_fen"].to_list() == [1220, 310]


def test_sample_susp():
    susp = parse_sample("SUSP_20260115.dat").records
    assert susp.schema == pl.Schema({"event_id": pl.String, "subs_id": pl.String,
                                     "event_time": pl.Datetime("us"), "susp_type": pl.String, "line_no": pl.Int64})
    assert susp.row(0) == ("E00000017", "S0000102", datetime(2026, 1, 15, 9, 30, 12), "ARREARS_TWOWAY", 1)


def test_sample_redeem_is_declared_utf8():
    assert read_control(SAMPLES / "20260120" / "REDEEM_20260120.chk").encoding == "UTF-8"
    redeem = parse_sample("REDEEM_20260120.dat").records
    assert redeem.schema == pl.Schema({"txn_id": pl.String, "subs_id": pl.String, "txn_time": pl.Datetime("us"),
                                       "points": pl.Int64, "channel": pl.String, "line_no": pl.Int64})
    assert redeem.row(0) == ("R00000042", "S0000101", datetime(2026, 1, 20, 14, 30, 55), 1200, "APP", 1)


def test_override_typed(tmp_path):
    dat = deliver(tmp_path, "OVERRIDE", [record("OVERRIDE"), record("OVERRIDE", override_id="O0002", tier="NONE",
                                                                       to_month="202602", reason="")])
    parsed = parse(dat)
    assert parsed.records.schema == pl.Schema({
        "override_id": pl.String, "subs_id": pl.String, "tier": pl.String, "from_month": pl.Date,
        "to_month": pl.Date, "reason": pl.String, "approved_by": pl.String, "line_no": pl.Int64})
    assert parsed.records.row(0) == ("O0001", "S0000101", "STAR5", date(2026, 2, 1), date(2026, 4, 1),
                                     "VIP retention", "M007", 1)
    # reason is required: the second record is quarantined.
    assert quarantined(parsed) == [(2, "MISSING_FIELD")]
    assert detail_of(parsed, 2) == "field 6 reason: empty"


# ------------------------------------------------------------------------------------ reason codes

def test_field_count_wrong_number_of_fields_and_pipe_inside_field(tmp_path):
    dat = deliver(tmp_path, "BILL", [record("BILL"), "S0000101|202601|RENT|188|00", "S0000101|202601|RENT",
                                     record("BILL")])
    parsed = parse(dat)
    assert quarantined(parsed) == [(2, "FIELD_COUNT"), (3, "FIELD_COUNT")]
    assert detail_of(parsed, 2) == "expected 4 fields, found 5"
    assert raw_of(parsed, 2) == "S0000101|202601|RENT|188|00"
    assert parsed.records["line_no"].to_list() == [1, 4]


def test_empty_line_in_the_middle_is_a_failed_record(tmp_path):
    dat = deliver(tmp_path, "BILL", [record("BILL"), "", record("BILL")])
    parsed = parse(dat)
    assert parsed.record_count == 3
    assert quarantined(parsed) == [(2, "FIELD_COUNT")]
    assert raw_of(parsed, 2) == ""


def test_missing_field(tmp_path):
    dat = deliver(tmp_path, "ACCT", [record("ACCT"), record("ACCT", subs_id="S2", msisdn=""),
                                     record("ACCT", subs_id="S3", cancel_date="", manager_id="")])
    parsed = parse(dat)
    assert quarantined(parsed) == [(2, "MISSING_FIELD")]
    assert detail_of(parsed, 2) == "field 2 msisdn: empty"
    assert parsed.records["subs_id"].to_list() == ["S0000101", "S3"]      # optional fields may be empty


def test_bad_enum(tmp_path):
    dat = deliver(tmp_path, "ACCT", [record("ACCT", brand="FOO"), record("ACCT", subs_id="S2", vip_flag="y"),
                                     record("ACCT", subs_id="S3", status="normal")])
    parsed = parse(dat)
    assert quarantined(parsed) == [(1, "BAD_ENUM"), (2, "BAD_ENUM"), (3, "BAD_ENUM")]
    assert detail_of(parsed, 1) == "field 6 brand: 'FOO' not in GOTONE|MZONE|EASYOWN"
    assert detail_of(parsed, 2) == "field 13 vip_flag: 'y' not in Y|N"


def test_bad_enum_bill_item_and_susp_type(tmp_path):
    bill = parse(deliver(tmp_path / "b", "BILL", [record("BILL", item_code="TAX"), record("BILL")]))
    assert quarantined(bill) == [(1, "BAD_ENUM")]
    susp = parse(deliver(tmp_path / "s", "SUSP", [record("SUSP"), record("SUSP", event_id="E2", susp_type="ARREARS")]))
    assert quarantined(susp) == [(2, "BAD_ENUM")]


def test_bad_date(tmp_path):
    dat = deliver(tmp_path, "ACCT", [
        record("ACCT", open_date="20260230"),                    # no 30 February
        record("ACCT", subs_id="S2", open_date="2012-03-15"),
        record("ACCT", subs_id="S3", cancel_date="20251301"),    # month 13, in an optional field
        record("ACCT", subs_id="S4", open_date="00000101"),      # year 0
        record("ACCT", subs_id="S5", open_date="20240229"),      # leap day: fine
    ])
    parsed = parse(dat)
    assert quarantined(parsed) == [(1, "BAD_DATE"), (2, "BAD_DATE"), (3, "BAD_DATE"), (4, "BAD_DATE")]
    assert detail_of(parsed, 1) == "field 9 open_date: '20260230' is not a date YYYYMMDD"
    assert parsed.records["open_date"].to_list() == [date(2024, 2, 29)]


def test_bad_timestamp(tmp_path):
    dat = deliver(tmp_path, "SUSP", [
        record("SUSP", event_id="E1", event_time="2026011509301"),    # 13 digits
        record("SUSP", event_id="E2", event_time="20260115240000"),   # hour 24
        record("SUSP", event_id="E3", event_time="20260115093060"),   # second 60
        record("SUSP", event_id="E4", event_time="20260132093000"),   # 32 January
        record("SUSP", event_id="E5", event_time="20260115093012"),
    ])
    parsed = parse(dat)
    assert quarantined(parsed) == [(1, "BAD_TIMESTAMP"), (2, "BAD_TIMESTAMP"), (3, "BAD_TIMESTAMP"),
                                   (4, "BAD_TIMESTAMP")]
    assert detail_of(parsed, 3) == "field 3 event_time: '20260115093060' is not a timestamp YYYYMMDDHHMMSS"


def test_bad_month(tmp_path):
    bill = parse(deliver(tmp_path / "b", "BILL", [record("BILL", bill_month="202613"),
                                                  record("BILL", bill_month="2026-01")]))
    assert quarantined(bill) == [(1, "BAD_MONTH"), (2, "BAD_MONTH")]
    over = parse(deliver(tmp_path / "o", "OVERRIDE", [record("OVERRIDE", to_month="20260401")]))
    assert quarantined(over) == [(1, "BAD_MONTH")]
    assert detail_of(over, 1) == "field 5 to_month: '20260401' is not a month YYYYMM"


def test_bad_integer(tmp_path):
    dat = deliver(tmp_path, "BILL", [record("BILL", amount_fen=v) for v in
                                     ["12.50", "+5", "1e3", " 5", "1234567890123456789", "-123456789012345678"]])
    parsed = parse(dat)
    assert quarantined(parsed) == [(i, "BAD_INTEGER") for i in range(1, 6)]
    assert detail_of(parsed, 1) == "field 4 amount_fen: '12.50' is not an integer"
    assert parsed.records["amount_fen"].to_list() == [-123456789012345678]     # 18 digits is the limit


def test_bad_value_acct(tmp_path):
    dat = deliver(tmp_path, "ACCT", [
        record("ACCT", msisdn="1381234567"),                              # 10 digits
        record("ACCT", subs_id="S2", cert_no="41010219800101123x"),       # lower-case x
        record("ACCT", subs_id="S3", cert_no="4101021980010112"),         # 16 digits
        record("ACCT", subs_id="S" + "1" * 20),                           # 21 characters
        record("ACCT", subs_id="S5", cust_id="C" * 21),
        record("ACCT", subs_id="S6", region_code="123456789"),            # 9 characters
        record("ACCT", subs_id="S7", cert_no="410102800101123"),          # 15 digits: fine
        record("ACCT", subs_id="S" + "1" * 19, region_code="12345678"),   # exactly 20 and 8: fine
    ])
    parsed = parse(dat)
    assert quarantined(parsed) == [(i, "BAD_VALUE") for i in range(1, 7)]
    assert detail_of(parsed, 1) == "field 2 msisdn: '1381234567' is not 11 digits"
    assert detail_of(parsed, 4) == "field 1 subs_id: 'S11111111111111111111' longer than 20 characters"
    assert parsed.records["line_no"].to_list() == [7, 8]


def test_bad_value_points_not_positive(tmp_path):
    dat = deliver(tmp_path, "REDEEM", [record("REDEEM", txn_id="R1", points="0"),
                                       record("REDEEM", txn_id="R2", points="-5"),
                                       record("REDEEM", txn_id="R3", points="1")])
    parsed = parse(dat)
    assert quarantined(parsed) == [(1, "BAD_VALUE"), (2, "BAD_VALUE")]
    assert detail_of(parsed, 2) == "field 4 points: '-5' is not positive"
    assert parsed.records["points"].to_list() == [1]


def test_bad_value_override_from_after_to(tmp_path):
    dat = deliver(tmp_path, "OVERRIDE", [record("OVERRIDE", from_month="202605", to_month="202603"),
                                         record("OVERRIDE", override_id="O2", from_month="202603", to_month="202603")])
    parsed = parse(dat)
    assert quarantined(parsed) == [(1, "BAD_VALUE")]
    assert detail_of(parsed, 1) == "fields 4-5 from_month/to_month: '202605' is after '202603'"


def test_month_mismatch(tmp_path):
    dat = deliver(tmp_path, "BILL", [record("BILL"), record("BILL", bill_month="202512")])
    parsed = parse(dat)
    assert quarantined(parsed) == [(2, "MONTH_MISMATCH")]
    assert detail_of(parsed, 2) == "field 2 bill_month: '202512' differs from the file's month 202601"


def test_future_date_events_after_the_delivery_day(tmp_path):
    # SUSP_20260115 delivered on 2026-01-15: the last second of that day is fine, midnight after is not.
    susp = parse(deliver(tmp_path / "s", "SUSP", [record("SUSP", event_id="E1", event_time="20260115235959"),
                                                  record("SUSP", event_id="E2", event_time="20260116000000")]))
    assert quarantined(susp) == [(2, "FUTURE_DATE")]
    assert detail_of(susp, 2) == "field 3 event_time: '20260116000000' is after the delivery day 2026-01-15"
    redeem = parse(deliver(tmp_path / "r", "REDEEM", [record("REDEEM", txn_time="20270101000000")]))
    assert quarantined(redeem) == [(1, "FUTURE_DATE")]
    # A file delivered late (landing folder 2026-01-17) may hold events of 2026-01-16.
    late = parse(deliver(tmp_path / "l", "SUSP", [record("SUSP", event_time="20260116120000")]),
                 day=date(2026, 1, 17))
    assert late.quarantine.height == 0


def test_future_date_acct_open_after_snapshot(tmp_path):
    dat = deliver(tmp_path, "ACCT", [record("ACCT", open_date="20260131"),
                                     record("ACCT", subs_id="S2", open_date="20260201")])
    parsed = parse(dat)
    assert quarantined(parsed) == [(2, "FUTURE_DATE")]


@pytest.mark.parametrize("kind", ["ACCT", "SUSP", "REDEEM", "OVERRIDE"])
def test_duplicate_key_keeps_the_first(tmp_path, kind):
    key, other = FIELDS[kind][0], FIELDS[kind][1]       # ACCT: subs_id, msisdn; others: their id, subs_id
    lines = [record(kind), record(kind, **{key: "K2"}),
             record(kind, **{other: "13900000000" if kind == "ACCT" else "S0000999"})]
    dat = deliver(tmp_path, kind, lines)
    parsed = parse(dat)
    assert quarantined(parsed) == [(3, "DUPLICATE_KEY")]
    assert raw_of(parsed, 3) == lines[2]
    assert detail_of(parsed, 3) == f"field 1 {key}: '{VALID[kind][0]}' already on line 1"
    first = parsed.records.filter(pl.col(key) == VALID[kind][0])
    assert first["line_no"].to_list() == [1] and first[other].item() == VALID[kind][1]


def test_duplicate_key_counts_only_loadable_records(tmp_path):
    # The first S0000101 is quarantined (bad brand), so the second is the first loadable one.
    dat = deliver(tmp_path, "ACCT", [record("ACCT", brand="FOO"), record("ACCT"), record("ACCT")])
    parsed = parse(dat)
    assert quarantined(parsed) == [(1, "BAD_ENUM"), (3, "DUPLICATE_KEY")]
    assert parsed.records["line_no"].to_list() == [2]


def test_bill_has_no_key(tmp_path):
    dat = deliver(tmp_path, "BILL", [record("BILL")] * 3)
    assert parse(dat).records["amount_fen"].to_list() == [18800, 18800, 18800]


def test_first_failing_check_gives_the_reason(tmp_path):
    dat = deliver(tmp_path, "ACCT", [
        record("ACCT", brand="FOO") + "|extra",                  # field count before anything else
        record("ACCT", subs_id="", brand="FOO"),                 # field 1 before field 6
        record("ACCT", subs_id="S3", brand="FOO", msisdn="1"),   # field 2 before field 6
        record("ACCT", subs_id="S4", open_date="20990101"),      # FUTURE_DATE, fields are fine
    ])
    parsed = parse(dat)
    assert quarantined(parsed) == [(1, "FIELD_COUNT"), (2, "MISSING_FIELD"), (3, "BAD_VALUE"), (4, "FUTURE_DATE")]


# --------------------------------------------------------------------------- bytes, encodings, lines

def test_nul_byte(tmp_path):
    payload = encode_records([record("BILL"), record("BILL"), record("BILL")]).replace(b"RENT", b"RE\x00T", 1)
    dat = deliver(tmp_path, "BILL", payload=payload)
    parsed = parse(dat)
    assert quarantined(parsed) == [(1, "NUL_BYTE")]
    assert raw_of(parsed, 1) == "S0000101|202601|RE\\x00T|18800"
    assert detail_of(parsed, 1) == "NUL byte at byte 19"      # 'S0000101|202601|RE' is 18 bytes


def test_line_too_long_counts_bytes_in_the_file_encoding(tmp_path):
    base = record("ACCT", cust_name="")
    # Chinese characters are 2 bytes in GBK (3 in UTF-8): this line has exactly 4096 GBK bytes and loads.
    pad = 4096 - len(base)
    name_fits = "王" * (pad // 2) + "a" * (pad % 2)
    assert len(record("ACCT", cust_name=name_fits).encode("gbk")) == 4096
    long_name = "a" * (4097 - len(record("ACCT", subs_id="S2", cust_name="")))     # one byte too many
    huge_name = "b" * 100_000
    lines = [record("ACCT", cust_name=name_fits), record("ACCT", subs_id="S2", cust_name=long_name),
             record("ACCT", subs_id="S3", cust_name=huge_name), record("ACCT", subs_id="S4")]
    dat = deliver(tmp_path, "ACCT", lines)
    parsed = parse(dat)
    assert quarantined(parsed) == [(2, "LINE_TOO_LONG"), (3, "LINE_TOO_LONG")]
    assert parsed.records["line_no"].to_list() == [1, 4]
    assert raw_of(parsed, 2) == lines[1][:4096] + "..."
    assert raw_of(parsed, 3) == lines[2][:4096] + "..."
    assert detail_of(parsed, 2) == "4097 bytes, more than 4096"


def test_crlf_tolerated(tmp_path):
    lines = [record("ACCT"), record("ACCT", subs_id="S2", manager_id="")]
    crlf = encode_records(lines).replace(b"\n", b"\r\n")
    parsed_crlf = parse(deliver(tmp_path / "a", "ACCT", payload=crlf))
    parsed_lf = parse(deliver(tmp_path / "b", "ACCT", lines))
    assert parsed_crlf.quarantine.height == 0
    assert parsed_crlf.records["manager_id"].to_list() == ["M007", None]   # '\r' stripped, empty -> null
    assert parsed_crlf.records.equals(parsed_lf.records)


def test_only_one_trailing_cr_is_stripped(tmp_path):
    payload = (record("BILL") + "\r\r\n").encode()
    parsed = parse(deliver(tmp_path, "BILL", payload=payload))
    assert quarantined(parsed) == [(1, "BAD_INTEGER")]     # amount '18800\r'


def test_bom_tolerated(tmp_path):
    lines = [record("ACCT"), record("ACCT", subs_id="S2")]
    parsed = parse(deliver(tmp_path, "ACCT", payload=b"\xef\xbb\xbf" + encode_records(lines, "UTF-8"),
                           encoding="UTF-8"), encoding="UTF-8")
    assert parsed.quarantine.height == 0
    assert parsed.records["subs_id"].to_list() == ["S0000101", "S2"]     # no '\ufeff' glued to the first id


def test_utf8_declared_file_among_gbk_ones(tmp_path):
    lines = [record("ACCT"), record("ACCT", subs_id="S2", cust_name="李娜")]
    gbk = parse(deliver(tmp_path / "g", "ACCT", lines, "GBK"), "GBK")
    utf8 = parse(deliver(tmp_path / "u", "ACCT", lines, "UTF-8"), "UTF-8")
    assert utf8.records["cust_name"].to_list() == ["王伟", "李娜"]
    assert utf8.records.equals(gbk.records)


def test_gbk_bytes_declared_utf8_are_decode_errors(tmp_path):
    lines = [record("ACCT", cust_name="Wang"), record("ACCT", subs_id="S2"), record("ACCT", subs_id="S3",
                                                                                  cust_name="Li")]
    dat = deliver(tmp_path, "ACCT", payload=encode_records(lines, "GBK"), encoding="UTF-8")
    parsed = parse(dat, "UTF-8")
    assert quarantined(parsed) == [(2, "DECODE_ERROR")]
    # 王伟 is CD F5 CE B0 in GBK; CD F5 is not UTF-8 (escaped), CE B0 happens to be UTF-8 for 'ΰ'.
    assert raw_of(parsed, 2) == "S2|13812345678|C0000051|\\xcd\\xf5ΰ|" + lines[1].split("|", 4)[4]
    assert detail_of(parsed, 2).startswith("not valid UTF-8: byte 25 ")   # 'S2|13812345678|C0000051|' = 24
    assert parsed.records["subs_id"].to_list() == ["S0000101", "S3"]


def test_undecodable_gbk(tmp_path):
    payload = encode_records([record("BILL"), record("BILL")]) + b"S1|202601|\x81\x20|1\n" + \
        encode_records([record("BILL")])
    parsed = parse(deliver(tmp_path, "BILL", payload=payload))
    assert quarantined(parsed) == [(3, "DECODE_ERROR")]
    assert raw_of(parsed, 3) == "S1|202601|\\x81 |1"
    assert parsed.records["line_no"].to_list() == [1, 2, 4]


def test_file_without_final_newline(tmp_path):
    payload = encode_records([record("BILL")]) + record("BILL", amount_fen="-1").encode()
    parsed = parse(deliver(tmp_path, "BILL", payload=payload))
    assert parsed.record_count == 2
    assert parsed.records["amount_fen"].to_list() == [18800, -1]


def test_empty_file(tmp_path):
    parsed = parse(deliver(tmp_path, "ACCT", payload=b""))
    assert parsed.record_count == 0
    assert parsed.records.height == 0 and parsed.quarantine.height == 0
    assert parsed.records.columns == FIELDS["ACCT"] + ["line_no"]
    assert parsed.quarantine.schema == pl.Schema({"line_no": pl.Int64, "raw_text": pl.String,
                                                  "reason": pl.String, "detail": pl.String})


def test_file_holding_only_a_bom_is_empty(tmp_path):
    assert parse(deliver(tmp_path, "BILL", payload=b"\xef\xbb\xbf")).record_count == 0


@pytest.mark.parametrize("encoding", ["GBK", "UTF-8"])
def test_truncated_multibyte_character_at_the_end(tmp_path, encoding):
    full = encode_records([record("ACCT"), record("ACCT", subs_id="S2")], encoding)
    truncated = full[:full.rindex("伟".encode(encoding.lower())) + 1]    # file cut inside the last character
    parsed = parse(deliver(tmp_path, "ACCT", payload=truncated, encoding=encoding), encoding)
    assert parsed.record_count == 2
    assert quarantined(parsed) == [(2, "DECODE_ERROR")]
    assert raw_of(parsed, 2).startswith("S2|13812345678|C0000051|王\\x")
    assert parsed.records["subs_id"].to_list() == ["S0000101"]


def test_records_and_quarantine_keep_file_order(tmp_path):
    lines = [record("BILL", amount_fen=str(i)) if i % 3 else "bad" for i in range(1, 31)]
    parsed = parse(deliver(tmp_path, "BILL", lines))
    assert parsed.records["amount_fen"].to_list() == [i for i in range(1, 31) if i % 3]
    assert parsed.quarantine["line_no"].to_list() == [3, 6, 9, 12, 15, 18, 21, 24, 27, 30]


# ---------------------------------------------------------------------------------- chunk boundaries

def hostile_payload(encoding: str) -> bytes:
    lines = [record("ACCT", subs_id=f"S{i}", cust_name="王伟" * (1 + i % 4)) for i in range(40)]
    lines[5] = record("ACCT", subs_id="S5", brand="FOO")
    lines[9] = ""
    lines[12] = record("ACCT", subs_id="S3")                                 # duplicate of line 4
    lines[20] = record("ACCT", subs_id="S20", cust_name="x" * 5000)          # too long, still held whole
    lines[25] = record("ACCT", subs_id="S25", cust_name="y" * 40_000)        # too long, head kept only
    payload = encode_records(lines, encoding).replace(b"S30|", b"S30\x00|")
    payload = payload.replace(b"\nS33|", b"\r\nS33|")                        # line 33 ends in CRLF
    payload = payload.replace(b"\nS26|", b"\r\nS26|")                        # so does the 40 000-byte one
    payload = payload.replace(b"S35|", b"S35|\xff" if encoding == "GBK" else b"S35|\xcd\xf5")
    payload = payload.replace(b"S37|", b"S37|" + b"\xff" * 3)
    bom = b"\xef\xbb\xbf" if encoding == "UTF-8" else b""
    # The last line has no newline and ends inside a multibyte character.
    return bom + payload + "S40|末行".encode(encoding.lower())[:-1]


@pytest.mark.parametrize("encoding", ["GBK", "UTF-8"])
def test_chunk_size_does_not_change_the_result(tmp_path, encoding):
    dat = deliver(tmp_path, "ACCT", payload=hostile_payload(encoding), encoding=encoding)
    whole = parse(dat, encoding)
    assert whole.record_count == 41
    assert quarantined(whole) == [(6, "BAD_ENUM"), (10, "FIELD_COUNT"), (13, "DUPLICATE_KEY"),
                                  (21, "LINE_TOO_LONG"), (26, "LINE_TOO_LONG"), (31, "NUL_BYTE"),
                                  (36, "DECODE_ERROR"), (38, "DECODE_ERROR"), (41, "DECODE_ERROR")]
    assert detail_of(whole, 13) == "field 1 subs_id: 'S3' already on line 4"
    assert whole.records.filter(pl.col("line_no") == 33)["manager_id"].item() == "M007"   # '\r' stripped
    assert detail_of(whole, 26).startswith(f"{len(record('ACCT', subs_id='S25', cust_name='y' * 40_000))} bytes")
    for chunk_bytes in (1, 2, 3, 5, 64, 1000, 4097, 20_000):
        chunked = parse(dat, encoding, chunk_bytes=chunk_bytes)
        assert chunked.record_count == whole.record_count
        assert chunked.records.equals(whole.records), chunk_bytes
        assert chunked.quarantine.equals(whole.quarantine), chunk_bytes


def test_an_overlong_line_is_never_held_whole():
    # Memory stays bounded: of a 1 MB line only the head needed for raw_text is kept, with its true size.
    from transforms.ingest.extracts import _HEAD_BYTES, _iter_pieces, _Overlong
    fh = io.BytesIO(b"a|b\n" + b"x" * 1_000_000 + b"\r\nc|d")
    assert list(_iter_pieces(fh, 4096)) == [b"a|b", _Overlong(b"x" * _HEAD_BYTES, 1_000_000), b"c|d"]


# --------------------------------------------------------------------------------- parsing by byte ranges

def test_a_file_parsed_in_byte_ranges_is_the_file_parsed_whole(tmp_path):
    """What separate processes parse of a BILL file (flows.dask), or a loader takes part by part, joined in
    order, is what parse_extract reads: the same records and quarantine rows with the same line numbers, whatever
    falls on a range's edge (the BOM, an overlong line, an undecodable line, CRLF, an empty line, a last line
    without a newline)."""
    good = [record("BILL", subs_id=f"S{n:07d}", amount_fen=str(n)).encode("gbk") for n in range(1, 60)]
    lines = good[:5] + [b""] + good[5:20] + [b"S1|202601|RENT|" + b"9" * 40000] + good[20:30] \
        + [b"S2|202601|RENT|\xff\xfe"] + [g + b"\r" for g in good[30:45]] + [b"S3|202601|NOPE|1"] + good[45:]
    dat = deliver(tmp_path, "BILL", payload=b"\xef\xbb\xbf" + b"\n".join(lines))  # no newline at the end
    whole = parse(dat, chunk_bytes=256)
    assert [r for _, r in quarantined(whole)] == ["FIELD_COUNT", "LINE_TOO_LONG", "DECODE_ERROR", "BAD_ENUM"]
    name = parse_extract_name(dat.name)
    # The parts a loader takes one at a time (extracts.parse_extract_parts): numbered in the file, in order.
    chunks = list(parse_extract_parts(dat, name, "GBK", DELIVERY_DAY["BILL"], chunk_bytes=256))
    assert len(chunks) > 5 and sum(c.record_count for c in chunks) == len(lines)
    joined = join_parts(chunks, whole.records.schema)
    assert joined.records.equals(whole.records) and joined.quarantine.equals(whole.quarantine)
    for parts in (1, 2, 3, 7, 40, 500):
        ranges = line_ranges(dat, parts)
        assert ranges[0][0] == 0 and ranges[-1][1] == dat.stat().st_size
        assert all(a[1] == b[0] for a, b in zip(ranges, ranges[1:]))
        assert len(ranges) <= parts
        joined = join_parts(follow_on(parse_extract_range(dat, name, "GBK", DELIVERY_DAY["BILL"], start, end,
                                                          chunk_bytes=256) for start, end in ranges),
                            whole.records.schema)
        assert joined.record_count == whole.record_count == len(lines)
        assert joined.records.equals(whole.records), parts
        assert joined.quarantine.equals(whole.quarantine), parts


def test_a_kind_with_a_key_is_never_parsed_in_ranges(tmp_path):
    dat = deliver(tmp_path, "SUSP", [record("SUSP")])
    with pytest.raises(ValueError, match="SUSP has a key"):
        parse_extract_range(dat, parse_extract_name(dat.name), "GBK", DELIVERY_DAY["SUSP"], 0, dat.stat().st_size)


def test_read_ahead_keeps_order_raises_the_producers_error_and_stops_with_its_consumer():
    from transforms.ingest.extracts import read_ahead
    assert list(read_ahead(iter(range(50)), depth=3)) == list(range(50))

    def failing():
        yield 1
        raise ValueError("line 7 of BILL_202601.dat: disk gone")
    with pytest.raises(ValueError, match="disk gone"):
        list(read_ahead(failing()))

    produced = []
    def endless():
        n = 0
        while True:
            produced.append(n)
            yield n
            n += 1
    items = read_ahead(endless(), depth=1)
    assert [next(items), next(items)] == [0, 1]
    items.close()                    # the consumer stops: so does the producer, a part or two ahead at most
    stopped_at = len(produced)
    time.sleep(0.2)
    assert stopped_at <= 5 and len(produced) == stopped_at
