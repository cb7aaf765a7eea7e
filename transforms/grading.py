"""The tier cascade of a rule pack over the metrics of one grading month (rules.md, "Tier rules").

Order: (1) ineligible -> the unrated tier, reason of the first eligibility check that excludes; (2) an override
-> its tier, reason OVERRIDE, never capped; (3..) the pack rules, first match wins, then the caps in pack order.
Everything is one vectorised select: when/then chains over tier indexes (the pack order), no Python loop per row.
Downgrade protection is applied afterwards (apply_protection below), with the tiers in effect.
"""
from __future__ import annotations

import polars as pl

from transforms.calendar import Month
from transforms.rulepack import METRIC_CATALOGUE, RulePack

OVERRIDE_REASON = "OVERRIDE"
NO_RULE_REASON = "NO_RULE"  # an eligible subscriber no rule matched (a pack without `otherwise`)
_DTYPE_CHECKS = {"int": lambda d: d.is_integer(), "bool": lambda d: d == pl.Boolean,
                 "str": lambda d: d == pl.String}


def assign_tiers(pack: RulePack, metrics: pl.DataFrame, overrides: pl.DataFrame | None = None) -> pl.DataFrame:
    """One row per row of `metrics` (same order): subs_id, tier, reason, computed_tier, eligible.

    metrics: subs_id plus the catalogue columns the pack's cascade reads (non-null).
    overrides: subs_id, tier — the overrides holding for the grading month, at most one per subscriber;
    overrides of subscribers not in `metrics` are ignored.
    """
    _validate_metrics(pack, metrics)
    reasons = _Reasons(pack)
    override = _override_tier(pack, overrides, metrics.schema["subs_id"])
    return (metrics.lazy()
            .select("subs_id", *sorted(pack.grading_metrics()))
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


def _validate_metrics(pack: RulePack, metrics: pl.DataFrame) -> None:
    """Missing, mistyped or null metrics would silently change tiers (a null condition counts as false)."""
    needed = ["subs_id", *sorted(pack.grading_metrics())]
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
    """Downgrade protection: an eligible subscriber whose new tier is lower keeps the previous tier while fewer
    than N months have passed since it was attained. `previous`: subs_id, prev_tier, since_month (Date)."""
    if protection_months <= 0:
        return assigned.with_columns(protected=pl.lit(False))
    rank = {t: i for i, t in enumerate(tiers)}
    joined = assigned.join(previous, on="subs_id", how="left")
    months_held = (month.index - (pl.col("since_month").dt.year().cast(pl.Int64) * 12
                                  + pl.col("since_month").dt.month().cast(pl.Int64) - 1))
    keep = (pl.col("eligible") & pl.col("prev_tier").is_not_null()
            & (pl.col("prev_tier").replace_strict(rank, default=0, return_dtype=pl.Int64)
               > pl.col("tier").replace_strict(rank, default=0, return_dtype=pl.Int64))
            & (months_held < protection_months))
    return joined.with_columns(
        tier=pl.when(keep).then(pl.col("prev_tier")).otherwise(pl.col("tier")),
        reason=pl.when(keep).then(pl.lit("PROTECTED")).otherwise(pl.col("reason")),
        protected=keep.fill_null(False),
    ).drop("prev_tier", "since_month")
