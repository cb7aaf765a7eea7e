"""Grading month M over subscriber shards (issue 11): the per-subscriber work in separate processes, the union on
the driver; and a BILL file parsed in byte ranges by the same processes (parse_on_shards).

The driver (the process holding the warehouse's writer lock, inside the monthly transaction) exports what the
shards read as Parquet partitioned by shard, in the run's work folder under the home; each shard runs in its own
in-memory DuckDB and writes its results there; only the driver reads them back and writes the warehouse.

  ranges  bill      BILL_M parsed in byte ranges at ingest (parse_on_shards), each range's partial sums per
                    subscriber by shard beside its records; kept under the delivery once its load is recorded
                    (keep_bill_sums)
  driver  export    M-5..M-1 of mart.subscriber_month (inputs.AGGREGATE_SOURCES)
  shards  aggregate marts.subscriber_month_query over the shard's partial sums summed again: the driver inserts
                    the union as M's mart.subscriber_month (aggregate_on_shards; on the driver, from raw.bill,
                    when the loaded BILL_M left no sums for this sharding)
  driver  export    what the points step reads (inputs.POINTS_SOURCES), each row in shard hash(subs_id) % count
  shards  points    points.apply_points_to_totals over inputs.points_inputs of the shard's rows
  driver  write     the shards' points files inserted by DuckDB, in the local path's order (marts.write_points)
  driver  export    grading_metrics' sources (inputs.GRADING_METRICS_SOURCES, with M's points now written), the
                    overrides, tier spells and M-1's assignment
  shards  metrics   inputs.grading_metrics over the shard's rows, the same SQL as the local path
  driver  ranks     the rank table over the union of the metrics (rank packs only: a rank needs everyone)
  shards  grade     grading.grade with the shard's ranks: tiers, tags, changes, entitlement changes
  driver  gather    range by range of subscribers (warehouse.ranges), the union of the shards' rows in the range
                    sorted by subs_id: the very frames the local path grades and writes for that range, so every
                    mart table and channel file is the same with and without shards
  driver  sets      range by range, what each channel set tells (deliver.sets: lookups in the warehouse, recorded
                    as told), each file's rows cut into one consecutive slice per shard
  shards  render    a part of every file rendered to bytes (RenderOnShards): the driver appends the parts in order

What runs a step for every shard is the caller's (a ShardMap): in order in this process (InProcess), or as
Prefect tasks on a Dask cluster (flows.dask). A step only reads its inputs and replaces its own output files, so
it can run again after its worker died. The shard of a subscriber is DuckDB's hash(subs_id), computed by the
driver for every export. The exports of earlier months (HISTORY) are kept under work/history and reused while
the month, the shard count and the hash function are the same (a DuckDB upgrade may change the hash).
"""
from __future__ import annotations

import os
import shutil
from dataclasses import dataclass, fields, replace
from datetime import date
from pathlib import Path
from typing import Callable, Iterator, Protocol

import duckdb
import polars as pl

from transforms.core.calendar import Month
from transforms.core.faults import fault_point
from transforms.deliver.channels import Channel, ChannelError
from transforms.deliver.render import FileWriter, RenderedPart, file_rows, render_part
from transforms.grade.engine import rank_table
from transforms.grade.grading import Graded, GradingInputs, grade
from transforms.grade.points import PointsMonth, apply_points_to_totals
from transforms.grade.rulepack import RulePack
from transforms.ingest.extracts import ParsedFile, follow_on, line_ranges, parse_extract_parts, parse_extract_range
from transforms.ingest.landing import Delivery
from transforms.ingest.layouts import KEYS, ExtractName
from transforms.runs.ledger import StepTimer
from transforms.warehouse import inputs
from transforms.warehouse.ranges import EVERYONE, SubsRange
from transforms.warehouse.db import DEFAULT_MEMORY_LIMIT, DEFAULT_THREADS, SNAPSHOT_MACROS, params_of
from transforms.warehouse.marts import (bill_sums_query, resummed_query, subscriber_month_params,
                                        subscriber_month_query, write_subscriber_month)

