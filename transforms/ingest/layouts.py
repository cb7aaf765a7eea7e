"""The extract interface of extracts.md: file names, record layouts and the value sets of their fields.

The one place where the fields of each extract kind, the BILL item codes and the enum values are written down;
parsing (transforms.ingest.extracts), the raw tables, the quality gates, the monthly aggregates and the synthetic
generator all read them from here.
"""
from __future__ import annotations

import re
from dataclasses import dataclass
from typing import TYPE_CHECKING

from transforms.core.calendar import Month, parse_day

if TYPE_CHECKING:
    import polars as pl

KINDS = ("ACCT", "BILL", "SUSP", "REDEEM", "OVERRIDE")
_NAME_RE = re.compile(r"\A(ACCT|BILL|SUSP|REDEEM|OVERRIDE)_([0-9]{6}|[0-9]{8})\.dat\Z")

BRANDS = ("GOTONE", "MZONE", "EASYOWN")                              # 全球通 / 动感地带 / 神州行
SUBS_TYPES = ("PERSONAL", "IOT", "DATACARD", "TEST", "FIXEDWL")
STATUSES = ("NORMAL", "SUSPENDED", "CANCELLED")
BILL_ITEMS = ("RENT", "VOICE", "DATA", "SMS", "ROAM", "VAS", "DISCOUNT", "ADJUST", "GIFT", "DEPOSIT")
EXCLUDED_FROM_CONSUMPTION = ("GIFT", "DEPOSIT")                     # gifted credit and deposits are no spending
SUSP_TYPES = ("ARREARS_ONEWAY", "ARREARS_TWOWAY", "REQUEST", "LOSS")
FLAGS = ("Y", "N")
REVOKED_TIER = "NONE"                                               # an OVERRIDE of tier NONE revokes it


@dataclass(frozen=True)
class ExtractName:
    kind: str            # one of KINDS
    period: str          # 'YYYYMMDD' (ACCT/SUSP/REDEEM/OVERRIDE) or 'YYYYMM' (BILL)
    file_name: str       # e.g. 'BILL_202601.dat'


def parse_extract_name(file_name: str) -> ExtractName:
    """Validates an extract file name (a bare name, no folder); raises ValueError naming the file."""
    match = _NAME_RE.match(file_name)
    if not match:
        raise ValueError(f"unknown extract file name {file_name!r}: expected e.g. BILL_YYYYMM.dat, ACCT_YYYYMMDD.dat")
    kind, period = match.groups()
    expected_digits = 6 if kind == "BILL" else 8
    if len(period) != expected_digits:
        raise ValueError(f"invalid extract file name {file_name!r}: {kind} needs a {expected_digits}-digit period")
    try:
        Month.parse(period) if kind == "BILL" else parse_day(period)
    except ValueError as exc:
        raise ValueError(f"invalid extract file name {file_name!r}: {exc}") from None
    return ExtractName(kind, period, file_name)


# ------------------------------------------------------------------------------------- record layouts

@dataclass(frozen=True)
class Field:
    name: str
    type: str = "text"                          # text | enum | flag | date | timestamp | month | integer
    required: bool = True
    choices: tuple[str, ...] = ()               # enum values (BAD_ENUM)
    max_chars: int | None = None                # BAD_VALUE when longer
    pattern: tuple[str, str] | None = None      # (regex, what it means): BAD_VALUE when not matching
    positive: bool = False                      # BAD_VALUE when <= 0


_SUBS_ID = Field("subs_id", max_chars=20)

LAYOUTS: dict[str, tuple[Field, ...]] = {
    "ACCT": (
        _SUBS_ID,
        Field("msisdn", pattern=(r"^[0-9]{11}$", "is not 11 digits")),
        Field("cust_id", max_chars=20),
        Field("cust_name"),
        Field("cert_no", pattern=(r"^([0-9]{15}|[0-9]{17}[0-9X])$", "is not 15 digits or 17 digits + [0-9X]")),
        Field("brand", "enum", choices=BRANDS),
        Field("subs_type", "enum", choices=SUBS_TYPES),
        Field("status", "enum", choices=STATUSES),
        Field("open_date", "date"),
        Field("cancel_date", "date", required=False),
        Field("realname_flag", "flag", choices=FLAGS),
        Field("group_key_flag", "flag", choices=FLAGS),
        Field("vip_flag", "flag", choices=FLAGS),
        Field("region_code", max_chars=8),
        Field("manager_id", required=False),
    ),
    "BILL": (
        _SUBS_ID,
        Field("bill_month", "month"),
        Field("item_code", "enum", choices=BILL_ITEMS),
        Field("amount_fen", "integer"),
    ),
    "SUSP": (
        Field("event_id"),
        _SUBS_ID,
        Field("event_time", "timestamp"),
        Field("susp_type", "enum", choices=SUSP_TYPES),
    ),
    "REDEEM": (
        Field("txn_id"),
        _SUBS_ID,
        Field("txn_time", "timestamp"),
        Field("points", "integer", positive=True),
        Field("channel"),
    ),
    "OVERRIDE": (
        Field("override_id"),
        _SUBS_ID,
        Field("tier"),
        Field("from_month", "month"),
        Field("to_month", "month"),
        Field("reason"),
        Field("approved_by"),
    ),
}

# Key unique within a file: the first occurrence is loaded, later ones are DUPLICATE_KEY. BILL has none.
KEYS = {"ACCT": "subs_id", "SUSP": "event_id", "REDEEM": "txn_id", "OVERRIDE": "override_id"}


def record_schema(kind: str) -> dict[str, pl.DataType]:
    """Columns and dtypes of ParsedFile.records for a kind."""
    import polars as pl  # here: the names and layouts are read before any file is (in_use.to_read)

    dtypes = {"text": pl.String, "enum": pl.String, "flag": pl.Boolean, "date": pl.Date,
              "timestamp": pl.Datetime("us"), "month": pl.Date, "integer": pl.Int64}
    schema = {f.name: dtypes[f.type] for f in LAYOUTS[kind]}
    schema["line_no"] = pl.Int64
    return schema




def field_names(kind: str) -> list[str]:
    """The fields of a kind's records, in file order."""
    return [f.name for f in LAYOUTS[kind]]
