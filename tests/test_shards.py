"""Points and grading over subscriber shards (transforms.runs.shards), shards run one after the other in this
process: the union of the shards is the very frames the local path computes, for a pack with a global rank (abc)
and one without (six-star), for one shard, a few, and many (most without an override: their input is empty). What
a shard is given holds no personal data. The same on a Dask cluster, through the CLI: tests/exactly_once/test_dask.py."""
from __future__ import annotations

import shutil
from pathlib import Path

import duckdb
import polars as pl
import pytest

from flows.pipeline import backfill_flow
from tests.builders import deliver, query
from transforms.core.calendar import Month
from transforms.grade.grading import GradingInputs, grade
from transforms.grade.packs import pack_for_month
from transforms.grade.points import PointsMonth, apply_points_to_totals
from transforms.ingest.landing import Delivery
from transforms.ingest.layouts import parse_extract_name
from transforms.runs.month_state import window_complete
from transforms.runs.shards import (InProcess, aggregate_on_shards, bill_sums_root, grade_on_shards, keep_bill_sums,
                                    parse_on_shards, points_on_shards, work_folder)
from transforms.warehouse.marts import write_points
from transforms.warehouse.ranges import EVERYONE, SubsRange
from transforms.synth.generate import generate_province
from transforms.warehouse import inputs
from transforms.warehouse.db import connect, snapshot_date_for



@pytest.fixture(scope="module")
def home(tmp_path_factory, prefect_harness) -> Path:
    """200 generated subscribers (suspensions, redemptions, churn), three overrides for July, and August's
    redemptions of REDEEMED (nobody has points before July's accrual, July being the first month with a tier graded
    for the month before it), graded up to August."""
    home = tmp_path_factory.mktemp("shards")
    generate_province(home, subscribers=200, start=Month(2025, 1), months=8, seed=11)
    deliver(home, "20250710", "OVERRIDE_20250710.dat", [f"OV{n}|S000000000{n}|STAR5|202507|202507|campaign|张经理"
                                                        for n in (1, 2, 3)])
    deliver(home, "20250820", "REDEEM_20250820.dat", [f"RT{k}|{subs}|2025081{k}120000|{points}|APP"
                                                      for k, (subs, points) in enumerate(REDEEMED)])
    backfill_flow(str(home), "2025-01", "2025-08")
    return home


REDEEMED = [("S0000000010", 1), ("S0000000010", 10**9), ("S0000000010", 2), ("S0000000020", 1),
            ("S0000000030", 2), ("S0000000040", 10**9), ("S0000000050", 1)]


def local_grading(con, month: Month, pack, previous_pack):
    snapshot = snapshot_date_for(con, month)
    grading_inputs = GradingInputs(month, inputs.grading_metrics(con, month, snapshot, inputs.metrics_read(pack)),
                                   inputs.active_overrides(con, month), inputs.tier_spells(con, month),
                                   inputs.assignment_of(con, month - 1))
    return grading_inputs, grade(pack, grading_inputs, previous_pack)


# abc grades June: July's overrides name a six-star tier, which abc does not have
@pytest.mark.parametrize("pack_name, month, count", [("six-star", Month(2025, 7), 1), ("six-star", Month(2025, 7), 16),
                                                   ("abc", Month(2025, 6), 3), ("abc", Month(2025, 6), 16)])