GRADED = ("assignment", "changes", "entitlement_changes")  # what the grade step writes, a frame of Graded each
POINTS = tuple(f.name for f in fields(PointsMonth))  # what the points step writes
# Inputs whose rows of month m only the monthly run of m writes (it records itself in ops.month_state): their
# export of a month stays right until the month is run again, so each month is exported once (_history).
HISTORY = {"mart.subscriber_month": "month", "staging.points_lot": "earn_month", "staging.points_move": "month"}
BILL_SUMS = "raw.bill_sums"  # a shard's view of the partial sums of BILL_M's byte ranges (aggregate_on_shards)
# The partial sums of a BILL file loaded are kept for the monthly runs of this month and the two before it (a
# correction's regrade); an older month is aggregated on the driver if it is ever run again.
BILL_SUMS_KEPT_MONTHS = 3
# Kept this long before M; an older month is exported again if a step ever reads it (costs time, never results).
HISTORY_KEPT_MONTHS = 60


@dataclass(frozen=True)
class ShardWork:
    """One month's sharded work: where its files are and what every shard needs to know."""
    folder: Path   # the run's work folder under the home (work_folder)
    count: int     # number of shards
    month: Month
    snapshot: date  # S(M)'s date
    # per input whose rows come from several exports (HISTORY): the export folders, else the run's own
    sources: tuple[tuple[str, tuple[Path, ...]], ...] = ()

    @property
    def label(self) -> str:
        return str(self.month)

    def input_path(self, name: str) -> Path:
        return self.folder / "inputs" / name

    def input_folders(self, name: str) -> tuple[Path, ...]:
        return dict(self.sources).get(name, (self.input_path(name),))

    def output_path(self, name: str, shard: int) -> Path:
        return self.folder / "outputs" / f"{name}-{shard}.parquet"


@dataclass(frozen=True)
class ShardLimits:
    """The engine limits of the process running a shard: its share of the machine (flows.dask sets them from
    the Dask worker's threads and memory)."""
    threads: int = DEFAULT_THREADS
    memory_limit: str = DEFAULT_MEMORY_LIMIT


class ShardMap(Protocol):
    """Runs one step (a name of STEPS) for parts 0..work.count-1 of `work` (a ShardWork, RangeWork or
    RenderWork) and returns their results in order."""
    count: int     # shards per month, ranges per BILL file
    folder: Path   # the run's work folder (work_folder)

    def __call__(self, step: str, work, *args) -> list: ...


def work_folder(home: Path, run_id: str) -> Path:
    return Path(home) / "work" / run_id


def remove_work_folder(home: Path, run_id: str) -> None:
    """A run's shard files, once it ended (or died): the history exports stay."""
    shutil.rmtree(work_folder(home, run_id), ignore_errors=True)


# --- driver ----------------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class ShardGrading:
    """M graded on shards: the shards' outputs on disk, read back one range of subscribers at a time."""
    work: ShardWork
    overrides: pl.DataFrame  # M's active overrides (a few rows)

    def of(self, span: SubsRange = EVERYONE) -> tuple[pl.DataFrame, pl.DataFrame, Graded]:
        """(metrics, overrides, graded) of the subscribers in `span`: the frames the local path grades and writes
        for that range (graded_by_range), however the subscribers fall into shards."""
        return (_gather(self.work, "metrics", span), span.of(self.overrides),
                Graded(*(_gather(self.work, name, span) for name in GRADED)))


def grade_on_shards(con: duckdb.DuckDBPyConnection, month: Month, snapshot: date, pack: RulePack,
                    previous_pack: RulePack, run: ShardMap, steps: StepTimer | None = None) -> ShardGrading:
    """The grading of M as the local path does it, over run.count shards; the driver holds none of its results
    (ShardGrading.of reads a range of them). `steps` times each phase (shards_export, shards_metrics,
    shards_ranks, shards_grade)."""
    steps = steps or StepTimer()
    with steps("shards_export"):
        overrides = inputs.active_overrides(con, month)
        work = _export_sources(con, run, month, snapshot, "grade", inputs.GRADING_METRICS_SOURCES,
                               inputs.grading_metrics_params(month, snapshot))
        _export_frame(con, work, "overrides", overrides)
        # straight from SQL: the driver never holds M-1's tiers or the spells (two frames of everyone)
        for name, (sql, params) in (("spells", inputs.tier_spells_query(month)),
                                    ("previous", inputs.assignment_query(month - 1))):
            _export(con, work.input_path(name), work.count, sql, params)
    with steps("shards_metrics"):
        run("metrics", work, inputs.metrics_read(pack))
    with steps("shards_ranks"):
        if pack.ranks:  # a rank is over everyone: the union of the metrics, on the driver
            _export_frame(con, work, "ranks", rank_table(pack, _gather(work, "metrics")))
    with steps("shards_grade"):
        run("grade", work, pack, previous_pack)
    return ShardGrading(work, overrides)


