"""The tier cascade of a rule pack over the metrics of one grading month (rules.md, "Tier rules"), then
downgrade protection, tags and entitlements.

Order: (1) ineligible -> the unrated tier, reason of the first eligibility check that excludes; (2) an override
-> its tier, reason OVERRIDE, never capped; (3..) the pack rules, first match wins, then the caps in pack order.
Everything is one vectorised select: when/then chains over tier indexes (the pack order), no Python loop per row.
Ranks (pack `ranks:`) need the whole population: rank_table is a cheap global pass over the rank keys of eligible
subscribers; with it, any split of the subscribers grades independently (assign_tiers_sharded).
Downgrade protection is applied afterwards (apply_protection), with the tiers in effect; tags (compute_tags) and
entitlements (entitlements, entitlement_changes) come from the final tiers.
"""
from __future__ import annotations

import polars as pl

from transforms.calendar import Month
from transforms.rulepack import METRIC_CATALOGUE, RulePack

OVERRIDE_REASON = "OVERRIDE"
PROTECTED_REASON = "PROTECTED"
NO_RULE_REASON = "NO_RULE"  # an eligible subscriber no rule matched (a pack without `otherwise`)
_DTYPE_CHECKS = {"int": lambda d: d.is_integer(), "bool": lambda d: d == pl.Boolean,
                 "str": lambda d: d == pl.String}


def assign_tiers(pack: RulePack, metrics: pl.DataFrame, overrides: pl.DataFrame | None = None,
                 ranks: pl.DataFrame | None = None) -> pl.DataFrame:
    """One row per row of `metrics` (same order): subs_id, tier, reason, computed_tier, eligible.

    metrics: subs_id plus the catalogue columns the pack's cascade reads (non-null).
    overrides: subs_id, tier — the overrides holding for the grading month, at most one per subscriber;
    overrides of subscribers not in `metrics` are ignored.
    ranks: rank_table of the whole population when `metrics` is only part of it; by default the ranks are
    computed over `metrics`.
    """
    _validate_metrics(pack, metrics, pack.grading_metrics())
    reasons = _Reasons(pack)
    override = _override_tier(pack, overrides, metrics.schema["subs_id"])
    frame = metrics.lazy().select("subs_id", *sorted(pack.grading_metrics()))
    return (_with_ranks(pack, frame, metrics, ranks)
            .with_columns(excluded=_ineligibility_reason(pack, reasons), rule_position=_first_rule(pack),
                          override_tier=override)
            .with_columns(**_rule_outcome(pack, reasons))
            .with_columns(**_capped(pack, reasons))
            .select(_final(pack, reasons))
            .collect())


class _Reasons:
    """Reasons travel as small integer codes (cheaper than strings over 10M rows) and become text at the end."""

    def __init__(self, pack: RulePack):
        names = ([e.reason for e in pack.eligibility] + [OVERRIDE_REASON] + [r.reason for r in pack.rules]
                 + [c.reason for c in pack.caps] + [NO_RULE_REASON])
        self.names = list(dict.fromkeys(names))

    def code(self, reason: str) -> pl.Expr:
        return pl.lit(self.names.index(reason), dtype=pl.Int64)

    def text(self, codes: pl.Expr) -> pl.Expr:
        return _lookup(self.names, codes, pl.String)


def _lookup(values: list, index: pl.Expr, dtype) -> pl.Expr:
    """values[index] for every row (index into a short constant list)."""
    return pl.lit(pl.Series(values, dtype=dtype)).gather(index)


def _ineligibility_reason(pack: RulePack, reasons: _Reasons) -> pl.Expr:
    """Code of the first eligibility check that excludes the subscriber; null when eligible."""
    reason = pl.lit(None, dtype=pl.Int64)
    for check in reversed(pack.eligibility):  # built inside out so the first check listed wins
        reason = pl.when(check.condition.expr).then(reasons.code(check.reason)).otherwise(reason)
    return reason