def test_the_union_of_the_shards_is_what_the_local_path_grades(home, tmp_path, pack_name, month, count):
    con = connect(home, read_only=True)
    try:
        pack, previous = pack_for_month(pack_name, month), pack_for_month("six-star", month - 1)
        expected_inputs, expected = local_grading(con, month, pack, previous)
        sharded = grade_on_shards(con, month, snapshot_date_for(con, month), pack, previous,
                                  InProcess(count, tmp_path))
        metrics, overrides, graded = sharded.of(EVERYONE)
        # read back range by range (as the monthly run writes them): the same rows, range after range
        spans = [SubsRange(None, "S0000000040"), SubsRange("S0000000040", "S0000000077"), SubsRange("S0000000077")]
        in_ranges = [sharded.of(span) for span in spans]
    finally:
        con.close()
    assert all(part[0].height for part in in_ranges)
    assert pl.concat([part[0] for part in in_ranges]).equals(metrics)
    assert pl.concat([part[1] for part in in_ranges]).equals(overrides)
    for name in ("assignment", "changes", "entitlement_changes"):
        assert pl.concat([getattr(part[2], name) for part in in_ranges]).equals(getattr(graded, name)), name
    assert expected.changes.height > 0
    assert expected_inputs.overrides.height == (3 if month == Month(2025, 7) else 0)
    assert metrics.equals(expected_inputs.metrics)
    assert overrides.equals(expected_inputs.overrides)
    for name in ("assignment", "changes", "entitlement_changes"):
        assert getattr(graded, name).equals(getattr(expected, name)), name
    outputs = tmp_path / str(month) / "grade" / "outputs"
    shard_sizes = [pl.read_parquet(p).height for p in sorted(outputs.glob("metrics-*"))]
    assert len(shard_sizes) == count and sum(shard_sizes) == metrics.height
    exported = {p.name for p in (tmp_path / str(month) / "grade" / "inputs" / "overrides").glob("shard=*")}
    if count == 16:
        assert len(exported) <= 3  # most shards have no override: they read the empty file


def test_the_balances_of_the_month_before_open_as_the_lots_summed(home):
    """August opens on July's balances, September on August's (with August's redemptions moved out of the lots):
    the same totals as summing the lots, which the first month with points does."""
    con = connect(home, read_only=True)
    try:
        for month in (Month(2025, 8), Month(2025, 9)):
            assert con.execute("SELECT count(*) FROM mart.points_balance WHERE month = ? AND balance > 0",
                               [(month - 1).first_day]).fetchall()[0][0] > 150
            from_balances = inputs.lot_totals(con, month, 36).sort("subs_id")
            assert from_balances.equals(inputs.lot_totals_from_lots(con, month, 36).sort("subs_id")), month
    finally:
        con.close()


POINTS_WRITTEN = {"staging.points_lot": "earn_month", "staging.points_move": "month",
                  "staging.redemption": "month", "mart.points_balance": "month"}


def points_frames(files: dict[str, list[str]]) -> PointsMonth:
    """The shards' points files as frames, in the local path's order (by subs_id, then as in the shard)."""
    return PointsMonth(*(pl.concat([pl.read_parquet(f) for f in files[name]]).sort("subs_id", maintain_order=True)
                         for name in PointsMonth.__dataclass_fields__))


def points_written(con, month: Month) -> dict[str, list[tuple]]:
    """M's rows of the points ledger, balances and refused redemptions, in their stored order."""
    written = {t: con.execute(f"SELECT * FROM {t} WHERE {c} = ?", [month.first_day]).fetchall()
               for t, c in POINTS_WRITTEN.items()}
    return written | {"ops.quarantine": con.execute(
        "SELECT * FROM ops.quarantine WHERE reason = 'INSUFFICIENT_POINTS' AND period = ?", [month.first_day]).fetchall()}


@pytest.mark.parametrize("count", [1, 3, 16])
def test_the_points_of_the_shards_are_those_of_the_local_path(home, tmp_path, count):
    """The shards' points of August are the local path's frames, and written from the shards' files straight
    (never gathered as frames) they are the same rows of the ledger, in the same order."""
    august, pack = Month(2025, 8), pack_for_month("six-star", Month(2025, 8))
    home_copy = tmp_path / "home"
    shutil.copytree(home, home_copy)
    con = connect(home_copy)  # August's points again: they read only what came before August's
    try:
        expected = apply_points_to_totals(august, *inputs.points_inputs(con, august, pack),
                                          pack.points.expiry_months)
        files = points_on_shards(con, august, snapshot_date_for(con, august), pack,
                                 InProcess(count, tmp_path / "work" / "run"))
        sharded = points_frames(files)
        written_locally = points_written(con, august)
        for table, column in POINTS_WRITTEN.items():
            con.execute(f"DELETE FROM {table} WHERE {column} = '2025-08-01'")
        write_points(con, august, files)
        assert points_written(con, august) == written_locally
        assert len(written_locally["staging.points_lot"]) > 150
        assert [row[3].split("|")[0] for row in written_locally["ops.quarantine"]
                if row[3].startswith("RT")] == ["RT1", "RT3", "RT5"]  # of ours, the three refused
    finally:
        con.close()
    def ours(frame):  # beside the generated redemptions
        return [t for t in frame["txn_id"] if t.startswith("RT")]
    # S0000000020 earned nothing in July: its one point is more than it has, as the 10**9 of the others;
    # S0000000010's two accepted ones stay in time order
    assert ours(expected.accepted) == ["RT0", "RT2", "RT4", "RT6"]
    assert ours(expected.rejected) == ["RT1", "RT3", "RT5"]
    assert expected.lot_changes.height == 3 and expected.new_lots.height > 150  # one lot each (July's)
    for frame in PointsMonth.__dataclass_fields__:
        assert getattr(sharded, frame).equals(getattr(expected, frame)), frame


