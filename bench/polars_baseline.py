"""The Polars baseline: the same six-star script as the pandas one, written the way a Polars user would, from
the same inputs: the BILL text of month M with pl.read_csv, and the stored inputs read from the warehouse
through DuckDB into Polars (Arrow). Simple filters go to SQL; everything else is Polars.

    python -m bench.polars_baseline --bill BILL_202512.dat --warehouse inputs.duckdb --month 2025-12 --out t.parquet
"""
from __future__ import annotations

from datetime import date

import duckdb
import polars as pl

from bench.baseline_common import (AVG6_30, AVG6_80, AVG6_150, AVG6_300, BILL_COLUMNS, EXCLUDED_ITEMS,
                                   GradingMonth, duckdb_config, parse_args)


def consumption_of_month(bill_path) -> pl.DataFrame:
    bill = pl.read_csv(bill_path, separator="|", has_header=False, quote_char=None,
                       schema=dict(zip(BILL_COLUMNS, (pl.String, pl.String, pl.String, pl.Int64))))
    return (bill.filter(~pl.col("item_code").is_in(EXCLUDED_ITEMS))
            .group_by("subs_id").agg(pl.col("amount_fen").sum().alias("cons_fen")))


def query(con, sql: str, params: list) -> pl.DataFrame:
    return con.sql(sql, params=params).pl()


def earlier_consumption(con, month: GradingMonth) -> pl.DataFrame:
    rows = query(con, "SELECT subs_id, cons_fen FROM mart.subscriber_month WHERE month >= ? AND month < ?",
                 [month.plus(-5), month.first_day])
    return rows.group_by("subs_id").agg(pl.col("cons_fen").sum().alias("cons5_fen"))


def snapshot(con, month: GradingMonth) -> pl.DataFrame:
    # fetchall, not fetchone: DuckDB 2.0 refuses other work on a connection whose result is not exhausted
    day = con.execute("SELECT max(snapshot_date) FROM ops.snapshot WHERE snapshot_date <= ?",
                      [month.last_day]).fetchall()[0][0]
    return query(con, """SELECT subs_id, status, subs_type, realname_flag, vip_flag, brand, open_date
                         FROM raw.subscriber_history
                         WHERE valid_from <= ? AND (valid_to IS NULL OR valid_to > ?)""", [day, day])


def twoway_suspensions(con, month: GradingMonth) -> pl.DataFrame:
    events = query(con, "SELECT subs_id, susp_type FROM raw.susp WHERE event_time >= ? AND event_time < ?",
                   [month.plus(-11), month.plus(1)])
    return events.filter(pl.col("susp_type") == "ARREARS_TWOWAY").group_by("subs_id").agg(pl.len().alias("susp12"))


def prior_year_points(con, month: GradingMonth) -> pl.DataFrame:
    """Points earned (accruals only) in the calendar year before M's."""
    lots = query(con, "SELECT subs_id, earned FROM staging.points_lot WHERE earn_month >= ? AND earn_month < ?",
                 [date(month.year - 1, 1, 1), date(month.year, 1, 1)])
    return lots.group_by("subs_id").agg(pl.col("earned").sum().alias("prior_year_points"))


def active_overrides(con, month: GradingMonth) -> pl.DataFrame:
    """The latest delivery of each override_id delivered by M's end; tier NONE revokes; latest per subscriber."""
    rows = query(con, """SELECT o.override_id, o.subs_id, o.tier, o.from_month, o.to_month, o.file_name,
                                o.line_no, d.day
                         FROM raw.override o JOIN ops.delivery d
                           ON d.file_name = o.file_name AND d.status = 'LOADED' AND d.period <= ?""",
                 [f"{month.last_day:%Y%m%d}"])
    m = month.first_day
    return (rows.sort(["day", "file_name", "line_no"], descending=True).unique("override_id", keep="first")
            .filter((pl.col("tier") != "NONE") & (pl.col("from_month") <= m) & (pl.col("to_month") >= m))
            .sort(["day", "override_id"], descending=True).unique("subs_id", keep="first")
            .select("subs_id", pl.col("tier").alias("override_tier")))


def six_star() -> pl.Expr:
    gotone, vip, sum6 = pl.col("brand") == "GOTONE", pl.col("vip_flag").fill_null(False), pl.col("sum6_fen")
    ineligible = ((pl.col("status") == "CANCELLED") | (pl.col("subs_type") != "PERSONAL")
                  | ~pl.col("realname_flag").fill_null(True) | (pl.col("tenure") < 6))
    return (pl.when(ineligible).then(pl.lit("UNRATED"))
            .when(pl.col("override_tier").is_not_null()).then(pl.col("override_tier"))
            .when((pl.col("susp12") >= 3) & (vip | gotone | (sum6 >= AVG6_150))).then(pl.lit("STAR3"))  # arrears cap
            .when(vip | (gotone & (pl.col("prior_year_points") >= 30000))).then(pl.lit("STAR6"))
            .when(sum6 >= AVG6_300).then(pl.lit("STAR5"))
            .when(gotone | (sum6 >= AVG6_150)).then(pl.lit("STAR4"))
            .when(sum6 >= AVG6_80).then(pl.lit("STAR3"))
            .when(sum6 >= AVG6_30).then(pl.lit("STAR2"))
            .otherwise(pl.lit("STAR1")).alias("tier"))


def main() -> None:
    args = parse_args(__doc__.splitlines()[0])
    month = GradingMonth.parse(args.month)
    cons = consumption_of_month(args.bill)
    con = duckdb.connect(str(args.warehouse), read_only=True, config=duckdb_config())
    frame = snapshot(con, month)
    for extra in (earlier_consumption(con, month), twoway_suspensions(con, month), prior_year_points(con, month),
                  active_overrides(con, month)):
        frame = frame.join(extra, on="subs_id", how="left")
    con.close()
    frame = frame.join(cons, on="subs_id", how="left").with_columns(
        pl.col("cons_fen", "cons5_fen", "susp12", "prior_year_points").fill_null(0).cast(pl.Int64))
    frame = frame.with_columns(
        sum6_fen=pl.col("cons_fen") + pl.col("cons5_fen"),
        tenure=month.index - (pl.col("open_date").dt.year().cast(pl.Int64) * 12
                              + pl.col("open_date").dt.month().cast(pl.Int64) - 1) + 1)
    frame.with_columns(six_star()).select("subs_id", "tier").sort("subs_id").write_parquet(args.out)


if __name__ == "__main__":
    main()