def _first_rule(pack: RulePack) -> pl.Expr:
    """Position of the first rule that matches; len(rules) when none does."""
    position = pl.lit(len(pack.rules), dtype=pl.Int64)
    for i in reversed(range(len(pack.rules))):
        rule = pack.rules[i]
        matched = pl.lit(True) if rule.condition is None else rule.condition.expr
        position = pl.when(matched).then(pl.lit(i, dtype=pl.Int64)).otherwise(position)
    return position


def _rule_outcome(pack: RulePack, reasons: _Reasons) -> dict[str, pl.Expr]:
    """rule_tier (index in pack.tiers) and rule_reason of the matched rule; the unrated tier when none."""
    tiers = [pack.tier_index(r.tier) for r in pack.rules] + [0]
    codes = [reasons.names.index(r.reason) for r in pack.rules] + [reasons.names.index(NO_RULE_REASON)]
    position = pl.col("rule_position")
    return {"rule_tier": _lookup(tiers, position, pl.Int64), "rule_reason": _lookup(codes, position, pl.Int64)}


def _capped(pack: RulePack, reasons: _Reasons) -> dict[str, pl.Expr]:
    """Each cap in order lowers the tier when its condition holds; its reason shows only if it lowered."""
    tier, reason = pl.col("rule_tier"), pl.col("rule_reason")
    for cap in pack.caps:
        limit = pl.lit(pack.tier_index(cap.max_tier), dtype=pl.Int64)
        lowers = cap.condition.expr & (tier > limit)
        tier, reason = (pl.when(lowers).then(limit).otherwise(tier),
                        pl.when(lowers).then(reasons.code(cap.reason)).otherwise(reason))
    return {"rule_tier": tier, "rule_reason": reason}


def _final(pack: RulePack, reasons: _Reasons) -> list[pl.Expr]:
    excluded, override = pl.col("excluded").is_not_null(), pl.col("override_tier").is_not_null()
    computed = pl.when(excluded).then(pl.lit(0, dtype=pl.Int64)).otherwise(pl.col("rule_tier"))
    tier = pl.when(excluded | ~override).then(computed).otherwise(pl.col("override_tier"))
    reason = (pl.when(excluded).then(pl.col("excluded"))
              .when(override).then(reasons.code(OVERRIDE_REASON))
              .otherwise(pl.col("rule_reason")))
    names = list(pack.tiers)
    return [pl.col("subs_id"),
            _lookup(names, tier, pl.String).alias("tier"),
            reasons.text(reason).alias("reason"),
            _lookup(names, computed, pl.String).alias("computed_tier"),
            (~excluded).alias("eligible")]


def _override_tier(pack: RulePack, overrides: pl.DataFrame | None, id_type) -> pl.Expr:
    """Index of the override tier of each subscriber, null without one (a hash lookup, no join)."""
    if overrides is None or overrides.height == 0:
        return pl.lit(None, dtype=pl.Int64)
    frame = overrides.select(pl.col("subs_id").cast(id_type), pl.col("tier").cast(pl.String)).drop_nulls()
    unknown = sorted(set(frame["tier"].to_list()) - set(pack.tiers))
    if unknown:
        raise ValueError(f"overrides name tiers not in pack {pack.name}: {', '.join(unknown)}")
    if frame["subs_id"].n_unique() != frame.height:
        raise ValueError("more than one override for a subscriber")
    tier_index = frame["tier"].replace_strict(list(pack.tiers), list(range(len(pack.tiers))), return_dtype=pl.Int64)
    return pl.col("subs_id").replace_strict(frame["subs_id"], tier_index, default=None, return_dtype=pl.Int64)


