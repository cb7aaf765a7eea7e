"""Validated calendar types: grading months and delivery days.

Months are never strings or ints inside tierflow: parse them once at the edge (CLI, file names, records)
and carry `Month` values, so month arithmetic (M-5, M+36) cannot go wrong.
"""
from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import date, timedelta

_MONTH_RE = re.compile(r"^(\d{4})-?(\d{2})$")
_DAY_RE = re.compile(r"^(\d{4})-?(\d{2})-?(\d{2})$")


@dataclass(frozen=True, order=True)
class Month:
    year: int
    month: int

    def __post_init__(self) -> None:
        if not (1 <= self.month <= 12 and 1900 <= self.year <= 9999):
            raise ValueError(f"invalid month {self.year:04d}-{self.month:02d}")

    @classmethod
    def parse(cls, text: str) -> "Month":
        """Accepts YYYY-MM or YYYYMM."""
        m = _MONTH_RE.match(str(text).strip())
        if not m:
            raise ValueError(f"invalid month {text!r}: expected YYYY-MM")
        return cls(int(m.group(1)), int(m.group(2)))

    @classmethod
    def of(cls, day: date) -> "Month":
        return cls(day.year, day.month)

    @classmethod
    def from_index(cls, index: int) -> "Month":
        return cls(index // 12, index % 12 + 1)

    @property
    def index(self) -> int:
        """Months since year 0: differences of indexes are month distances."""
        return self.year * 12 + self.month - 1

    @property
    def compact(self) -> str:
        return f"{self.year:04d}{self.month:02d}"

    @property
    def first_day(self) -> date:
        return date(self.year, self.month, 1)

    @property
    def last_day(self) -> date:
        return (self + 1).first_day - timedelta(days=1)

    def __add__(self, months: int) -> "Month":
        return Month.from_index(self.index + months)

    def __sub__(self, other):
        if isinstance(other, Month):
            return self.index - other.index
        return Month.from_index(self.index - other)

    def __str__(self) -> str:
        return f"{self.year:04d}-{self.month:02d}"


def parse_day(text: str) -> date:
    """Accepts YYYY-MM-DD or YYYYMMDD; raises ValueError naming the text."""
    m = _DAY_RE.match(str(text).strip())
    if not m:
        raise ValueError(f"invalid day {text!r}: expected YYYY-MM-DD")
    try:
        return date(int(m.group(1)), int(m.group(2)), int(m.group(3)))
    except ValueError as exc:
        raise ValueError(f"invalid day {text!r}: {exc}") from None


def month_range(start: Month, end: Month) -> list[Month]:
    if end < start:
        raise ValueError(f"end month {end} is before start month {start}")
    return [start + i for i in range(end - start + 1)]