def test_a_shard_is_given_no_personal_data(home, tmp_path):
    july = Month(2025, 7)
    con = connect(home, read_only=True)
    try:
        pack = pack_for_month("six-star", july)
        points_on_shards(con, july, snapshot_date_for(con, july), pack, InProcess(2, tmp_path))
        grade_on_shards(con, july, snapshot_date_for(con, july), pack, pack, InProcess(2, tmp_path))
    finally:
        con.close()
    files = list((tmp_path / "2025-07").rglob("*.parquet")) + list((tmp_path.parent / "history").rglob("*.parquet"))
    assert files
    columns = set().union(*(pl.read_parquet_schema(f) for f in files))
    assert "subs_id" in columns and not columns & {"msisdn", "cust_id", "cust_name", "cert_no"}


def test_each_month_of_history_is_exported_once_and_again_when_the_month_is_run_again(home, tmp_path):
    """A shard reads the earlier months of mart.subscriber_month and staging.points_lot from exports kept
    under work/history: made once per month (keyed by the run that wrote it, ops.month_state), made again when
    that month is run again, and right either way."""
    home_copy = tmp_path / "home"
    shutil.copytree(home, home_copy)
    july, pack = Month(2025, 7), pack_for_month("six-star", Month(2025, 7))
    history = home_copy / "work" / "history" / "mart.subscriber_month"
    probe = duckdb.connect().execute("SELECT hash('tierflow') % 1000003").fetchone()[0]
    sharding = f"2-{probe}"  # two shards, this DuckDB's hash

    def graded_by(run_id: str):
        metrics, _, graded = grade_on_shards(con, july, snapshot_date_for(con, july), pack, pack,
                                             InProcess(2, home_copy / "work" / run_id)).of()
        expected_inputs, expected = local_grading(con, july, pack, pack)
        assert metrics.equals(expected_inputs.metrics) and graded.assignment.equals(expected.assignment)
        return {p.name: p.stat().st_mtime_ns for p in history.iterdir()}

    con = connect(home_copy)
    try:
        first = graded_by("run-1")
        june_run = query(home, "SELECT run_id FROM ops.month_state WHERE month = '2025-06-01'")[0][0]
        assert f"2025-06.{june_run}.{sharding}" in first and f"2025-07.run-1.{sharding}" in first
        second = graded_by("run-2")  # the earlier months' exports are kept, July's is this run's
        assert {k: v for k, v in second.items() if not k.startswith("2025-07")} == \
            {k: v for k, v in first.items() if not k.startswith("2025-07")}
        assert f"2025-07.run-2.{sharding}" in second and f"2025-07.run-1.{sharding}" not in second
        # June run again: what it wrote is new (here: a changed consumption), its export is made again
        con.execute("UPDATE ops.month_state SET run_id = 'regrade-06' WHERE month = '2025-06-01'")
        con.execute("UPDATE mart.subscriber_month SET cons_fen = cons_fen + 500000 WHERE month = '2025-06-01'")
        third = graded_by("run-3")
        assert f"2025-06.regrade-06.{sharding}" in third and f"2025-06.{june_run}.{sharding}" not in third
    finally:
        con.close()