def _validate_metrics(pack: RulePack, metrics: pl.DataFrame, names: frozenset[str]) -> None:
    """Missing, mistyped or null metrics would silently change tiers (a null condition counts as false)."""
    needed = ["subs_id", *sorted(names)]
    missing = [c for c in needed if c not in metrics.columns]
    if missing:
        raise ValueError(f"metrics frame lacks {', '.join(missing)} (pack {pack.name})")
    wrong = [c for c in needed[1:] if not _DTYPE_CHECKS[METRIC_CATALOGUE[c]](metrics.schema[c])]
    if wrong:
        raise ValueError("metrics with the wrong type: "
                         + ", ".join(f"{c} is {metrics.schema[c]}, expected {METRIC_CATALOGUE[c]}" for c in wrong))
    nulls = [c for c in needed if metrics[c].null_count()]
    if nulls:
        raise ValueError(f"metrics with null values: {', '.join(nulls)}")


def apply_protection(assigned: pl.DataFrame, previous: pl.DataFrame, month: Month, tiers: list[str],
                     protection_months: int) -> pl.DataFrame:
    """Downgrade protection (rules.md): an eligible subscriber whose new tier is lower than the tier in effect
    keeps it while fewer than N months have passed since it was attained (grading month M - since_month < N);
    marked protected, reason PROTECTED. Ineligibility is never protected, nor is an override (an explicit
    decision); an upgrade is never held back. Adds `protected`; same rows, same order.

    assigned: the output of assign_tiers. previous: subs_id, prev_tier (the tier in effect during M),
    since_month (Date: the grading month its spell began), at most one row per subscriber.
    """
    if protection_months <= 0:
        return assigned.with_columns(protected=pl.lit(False))
    rank = {t: i for i, t in enumerate(tiers)}
    joined = assigned.join(previous.select("subs_id", "prev_tier", "since_month"), on="subs_id", how="left",
                           validate="m:1", maintain_order="left")
    months_held = (month.index - (pl.col("since_month").dt.year().cast(pl.Int64) * 12
                                  + pl.col("since_month").dt.month().cast(pl.Int64) - 1))
    keep = (pl.col("eligible") & (pl.col("reason") != OVERRIDE_REASON) & pl.col("prev_tier").is_not_null()
            & (pl.col("prev_tier").replace_strict(rank, default=0, return_dtype=pl.Int64)
               > pl.col("tier").replace_strict(rank, default=0, return_dtype=pl.Int64))
            & (months_held < protection_months)).fill_null(False)
    return joined.with_columns(
        tier=pl.when(keep).then(pl.col("prev_tier")).otherwise(pl.col("tier")),
        reason=pl.when(keep).then(pl.lit(PROTECTED_REASON)).otherwise(pl.col("reason")),
        protected=keep,
    ).drop("prev_tier", "since_month")


# --- ranks ----------------------------------------------------------------------------------------------------

def rank_table(pack: RulePack, metrics: pl.DataFrame) -> pl.DataFrame:
    """The global pass of rank packs: subs_id plus, per pack rank, `<name>` (1 = first) and `<name>_count`
    (number ranked), for the eligible subscribers of `metrics` only (ineligible ones are not ranked).
    Ties are broken by ascending subs_id, so the ranks are a strict order and deterministic.
    Reads only the eligibility and rank-key columns: cheap next to the cascade."""
    _validate_metrics(pack, metrics, pack.rank_metrics())
    eligible = metrics.lazy().filter(_eligible(pack))
    columns = []
    for rank in pack.ranks:
        order = pl.arg_sort_by([rank.key, pl.col("subs_id")], descending=[rank.descending, False])
        columns += [(order.arg_sort().cast(pl.Int64) + 1).alias(rank.name),
                    pl.len().cast(pl.Int64).alias(rank.count_name)]
    return eligible.select("subs_id", *columns).collect()


def _eligible(pack: RulePack) -> pl.Expr:
    excluded = [check.condition.expr for check in pack.eligibility]
    return ~pl.any_horizontal(excluded) if excluded else pl.lit(True)


