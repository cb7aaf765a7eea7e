"""The one grading path (rules.md "Grading rules"): from the inputs of grading month M to its tiers and changes.

Used by the monthly run, by simulate and by sharded runs: pure, over Polars frames, no warehouse. The steps:
ranks (global, or given for a shard) -> the cascade with overrides (engine.assign_tiers) -> downgrade protection
-> tags -> the changes against M-1 (outputs.md "Change types") with the entitlements gained and lost, M-1's
tiers read with the pack in force for M-1 -> the entitlement changes without a tier change (a tag alone, e.g. a
subscriber becoming a group key person, or a new pack version), a row kind of their own: ENTITLEMENTS.

Sharding: every input is per subscriber, so any split by subs_id grades independently once the rank table of
the whole population is given (inputs.ranks); `previous` must hold the same subscribers' M-1 rows.
"""
from __future__ import annotations

from dataclasses import dataclass

import polars as pl

from transforms.core.calendar import Month
from transforms.grade.engine import apply_protection, assign_tiers, compute_tags, entitlement_changes, rank_table
from transforms.grade.rulepack import RulePack

CHANGE_TYPES = ("NEW", "UPGRADE", "DOWNGRADE", "LOST")  # mart.grade_change (outputs.md "Change types")
ENTITLEMENTS = "ENTITLEMENTS"  # mart.entitlement_change: the tier is unchanged, the entitlements are not
ABSENT_REASON = "ABSENT_FROM_SNAPSHOT"  # the reason of a LOST change for a subscriber who left S(M)
_NO_ENTITLEMENTS = pl.lit([], dtype=pl.List(pl.String))


@dataclass(frozen=True)
class GradingInputs:
    month: Month
    metrics: pl.DataFrame           # one row per subscriber of S(M) (or of a shard), the metrics the pack reads
    overrides: pl.DataFrame         # subs_id, tier (+ override_id, reason, approved_by): the overrides holding for M
    spells: pl.DataFrame            # subs_id, prev_tier, since_month: the tier in effect during M and its start
    previous: pl.DataFrame          # subs_id, tier, tags: M-1's assignment (empty before the first graded month)
    ranks: pl.DataFrame | None = None  # rank table of the whole population when `metrics` is a shard


@dataclass(frozen=True)
class Graded:
    assignment: pl.DataFrame  # per row of metrics: subs_id, tier, reason, computed_tier, eligible, protected, tags
    changes: pl.DataFrame     # per changed subscriber: subs_id, from_tier, to_tier, change_type, reason,
    #                           entitlements_gained, entitlements_lost (sorted by subs_id)
    entitlement_changes: pl.DataFrame  # the same columns, change_type ENTITLEMENTS, from_tier = to_tier: the
    #                                    subscribers whose entitlements changed while their tier did not


def grade(pack: RulePack, inputs: GradingInputs, previous_pack: RulePack | None = None) -> Graded:
    """Tiers, tags and changes of M with `pack`; `previous_pack` (default `pack`) is the pack M-1 was graded with."""
    metrics = inputs.metrics
    ranks = inputs.ranks
    if ranks is None and pack.ranks:
        ranks = rank_table(pack, metrics)
    assigned = assign_tiers(pack, metrics, inputs.overrides.select("subs_id", "tier"), ranks=ranks)
    assigned = apply_protection(assigned, inputs.spells, inputs.month, list(pack.tiers), pack.protection_months)
    assigned = assigned.with_columns(compute_tags(pack, metrics, assigned, ranks=ranks)["tags"])
    return Graded(assigned, *grade_changes(pack, previous_pack or pack, inputs.previous, assigned))


def grade_changes(pack: RulePack, previous_pack: RulePack, previous: pl.DataFrame,
                  current: pl.DataFrame) -> tuple[pl.DataFrame, pl.DataFrame]:
    """The changes between M-1 (`previous`: subs_id, tier, tags; graded with `previous_pack`) and M (`current`:
    subs_id, tier, reason, tags): NEW from unrated (or no row) to rated, LOST from rated to unrated or absent
    from S(M), UPGRADE / DOWNGRADE between rated tiers by their order in the pack; unchanged subscribers have no
    row. Entitlements gained and lost from the tiers and tags of both months. Second frame: the ENTITLEMENTS
    rows of the subscribers whose tier is unchanged but whose entitlements differ (same columns)."""
    pairs = (previous.select("subs_id", prev_tier="tier")
             .join(current.select("subs_id", "tier", "reason"), on="subs_id", how="full", coalesce=True))
    from_rated = pl.col("prev_tier").is_not_null() & (pl.col("prev_tier") != previous_pack.unrated)
    to_rated = pl.col("tier").is_not_null() & (pl.col("tier") != pack.unrated)
    from_tier, to_tier = pl.col("prev_tier").fill_null(pack.unrated), pl.col("tier").fill_null(pack.unrated)
    change_type = (pl.when(~from_rated).then(pl.lit("NEW"))
                   .when(~to_rated).then(pl.lit("LOST"))
                   .when(_tier_order(pack, previous_pack, to_tier) > _tier_order(pack, previous_pack, from_tier))
                   .then(pl.lit("UPGRADE")).otherwise(pl.lit("DOWNGRADE")))
    changes = (pairs.filter((from_rated | to_rated) & (from_tier != to_tier))
               .select("subs_id", from_tier=from_tier, to_tier=to_tier, change_type=change_type,
                       reason=pl.col("reason").fill_null(pl.lit(ABSENT_REASON))))
    entitled = entitlement_changes(pack, previous.select("subs_id", "tier", "tags"),
                                   current.select("subs_id", "tier", "tags"), previous_pack)
    tier_changes = (changes.join(entitled, on="subs_id", how="left")
                    .with_columns(pl.col("entitlements_gained", "entitlements_lost").fill_null(_NO_ENTITLEMENTS))
                    .sort("subs_id"))
    entitlements_only = (entitled.join(changes.select("subs_id"), on="subs_id", how="anti")
                         .join(current.select("subs_id", "tier", "reason"), on="subs_id", how="inner")
                         .select("subs_id", from_tier="tier", to_tier="tier", change_type=pl.lit(ENTITLEMENTS),
                                 reason="reason", entitlements_gained="entitlements_gained",
                                 entitlements_lost="entitlements_lost")
                         .sort("subs_id"))
    return tier_changes, entitlements_only


def _tier_order(pack: RulePack, previous_pack: RulePack, tier: pl.Expr) -> pl.Expr:
    """A tier's position in the pack of M; a tier only M-1's pack had keeps its position there."""
    order = {t: i for i, t in enumerate(previous_pack.tiers)} | {t: i for i, t in enumerate(pack.tiers)}
    return tier.replace_strict(order, return_dtype=pl.Int64)
