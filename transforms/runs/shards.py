"""Grading month M over subscriber shards (issue 11): the per-subscriber work in separate processes, the union on
the driver.

The driver (the process holding the warehouse's writer lock, inside the monthly transaction) exports what the
shards read as Parquet partitioned by shard, in the run's work folder under the home; each shard runs in its own
in-memory DuckDB and writes its results there; only the driver reads them back and writes the warehouse.

  driver  export    grading_metrics' sources (inputs.GRADING_METRICS_SOURCES), the overrides, tier spells and
                    M-1's assignment, each row in shard hash(subs_id) % count
  shards  metrics   inputs.grading_metrics over the shard's rows, the same SQL as the local path
  driver  ranks     the rank table over the union of the metrics (rank packs only: a rank needs everyone)
  shards  grade     grading.grade with the shard's ranks: tiers, tags, changes, entitlement changes
  driver  gather    the union sorted by subs_id: the very frames the local path grades, so every mart table and
                    channel file is the same with and without shards

What runs a step for every shard is the caller's (a ShardMap): in order in this process (in_process), or as
Prefect tasks on a Dask cluster (flows.dask). A step only reads its inputs and replaces its own output files, so
it can run again after its worker died. The shard of a subscriber is DuckDB's hash(subs_id): the driver assigns
every table of one run, nothing about shards is stored.
"""
from __future__ import annotations

import os
import re
import shutil
from dataclasses import dataclass
from datetime import date
from pathlib import Path
from typing import Callable, Protocol

import duckdb
import polars as pl

from transforms.core.calendar import Month
from transforms.core.faults import fault_point
from transforms.grade.engine import rank_table
from transforms.grade.grading import Graded, GradingInputs, grade
from transforms.grade.rulepack import RulePack
from transforms.warehouse import inputs
from transforms.warehouse.db import DEFAULT_MEMORY_LIMIT, DEFAULT_THREADS, SNAPSHOT_MACROS

GRADED = ("assignment", "changes", "entitlement_changes")  # what the grade step writes, a frame of Graded each


@dataclass(frozen=True)
class ShardWork:
    """One month's sharded work: where its files are and what every shard needs to know."""
    folder: Path   # the run's work folder under the home (work_folder)
    count: int     # number of shards
    month: Month
    snapshot: date  # S(M)'s date

    def input_path(self, name: str) -> Path:
        return self.folder / "inputs" / name

    def output_path(self, name: str, shard: int) -> Path:
        return self.folder / "outputs" / f"{name}-{shard}.parquet"


@dataclass(frozen=True)
class ShardLimits:
    """The engine limits of the process running a shard: its share of the machine (flows.dask sets them from
    the Dask worker's threads and memory)."""
    threads: int = DEFAULT_THREADS
    memory_limit: str = DEFAULT_MEMORY_LIMIT


class ShardMap(Protocol):
    """Runs one step (a name of STEPS) for shards 0..count-1 of `work` and returns their results in order."""
    count: int     # shards per month
    folder: Path   # the run's work folder (work_folder)

    def __call__(self, step: str, work: ShardWork, *args) -> list: ...


def work_folder(home: Path, run_id: str) -> Path:
    return Path(home) / "work" / run_id


# --- driver ----------------------------------------------------------------------------------------------------

def grade_on_shards(con: duckdb.DuckDBPyConnection, month: Month, snapshot: date, pack: RulePack,
                    previous_pack: RulePack, run: ShardMap) -> tuple[pl.DataFrame, pl.DataFrame, Graded]:
    """The grading of M as the local path does it, over run.count shards: the metrics and overrides of M (what
    the marts are written with besides the result) and what grading.grade returns."""
    work = ShardWork(run.folder / str(month), run.count, month, snapshot)
    if work.folder.exists():
        shutil.rmtree(work.folder)  # a rerun of the same run id starts clean
    work.folder.mkdir(parents=True, mode=0o700)
    overrides = inputs.active_overrides(con, month)
    params = inputs.grading_metrics_params(month, work.snapshot)
    for table, sql in inputs.GRADING_METRICS_SOURCES.items():
        _export(con, work, table, sql, params)
    for name, frame in (("overrides", overrides), ("spells", inputs.tier_spells(con, month)),
                        ("previous", inputs.assignment_of(con, month - 1))):
        _export_frame(con, work, name, frame)
    run("metrics", work)
    metrics = _gather(work, "metrics")
    ranks = rank_table(pack, metrics) if pack.ranks else None
    if ranks is not None:
        _export_frame(con, work, "ranks", ranks)
    run("grade", work, pack, previous_pack)
    graded = Graded(*(_gather(work, name) for name in GRADED))
    return metrics, overrides, graded


