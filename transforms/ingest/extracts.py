"""Parsing delivered BOSS extract files into typed records plus a quarantine (spec: extracts.md).

Pure: reads one `.dat` file, writes nothing. The caller verifies the control file first, then compares
`record_count` with it and applies the quarantine threshold.

How a file is read, so that a 1.5 GB BILL file parses in bounded memory and without a Python loop per line:
- the file is read in chunks of `CHUNK_BYTES`, each cut after its last newline (a line is never split);
  a line longer than `_HEAD_BYTES` is never held whole (its head is kept for raw_text);
- line offsets, line lengths and NUL bytes are found with numpy on the raw chunk;
- the chunk is decoded in one call, and not even copied when it is ASCII (which GBK shares) or valid UTF-8;
  only a chunk that fails to decode is decoded run by run, cut at each offending line;
- lines become an Arrow string array over the chunk's UTF-8 buffer (from the newline offsets), and are split
  into fields, typed and validated with Polars expressions.

A line gets the first reason that applies, in this order:
  LINE_TOO_LONG, NUL_BYTE, DECODE_ERROR, FIELD_COUNT, then field by field in field order
  (MISSING_FIELD, then BAD_ENUM / BAD_DATE / BAD_TIMESTAMP / BAD_MONTH / BAD_INTEGER, then BAD_VALUE),
  then the checks against the file (MONTH_MISMATCH, FUTURE_DATE), then the cross-field check
  (OVERRIDE from_month > to_month: BAD_VALUE), and last DUPLICATE_KEY among the otherwise valid records.
Non-positive REDEEM points are BAD_VALUE (no separate code). Dates, timestamps and months must lie in
years 1900-9999. Months (bill_month, from_month, to_month) are typed as the first day of the month.
subs_id is at most 20 characters in every kind, not only ACCT.

raw_text is the line without its '\\n' and one trailing '\\r'; undecodable bytes and NULs appear as \\xNN.
A file holding only a BOM has no records.
"""
from __future__ import annotations

import threading
from dataclasses import dataclass
from datetime import date, datetime, timedelta
from pathlib import Path
from queue import Full, Queue
from typing import BinaryIO, Iterable, Iterator

import numpy as np
import polars as pl
import pyarrow as pa

from transforms.core.calendar import Month, parse_day
from transforms.ingest.layouts import KEYS, LAYOUTS, ExtractName, Field, record_schema

CHUNK_BYTES = 16 << 20          # bytes read at a time (as fast as 64 MB, a third less peak memory)
MAX_LINE_BYTES = 4096           # longer lines are LINE_TOO_LONG (length without '\n' and trailing '\r')
RAW_TEXT_CHARS = 4096           # a too-long line's raw_text keeps this many characters, then '...'
# Bytes kept of a too-long line: enough for RAW_TEXT_CHARS characters whatever the encoding or escaping
# (a character is at most 4 bytes, an escaped byte 4 characters), plus '\r\n'.
_HEAD_BYTES = 4 * RAW_TEXT_CHARS + 2

_BOM = b"\xef\xbb\xbf"
_CODECS = {"GBK": "gbk", "UTF-8": "utf-8"}

_YEAR = r"(19|[2-9][0-9])[0-9]{2}"
_MONTH = r"(0[1-9]|1[0-2])"
_DAY = r"(0[1-9]|[12][0-9]|3[01])"
_DATE_RE = rf"^{_YEAR}{_MONTH}{_DAY}$"
_TIMESTAMP_RE = rf"^{_YEAR}{_MONTH}{_DAY}([01][0-9]|2[0-3])[0-5][0-9][0-5][0-9]$"
_MONTH_RE = rf"^{_YEAR}{_MONTH}$"
_INTEGER_RE = r"^-?[0-9]{1,18}$"

QUARANTINE_SCHEMA = {"line_no": pl.Int64, "raw_text": pl.String, "reason": pl.String, "detail": pl.String}


@dataclass
class ParsedFile:
    records: pl.DataFrame     # typed columns (record_schema) + line_no, in file order
    quarantine: pl.DataFrame  # line_no, raw_text, reason, detail, in file order
    record_count: int         # lines found in the file (= records.height + quarantine.height)


# ------------------------------------------------------------------------------------------- parsing

