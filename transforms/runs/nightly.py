"""The nightly unit of work: load the delivered files, each in its own transaction (transforms.ingest.load).

What must follow a file's load commits with it (transforms.runs.owed): the publication of the analysts' copy
(ops.delivery changed), for a loaded ACCT snapshot the nightly LOST notices of its day (transforms.deliver.sets),
and for a BILL file parsed in byte ranges on shards the partial sums its ranges left (shards.keep_bill_sums).
An OVERRIDE record is checked against the pack versions in force for its months: one naming a tier such a pack
does not have is quarantined (UNKNOWN_TIER) instead of failing every monthly run it covers.
"""
from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import duckdb
import polars as pl

from transforms.core.calendar import Month, month_range, parse_day
from transforms.deliver.channels import Channel
from transforms.deliver.sets import nightly_sets
from transforms.grade.rulepack import RulePack
from transforms.ingest.landing import Delivery
from transforms.ingest.layouts import REVOKED_TIER, ExtractName
from transforms.ingest.extracts import parse_extract_parts
from transforms.ingest.load import IngestResult, Parse, ParseAhead, ingest_delivery
from transforms.runs.ledger import StepTimer
from transforms.runs.owed import PUBLISH, owe, owe_files, owed_folder
from transforms.runs.shards import keep_bill_sums


def ingest(con: duckdb.DuckDBPyConnection, home: Path, deliveries: list[Delivery], run_id: str,
           channels: list[Channel], pack_for: Callable[[Month], RulePack | None], max_quarantine_share: float,
           results_dir: Path | None, parse: Parse = parse_extract_parts,
           steps: StepTimer | None = None) -> list[IngestResult]:
    """Loads each delivery in order; `pack_for(month)` is the pack in force for a grading month (None before its
    first version); `parse` reads a file (load.ingest_delivery), the next ACCT snapshot ahead (load.ParseAhead).
    `steps` times the deliveries by kind (`acct`, `bill`, ...: with what commits with them, such as a snapshot's
    LOST notices, and the first gate's wait for Great Expectations)."""
    steps = steps or StepTimer()

    def on_record(con, delivery: Delivery, status: str) -> None:
        owe(con, PUBLISH, "", run_id)
        if status == "LOADED" and delivery.name.kind == "BILL":
            keep_bill_sums(home, run_id, delivery)  # when its byte ranges were parsed on shards
        if status == "LOADED" and delivery.name.kind == "ACCT":
            day = parse_day(delivery.name.period)
            pack = pack_for(Month.of(day))
            sets = nightly_sets(con, day, channels, pack.unrated, owed_folder(home, run_id)) if pack else []
            owe_files(con, [s.out for s in sets], run_id)

    def check_records(name: ExtractName, records: pl.DataFrame) -> pl.DataFrame:
        return unknown_override_tiers(records, pack_for) if name.kind == "OVERRIDE" else _NOTHING_REFUSED

    ahead, results = ParseAhead(con, deliveries, parse), []
    for delivery in deliveries:
        with steps(delivery.name.kind.lower()):
            results.append(ingest_delivery(con, home, delivery, run_id, max_quarantine_share, results_dir,
                                           on_record, check_records, ahead))
        ahead.ingested(delivery)
    return results


def unknown_override_tiers(records: pl.DataFrame, pack_for: Callable[[Month], RulePack | None]) -> pl.DataFrame:
    """line_no, reason, detail of the override records whose tier (unless NONE, a revocation) is not a tier of
    the pack in force for one of the months from_month..to_month."""
    refused = []
    for line_no, tier, first, last in records.select("line_no", "tier", "from_month", "to_month").iter_rows():
        if tier == REVOKED_TIER:
            continue
        for month in month_range(Month.of(first), Month.of(last)):
            pack = pack_for(month)
            if pack is not None and tier not in pack.tiers:
                refused.append((line_no, "UNKNOWN_TIER", f"field 3 tier: '{tier}' is not a tier of pack {pack.name} "
                                f"in force for {month} ({', '.join(pack.tiers)})"))
                break
    return pl.DataFrame(refused, schema=_NOTHING_REFUSED.schema, orient="row")


_NOTHING_REFUSED = pl.DataFrame(schema={"line_no": pl.Int64, "reason": pl.String, "detail": pl.String})