def _rank_columns(pack: RulePack) -> list[str]:
    return [name for rank in pack.ranks for name in (rank.name, rank.count_name)]


def _with_ranks(pack: RulePack, frame: pl.LazyFrame, metrics: pl.DataFrame,
                ranks: pl.DataFrame | None) -> pl.LazyFrame:
    """`frame` with the rank columns joined by subs_id (null for subscribers not ranked)."""
    if not pack.ranks:
        return frame
    if ranks is None:
        ranks = rank_table(pack, metrics)
    missing = [c for c in ["subs_id", *_rank_columns(pack)] if c not in ranks.columns]
    if missing:
        raise ValueError(f"rank table lacks {', '.join(missing)} (pack {pack.name})")
    table = ranks.lazy().select(pl.col("subs_id").cast(metrics.schema["subs_id"]), *_rank_columns(pack))
    return frame.join(table, on="subs_id", how="left", validate="m:1", maintain_order="left")


def assign_tiers_sharded(pack: RulePack, metrics: pl.DataFrame, shards: int,
                         overrides: pl.DataFrame | None = None) -> pl.DataFrame:
    """assign_tiers over `shards` independent parts of the subscribers (by hash of subs_id), with the ranks
    computed once over everyone; the result equals assign_tiers(pack, metrics, overrides), row for row.
    Each part is one call assign_tiers(pack, part, overrides, ranks=its part of rank_table): parts can run on
    separate workers."""
    if shards < 1:
        raise ValueError(f"shards must be at least 1, got {shards}")
    shard_of = (pl.col("subs_id").hash(seed=0) % shards).alias("_shard")
    table = rank_table(pack, metrics) if pack.ranks else None
    rank_parts = table.with_columns(shard_of).partition_by("_shard", as_dict=True) if table is not None else {}
    results = []
    for key, part in metrics.with_row_index("_row").with_columns(shard_of).partition_by(
            "_shard", as_dict=True, maintain_order=True).items():
        part_ranks = rank_parts.get(key, table.clear()) if table is not None else None
        graded = assign_tiers(pack, part.drop("_row", "_shard"), overrides,
                              None if part_ranks is None else part_ranks.drop("_shard", strict=False))
        results.append(graded.with_columns(part["_row"]))
    if not results:
        return assign_tiers(pack, metrics, overrides)
    return pl.concat(results).sort("_row").drop("_row")


# --- tags and entitlements ------------------------------------------------------------------------------------

def compute_tags(pack: RulePack, metrics: pl.DataFrame, assigned: pl.DataFrame,
                 ranks: pl.DataFrame | None = None) -> pl.DataFrame:
    """subs_id, tags (List[String], in pack order) for every row of `assigned` (same order). Tags are computed
    for rated subscribers (eligible, tier above the unrated tier); everyone else has an empty list.

    metrics: as for assign_tiers, with the columns of pack.tag_metrics(). assigned: the output of assign_tiers
    (after apply_protection): subs_id, tier, reason, eligible. ranks: as for assign_tiers.
    A tag with `assigning_rule_fails_with` holds only if the tier and reason are those of the first rule that
    matches the metrics (the rule that assigned the tier) and that rule would not match under the substitutes.
    """
    needed = pack.tag_metrics()
    _validate_metrics(pack, metrics, needed)
    frame = assigned.lazy().select("subs_id", "tier", "reason", "eligible").join(
        metrics.lazy().select("subs_id", *sorted(needed)), on="subs_id", how="left", validate="1:1",
        maintain_order="left")
    frame = _with_ranks(pack, frame, metrics, ranks)
    rated = pl.col("eligible") & (pl.col("tier") != pl.lit(pack.unrated))
    holds = [(name, rated & tag.condition.expr & _assigning_rule_fails(pack, tag.rule_fails))
             for name, tag in pack.tags.items()]
    return frame.select("subs_id", _names_where(holds).alias("tags")).collect()