def _export(con, work: ShardWork, name: str, sql: str, params: dict) -> None:
    """Rows of `sql` to <inputs>/<name>/shard=<k>/, and an empty file of the same columns for a shard without
    rows."""
    used = {k: v for k, v in params.items() if re.search(rf"\${k}\b", sql)}
    path = work.input_path(name)
    path.parent.mkdir(parents=True, exist_ok=True)
    con.execute(f"COPY (SELECT *, CAST(hash(subs_id) % {work.count} AS INTEGER) AS shard FROM ({sql})) "
                f"TO '{path}' (FORMAT parquet, PARTITION_BY (shard))", used)
    con.execute(f"COPY (SELECT * FROM ({sql}) LIMIT 0) TO '{path}/empty.parquet' (FORMAT parquet)", used)


def _export_frame(con, work: ShardWork, name: str, frame: pl.DataFrame) -> None:
    con.register("shard_export", frame)
    try:
        _export(con, work, name, "SELECT * FROM shard_export", {})
    finally:
        con.unregister("shard_export")


def _gather(work: ShardWork, name: str) -> pl.DataFrame:
    """The union of every shard's output, sorted by subs_id as the local path's frames are."""
    frames = [pl.read_parquet(work.output_path(name, k)) for k in range(work.count)]
    return pl.concat([f for f in frames if f.height] or frames[:1]).sort("subs_id")


# --- shards ----------------------------------------------------------------------------------------------------

def shard_metrics(work: ShardWork, shard: int, limits: ShardLimits) -> int:
    """The grading metrics of the shard's subscribers (inputs.grading_metrics over the shard's rows)."""
    fault_point("in-shard:metrics")
    con = duckdb.connect(":memory:", config={"threads": limits.threads, "memory_limit": limits.memory_limit})
    try:
        for table in inputs.GRADING_METRICS_SOURCES:
            schema = table.split(".")[0]
            con.execute(f"CREATE SCHEMA IF NOT EXISTS {schema}")
            con.execute(f"CREATE VIEW {table} AS SELECT * FROM read_parquet('{_input_files(work, table, shard)}', "
                        "hive_partitioning = false)")
        con.execute(SNAPSHOT_MACROS)
        metrics = inputs.grading_metrics(con, work.month, work.snapshot)
    finally:
        con.close()
    _write(metrics, work.output_path("metrics", shard))
    return metrics.height


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


STEPS: dict[str, Callable] = {"metrics": shard_metrics, "grade": shard_grade}


@dataclass(frozen=True)
class InProcess:
    """A ShardMap running the shards one after the other in this process."""
    count: int
    folder: Path

    def __call__(self, step: str, work: ShardWork, *args) -> list:
        return [STEPS[step](work, k, ShardLimits(), *args) for k in range(work.count)]


def _input_files(work: ShardWork, name: str, shard: int) -> str:
    """The shard's files of an input (a glob: the export may write several), or the empty one."""
    folder = work.input_path(name) / f"shard={shard}"
    return str(folder / "*.parquet") if folder.is_dir() else str(work.input_path(name) / "empty.parquet")


def _write(frame: pl.DataFrame, path: Path) -> None:
    """Replaces the file whole: a step run again after its worker died overwrites what it had begun."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    frame.write_parquet(tmp)
    os.replace(tmp, path)
