"""Ranges of subs_id: the steps whose frames or hash tables would hold a whole population (the grading metrics,
the channel sets of a mass-change month) run range by range of subscribers, each range's result in subs_id order,
so their concatenation is the result in one piece."""
from __future__ import annotations

from dataclasses import dataclass

import duckdb
import polars as pl

from transforms.core.calendar import Month
from transforms.warehouse.db import scalar

# Subscribers of M (mart.subscriber_month) per range: a branch of up to 1M is one range, 10M is ten.
RANGE_SUBSCRIBERS = 1_000_000


@dataclass(frozen=True)
class SubsRange:
    """The subscribers whose subs_id is in [low, high) (None: no bound)."""
    low: str | None = None
    high: str | None = None

    @staticmethod
    def sql(column: str = "subs_id") -> str:
        """Its filter in DuckDB, with `params`."""
        return f"($low IS NULL OR {column} >= $low) AND ($high IS NULL OR {column} < $high)"

    @property
    def params(self) -> dict:
        return {"low": self.low, "high": self.high}

    def of(self, frame: pl.DataFrame | pl.LazyFrame) -> pl.DataFrame | pl.LazyFrame:
        """The rows of a frame (or lazy frame: a Parquet scan reads only those) with a subs_id column in the
        range."""
        if self.low is not None:
            frame = frame.filter(pl.col("subs_id") >= self.low)
        return frame.filter(pl.col("subs_id") < self.high) if self.high is not None else frame


EVERYONE = SubsRange()


def subscriber_ranges(con: duckdb.DuckDBPyConnection, month: Month) -> list[SubsRange]:
    """Consecutive ranges of subs_id covering every string, each holding about RANGE_SUBSCRIBERS of M's
    subscribers (mart.subscriber_month)."""
    count = scalar(con, "SELECT count(*) FROM mart.subscriber_month WHERE month = ?", [month.first_day])
    parts = -(-count // RANGE_SUBSCRIBERS)
    if parts <= 1:
        return [EVERYONE]
    cuts = scalar(con, "SELECT quantile_disc(subs_id, ?) FROM mart.subscriber_month WHERE month = ?",
                  [[k / parts for k in range(1, parts)], month.first_day])
    bounds = [None, *sorted(set(cuts)), None]
    return [SubsRange(low, high) for low, high in zip(bounds, bounds[1:])]
