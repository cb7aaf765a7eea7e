"""Grading month M over subscriber shards (issue 11): the per-subscriber work in separate processes, the union on
the driver; and a BILL file parsed in byte ranges by the same processes (parse_on_shards).

The driver (the process holding the warehouse's writer lock, inside the monthly transaction) exports what the
shards read as Parquet partitioned by shard, in the run's work folder under the home; each shard runs in its own
in-memory DuckDB and writes its results there; only the driver reads them back and writes the warehouse.

  driver  export    what the points step reads (inputs.POINTS_SOURCES), each row in shard hash(subs_id) % count
  shards  points    points.apply_points_to_totals over inputs.points_inputs of the shard's rows
  driver  gather    the union of the points frames, which the monthly run writes as the local path's
  driver  export    grading_metrics' sources (inputs.GRADING_METRICS_SOURCES, with M's points now written), the
                    overrides, tier spells and M-1's assignment
  shards  metrics   inputs.grading_metrics over the shard's rows, the same SQL as the local path
  driver  ranks     the rank table over the union of the metrics (rank packs only: a rank needs everyone)
  shards  grade     grading.grade with the shard's ranks: tiers, tags, changes, entitlement changes
  driver  gather    range by range of subscribers (warehouse.ranges), the union of the shards' rows in the range
                    sorted by subs_id: the very frames the local path grades and writes for that range, so every
                    mart table and channel file is the same with and without shards

What runs a step for every shard is the caller's (a ShardMap): in order in this process (InProcess), or as
Prefect tasks on a Dask cluster (flows.dask). A step only reads its inputs and replaces its own output files, so
it can run again after its worker died. The shard of a subscriber is DuckDB's hash(subs_id), computed by the
driver for every export. The exports of earlier months (HISTORY) are kept under work/history and reused while
the month, the shard count and the hash function are the same (a DuckDB upgrade may change the hash).
"""
from __future__ import annotations

import os
import re
import shutil
from dataclasses import dataclass, fields
from datetime import date
from pathlib import Path
from typing import Callable, Iterator, Protocol

import duckdb
import polars as pl

from transforms.core.calendar import Month
from transforms.core.faults import fault_point
from transforms.grade.engine import rank_table
from transforms.grade.grading import Graded, GradingInputs, grade
from transforms.grade.points import PointsMonth, apply_points_to_totals
from transforms.grade.rulepack import RulePack
from transforms.ingest.extracts import ParsedFile, follow_on, line_ranges, parse_extract_parts, parse_extract_range
from transforms.ingest.layouts import KEYS, ExtractName
from transforms.runs.ledger import StepTimer
from transforms.warehouse import inputs
from transforms.warehouse.ranges import EVERYONE, SubsRange
from transforms.warehouse.db import DEFAULT_MEMORY_LIMIT, DEFAULT_THREADS, SNAPSHOT_MACROS

GRADED = ("assignment", "changes", "entitlement_changes")  # what the grade step writes, a frame of Graded each
POINTS = tuple(f.name for f in fields(PointsMonth))  # what the points step writes
# Inputs whose rows of month m only the monthly run of m writes (it records itself in ops.month_state): their
# export of a month stays right until the month is run again, so each month is exported once (_history).
HISTORY = {"mart.subscriber_month": "month", "staging.points_lot": "earn_month", "staging.points_move": "month"}
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
    """Runs one step (a name of STEPS) for parts 0..work.count-1 of `work` (a ShardWork or a RangeWork) and
    returns their results in order."""
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
        run("metrics", work)
    with steps("shards_ranks"):
        if pack.ranks:  # a rank is over everyone: the union of the metrics, on the driver
            _export_frame(con, work, "ranks", rank_table(pack, _gather(work, "metrics")))
    with steps("shards_grade"):
        run("grade", work, pack, previous_pack)
    return ShardGrading(work, overrides)


def points_on_shards(con: duckdb.DuckDBPyConnection, month: Month, snapshot: date, pack: RulePack, run: ShardMap,
                     steps: StepTimer | None = None) -> PointsMonth:
    """The points of M as the local path computes them (points.apply_points_to_totals over inputs.points_inputs),
    over run.count shards. `steps` times each phase (points_export, points_shards, points_gather)."""
    steps = steps or StepTimer()
    with steps("points_export"):
        work = _export_sources(con, run, month, snapshot, "points", inputs.POINTS_SOURCES,
                               inputs.points_params(month, pack.points.expiry_months))
    with steps("points_shards"):
        run("points", work, pack)
    with steps("points_gather"):
        return PointsMonth(*(_gather(work, name) for name in POINTS))


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
    used = _params_of(sql, params)
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
    used = _params_of(sql, params)
    months = [m for (m,) in con.execute(f"SELECT DISTINCT {column} FROM ({sql}) ORDER BY 1", used).fetchall()]
    if not months:
        _export(con, none_to, run.count, sql, params)
        return (none_to,)
    root = run.folder.parent / "history" / table
    root.mkdir(parents=True, exist_ok=True)
    # the same count and hash function as this run's other exports, or a subscriber's rows would be split
    sharding = f"{run.count}-{con.execute('SELECT hash(?) % 1000003', ['tierflow']).fetchone()[0]}"
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


def _params_of(sql: str, params: dict) -> dict:
    """The parameters `sql` names (DuckDB refuses unused ones)."""
    return {k: v for k, v in params.items() if re.search(rf"\${k}\b", sql)}


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
    work = RangeWork(run.folder / "bill", dat_path, name, encoding, delivery_day,
                     tuple(line_ranges(dat_path, run.count)))
    counts = run("bill", work)
    yield from follow_on(ParsedFile(pl.read_parquet(work.output_path("records", k)),
                                    pl.read_parquet(work.output_path("quarantine", k)), counts[k])
                         for k in range(work.count))


def parse_range(work: RangeWork, part: int, limits: ShardLimits) -> int:
    """One byte range of the file: its records and quarantine rows (lines numbered within the range)."""
    start, end = work.ranges[part]
    parsed = parse_extract_range(work.dat_path, work.name, work.encoding, work.delivery_day, start, end)
    _write(parsed.records, work.output_path("records", part))
    _write(parsed.quarantine, work.output_path("quarantine", part))
    return parsed.record_count


# --- shards ----------------------------------------------------------------------------------------------------

def shard_metrics(work: ShardWork, shard: int, limits: ShardLimits) -> int:
    """The grading metrics of the shard's subscribers (inputs.grading_metrics over the shard's rows)."""
    fault_point("in-shard:metrics")
    con = _shard_connection(work, shard, limits, inputs.GRADING_METRICS_SOURCES)
    try:
        con.execute(SNAPSHOT_MACROS)
        metrics = inputs.grading_metrics(con, work.month, work.snapshot)
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


STEPS: dict[str, Callable] = {"points": shard_points, "metrics": shard_metrics, "grade": shard_grade,
                              "bill": parse_range}


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
