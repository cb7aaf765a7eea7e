"""What-if grading (outputs.md, `tierflow simulate`): grade month M with a candidate rule pack over the same
inputs as the official run (metrics, overrides, the official tier history) through the one grading path
(transforms.grade.grading), and compare with the official tiers of M.

Nothing here writes the warehouse (callers open it read-only) or the outbox. The result is a migration matrix
(official tier x candidate tier), the entitlement counts of both packs and who moves; transforms.report.simulation
prints and writes them.
"""
from __future__ import annotations

from dataclasses import dataclass

import duckdb
import polars as pl

from transforms.core.calendar import Month
from transforms.grade.engine import entitlements
from transforms.grade.grading import GradingInputs, grade
from transforms.grade.rulepack import RulePack
from transforms.runs.month_state import is_current
from transforms.warehouse import inputs
from transforms.warehouse.db import first_row, snapshot_date_for


class SimulationError(Exception):
    """The simulation cannot run; the message says why and what to run first."""


@dataclass(frozen=True)
class Simulation:
    month: Month
    candidate: RulePack
    official: RulePack
    migration: pl.DataFrame     # official_tier, candidate_tier, subscribers: every pair of tiers, in tier order
    entitlements: pl.DataFrame  # entitlement, official, candidate, change
    notes: tuple[str, ...]
    movers: pl.DataFrame        # subs_id, region_code, official_tier, candidate_tier: who gets another tier
    regions: pl.DataFrame       # region_code, subscribers, moved: per region of S(M), by region_code

    @property
    def subscribers(self) -> int:
        return int(self.migration["subscribers"].sum())

    @property
    def moved(self) -> int:
        """Subscribers whose candidate tier code differs from their official one."""
        m = self.migration
        return int(m.filter(pl.col("official_tier") != pl.col("candidate_tier"))["subscribers"].sum())


# --- the official side -----------------------------------------------------------------------------------------

def official_pack_version(con: duckdb.DuckDBPyConnection, month: Month) -> tuple[str, str]:
    """(pack name, pack version) of the official grading of M; refuses a month not graded or stale."""
    row = first_row(con, "SELECT graded, pack_name, pack_version FROM ops.month_state WHERE month = ?",
                    [month.first_day])
    if row is None or not row[0]:
        why = "was never processed" if row is None else "was processed without tiers (incomplete BILL window)"
        raise SimulationError(f"{month} has not been graded officially ({why}): run "
                              f"`tierflow monthly --month {month}` first")
    if not is_current(con, month, row[2]):
        raise SimulationError(f"the official grading of {month} is stale (its inputs changed since): run "
                              f"`tierflow backfill --start {month} --end {month}` first")
    return row[1], row[2]


def official_grades(official: RulePack, month: Month, graded: pl.DataFrame, metrics: pl.DataFrame) -> pl.DataFrame:
    """mart.tier_assignment of M (subs_id, tier, tags), checked to cover S(M) and to hold the official pack's
    tiers only."""
    if not graded["subs_id"].equals(metrics["subs_id"], check_names=False):
        raise SimulationError(f"the official tiers of {month} do not cover the snapshot S({month}): "
                              f"run `tierflow backfill --start {month} --end {month}` first")
    unknown = sorted(set(graded["tier"].unique().to_list()) - set(official.tiers))
    if unknown:
        raise SimulationError(f"official tiers of {month} not in pack {official.name}: {', '.join(unknown)}")
    return graded.select("subs_id", "tier", "tags")


# --- the candidate side ----------------------------------------------------------------------------------------

def usable_overrides(pack: RulePack, overrides: pl.DataFrame) -> tuple[pl.DataFrame, list[str]]:
    """Overrides name tiers of the official pack; those a candidate pack lacks cannot apply and are reported."""
    foreign = overrides.filter(~pl.col("tier").is_in(list(pack.tiers)))
    if foreign.height == 0:
        return overrides, []
    names = ", ".join(sorted(set(foreign["tier"].to_list())))
    return (overrides.filter(pl.col("tier").is_in(list(pack.tiers))),
            [f"{foreign.height} override(s) name tiers pack {pack.name} does not have ({names}): ignored"])


# --- entitlements ----------------------------------------------------------------------------------------------