def aggregate_on_shards(con: duckdb.DuckDBPyConnection, month: Month, snapshot: date, sum6_complete: bool,
                        run: ShardMap, steps: StepTimer | None = None) -> bool:
    """mart.subscriber_month of M as the local path writes it (marts.write_subscriber_month), summed on the
    shards from the partial sums that the byte ranges of BILL_M left when it was loaded (keep_bill_sums), with
    M-5..M-1 from their exports. False, and nothing written, when the loaded BILL_M left none for run.count
    shards hashed as here (loaded by the local path, on another number of workers, or too long ago): the caller
    aggregates it. `steps` times the phases (aggregate_export, aggregate_shards, aggregate_write)."""
    steps = steps or StepTimer()
    ranges = _bill_sums_of(con, month, run)
    if ranges is None:
        return False
    with steps("aggregate_export"):
        params = subscriber_month_params(month, sum6_complete)
        work = _export_sources(con, run, month, snapshot, "aggregate", inputs.AGGREGATE_SOURCES, params)
        work = replace(work, sources=work.sources + ((BILL_SUMS, ranges),))
    with steps("aggregate_shards"):
        run("aggregate", work, sum6_complete)
    with steps("aggregate_write"):
        write_subscriber_month(con, month, sum6_complete,
                               [str(work.output_path("subscriber_month", k)) for k in range(work.count)])
    return True


def _bill_sums_of(con, month: Month, run: ShardMap) -> tuple[Path, ...] | None:
    """The range folders of the partial sums of the loaded BILL_M, if its load kept them for this sharding;
    the kept sums of other deliveries, and of months before M's kept window, are removed."""
    root = bill_sums_root(run.folder.parent)
    if not root.is_dir():
        return None
    loaded = {file: _bill_sums_name(file, day, run_id) for file, day, run_id in con.execute(
        "SELECT file_name, day, run_id FROM ops.delivery WHERE kind = 'BILL' AND status = 'LOADED' "
        "AND period >= ?", [f"{(month - (BILL_SUMS_KEPT_MONTHS - 1)).compact}"]).fetchall()}
    for entry in root.iterdir():
        if entry.name not in loaded.values():
            shutil.rmtree(entry, ignore_errors=True)
    kept = loaded.get(f"BILL_{month.compact}.dat")
    folder = root / kept if kept else None
    if folder is None or not (folder / "complete").exists():
        return None
    ranges = tuple(sorted(folder.glob("range-*")))
    sharding = _sharding(con, run.count)
    if len(ranges) != int((folder / "complete").read_text()) or any(
            not (r / "sharding").exists() or (r / "sharding").read_text() != sharding for r in ranges):
        return None
    return ranges


def bill_sums_root(work_root: Path) -> Path:
    """Where the partial sums of loaded BILL files are kept (<home>/work/history/bill_sums)."""
    return work_root / "history" / "bill_sums"


def _bill_sums_name(file_name: str, day: date, run_id: str) -> str:
    """A kept delivery's folder: the file, its day and the run that loaded it (its row of ops.delivery)."""
    return f"{file_name}.{day:%Y%m%d}.{run_id}"


def keep_bill_sums(home: Path, run_id: str, delivery: Delivery) -> None:
    """Keeps the partial sums that the byte ranges of a BILL file left in this run's work folder
    (parse_on_shards) for the monthly runs of its month, under the delivery; called as its load is recorded
    (the file's MD5 verified: the sums are of the very file loaded). A file parsed here, whole, left none."""
    staged = _staged_bill_sums(work_folder(home, run_id), delivery.name, delivery.day)
    if not (staged / "complete").exists():
        return
    kept = bill_sums_root(Path(home) / "work") / _bill_sums_name(delivery.name.file_name, delivery.day, run_id)
    shutil.rmtree(kept, ignore_errors=True)
    kept.parent.mkdir(parents=True, exist_ok=True)
    os.replace(staged, kept)


def _staged_bill_sums(run_folder: Path, name: ExtractName, day: date) -> Path:
    return run_folder / "bill" / f"{name.file_name}.{day:%Y%m%d}.sums"


