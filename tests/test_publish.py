"""The analysts' copy (transforms/runs/publish.py) on the golden province of test_monthly_golden, no Prefect:
a version writes only the partitions a run changed, an analyst holding an older version keeps a consistent
state, and versions nobody can hold any more are cleaned up."""
from __future__ import annotations

import shutil

import duckdb
import pytest

from tests.test_monthly_golden import ACCEPT, JUL, PACK, graded_golden
from transforms.runs.monthly import run_monthly
from transforms.runs.publish import publish, published_path
from transforms.warehouse.db import connect

TABLES = ("subscriber_month", "points_balance", "tier_assignment", "tier_current", "tier_history", "grade_change",
          "tier_summary")


@pytest.fixture
def home(tmp_path, monkeypatch):
    monkeypatch.setenv("TIERFLOW_PUBLISH_GRACE_SECONDS", "0")  # only the current and open versions stay
    con, _ = graded_golden(tmp_path)
    yield tmp_path, con
    con.close()


def version_files(home, version: int) -> list[str]:
    return sorted(str(p.relative_to(home / "published" / "data"))
                  for p in (home / "published" / "data").rglob(f"*.v{version}.parquet"))


def contents(path) -> dict:
    con = duckdb.connect(str(path), read_only=True)
    try:
        return {t: con.execute(f"SELECT * FROM mart.{t} ORDER BY ALL").fetchall() for t in TABLES}
    finally:
        con.close()


def test_a_version_writes_only_what_the_run_changed_and_equals_the_warehouse(home):
    home, con = home
    publish(con, home)
    # the first version: every partition (7 graded or aggregated months, tier spells by closing month)
    assert "tier_assignment/2026-07-01.v1.parquet" in version_files(home, 1)
    assert len(version_files(home, 1)) > 20
    # July again: July's partitions, the current tiers, the open spells and those July's changes closed
    # (in effect until 2026-08-01); nothing of the six months before
    run_monthly(con, JUL, PACK, "regrade", ACCEPT)
    publish(con, home)
    assert version_files(home, 2) == [
        "grade_change/2026-07-01.v2.parquet", "points_balance/2026-07-01.v2.parquet",
        "subscriber_month/2026-07-01.v2.parquet", "tier_assignment/2026-07-01.v2.parquet",
        "tier_current/all.v2.parquet", "tier_history/2026-08-01.v2.parquet", "tier_history/open.v2.parquet",
        "tier_summary/2026-07-01.v2.parquet"]
    assert contents(published_path(home)) == {
        t: con.execute(f"SELECT * FROM mart.{t} ORDER BY ALL").fetchall() for t in TABLES}
    publish(con, home)  # nothing changed since: a new version, no partition written
    assert version_files(home, 3) == []


def test_an_analyst_keeps_the_version_opened_before_a_run_then_it_is_cleaned_up(home):
    home, con = home
    publish(con, home)
    analyst = duckdb.connect(str(published_path(home)), read_only=True)
    before = analyst.execute("SELECT tier, count(*) FROM mart.tier_assignment GROUP BY ALL ORDER BY ALL").fetchall()
    con.execute("UPDATE mart.tier_assignment SET tier = 'STAR1' WHERE grade_month = ?", [JUL.first_day])
    con.execute("INSERT INTO ops.changed_partition VALUES ('tier_assignment', ?)", [JUL.first_day.isoformat()])
    publish(con, home)
    # the new version is what a new connection sees; the analyst's connection still reads version 1, whole
    fresh = duckdb.connect(str(published_path(home)), read_only=True)
    assert fresh.execute("SELECT count(*) FROM mart.tier_assignment WHERE grade_month = ? AND tier <> 'STAR1'",
                         [JUL.first_day]).fetchone() == (0,)
    fresh.close()
    assert analyst.execute("SELECT tier, count(*) FROM mart.tier_assignment GROUP BY ALL ORDER BY ALL"
                           ).fetchall() == before
    assert (home / "published" / "versions" / "v1.duckdb").exists()  # held open: kept
    analyst.close()
    publish(con, home)
    versions = sorted(p.name for p in (home / "published" / "versions").glob("*.duckdb"))
    assert versions == ["v3.duckdb"]  # v1 and v2 are held by nobody: gone, with the files only they read
    assert "tier_assignment/2026-07-01.v1.parquet" not in version_files(home, 1)
    assert version_files(home, 1)  # the partitions v3 still reads (unchanged since v1) stay


def test_a_home_moved_elsewhere_publishes_from_where_it_now_is(home, tmp_path_factory):
    """A home restored from a backup to another path: the next publish names the files where they now are (the
    old home is gone, so a view over the old paths would read nothing)."""
    old, con = home
    publish(con, old)
    expected = contents(published_path(old))
    con.close()
    moved = tmp_path_factory.mktemp("moved") / "home"
    shutil.copytree(old, moved, symlinks=True)
    shutil.rmtree(old / "published")
    con = connect(moved)
    try:
        publish(con, moved)
        assert contents(published_path(moved)) == expected
        manifest = (moved / "published" / "versions" / "v2.files.json").read_text()
        assert str(old) not in manifest and str(moved) in manifest
    finally:
        con.close()
