"""Control files (`.chk`): `file_name|record_count|byte_size|md5_hex|encoding`, one ASCII line.

Reading verifies the control totals of a delivered `.dat`; writing is used by the generator and by
tests that craft deliveries (the control file is written last, as the BOSS sender does).
"""
from __future__ import annotations

import hashlib
import re
import threading
from dataclasses import dataclass
from pathlib import Path

from transforms.core.files import write_atomic

ENCODINGS = ("GBK", "UTF-8")
_MD5_RE = re.compile(r"^[0-9a-f]{32}$")
_CHUNK = 8 << 20


class FileRejected(Exception):
    """A whole delivered file is refused: nothing of it is loaded."""

    def __init__(self, file_name: str, reason: str, detail: str):
        super().__init__(f"{file_name}: {reason}: {detail}")
        self.file_name = file_name
        self.reason = reason
        self.detail = detail


@dataclass(frozen=True)
class ControlFile:
    file_name: str
    record_count: int
    byte_size: int
    md5: str
    encoding: str


def read_control(chk_path: Path) -> ControlFile:
    """Parses a control file; raises FileRejected (reason BAD_CONTROL_FILE) when it is malformed."""
    dat_name = chk_path.with_suffix(".dat").name
    try:
        text = chk_path.read_bytes().decode("ascii").strip()
    except UnicodeDecodeError:
        raise FileRejected(dat_name, "BAD_CONTROL_FILE", f"{chk_path.name} is not ASCII") from None
    parts = text.split("|")
    if len(parts) != 5 or "\n" in text:
        raise FileRejected(dat_name, "BAD_CONTROL_FILE", f"{chk_path.name}: expected 5 fields in one line")
    name, count, size, md5, encoding = parts
    if name != dat_name:
        raise FileRejected(dat_name, "BAD_CONTROL_FILE", f"{chk_path.name} names {name!r}")
    if not (count.isdigit() and size.isdigit()):
        raise FileRejected(dat_name, "BAD_CONTROL_FILE", f"{chk_path.name}: record_count/byte_size not integers")
    md5 = md5.lower()
    if not _MD5_RE.match(md5):
        raise FileRejected(dat_name, "BAD_CONTROL_FILE", f"{chk_path.name}: bad md5 {md5!r}")
    encoding = encoding.upper().replace("UTF8", "UTF-8")
    if encoding not in ENCODINGS:
        raise FileRejected(dat_name, "BAD_CONTROL_FILE", f"{chk_path.name}: unknown encoding {encoding!r}")
    return ControlFile(name, int(count), int(size), md5, encoding)


def file_md5(path: Path) -> str:
    digest = hashlib.md5()
    with open(path, "rb") as fh:
        while block := fh.read(_CHUNK):
            digest.update(block)
    return digest.hexdigest()


def verify_control(dat_path: Path, control: ControlFile) -> str:
    """Checks byte size and MD5 and returns the MD5 (record count is checked against the parsed lines)."""
    return Checksum(dat_path, control).verified()


class Checksum:
    """The control file's size checked at once, its MD5 computed on a thread (hashlib releases the GIL): the
    loader parses and loads the file meanwhile, inside its transaction, and asks for `verified()` before it
    commits, instead of reading the whole file once more before starting."""

    def __init__(self, dat_path: Path, control: ControlFile):
        size = dat_path.stat().st_size
        if size != control.byte_size:
            raise FileRejected(control.file_name, "SIZE_MISMATCH",
                               f"{size} bytes delivered, control file says {control.byte_size}")
        self._control, self._outcome = control, []
        self._thread = threading.Thread(target=self._compute, args=(dat_path,), name="md5", daemon=True)
        self._thread.start()

    def _compute(self, dat_path: Path) -> None:
        try:
            self._outcome.append(file_md5(dat_path))
        except BaseException as error:  # raised by verified(), in the loader's thread
            self._outcome.append(error)

    def verified(self) -> str:
        """The file's MD5 (waiting for it); FileRejected (MD5_MISMATCH) when the control file names another."""
        self._thread.join()
        md5 = self._outcome[0]
        if isinstance(md5, BaseException):
            raise md5
        if md5 != self._control.md5:
            raise FileRejected(self._control.file_name, "MD5_MISMATCH",
                               f"md5 {md5} delivered, control file says {self._control.md5}")
        return md5


def control_line(file_name: str, record_count: int, size: int, md5: str, encoding: str) -> bytes:
    """The one line of a control file for a .dat of `size` bytes whose MD5 is `md5`."""
    return f"{file_name}|{record_count}|{size}|{md5}|{encoding}\n".encode("ascii")


def write_delivery(day_dir: Path, file_name: str, payload: bytes, record_count: int,
                   encoding: str = "GBK") -> Path:
    """Writes `<file_name>` and then its `.chk` into a landing day folder, as the BOSS sender does; returns the
    .dat path. `payload` is the exact bytes of the file (already encoded, lines ending in \\n)."""
    dat = write_atomic(day_dir / file_name, payload, "landing")
    write_atomic(dat.with_suffix(".chk"), control_line(file_name, record_count, len(payload),
                                                          hashlib.md5(payload).hexdigest(), encoding), "landing")
    return dat


def encode_records(records: list[str], encoding: str = "GBK") -> bytes:
    """Joins records into file bytes: one per line, each ending in \\n."""
    codec = "gbk" if encoding == "GBK" else "utf-8"
    return "".join(r + "\n" for r in records).encode(codec)
