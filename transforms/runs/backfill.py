"""Backfill planning: which delivery days to ingest and when each month's run comes, in date order."""
from __future__ import annotations

from dataclasses import dataclass
from datetime import date

from transforms.core.calendar import Month, month_range
from transforms.ingest.landing import LandingScan
from transforms.ingest.layouts import ExtractName


@dataclass(frozen=True)
class Step:
    kind: str                   # "ingest" (a landing day), "monthly" (one month) or "regrade" (every stale month)
    day: date | None = None
    month: Month | None = None
    files: tuple[str, ...] = ()  # an ingest step of these files of the day only (empty: the whole day)

    def __str__(self) -> str:
        if self.kind == "ingest":
            return f"ingest {self.day:%Y-%m-%d}" + (f" ({', '.join(self.files)})" if self.files else "")
        return f"monthly {self.month}" if self.kind == "monthly" else "regrade the stale months of the range"


class BackfillError(Exception):
    pass


def plan_backfill(scan: LandingScan, start: Month, end: Month) -> list[Step]:
    """Every delivery day up to the day BILL_<end> first arrived, each month's run right after the day its BILL
    first arrived; then the files of the range's months delivered later (re-deliveries, late files), wherever
    their day folder is, in date order, and a regrade of the months they made stale.

    A month's cut-off is therefore what was delivered by the day it is graded: in a backfill, the delivery day of
    its BILL, or, for a month regraded at the end, the last of those later days."""
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
    later: dict[date, list[str]] = {}
    for d in scan.delivered:
        if d.day > last_day and start <= period_month(d.name) <= end:
            later.setdefault(d.day, []).append(d.name.file_name)
    steps += [Step("ingest", day=day, files=tuple(later[day])) for day in sorted(later)]
    return steps + [Step("regrade")] * bool(later)


def period_month(name: ExtractName) -> Month:
    """The month a delivered file is about: BILL_M's month, the month of a dated file's day."""
    return Month.parse(name.period[:6])