def kept_bill_sums(home: Path, month: Month, count: int, loader_run: str | None = None) -> Path:
    """BILL_M of `home` parsed again in `count` byte ranges, as the ingest run on shards that loaded it did
    (`loader_run`: that run, by default the one ops.delivery names), its partial sums kept as that load keeps
    them; returns the kept folder."""
    file_name = f"BILL_{month.compact}.dat"
    day, path, encoding, run_id = query(home, "SELECT day, path, encoding, run_id FROM ops.delivery "
                                              "WHERE file_name = ? AND status = 'LOADED'", [file_name])[0]
    loader_run = loader_run or run_id
    delivery = Delivery(day, home / "landing" / path, parse_extract_name(file_name))
    parts = list(parse_on_shards(lambda: InProcess(count, work_folder(home, loader_run)), delivery.dat_path,
                                 delivery.name, encoding, day))
    assert sum(p.records.height for p in parts) > 500
    keep_bill_sums(home, loader_run, delivery)
    return bill_sums_root(home / "work") / f"{file_name}.{day:%Y%m%d}.{loader_run}"


@pytest.mark.parametrize("count", [1, 3, 16])
def test_the_month_aggregated_on_shards_from_the_partial_sums_of_bill_is_the_local_one(home, tmp_path, count):
    """August's mart.subscriber_month summed on the shards from the partial sums of BILL_202508's byte ranges
    (kept when its load was recorded) with the exports of March..July: the rows the local path wrote."""
    home_copy, august = tmp_path / "home", Month(2025, 8)
    shutil.copytree(home, home_copy)
    kept = kept_bill_sums(home_copy, august, count)
    assert len(list(kept.glob("range-*"))) == count and not (work_folder(home_copy, "x") / "bill").exists()
    expected = query(home, "SELECT * FROM mart.subscriber_month WHERE month = '2025-08-01' ORDER BY subs_id")
    assert len(expected) > 150 and all(row[-1] is not None for row in expected)  # sum6 complete in August
    con = connect(home_copy)
    try:
        con.execute("DELETE FROM mart.subscriber_month WHERE month = '2025-08-01'")
        assert aggregate_on_shards(con, august, snapshot_date_for(con, august), window_complete(con, august, 6),
                                   InProcess(count, work_folder(home_copy, "monthly-run")))
        rows = con.execute("SELECT * FROM mart.subscriber_month WHERE month = '2025-08-01'").fetchall()
    finally:
        con.close()
    assert rows == expected  # in the local path's physical order too (by subs_id)
    shard_rows = [pl.read_parquet(p).height for p in
                  (work_folder(home_copy, "monthly-run") / "2025-08" / "aggregate" / "outputs").glob("*.parquet")]
    assert len(shard_rows) == count and sum(shard_rows) == len(expected)


def test_the_month_is_aggregated_on_the_driver_without_partial_sums_of_the_loaded_bill(home, tmp_path):
    """Partial sums are used only when they are those of the loaded delivery, complete, for as many shards hashed
    the same way; the sums of another delivery are removed."""
    home_copy, august = tmp_path / "home", Month(2025, 8)
    shutil.copytree(home, home_copy)
    con = connect(home_copy)

    def aggregated_on(count: int) -> bool:
        return aggregate_on_shards(con, august, snapshot_date_for(con, august), True,
                                   InProcess(count, work_folder(home_copy, "monthly-run")))
    try:
        assert not aggregated_on(2)  # the local path loaded it: nothing kept
        con.close()
        other = kept_bill_sums(home_copy, august, 2, loader_run="an-earlier-run")  # not the run that loaded it
        con = connect(home_copy)
        assert not aggregated_on(2) and not other.exists()
        con.close()
        kept = kept_bill_sums(home_copy, august, 2)
        con = connect(home_copy)
        assert not aggregated_on(3)  # hashed for two shards
        (kept / "range-1" / "sharding").unlink()  # a range cut short
        assert not aggregated_on(2)
        (kept / "range-1" / "sharding").write_text("2-0")  # another hash function
        assert not aggregated_on(2)
        assert query_rows(con, "SELECT count(*) FROM mart.subscriber_month WHERE month = '2025-08-01'") > 150
    finally:
        con.close()


def query_rows(con, sql: str) -> int:
    return con.execute(sql).fetchall()[0][0]
