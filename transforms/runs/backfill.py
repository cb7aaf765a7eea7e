"""Backfill planning: which delivery days to ingest and when each month's run comes, in date order."""
from __future__ import annotations

from dataclasses import dataclass
from datetime import date

from transforms.core.calendar import Month, month_range
from transforms.ingest.landing import LandingScan


@dataclass(frozen=True)
class Step:
    kind: str                 # "ingest" (one landing day) or "monthly"
    day: date | None = None
    month: Month | None = None

    def __str__(self) -> str:
        return f"ingest {self.day:%Y-%m-%d}" if self.kind == "ingest" else f"monthly {self.month}"


class BackfillError(Exception):
    pass


def plan_backfill(scan: LandingScan, start: Month, end: Month) -> list[Step]:
    """Every delivery day up to the day BILL_<end> arrived, each month's run right after the day its BILL
    arrived (its first delivery: a later re-delivery is ingested on its own day and the month rerun at the end
    if that changed it)."""
    bill_days: dict[Month, date] = {}
    for d in scan.delivered:
        if d.name.kind == "BILL":
            bill_days.setdefault(Month.parse(d.name.period), d.day)
    months = month_range(start, end)
    missing = [m for m in months if m not in bill_days]
    if missing:
        raise BackfillError(f"BILL_{missing[0].compact} not delivered"
                            + (f" (nor {len(missing) - 1} more month(s))" if len(missing) > 1 else ""))
    last_day = max(bill_days[m] for m in months)
    steps: list[Step] = []
    pending = sorted(months)
    for day in sorted({d.day for d in scan.delivered if d.day <= last_day}):
        steps.append(Step("ingest", day=day))
        while pending and bill_days[pending[0]] <= day:
            steps.append(Step("monthly", month=pending.pop(0)))
    return steps
