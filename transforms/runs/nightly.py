"""The nightly unit of work: load the delivered files, each in its own transaction (transforms.ingest.load).

What must follow a file's load commits with it (transforms.runs.owed): the publication of the analysts' copy
(ops.delivery changed), and for a loaded ACCT snapshot the nightly LOST notices of its day (transforms.deliver.sets).
"""
from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import duckdb

from transforms.core.calendar import parse_day
from transforms.deliver.channels import Channel
from transforms.deliver.sets import nightly_sets, record_sets
from transforms.ingest.landing import Delivery
from transforms.ingest.load import IngestResult, ingest_delivery
from transforms.runs.owed import PUBLISH, owe, owe_files


def ingest(con: duckdb.DuckDBPyConnection, home: Path, deliveries: list[Delivery], run_id: str,
           channels: list[Channel], unrated_on: Callable, max_quarantine_share: float,
           results_dir: Path | None) -> list[IngestResult]:
    """Loads each delivery in order; `unrated_on(day)` is the unrated tier of the pack in force that day."""
    def on_record(con, delivery: Delivery, status: str) -> None:
        owe(con, PUBLISH, "", run_id)
        if status == "LOADED" and delivery.name.kind == "ACCT":
            day = parse_day(delivery.name.period)
            sets = nightly_sets(con, day, channels, unrated_on(day))
            record_sets(con, sets)
            owe_files(con, [s.out for s in sets], run_id)

    return [ingest_delivery(con, home, d, run_id, max_quarantine_share, results_dir, on_record) for d in deliveries]
