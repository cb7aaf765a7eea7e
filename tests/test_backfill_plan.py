from datetime import date
from pathlib import Path

import pytest

from transforms.runs.backfill import BackfillError, plan_backfill
from transforms.core.calendar import Month
from transforms.ingest.layouts import parse_extract_name
from transforms.ingest.landing import Delivery, LandingScan


def scan(*files: tuple[str, str]) -> LandingScan:
    return LandingScan([Delivery(date(int(d[:4]), int(d[4:6]), int(d[6:])), Path(f), parse_extract_name(f))
                        for d, f in files], [], [])


def test_each_month_runs_right_after_its_bill_arrives_and_nothing_after_the_last_bill():
    landing = scan(("20260131", "ACCT_20260131.dat"), ("20260203", "BILL_202601.dat"),
                   ("20260228", "ACCT_20260228.dat"), ("20260303", "BILL_202602.dat"),
                   ("20260305", "SUSP_20260305.dat"))
    steps = [str(s) for s in plan_backfill(landing, Month(2026, 1), Month(2026, 2))]
    assert steps == ["ingest 2026-01-31", "ingest 2026-02-03", "monthly 2026-01", "ingest 2026-02-28",
                     "ingest 2026-03-03", "monthly 2026-02"]


def test_a_missing_bill_is_named():
    landing = scan(("20260203", "BILL_202601.dat"))
    with pytest.raises(BackfillError, match="BILL_202602 not delivered"):
        plan_backfill(landing, Month(2026, 1), Month(2026, 2))