def _sharding(con, count: int) -> str:
    """The shard count and a probe of the hash function: a subscriber's rows in two exports (or partial sums)
    fall in the same shard only if both are the same."""
    return f"{count}-{con.execute('SELECT hash(?) % 1000003', ['tierflow']).fetchall()[0][0]}"


def points_on_shards(con: duckdb.DuckDBPyConnection, month: Month, snapshot: date, pack: RulePack, run: ShardMap,
                     steps: StepTimer | None = None) -> dict[str, list[str]]:
    """The points of M as the local path computes them (points.apply_points_to_totals over inputs.points_inputs),
    over run.count shards: per frame of PointsMonth, the shards' Parquet files of it (marts.write_points reads
    them). `steps` times each phase (points_export, points_shards)."""
    steps = steps or StepTimer()
    with steps("points_export"):
        work = _export_sources(con, run, month, snapshot, "points", inputs.POINTS_SOURCES,
                               inputs.points_params(month, pack.points.expiry_months))
    with steps("points_shards"):
        run("points", work, pack)
    return {name: [str(work.output_path(name, k)) for k in range(work.count)] for name in POINTS}


def _export_sources(con, run: ShardMap, month: Month, snapshot: date, part: str, sources: dict[str, str],
                    params: dict) -> ShardWork:
    """A clean folder for one part of M's sharded work (a rerun of the same run id starts again) and every table
    of `sources` exported to it by shard (a HISTORY table: one folder per month, kept between runs)."""
    folder = run.folder / str(month) / part
    if folder.exists():
        shutil.rmtree(folder)
    folder.mkdir(parents=True, mode=0o700)
    exported = []
    for table, sql in sources.items():
        if table in HISTORY:
            exported.append((table, _history(con, run, table, sql, params, folder / "inputs" / table)))
        else:
            _export(con, folder / "inputs" / table, run.count, sql, params)
    return ShardWork(folder, run.count, month, snapshot, tuple(exported))


def _export(con, path: Path, count: int, sql: str, params: dict) -> None:
    """Rows of `sql` to <path>/shard=<k>/, and an empty file of the same columns for a shard without rows."""
    used = params_of(sql, params)
    path.parent.mkdir(parents=True, exist_ok=True)
    con.execute(f"COPY (SELECT *, CAST(hash(subs_id) % {count} AS INTEGER) AS shard FROM ({sql})) "
                f"TO '{path}' (FORMAT parquet, PARTITION_BY (shard))", used)
    con.execute(f"COPY (SELECT * FROM ({sql}) LIMIT 0) TO '{path}/empty.parquet' (FORMAT parquet)", used)


def _export_frame(con, work: ShardWork, name: str, frame: pl.DataFrame) -> None:
    con.register("shard_export", frame)
    try:
        _export(con, work.input_path(name), work.count, "SELECT * FROM shard_export", {})
    finally:
        con.unregister("shard_export")


def _history(con, run: ShardMap, table: str, sql: str, params: dict, none_to: Path) -> tuple[Path, ...]:
    """The export folders of a HISTORY table's rows that `sql` selects, one per month (`sql` filters on the
    table's HISTORY column only, so that a month's folder holds all its rows whichever step reads it): a month
    written by an earlier run is exported once and kept (<home>/work/history/<table>/<YYYY-MM>.<run id>.<count>-
    <hash probe>), this run's month too; a folder of a month written again since (ops.month_state) is removed, and
    one older than HISTORY_KEPT_MONTHS. No rows at all: an export without rows to `none_to`."""
    column, run_id = HISTORY[table], run.folder.name
    # this run writes M's rows (also when it regrades M): they are keyed by this run
    written = dict(con.execute("SELECT month, run_id FROM ops.month_state").fetchall()) | {params["m"]: run_id}
    used = params_of(sql, params)
    months = [m for (m,) in con.execute(f"SELECT DISTINCT {column} FROM ({sql}) ORDER BY 1", used).fetchall()]
    if not months:
        _export(con, none_to, run.count, sql, params)
        return (none_to,)
    root = run.folder.parent / "history" / table
    root.mkdir(parents=True, exist_ok=True)
    # the same count and hash function as this run's other exports, or a subscriber's rows would be split
    sharding = _sharding(con, run.count)
    oldest_kept = f"{(Month.of(params['m']) - HISTORY_KEPT_MONTHS).first_day:%Y-%m}"
    for entry in root.iterdir():
        if _superseded(entry.name, written, run_id, oldest_kept):
            shutil.rmtree(entry, ignore_errors=True)
    folders = []
    for m in months:
        folder = root / f"{m:%Y-%m}.{written.get(m, run_id)}.{sharding}"
        if not (folder / "empty.parquet").exists():  # written last: a folder without it was cut short
            shutil.rmtree(folder, ignore_errors=True)
            _export(con, folder, run.count, f"SELECT * FROM ({sql}) WHERE {column} = $history_month",
                    used | {"history_month": m})
        folders.append(folder)
    return tuple(folders)


