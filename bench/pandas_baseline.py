"""The pandas baseline (performance.md): the straightforward pandas script a BI team would write for the
six-star rules, from the same inputs as the pipeline: the BILL text of month M with pd.read_csv, and the stored
inputs (aggregates of M-5..M-1, snapshot S(M), suspensions, points, overrides) read from the warehouse into
pandas through DuckDB. Simple filters go to SQL, as an analyst would write them; everything else is pandas.

    python -m bench.pandas_baseline --bill BILL_202512.dat --warehouse inputs.duckdb --month 2025-12 --out t.parquet
"""
from __future__ import annotations

from datetime import date

import duckdb
import numpy as np
import pandas as pd

from bench.baseline_common import (AVG6_30, AVG6_80, AVG6_150, AVG6_300, BILL_COLUMNS, EXCLUDED_ITEMS,
                                   GradingMonth, duckdb_config, parse_args)


def consumption_of_month(bill_path) -> pd.Series:
    bill = pd.read_csv(bill_path, sep="|", header=None, names=list(BILL_COLUMNS),
                       dtype={"subs_id": "str", "bill_month": "str", "item_code": "str", "amount_fen": "int64"})
    consumed = bill[~bill["item_code"].isin(EXCLUDED_ITEMS)]
    return consumed.groupby("subs_id")["amount_fen"].sum().rename("cons_fen")


def earlier_consumption(con, month: GradingMonth) -> pd.Series:
    rows = con.execute("SELECT subs_id, cons_fen FROM mart.subscriber_month WHERE month >= ? AND month < ?",
                       [month.plus(-5), month.first_day]).df()
    return rows.groupby("subs_id")["cons_fen"].sum().rename("cons5_fen")


def snapshot(con, month: GradingMonth) -> pd.DataFrame:
    # fetchall, not fetchone: DuckDB 2.0 refuses other work on a connection whose result is not exhausted
    day = con.execute("SELECT max(snapshot_date) FROM ops.snapshot WHERE snapshot_date <= ?",
                      [month.last_day]).fetchall()[0][0]
    return con.execute("""SELECT subs_id, status, subs_type, realname_flag, vip_flag, brand, open_date
                          FROM raw.subscriber_history
                          WHERE valid_from <= ? AND (valid_to IS NULL OR valid_to > ?)""", [day, day]).df()


def twoway_suspensions(con, month: GradingMonth) -> pd.Series:
    events = con.execute("SELECT subs_id, susp_type FROM raw.susp WHERE event_time >= ? AND event_time < ?",
                         [month.plus(-11), month.plus(1)]).df()
    return events[events["susp_type"] == "ARREARS_TWOWAY"].groupby("subs_id").size().rename("susp12")


def prior_year_points(con, month: GradingMonth) -> pd.Series:
    """Points earned (accruals only) in the calendar year before M's."""
    lots = con.execute("SELECT subs_id, earned FROM staging.points_lot WHERE earn_month >= ? AND earn_month < ?",
                       [date(month.year - 1, 1, 1), date(month.year, 1, 1)]).df()
    return lots.groupby("subs_id")["earned"].sum().rename("prior_year_points")


def active_overrides(con, month: GradingMonth) -> pd.Series:
    """The latest delivery of each override_id delivered by M's end; tier NONE revokes; latest per subscriber."""
    rows = con.execute("""SELECT o.override_id, o.subs_id, o.tier, o.from_month, o.to_month, o.file_name,
                                 o.line_no, d.day
                          FROM raw.override o JOIN ops.delivery d
                            ON d.file_name = o.file_name AND d.status = 'LOADED' AND d.period <= ?""",
                       [f"{month.last_day:%Y%m%d}"]).df()
    latest = (rows.sort_values(["day", "file_name", "line_no"], ascending=False)
              .drop_duplicates("override_id"))
    m = pd.Timestamp(month.first_day)
    holding = latest[(latest["tier"] != "NONE") & (pd.to_datetime(latest["from_month"]) <= m)
                     & (pd.to_datetime(latest["to_month"]) >= m)]
    holding = holding.sort_values(["day", "override_id"], ascending=False).drop_duplicates("subs_id")
    return holding.set_index("subs_id")["tier"].rename("override_tier")


def six_star(frame: pd.DataFrame) -> np.ndarray:
    gotone, vip, sum6 = frame["brand"] == "GOTONE", frame["vip_flag"].fillna(False).astype(bool), frame["sum6_fen"]
    ineligible = ((frame["status"] == "CANCELLED") | (frame["subs_type"] != "PERSONAL")
                  | ~frame["realname_flag"].fillna(True).astype(bool) | (frame["tenure"] < 6))
    override = frame["override_tier"].notna()
    conditions = [ineligible, override,
                  (frame["susp12"] >= 3) & (vip | gotone | (sum6 >= AVG6_150)),  # arrears cap at STAR3
                  vip | (gotone & (frame["prior_year_points"] >= 30000)),
                  sum6 >= AVG6_300, gotone | (sum6 >= AVG6_150), sum6 >= AVG6_80, sum6 >= AVG6_30]
    choices = ["UNRATED", frame["override_tier"].astype(object), "STAR3", "STAR6", "STAR5", "STAR4", "STAR3",
               "STAR2"]
    return np.select(conditions, choices, default="STAR1")


def main() -> None:
    args = parse_args(__doc__.splitlines()[0])
    month = GradingMonth.parse(args.month)
    cons = consumption_of_month(args.bill)
    con = duckdb.connect(str(args.warehouse), read_only=True, config=duckdb_config())
    frame = snapshot(con, month)
    for extra in (earlier_consumption(con, month), twoway_suspensions(con, month), prior_year_points(con, month),
                  active_overrides(con, month)):
        frame = frame.merge(extra, left_on="subs_id", right_index=True, how="left")
    con.close()
    frame = frame.merge(cons, left_on="subs_id", right_index=True, how="left")
    for column in ("cons_fen", "cons5_fen", "susp12", "prior_year_points"):
        frame[column] = frame[column].fillna(0).astype("int64")
    frame["sum6_fen"] = frame["cons_fen"] + frame["cons5_fen"]
    opened = pd.to_datetime(frame["open_date"])
    frame["tenure"] = month.index - (opened.dt.year * 12 + opened.dt.month - 1) + 1
    frame["tier"] = six_star(frame)
    frame[["subs_id", "tier"]].sort_values("subs_id").to_parquet(args.out, index=False)


if __name__ == "__main__":
    main()
