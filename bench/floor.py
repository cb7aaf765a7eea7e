"""The bare-DuckDB floor (performance.md): the fewest DuckDB statements that compute the six-star tiers of
month M from the same inputs as the pipeline, with no framework around. Two statements: attach the warehouse
read-only, then one COPY that reads BILL_M's text, aggregates it, adds the stored aggregates of M-5..M-1 and
the other stored inputs, grades with one CASE and writes the tiers to Parquet.

    python -m bench.floor --bill landing/20260103/BILL_202512.dat --warehouse inputs.duckdb \
        --month 2025-12 --out floor.parquet
"""
from __future__ import annotations

import duckdb

from bench.baseline_common import (AVG6_30, AVG6_80, AVG6_150, AVG6_300, EXCLUDED_ITEMS, GradingMonth,
                                   duckdb_config, parse_args)


def _literal(text: str) -> str:
    return "'" + str(text).replace("'", "''") + "'"


def tiers_query(bill_path: str, month: GradingMonth) -> str:
    """One SELECT: subs_id and tier for every subscriber of S(M) (rules.md, six-star)."""
    m, excluded = month.first_day, ", ".join(_literal(item) for item in EXCLUDED_ITEMS)
    return f"""
    WITH bill AS (
        SELECT subs_id, sum(amount_fen) FILTER (WHERE item_code NOT IN ({excluded})) AS cons_fen
        FROM read_csv({_literal(bill_path)}, delim = '|', header = false, quote = '', escape = '',
                      auto_detect = false, columns = {{'subs_id': 'VARCHAR', 'bill_month': 'VARCHAR',
                                                      'item_code': 'VARCHAR', 'amount_fen': 'BIGINT'}})
        GROUP BY subs_id),
    earlier AS (  -- the stored monthly aggregates: only one month of raw bills is read
        SELECT subs_id, sum(cons_fen) AS cons5_fen FROM wh.mart.subscriber_month
        WHERE month >= DATE '{month.plus(-5)}' AND month < DATE '{m}' GROUP BY subs_id),
    snapshot AS (  -- S(M): the versions valid at the latest snapshot dated on or before M's last day
        SELECT h.* FROM wh.raw.subscriber_history h,
               (SELECT max(snapshot_date) AS day FROM wh.ops.snapshot
                WHERE snapshot_date <= DATE '{month.last_day}') s
        WHERE h.valid_from <= s.day AND (h.valid_to IS NULL OR h.valid_to > s.day)),
    susp AS (
        SELECT subs_id, count(*) AS susp12 FROM wh.raw.susp
        WHERE susp_type = 'ARREARS_TWOWAY'
          AND event_time >= TIMESTAMP '{month.plus(-11)}' AND event_time < TIMESTAMP '{month.plus(1)}'
        GROUP BY subs_id),
    points AS (  -- qualifying points: accruals of the calendar year before M's, never reduced
        SELECT subs_id, sum(earned) AS prior_year_points FROM wh.staging.points_lot
        WHERE year(earn_month) = {month.year - 1} GROUP BY subs_id),
    overrides AS (  -- latest delivery of each override_id delivered by M's end; NONE revokes
        SELECT subs_id, tier FROM (
            SELECT o.*, d.day, row_number() OVER (PARTITION BY o.override_id
                                                  ORDER BY d.day DESC, o.file_name DESC, o.line_no DESC) AS version
            FROM wh.raw.override o JOIN wh.ops.delivery d ON d.file_name = o.file_name AND d.status = 'LOADED'
            WHERE d.period <= '{month.last_day:%Y%m%d}')
        WHERE version = 1 AND tier <> 'NONE' AND from_month <= DATE '{m}' AND to_month >= DATE '{m}'
        QUALIFY row_number() OVER (PARTITION BY subs_id ORDER BY day DESC, override_id DESC) = 1),
    metrics AS (
        SELECT s.subs_id, s.status, s.subs_type, s.realname_flag, s.vip_flag, s.brand,
               {month.index} - (year(s.open_date) * 12 + month(s.open_date) - 1) + 1 AS tenure,
               coalesce(b.cons_fen, 0) + coalesce(e.cons5_fen, 0) AS sum6_fen,
               coalesce(u.susp12, 0) AS susp12, coalesce(p.prior_year_points, 0) AS prior_year_points,
               o.tier AS override_tier
        FROM snapshot s LEFT JOIN bill b USING (subs_id) LEFT JOIN earlier e USING (subs_id)
        LEFT JOIN susp u USING (subs_id) LEFT JOIN points p USING (subs_id) LEFT JOIN overrides o USING (subs_id))
    SELECT subs_id, CASE
        WHEN status = 'CANCELLED' OR subs_type <> 'PERSONAL' OR NOT realname_flag OR tenure < 6 THEN 'UNRATED'
        WHEN override_tier IS NOT NULL THEN override_tier
        -- arrears cap (not after overrides): the rules that would give STAR4 or more give STAR3
        WHEN susp12 >= 3 AND (vip_flag OR brand = 'GOTONE' OR sum6_fen >= {AVG6_150}) THEN 'STAR3'
        WHEN vip_flag OR (brand = 'GOTONE' AND prior_year_points >= 30000) THEN 'STAR6'
        WHEN sum6_fen >= {AVG6_300} THEN 'STAR5'
        WHEN brand = 'GOTONE' OR sum6_fen >= {AVG6_150} THEN 'STAR4'
        WHEN sum6_fen >= {AVG6_80} THEN 'STAR3'
        WHEN sum6_fen >= {AVG6_30} THEN 'STAR2'
        ELSE 'STAR1' END AS tier
    FROM metrics ORDER BY subs_id"""


def main() -> None:
    args = parse_args(__doc__.splitlines()[0])
    con = duckdb.connect(":memory:", config=duckdb_config())
    con.execute(f"ATTACH {_literal(args.warehouse)} AS wh (READ_ONLY)")
    query = tiers_query(str(args.bill), GradingMonth.parse(args.month))
    con.execute(f"COPY ({query}) TO {_literal(args.out)} (FORMAT parquet)")
    con.close()


if __name__ == "__main__":
    main()