def _superseded(name: str, written: dict, run_id: str, oldest_kept: str) -> bool:
    """Whether a history export folder (<YYYY-MM>.<run id>.<sharding>) is of no use any more: its month was
    written again since (`written`: month -> the run that wrote it), by no recorded run (one that died), or is
    older than `oldest_kept` (YYYY-MM)."""
    month_text, entry_run, *_ = name.split(".") + ["", ""]
    try:
        month = date.fromisoformat(f"{month_text}-01")
    except ValueError:
        return True
    return month_text < oldest_kept or written.get(month, run_id) != entry_run


def _gather(work: ShardWork, name: str, span: SubsRange = EVERYONE) -> pl.DataFrame:
    """The union of every shard's output (of the subscribers in `span`) in the local path's order: by subs_id,
    and within a subscriber (whose rows all come from one shard) in the shard's order (e.g. lots by month,
    redemptions by time)."""
    frames = [span.of(pl.scan_parquet(work.output_path(name, k))).collect() for k in range(work.count)]
    return pl.concat([f for f in frames if f.height] or frames[:1]).sort("subs_id", maintain_order=True)


# --- BILL in byte ranges ------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class RangeWork:
    """One BILL file parsed in byte ranges (extracts.line_ranges), one part per range."""
    folder: Path
    dat_path: Path
    name: ExtractName
    encoding: str
    delivery_day: date
    ranges: tuple[tuple[int, int], ...]
    sums: Path | None = None  # BILL: where each range writes its partial sums per subscriber, by shard
    shards: int = 0           # ... of the monthly run's shards (a small file may have fewer ranges)

    @property
    def count(self) -> int:
        return len(self.ranges)

    @property
    def label(self) -> str:
        return self.name.file_name

    def output_path(self, what: str, part: int) -> Path:
        return self.folder / f"{self.name.file_name}-{part}-{what}.parquet"


def parse_on_shards(shards: Callable[[], ShardMap], dat_path: Path, name: ExtractName, encoding: str,
                    delivery_day: date) -> Iterator[ParsedFile]:
    """extracts.parse_extract_parts of a delivered file, a BILL file in byte ranges parsed by the shards of
    `shards()` (called only then: it may start a cluster), one range each, read back one at a time: the same
    records and quarantine rows. A kind with a key is parsed here, whole: its duplicate keys can only be found
    over the whole file (and it is small next to BILL)."""
    if name.kind in KEYS:
        yield from parse_extract_parts(dat_path, name, encoding, delivery_day)
        return
    run = shards()
    sums = _staged_bill_sums(run.folder, name, delivery_day) if name.kind == "BILL" else None
    if sums is not None:
        shutil.rmtree(sums, ignore_errors=True)
    work = RangeWork(run.folder / "bill", dat_path, name, encoding, delivery_day,
                     tuple(line_ranges(dat_path, run.count)), sums, run.count)
    counts = run("bill", work)
    if sums is not None:  # every range's sums are there: the load may keep them (keep_bill_sums)
        (sums / "complete").write_text(f"{work.count}\n")
    yield from follow_on(ParsedFile(pl.read_parquet(work.output_path("records", k)),
                                    pl.read_parquet(work.output_path("quarantine", k)), counts[k])
                         for k in range(work.count))


def parse_range(work: RangeWork, part: int, limits: ShardLimits) -> int:
    """One byte range of the file: its records and quarantine rows (lines numbered within the range), and for
    BILL the partial sums of its records per subscriber, by shard (the whole file's records are loaded, so the
    sums of all ranges are those of the loaded rows)."""
    start, end = work.ranges[part]
    parsed = parse_extract_range(work.dat_path, work.name, work.encoding, work.delivery_day, start, end)
    _write(parsed.records, work.output_path("records", part))
    _write(parsed.quarantine, work.output_path("quarantine", part))
    if work.sums is not None:
        _write_bill_sums(parsed.records, work.sums / f"range-{part}", work.shards, limits)
    return parsed.record_count


