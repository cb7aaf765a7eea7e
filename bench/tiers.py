"""Tier agreement: every subscriber's tier from two Parquet files (subs_id, tier), matched on subs_id; a
subscriber missing on one side counts as a difference."""
from __future__ import annotations

from contextlib import closing
from pathlib import Path

import duckdb

EXAMPLES = 5


def compare_tiers(reference: Path, candidate: Path) -> dict:
    with closing(duckdb.connect()) as con:
        joined = f"""SELECT coalesce(r.subs_id, c.subs_id) AS subs_id, r.tier AS reference, c.tier AS candidate
                     FROM '{reference}' r FULL OUTER JOIN '{candidate}' c ON r.subs_id = c.subs_id
                     WHERE r.tier IS DISTINCT FROM c.tier"""
        differences = con.execute(f"SELECT count(*) FROM ({joined})").fetchall()[0][0]
        examples = con.execute(f"SELECT * FROM ({joined}) ORDER BY subs_id LIMIT {EXAMPLES}").fetchall()
        rows = [con.execute(f"SELECT count(*) FROM '{path}'").fetchall()[0][0] for path in (reference, candidate)]
    return {"reference_rows": rows[0], "candidate_rows": rows[1], "differences": differences,
            "examples": [list(e) for e in examples]}


def tier_counts(path: Path) -> dict[str, int]:
    with closing(duckdb.connect()) as con:
        return dict(con.execute(f"SELECT tier, count(*) FROM '{path}' GROUP BY tier ORDER BY tier").fetchall())