def _assigning_rule_fails(pack: RulePack, rule_fails) -> pl.Expr:
    """True when the first matching rule assigned the final tier (same tier and reason) and its what-if
    condition fails; constant True for a tag without a what-if part."""
    if rule_fails is None:
        return pl.lit(True)
    position = _first_rule(pack)
    rule_tier = _lookup([r.tier for r in pack.rules] + [None], position, pl.String)
    rule_reason = _lookup([r.reason for r in pack.rules] + [None], position, pl.String)
    fails = pl.lit(False)
    for i, fails_here in enumerate(rule_fails):
        if fails_here is not None:  # `otherwise` always matches: it cannot fail
            fails = pl.when(position == i).then(fails_here).otherwise(fails)
    return (pl.col("tier") == rule_tier) & (pl.col("reason") == rule_reason) & fails


def _names_where(pairs: list[tuple[str, pl.Expr]]) -> pl.Expr:
    """A List[String] of the names whose condition holds, in the given order (null conditions count false)."""
    if not pairs:
        return pl.lit([], dtype=pl.List(pl.String))  # broadcast to every row by the select
    return pl.concat_list([pl.when(cond).then(pl.lit(name, dtype=pl.String)) for name, cond in pairs]
                          ).list.drop_nulls()


def _entitlement_flags(pack: RulePack, frame: pl.DataFrame, prefix: str) -> pl.LazyFrame:
    """subs_id and one Boolean column `<prefix><i>` per entitlement of the pack (i in pack order)."""
    missing = [c for c in ("subs_id", "tier", "tags") if c not in frame.columns]
    if missing:
        raise ValueError(f"entitlements need subs_id, tier, tags; missing {', '.join(missing)}")
    tags = pl.col("tags").fill_null(pl.lit([], dtype=pl.List(pl.String)))
    return (frame.lazy().select("subs_id", "tier", "tags")
            .with_columns(**{name: tags.list.contains(name) for name in pack.tags})
            .select("subs_id", *[c.expr.fill_null(False).alias(f"{prefix}{i}")
                                 for i, c in enumerate(pack.entitlements.values())]))


def entitlements(pack: RulePack, frame: pl.DataFrame) -> pl.DataFrame:
    """subs_id, entitlements (List[String], in pack order) for every row of `frame` (subs_id, tier, tags)."""
    names = list(pack.entitlements)
    return (_entitlement_flags(pack, frame, "e")
            .select("subs_id", _names_where([(n, pl.col(f"e{i}")) for i, n in enumerate(names)])
                    .alias("entitlements"))
            .collect())


def entitlement_changes(pack: RulePack, previous: pl.DataFrame, current: pl.DataFrame) -> pl.DataFrame:
    """subs_id, entitlements_gained, entitlements_lost (List[String], pack order) of every subscriber whose
    entitlements differ between `previous` and `current` (each subs_id, tier, tags); a subscriber missing on
    one side has no entitlements there. Sorted by subs_id; subscribers without a change have no row."""
    names = list(pack.entitlements)
    prev = _entitlement_flags(pack, previous, "p")
    cur = _entitlement_flags(pack, current.with_columns(pl.col("subs_id").cast(previous.schema["subs_id"])), "c")
    had = [pl.col(f"p{i}").fill_null(False) for i in range(len(names))]
    has = [pl.col(f"c{i}").fill_null(False) for i in range(len(names))]
    return (prev.join(cur, on="subs_id", how="full", coalesce=True, validate="1:1")
            .select("subs_id",
                    _names_where([(n, has[i] & ~had[i]) for i, n in enumerate(names)]).alias("entitlements_gained"),
                    _names_where([(n, had[i] & ~has[i]) for i, n in enumerate(names)]).alias("entitlements_lost"))
            .filter((pl.col("entitlements_gained").list.len() > 0) | (pl.col("entitlements_lost").list.len() > 0))
            .sort("subs_id")
            .collect())