def _write_bill_sums(records: pl.DataFrame, folder: Path, count: int, limits: ShardLimits) -> None:
    """bill_sums_query over a range's records, by shard, and the sharding they were hashed with (written last:
    a folder without it was cut short)."""
    shutil.rmtree(folder, ignore_errors=True)  # a range run again after its worker died
    con = duckdb.connect(":memory:", config={"threads": limits.threads, "memory_limit": limits.memory_limit})
    try:
        con.register("range_records", records)
        _export(con, folder, count, bill_sums_query("range_records"), {})
        (folder / "sharding").write_text(_sharding(con, count))
    finally:
        con.close()


# --- shards ----------------------------------------------------------------------------------------------------

def shard_metrics(work: ShardWork, shard: int, limits: ShardLimits, names: frozenset[str]) -> int:
    """The grading metrics `names` of the shard's subscribers (inputs.grading_metrics over the shard's rows)."""
    fault_point("in-shard:metrics")
    con = _shard_connection(work, shard, limits, inputs.GRADING_METRICS_SOURCES)
    try:
        con.execute(SNAPSHOT_MACROS)
        metrics = inputs.grading_metrics(con, work.month, work.snapshot, names)
    finally:
        con.close()
    _write(metrics, work.output_path("metrics", shard))
    return metrics.height


def shard_points(work: ShardWork, shard: int, limits: ShardLimits, pack: RulePack) -> int:
    """points.apply_points_to_totals over inputs.points_inputs of the shard's subscribers."""
    fault_point("in-shard:points")
    con = _shard_connection(work, shard, limits, inputs.POINTS_SOURCES)
    try:
        result = apply_points_to_totals(work.month, *inputs.points_inputs(con, work.month, pack),
                                        pack.points.expiry_months)
    finally:
        con.close()
    for name in POINTS:
        _write(getattr(result, name), work.output_path(name, shard))
    return result.balances.height


def _shard_connection(work: ShardWork, shard: int, limits: ShardLimits, tables) -> duckdb.DuckDBPyConnection:
    """An in-memory DuckDB in which each of `tables` is a view, under its own name, of the shard's rows."""
    con = duckdb.connect(":memory:", config={"threads": limits.threads, "memory_limit": limits.memory_limit})
    for table in tables:
        con.execute(f"CREATE SCHEMA IF NOT EXISTS {table.split('.')[0]}")
        con.execute(f"CREATE VIEW {table} AS SELECT * FROM read_parquet({_input_files(work, table, shard)}, "
                    "hive_partitioning = false)")
    return con


def shard_grade(work: ShardWork, shard: int, limits: ShardLimits, pack: RulePack, previous_pack: RulePack) -> int:
    """grading.grade over the shard's subscribers with the ranks of the whole population."""
    fault_point("in-shard:grade")
    frames = {name: pl.read_parquet(_input_files(work, name, shard), hive_partitioning=False)
              for name in ("overrides", "spells", "previous", *(["ranks"] if pack.ranks else []))}
    metrics = pl.read_parquet(work.output_path("metrics", shard))
    graded = grade(pack, GradingInputs(work.month, metrics, frames["overrides"], frames["spells"],
                                       frames["previous"], frames.get("ranks")), previous_pack)
    for name in GRADED:
        _write(getattr(graded, name), work.output_path(name, shard))
    return graded.assignment.height


def shard_aggregate(work: ShardWork, shard: int, limits: ShardLimits, sum6_complete: bool) -> int:
    """The shard's rows of mart.subscriber_month: its subscribers' partial sums summed, with M-5..M-1."""
    fault_point("in-shard:aggregate")
    con = _shard_connection(work, shard, limits, (*inputs.AGGREGATE_SOURCES, BILL_SUMS))
    try:
        rows = con.sql(subscriber_month_query(resummed_query(BILL_SUMS)),
                       params=subscriber_month_params(work.month, sum6_complete)).pl()
    finally:
        con.close()
    _write(rows, work.output_path("subscriber_month", shard))
    return rows.height


# --- channel files in parts ------------------------------------------------------------------------------------

