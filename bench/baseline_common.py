"""What the three baselines (floor, pandas, Polars) share: their command line, the engine limits and the dates
of grading month M. Deliberately free of any tierflow import: a baseline is what someone would write without
the pipeline, so it must not borrow the pipeline's code (only its rules, restated in each baseline).
"""
from __future__ import annotations

import argparse
import os
from dataclasses import dataclass
from datetime import date, timedelta
from pathlib import Path

# The same defaults as transforms/warehouse/db.py, read from the same variables: every process of a
# side-by-side comparison runs with the same DuckDB threads and memory limit.
THREADS = int(os.environ.get("TIERFLOW_THREADS", "2"))
MEMORY_LIMIT = os.environ.get("TIERFLOW_MEMORY_LIMIT", "6GB")

# Six-star thresholds in fen over six months ("avg6 >= T yuan" is sum6 >= 6 * T * 100, exact in integers).
AVG6_300, AVG6_150, AVG6_80, AVG6_30 = 180_000, 90_000, 48_000, 18_000
EXCLUDED_ITEMS = ("GIFT", "DEPOSIT")  # not consumption
BILL_COLUMNS = ("subs_id", "bill_month", "item_code", "amount_fen")


def duckdb_config() -> dict:
    return {"threads": THREADS, "memory_limit": MEMORY_LIMIT}


@dataclass(frozen=True)
class GradingMonth:
    """Month M and the dates the six-star metrics need."""
    year: int
    month: int

    @classmethod
    def parse(cls, text: str) -> "GradingMonth":
        year, month = text.replace("-", "")[:4], text.replace("-", "")[4:6]
        return cls(int(year), int(month))

    def plus(self, months: int) -> date:
        """First day of M + months."""
        index = self.year * 12 + self.month - 1 + months
        return date(index // 12, index % 12 + 1, 1)

    @property
    def first_day(self) -> date:
        return self.plus(0)

    @property
    def last_day(self) -> date:
        return self.plus(1) - timedelta(days=1)

    @property
    def index(self) -> int:
        """Months since year 0, so that tenure = index(M) - index(open month) + 1."""
        return self.year * 12 + self.month - 1

    def shifted(self, months: int) -> "GradingMonth":
        first = self.plus(months)
        return GradingMonth(first.year, first.month)

    @property
    def compact(self) -> str:
        return f"{self.year:04d}{self.month:02d}"

    def __str__(self) -> str:
        return f"{self.year:04d}-{self.month:02d}"


def parse_args(description: str) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--bill", required=True, type=Path, help="BILL_<M>.dat text of the grading month")
    parser.add_argument("--warehouse", required=True, type=Path, help="warehouse with the stored inputs (read-only)")
    parser.add_argument("--month", required=True, help="grading month YYYY-MM")
    parser.add_argument("--out", required=True, type=Path, help="Parquet file for the tiers (subs_id, tier)")
    return parser.parse_args()
