"""Which delivery of each file the warehouse uses (ops.delivery), and which delivered files it does not know.

Kept apart from transforms.ingest.load, whose imports (Polars' parsing, the gates, pandas) cost ~0.6 s: a
nightly run asks `to_read` before anything else, to start Great Expectations' process only when a file will be
read, and the sooner it asks the sooner that process is ready for the first gate.
"""
from __future__ import annotations

from collections.abc import Iterable

import duckdb

from transforms.ingest.control import ControlFile, FileRejected, read_control
from transforms.ingest.landing import Delivery
from transforms.ingest.layouts import ExtractName
from transforms.warehouse.db import first_row

# file_name and (day, md5, status, byte_size) of the deliveries loaded or refused: a file's latest is in use
_IN_USE = "SELECT file_name, day, md5, status, byte_size FROM ops.delivery WHERE status IN ('LOADED', 'REJECTED')"


def delivery_in_use(con: duckdb.DuckDBPyConnection, name: ExtractName) -> tuple | None:
    """(day, md5, status, byte_size) of the file's delivery in use."""
    row = first_row(con, f"{_IN_USE} AND file_name = ? ORDER BY day DESC LIMIT 1", [name.file_name])
    return row[1:] if row else None


def seen_before(delivery: Delivery, control: ControlFile, in_use: tuple | None) -> bool:
    """This very delivery was verified and recorded before: same day, its control file names the MD5 and size
    recorded then, and the file still has that size. A delivery is known by its control file, so a nightly run
    with nothing new reads no file whole (a sender replacing a file delivers a new control file with it)."""
    return (in_use is not None and in_use[0] == delivery.day and in_use[1] == control.md5
            and in_use[3] == control.byte_size == delivery.dat_path.stat().st_size)


def to_read(con: duckdb.DuckDBPyConnection, deliveries: Iterable[Delivery]) -> list[Delivery]:
    """The deliveries load.ingest_delivery would read (and gate): neither replaced by a newer delivery of their
    file nor recorded before under their control file. A malformed control file counts as one to read."""
    in_use = {row[0]: row[1:] for row in con.execute(
        f"{_IN_USE} QUALIFY row_number() OVER (PARTITION BY file_name ORDER BY day DESC) = 1").fetchall()}
    found = []
    for delivery in deliveries:
        current = in_use.get(delivery.name.file_name)
        if current is not None and current[0] > delivery.day:
            continue
        try:
            if seen_before(delivery, read_control(delivery.chk_path), current):
                continue
        except FileRejected:
            pass
        found.append(delivery)
    return found