@dataclass(frozen=True)
class RenderWork:
    """A month's channel sets rendered in parts: each range of subscribers' rows of a file are cut into `count`
    consecutive pieces (piece r * count + j: slice j of range r, the pieces in subs_id order), and part k renders
    the `ranges` consecutive pieces from k * ranges."""
    folder: Path
    label: str
    files: tuple[tuple[Channel, str], ...]  # each set's channel and file (relpath)
    count: int                              # parts: one per shard
    ranges: int = 0

    def rows_path(self, n: int, piece: int) -> Path:
        return self.folder / f"rows-{n}-{piece}.parquet"

    def lines_path(self, n: int, part: int) -> Path:
        return self.folder / f"lines-{n}-{part}"

    def pieces(self, part: int) -> range:
        return range(part * self.ranges, (part + 1) * self.ranges)


class RenderOnShards:
    """The files of a month's channel sets rendered on the shards (sets._write_sets): each range of subscribers'
    rows of each file (render.file_rows, in subs_id order) are cut into run.count consecutive pieces (RenderWork);
    a shard renders a part of every file (render_part), and the driver appends the parts in order to each file,
    after its header (FileWriter.append): the bytes the local path writes. The pieces hold what the files carry
    (msisdn among it), in the run's private folder, removed with it."""

    def __init__(self, run: ShardMap, month: Month, files: list[tuple[Channel, str]]):
        folder = run.folder / str(month) / "render"
        shutil.rmtree(folder, ignore_errors=True)  # a rerun of the same run id starts again
        folder.mkdir(parents=True, mode=0o700)
        self.run, self.work = run, RenderWork(folder, str(month), tuple(files), run.count)

    def add(self, span_no: int, n: int, facts: pl.DataFrame) -> None:
        """The facts of file n in the span_no-th range of subscribers (the ranges in order)."""
        channel, _ = self.work.files[n]
        rows, count = file_rows(channel, facts), self.work.count
        for j in range(count):
            start = rows.height * j // count
            _write(rows.slice(start, rows.height * (j + 1) // count - start),
                   self.work.rows_path(n, span_no * count + j))
        self.work = replace(self.work, ranges=max(self.work.ranges, span_no + 1))

    def render_into(self, writers: list[FileWriter]) -> None:
        """Renders every part on the shards and appends them to the files' writers (one per file, in order); the
        first refusal in the local path's order (range, file, piece) is raised."""
        work = self.work
        rendered = self.run("render", work)
        refused = []  # ((range, file, slice), refusal): the local path meets them in that order
        for part, files in enumerate(rendered):
            for n, got in enumerate(files):
                if got.refusal:
                    range_no, slice_no = divmod(work.ranges * part + got.refused_in, work.count)
                    refused.append(((range_no, n, slice_no), got.refusal))
        if refused:
            raise ChannelError(min(refused)[1])
        for n, writer in enumerate(writers):
            for part in range(work.count):
                writer.append(work.lines_path(n, part), rendered[part][n])


def shard_render(work: RenderWork, part: int, limits: ShardLimits) -> list[RenderedPart]:
    """Part `part` of every file of the sets, rendered."""
    fault_point("in-shard:render")
    return [render_part(channel, relpath, (pl.read_parquet(work.rows_path(n, piece)) for piece in work.pieces(part)),
                        work.lines_path(n, part))
            for n, (channel, relpath) in enumerate(work.files)]


STEPS: dict[str, Callable] = {"aggregate": shard_aggregate, "points": shard_points, "metrics": shard_metrics,
                              "grade": shard_grade, "bill": parse_range, "render": shard_render}


@dataclass(frozen=True)
class InProcess:
    """A ShardMap running the shards one after the other in this process."""
    count: int
    folder: Path

    def __call__(self, step: str, work, *args) -> list:
        return [STEPS[step](work, k, ShardLimits(), *args) for k in range(work.count)]


def _input_files(work: ShardWork, name: str, shard: int) -> list[str]:
    """The shard's files of an input (globs: an export may write several), or the empty one."""
    folders = work.input_folders(name)
    found = [str(f / f"shard={shard}" / "*.parquet") for f in folders if (f / f"shard={shard}").is_dir()]
    return found or [str(folders[-1] / "empty.parquet")]


def _write(frame: pl.DataFrame, path: Path) -> None:
    """Replaces the file whole: a step run again after its worker died overwrites what it had begun."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    frame.write_parquet(tmp)
    os.replace(tmp, path)