def parse_extract(dat_path: Path, name: ExtractName, encoding: str, delivery_day: date,
                  *, chunk_bytes: int = CHUNK_BYTES) -> ParsedFile:
    """Parses one delivered extract; `encoding` is the control file's, `delivery_day` its landing folder's."""
    with open(dat_path, "rb") as fh:
        parsed = join_parts(_parsed_chunks(fh, name, encoding, delivery_day, chunk_bytes),
                            record_schema(name.kind))
        # Same handle: duplicate lines are re-read from the very file parsed, even if replaced meanwhile.
        records, duplicates = _split_duplicate_keys(parsed.records, name.kind, fh, _CODECS[encoding], chunk_bytes)
    return ParsedFile(records, _concat([parsed.quarantine, duplicates], QUARANTINE_SCHEMA).sort("line_no"),
                      parsed.record_count)


def parse_extract_parts(dat_path: Path, name: ExtractName, encoding: str, delivery_day: date,
                        *, chunk_bytes: int = CHUNK_BYTES) -> Iterator[ParsedFile]:
    """parse_extract in parts following each other in file order (lines numbered in the file, each part's
    quarantine sorted), for a loader that never holds a big file whole: a kind without a key (BILL) one part per
    chunk read, a kind with a key one part (its duplicate keys can only be found over the whole file)."""
    if name.kind in KEYS:
        yield parse_extract(dat_path, name, encoding, delivery_day, chunk_bytes=chunk_bytes)
        return
    with open(dat_path, "rb") as fh:
        # The next part is parsed while the caller loads this one (Polars and DuckDB release the GIL).
        yield from read_ahead(_parsed_chunks(fh, name, encoding, delivery_day, chunk_bytes))


def read_ahead(items: Iterator, depth: int = 1) -> Iterator:
    """The items of `items`, produced by a thread up to `depth` items ahead of the consumer. An error in the
    producer is raised in the consumer; a consumer that stops early stops the producer (and waits for it)."""
    handed: Queue = Queue(maxsize=depth)
    stop = threading.Event()

    def put(entry) -> bool:
        while not stop.is_set():
            try:
                handed.put(entry, timeout=0.05)
                return True
            except Full:
                pass
        return False

    def produce() -> None:
        try:
            for item in items:
                if not put((True, item)):
                    return
        except BaseException as error:  # handed to the consumer, raised there
            put((False, error))
            return
        put((False, None))

    producer = threading.Thread(target=produce, name="read-ahead", daemon=True)
    producer.start()
    try:
        while True:
            more, item = handed.get()
            if more:
                yield item
            elif item is None:
                return
            else:
                raise item
    finally:
        stop.set()
        producer.join()


def join_parts(parts: Iterable[ParsedFile], schema: dict) -> ParsedFile:
    """One ParsedFile of parts that follow each other (line numbers already the whole's); `schema` the records'."""
    parts = list(parts)
    return ParsedFile(_concat([p.records for p in parts], schema),
                      _concat([p.quarantine for p in parts], QUARANTINE_SCHEMA),
                      sum(p.record_count for p in parts))


# --- a file in byte ranges (parsed by separate processes: flows.dask) ------------------------------------------