def entitlement_counts(pack: RulePack, graded: pl.DataFrame) -> dict[str, int]:
    """Subscribers holding each entitlement of the pack, in pack order, from the tiers and tags of `graded`
    (subs_id, tier, tags)."""
    if not pack.entitlements:
        return {}
    held = entitlements(pack, graded.select("subs_id", "tier", "tags"))
    counts = held.select(pl.col("entitlements").list.contains(name).cast(pl.Int64).sum().alias(name)
                         for name in pack.entitlements)
    return {name: int(counts[name][0]) for name in pack.entitlements}


def entitlement_table(official: dict[str, int], candidate: dict[str, int]) -> pl.DataFrame:
    """Official pack's entitlements first, in pack order, then those only the candidate has."""
    names = list(dict.fromkeys([*official, *candidate]))
    before, after = [official.get(n, 0) for n in names], [candidate.get(n, 0) for n in names]
    return pl.DataFrame({"entitlement": names, "official": before, "candidate": after,
                         "change": [b - a for a, b in zip(before, after)]},
                        schema={"entitlement": pl.String, "official": pl.Int64, "candidate": pl.Int64,
                                "change": pl.Int64})


# --- migration -------------------------------------------------------------------------------------------------

def movers_and_regions(pairs: pl.DataFrame) -> tuple[pl.DataFrame, pl.DataFrame]:
    """From (subs_id, region_code, official_tier, candidate_tier) per subscriber: those whose tier differs, by
    subs_id, and the subscribers and movers of each region (a subscriber without region last)."""
    moved = pl.col("official_tier") != pl.col("candidate_tier")
    movers = pairs.filter(moved).sort("subs_id")
    regions = (pairs.group_by("region_code").agg(pl.len().cast(pl.Int64).alias("subscribers"),
                                                 moved.sum().cast(pl.Int64).alias("moved"))
               .sort("region_code", nulls_last=True))
    return movers, regions


def migration_matrix(pairs: pl.DataFrame, official_tiers, candidate_tiers) -> pl.DataFrame:
    """Counts of (official_tier, candidate_tier) for every pair of tiers, zeros included, in tier order."""
    counts = pairs.group_by("official_tier", "candidate_tier").len("subscribers")
    grid = pl.DataFrame({"official_tier": list(official_tiers)}).with_row_index("o").join(
        pl.DataFrame({"candidate_tier": list(candidate_tiers)}).with_row_index("c"), how="cross")
    return (grid.join(counts, on=["official_tier", "candidate_tier"], how="left")
            .with_columns(pl.col("subscribers").fill_null(0).cast(pl.Int64))
            .sort("o", "c").select("official_tier", "candidate_tier", "subscribers"))


def simulate(con: duckdb.DuckDBPyConnection, month: Month, candidate: RulePack, official: RulePack) -> Simulation:
    """Grades M with `candidate` in memory and compares it with the official grading of M (made with
    `official`). Reads only: the connection may be read-only."""
    name, version = official_pack_version(con, month)
    if official.version != version:
        raise SimulationError(f"{month} was graded with pack {name} version {version}, not with "
                              f"{official.name} version {official.version}")
    metrics = inputs.grading_metrics(con, month, snapshot_date_for(con, month))
    theirs = official_grades(official, month, inputs.assignment_of(con, month), metrics)
    overrides, notes = usable_overrides(candidate, inputs.active_overrides(con, month))
    ours = grade(candidate, GradingInputs(month, metrics, overrides, inputs.tier_spells(con, month),
                                          inputs.assignment_of(con, month - 1)), official).assignment
    pairs = (theirs.join(ours, on="subs_id", how="inner", suffix="_candidate", validate="1:1")
             .join(metrics.select("subs_id", "region_code"), on="subs_id", how="left", validate="1:1")
             .select("subs_id", "region_code", official_tier="tier", candidate_tier="tier_candidate"))
    migration = migration_matrix(pairs, official.tiers, candidate.tiers)
    entitlements_held = entitlement_table(entitlement_counts(official, theirs), entitlement_counts(candidate, ours))
    movers, regions = movers_and_regions(pairs)
    return Simulation(month, candidate, official, migration, entitlements_held, tuple(notes), movers, regions)