def line_ranges(dat_path: Path, parts: int) -> list[tuple[int, int]]:
    """[start, end) byte ranges of about equal size covering the file, each beginning at the start of a line
    (the first at 0); fewer than `parts` when the file has fewer line starts."""
    size = dat_path.stat().st_size
    starts = [0]
    with open(dat_path, "rb") as fh:
        for k in range(1, parts):
            at = max(size * k // parts, starts[-1])
            fh.seek(at)
            while (block := fh.read(1 << 16)) and (newline := block.find(b"\n")) < 0:
                at += len(block)
            if not block or at + newline + 1 >= size:
                break
            starts.append(at + newline + 1)
    return list(zip(starts, starts[1:] + [size]))


def parse_extract_range(dat_path: Path, name: ExtractName, encoding: str, delivery_day: date, start: int,
                        end: int, *, chunk_bytes: int = CHUNK_BYTES) -> ParsedFile:
    """parse_extract of the lines in bytes [start, end) of the file (a range of line_ranges), numbered from 1
    within the range. Only for kinds without a key: duplicates can only be found over the whole file."""
    if name.kind in KEYS:
        raise ValueError(f"{name.kind} has a key ({KEYS[name.kind]}): parse it whole, not by ranges")
    with open(dat_path, "rb") as fh:
        fh.seek(start)
        return join_parts(_parsed_chunks(_Range(fh, end - start), name, encoding, delivery_day, chunk_bytes,
                                         at_file_start=start == 0), record_schema(name.kind))


def follow_on(ranges: Iterable[ParsedFile]) -> Iterator[ParsedFile]:
    """The parsed ranges of a file (lines numbered within each range), in file order, numbered in the file."""
    offset = 0
    for part in ranges:
        yield ParsedFile(part.records.with_columns(pl.col("line_no") + offset),
                         part.quarantine.with_columns(pl.col("line_no") + offset), part.record_count)
        offset += part.record_count


class _Range:
    """The next `size` bytes of a file, as a file to read."""
    def __init__(self, fh: BinaryIO, size: int):
        self._fh, self._left = fh, size

    def read(self, n: int) -> bytes:
        data = self._fh.read(min(n, self._left))
        self._left -= len(data)
        return data


def _parsed_chunks(fh, name: ExtractName, encoding: str, delivery_day: date, chunk_bytes: int,
                   at_file_start: bool = True) -> Iterator[ParsedFile]:
    """What `fh` reads, parsed block by block (records, quarantine without duplicate keys, sorted), in order."""
    if encoding not in _CODECS:
        raise ValueError(f"unknown encoding {encoding!r}: expected one of {', '.join(_CODECS)}")
    codec = _CODECS[encoding]
    layout = LAYOUTS[name.kind]
    checks = _record_checks(name, delivery_day)
    no_records = pl.DataFrame(schema=record_schema(name.kind))
    next_line = 1
    for piece in _iter_pieces(fh, chunk_bytes, at_file_start):
        if isinstance(piece, _Overlong):
            yield ParsedFile(no_records, _bad_lines_frame([_too_long_row(next_line, piece.head, piece.size, codec)]), 1)
            next_line += 1
            continue
        lines, bad_rows, n_lines = _decode_block(piece, next_line, codec)
        records, quarantine = no_records, [_bad_lines_frame(bad_rows)]
        if lines is not None:
            records, rejected = _parse_lines(lines, layout, checks)
            quarantine.append(rejected)
        quarantine = _concat(quarantine, QUARANTINE_SCHEMA)
        yield ParsedFile(records, quarantine.sort("line_no") if bad_rows else quarantine, n_lines)
        next_line += n_lines


def _concat(parts: list[pl.DataFrame], schema: dict) -> pl.DataFrame:
    parts = [p for p in parts if p.height]
    if not parts:
        return pl.DataFrame(schema=schema)
    return pl.concat(parts, rechunk=False) if len(parts) > 1 else parts[0]


# ---------------------------------------------------------------------------------------- reading

@dataclass(frozen=True)
class _Overlong:
    """A line too long to keep in memory: its first bytes and its full length (without '\\n')."""
    head: bytes
    size: int


def _iter_pieces(fh: BinaryIO, chunk_bytes: int, at_file_start: bool = True) -> Iterator[bytes | _Overlong]:
    """Yields blocks of whole lines (joined by '\\n', without the last '\\n') and overlong lines, in order.

    A leading UTF-8 BOM is dropped (at the start of the file only). A final line without '\\n' is a line; an
    empty file yields nothing. A line longer than _HEAD_BYTES is never held whole: its head is kept and the rest
    skipped.
    """
    pending = fh.read(len(_BOM))
    if pending == _BOM and at_file_start:
        pending = b""
    skipping = False          # inside an overlong line: pending is its head, the rest is skipped
    skipped_size, last_byte = 0, b""
    while block := fh.read(chunk_bytes):
        if skipping:
            newline = block.find(b"\n")
            if newline < 0:
                skipped_size, last_byte = skipped_size + len(block), block[-1:]
                continue
            last_byte = block[newline - 1:newline] if newline else last_byte
            yield _Overlong(pending, skipped_size + newline - (last_byte == b"\r"))
            pending, skipping = b"", False
            block = block[newline + 1:]
        data = pending + block if pending else block
        cut = data.rfind(b"\n")
        if cut >= 0:
            yield data[:cut]
            pending = data[cut + 1:]
        else:
            pending = data
        if len(pending) > _HEAD_BYTES:
            skipping, skipped_size, last_byte = True, len(pending), pending[-1:]
            pending = pending[:_HEAD_BYTES]
    if skipping:
        yield _Overlong(pending, skipped_size - (last_byte == b"\r"))
    elif pending:
        # Only the BOM probe can leave newlines here (a file shorter than 3 bytes).
        yield pending[:-1] if pending.endswith(b"\n") else pending


def _newlines(arr: np.ndarray) -> np.ndarray:
    return (arr == 10).nonzero()[0]


def _line_bounds(arr: np.ndarray, newlines: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Start and end offsets (end excludes '\\n' and a trailing '\\r') of every line of a block."""
    starts = np.concatenate(([0], newlines + 1))
    ends = np.concatenate((newlines, [arr.size]))
    if arr.size:
        last = arr[np.maximum(ends - 1, 0)]
        ends = ends - ((ends > starts) & (last == 13))
    return starts, ends


def _decode_block(data: bytes, first_line: int, codec: str) -> tuple[pl.DataFrame | None, list[tuple], int]:
    """Decodes a block of whole lines. Returns the clean lines (line_no, raw_text) as a frame, the
    quarantine rows of lines that are too long, hold NUL bytes or do not decode, and the number of lines."""
    arr = np.frombuffer(data, dtype=np.uint8)
    newlines = _newlines(arr)
    starts, ends = _line_bounds(arr, newlines)
    n_lines = starts.size
    bad = _byte_defects(data, arr, starts, ends, first_line, codec)
    utf8 = _utf8_fast(data, codec)
    if utf8 is None:
        utf8 = _utf8_line_by_line(data, starts, ends, codec, first_line, bad)
    if utf8 is not data:
        newlines = _newlines(np.frombuffer(utf8, dtype=np.uint8))
    lines = pl.DataFrame({"line_no": np.arange(first_line, first_line + n_lines, dtype=np.int64),
                          "raw_text": _split_lines(utf8, newlines)})
    if bad:
        keep = np.ones(n_lines, dtype=bool)
        keep[list(bad)] = False
        lines = lines.filter(pl.Series(keep))
    return (lines if lines.height else None), [bad[i] for i in sorted(bad)], n_lines


def _byte_defects(data: bytes, arr: np.ndarray, starts: np.ndarray, ends: np.ndarray, first_line: int,
                  codec: str) -> dict[int, tuple]:
    """Quarantine rows (by line index) of lines holding a NUL byte or too long; too long wins."""
    bad: dict[int, tuple] = {}
    if data.find(b"\x00") >= 0:
        for i in np.unique(np.searchsorted(starts, (arr == 0).nonzero()[0], side="right") - 1).tolist():
            line = data[starts[i]:ends[i]]
            bad[i] = (first_line + i, _escaped(line, codec), "NUL_BYTE", f"NUL byte at byte {line.find(0) + 1}")
    for i in (ends - starts > MAX_LINE_BYTES).nonzero()[0].tolist():
        head = data[starts[i]:min(ends[i], starts[i] + _HEAD_BYTES)]
        bad[i] = _too_long_row(first_line + i, head, int(ends[i] - starts[i]), codec)
    return bad


def _utf8_fast(data: bytes, codec: str) -> bytes | None:
    """The block as UTF-8 bytes in one call (no copy for ASCII, which GBK shares, or valid UTF-8);
    None when some line does not decode."""
    if data.isascii():
        return data
    try:
        text = data.decode(codec)
    except UnicodeDecodeError:
        return None
    return data if codec == "utf-8" else text.encode("utf-8")


def _utf8_line_by_line(data: bytes, starts: np.ndarray, ends: np.ndarray, codec: str, first_line: int,
                       bad: dict[int, tuple]) -> bytes:
    """Slow path for a block that does not decode: decodes runs of lines, adds DECODE_ERROR rows to `bad`
    and returns UTF-8 bytes with the same lines, every bad line left empty (it is filtered out later)."""
    parts: list[str] = []
    view = memoryview(data)
    lo = 0
    for stop in sorted(bad) + [starts.size]:
        _decode_run(view, starts, ends, lo, stop, codec, first_line, parts, bad)
        if stop < starts.size:
            parts.append("")
        lo = stop + 1
    return "\n".join(parts).encode("utf-8")


def _decode_run(view: memoryview, starts: np.ndarray, ends: np.ndarray, lo: int, hi: int, codec: str,
                first_line: int, parts: list[str], bad: dict[int, tuple]) -> None:
    """Decodes lines lo..hi-1 in one call; a line that fails is quarantined (an empty part stands in
    for it) and decoding resumes after it.

    Neither codec can hold '\\n' inside a multibyte character, so the first error is always inside the
    line it points at and every line before it decodes on its own.
    """
    while lo < hi:
        begin = int(starts[lo])
        end = int(starts[hi]) - 1 if hi < starts.size else len(view)   # keeps a '\r', stripped later
        try:
            parts.append(str(view[begin:end], codec))
            return
        except UnicodeDecodeError as exc:
            failed = int(np.searchsorted(starts, begin + exc.start, side="right")) - 1
        if failed > lo:
            parts.append(str(view[begin:int(starts[failed]) - 1], codec))
        line = bytes(view[int(starts[failed]):int(ends[failed])])
        bad[failed] = (first_line + failed, _escaped(line, codec), "DECODE_ERROR", _decode_detail(line, codec))
        parts.append("")
        lo = failed + 1


def _split_lines(utf8: bytes, newlines: np.ndarray) -> pl.Series:
    """One string per line, built on the block's buffer from the newline offsets (no Python per line)."""
    offsets = np.empty(newlines.size + 2, dtype=np.int64)
    offsets[0], offsets[-1] = 0, len(utf8)
    offsets[1:-1] = newlines + 1
    lines = pa.LargeStringArray.from_buffers(newlines.size + 1, pa.py_buffer(offsets), pa.py_buffer(utf8))
    return pl.Series(lines).str.strip_suffix("\n").str.strip_suffix("\r")


def _escaped(line: bytes, codec: str) -> str:
    """Line text with undecodable bytes and NULs shown as \\xNN escapes."""
    return line.decode(codec, errors="backslashreplace").replace("\x00", "\\x00")


def _decode_detail(line: bytes, codec: str) -> str:
    try:
        line.decode(codec)
    except UnicodeDecodeError as exc:
        return f"not valid {codec.upper()}: byte {exc.start + 1} ({exc.reason})"
    return f"not valid {codec.upper()}"


def _too_long_row(line_no: int, head: bytes, size: int, codec: str) -> tuple:
    text = _escaped(head[:4 * RAW_TEXT_CHARS], codec)[:RAW_TEXT_CHARS] + "..."
    return (line_no, text, "LINE_TOO_LONG", f"{size} bytes, more than {MAX_LINE_BYTES}")


def _bad_lines_frame(rows: list[tuple]) -> pl.DataFrame:
    return pl.DataFrame(rows, schema=QUARANTINE_SCHEMA, orient="row")


# ------------------------------------------------------------------------------------- validation

@dataclass(frozen=True)
class _Check:
    reason: str
    failed: pl.Expr           # True where the record fails (null counts as passing)
    detail: pl.Expr


def _field_value(number: int, name: str, message: str) -> pl.Expr:
    """Detail "field 6 brand: 'FOO' not in ..." for the raw value of a field."""
    return pl.concat_str([pl.lit(f"field {number} {name}: '"), pl.col(name), pl.lit(f"' {message}")])


def _typed(field: Field) -> pl.Expr:
    """The typed value of a raw (empty-as-null) field; null when the text does not parse."""
    raw = pl.col(field.name)
    if field.type == "flag":
        return raw == "Y"
    if field.type == "date":
        return pl.when(raw.str.contains(_DATE_RE)).then(raw.str.strptime(pl.Date, "%Y%m%d", strict=False))
    if field.type == "timestamp":
        return pl.when(raw.str.contains(_TIMESTAMP_RE)).then(
            raw.str.strptime(pl.Datetime("us"), "%Y%m%d%H%M%S", strict=False))
    if field.type == "month":
        return pl.when(raw.str.contains(_MONTH_RE)).then((raw + "01").str.strptime(pl.Date, "%Y%m%d", strict=False))
    if field.type == "integer":
        return pl.when(raw.str.contains(_INTEGER_RE)).then(raw.str.to_integer(strict=False).cast(pl.Int64))
    return raw


_FORMAT_ERRORS = {"date": ("BAD_DATE", "is not a date YYYYMMDD"),
                  "timestamp": ("BAD_TIMESTAMP", "is not a timestamp YYYYMMDDHHMMSS"),
                  "month": ("BAD_MONTH", "is not a month YYYYMM"),
                  "integer": ("BAD_INTEGER", "is not an integer")}


def _field_checks(number: int, field: Field) -> list[_Check]:
    """Checks of one field, in order; they see raw values in pl.col(name), typed ones in pl.col(_t(name))."""
    raw, typed, name = pl.col(field.name), pl.col(_t(field.name)), field.name
    checks = []
    if field.required:
        checks.append(_Check("MISSING_FIELD", raw.is_null(), pl.lit(f"field {number} {name}: empty")))
    if field.choices:
        checks.append(_Check("BAD_ENUM", ~raw.is_in(list(field.choices)),
                             _field_value(number, name, "not in " + "|".join(field.choices))))
    if field.type in _FORMAT_ERRORS:
        reason, message = _FORMAT_ERRORS[field.type]
        checks.append(_Check(reason, raw.is_not_null() & typed.is_null(), _field_value(number, name, message)))
    if field.max_chars is not None:
        checks.append(_Check("BAD_VALUE", raw.str.len_chars() > field.max_chars,
                             _field_value(number, name, f"longer than {field.max_chars} characters")))
    if field.pattern is not None:
        regex, message = field.pattern
        checks.append(_Check("BAD_VALUE", ~raw.str.contains(regex), _field_value(number, name, message)))
    if field.positive:
        checks.append(_Check("BAD_VALUE", typed <= 0, _field_value(number, name, "is not positive")))
    return checks


def _file_checks(name: ExtractName, delivery_day: date) -> list[_Check]:
    """Checks of a record against its file: name's month / snapshot date, delivery day."""
    if name.kind == "BILL":
        month = Month.parse(name.period)
        return [_Check("MONTH_MISMATCH", pl.col(_t("bill_month")) != pl.lit(month.first_day),
                       _field_value(2, "bill_month", f"differs from the file's month {month.compact}"))]
    if name.kind == "ACCT":
        snapshot = parse_day(name.period)
        return [_Check("FUTURE_DATE", pl.col(_t("open_date")) > pl.lit(snapshot),
                       _field_value(9, "open_date", f"is after the snapshot date {snapshot}"))]
    if name.kind in ("SUSP", "REDEEM"):
        day_end = datetime.combine(delivery_day + timedelta(days=1), datetime.min.time())
        field = "event_time" if name.kind == "SUSP" else "txn_time"
        return [_Check("FUTURE_DATE", pl.col(_t(field)) >= pl.lit(day_end, dtype=pl.Datetime("us")),
                       _field_value(3, field, f"is after the delivery day {delivery_day}"))]
    return []


def _cross_field_checks(kind: str) -> list[_Check]:
    if kind != "OVERRIDE":
        return []
    return [_Check("BAD_VALUE", pl.col(_t("from_month")) > pl.col(_t("to_month")),
                   pl.concat_str([pl.lit("fields 4-5 from_month/to_month: '"), pl.col("from_month"),
                                  pl.lit("' is after '"), pl.col("to_month"), pl.lit("'")]))]


def _record_checks(name: ExtractName, delivery_day: date) -> list[_Check]:
    layout = LAYOUTS[name.kind]
    field_count = _Check("FIELD_COUNT", pl.col("_separators") != len(layout) - 1,
                         pl.format(f"expected {len(layout)} fields, found {{}}", pl.col("_separators") + 1))
    checks = [field_count]
    for number, field in enumerate(layout, start=1):
        checks += _field_checks(number, field)
    return checks + _file_checks(name, delivery_day) + _cross_field_checks(name.kind)


def _t(name: str) -> str:
    return f"_typed_{name}"


def _parse_lines(lines: pl.DataFrame, layout: tuple[Field, ...],
                 checks: list[_Check]) -> tuple[pl.DataFrame, pl.DataFrame]:
    """Splits decoded lines into fields, types and validates them: (valid records, quarantine rows)."""
    names = [f.name for f in layout]
    frame = (
        lines.lazy()
        .with_columns(
            pl.col("raw_text").str.count_matches("|", literal=True).alias("_separators"),
            pl.col("raw_text").str.split_exact("|", len(layout) - 1).struct.rename_fields(names).alias("_fields"),
        )
        .unnest("_fields")
        .with_columns(pl.when(pl.col(n) != "").then(pl.col(n)).alias(n) for n in names)
        .with_columns(_typed(f).alias(_t(f.name)) for f in layout)
        .with_columns(pl.any_horizontal([c.failed.fill_null(False) for c in checks]).alias("_failed"))
        .collect()
    )
    typed = [pl.col(_t(f.name)).alias(f.name) for f in layout] + [pl.col("line_no")]
    if not frame.get_column("_failed").any():
        return frame.select(typed), pl.DataFrame(schema=QUARANTINE_SCHEMA)
    records = frame.filter(~pl.col("_failed")).select(typed)
    rejected = frame.filter(pl.col("_failed")).select(
        "line_no", "raw_text",
        pl.coalesce([pl.when(c.failed).then(pl.lit(c.reason)) for c in checks]).alias("reason"),
        pl.coalesce([pl.when(c.failed).then(c.detail) for c in checks]).alias("detail"),
    )
    return records, rejected


# ----------------------------------------------------------------------------------- duplicate keys

def _split_duplicate_keys(records: pl.DataFrame, kind: str, fh: BinaryIO, codec: str,
                          chunk_bytes: int) -> tuple[pl.DataFrame, pl.DataFrame]:
    """Keeps the first valid record of each key; later ones become DUPLICATE_KEY quarantine rows.

    Raw texts are not kept for valid records (that would double the memory of a snapshot); the few
    duplicate lines are read again from the file.
    """
    key = KEYS.get(kind)
    if key is None or records.height == 0:
        return records, pl.DataFrame(schema=QUARANTINE_SCHEMA)
    first = records.get_column(key).is_first_distinct()
    if first.all():
        return records, pl.DataFrame(schema=QUARANTINE_SCHEMA)
    duplicates = records.filter(~first).select(key, "line_no")
    first_lines = records.filter(first).join(duplicates.select(key).unique(), on=key, how="semi") \
        .select(key, pl.col("line_no").alias("first_line_no"))
    duplicates = duplicates.join(first_lines, on=key, how="left", maintain_order="left")
    raw = _read_lines(fh, duplicates.get_column("line_no").to_list(), codec, chunk_bytes)
    number = 1 + [f.name for f in LAYOUTS[kind]].index(key)
    quarantine = duplicates.select(
        "line_no",
        pl.col("line_no").replace_strict(raw, return_dtype=pl.String).alias("raw_text"),
        pl.lit("DUPLICATE_KEY").alias("reason"),
        pl.format(f"field {number} {key}: '{{}}' already on line {{}}", pl.col(key), pl.col("first_line_no"))
        .alias("detail"),
    )
    return records.filter(first), quarantine


def read_lines(dat_path: Path, line_nos: list[int], encoding: str) -> dict[int, str]:
    """Texts of the given valid lines of a delivered file, numbered as parse_extract numbers them."""
    with open(dat_path, "rb") as fh:
        return _read_lines(fh, line_nos, _CODECS[encoding], CHUNK_BYTES)


def _read_lines(fh: BinaryIO, line_nos: list[int], codec: str, chunk_bytes: int) -> dict[int, str]:
    """Texts of the given (valid, hence decodable) lines, numbered as parse_extract numbers them."""
    wanted = np.array(sorted(line_nos), dtype=np.int64)
    found: dict[int, str] = {}
    next_line = 1
    fh.seek(0)
    for piece in _iter_pieces(fh, chunk_bytes):
        if isinstance(piece, _Overlong):
            next_line += 1
            continue
        n_lines = piece.count(b"\n") + 1
        here = wanted[(wanted >= next_line) & (wanted < next_line + n_lines)]
        if here.size:
            arr = np.frombuffer(piece, dtype=np.uint8)
            starts, ends = _line_bounds(arr, _newlines(arr))
            for line_no in here.tolist():
                i = line_no - next_line
                found[line_no] = piece[starts[i]:ends[i]].decode(codec)
        next_line += n_lines
    return found
