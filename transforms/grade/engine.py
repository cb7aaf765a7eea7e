"""The tier cascade of a rule pack over the metrics of one grading month (rules.md, "Tier rules"), then
downgrade protection, tags and entitlements.

Order: (1) ineligible -> the unrated tier, reason of the first eligibility check that excludes; (2) an override
-> its tier, reason OVERRIDE, never capped; (3..) the pack rules, first match wins, then the caps in pack order.
Everything is one vectorised select: when/then chains over tier indexes (the pack order), no Python loop per row.
Ranks (pack `ranks:`) need the whole population: rank_table is a cheap global pass over the rank keys of eligible
subscribers; with it, any split of the subscribers grades independently (transforms.runs.shards).
Downgrade protection is applied afterwards (apply_protection), with the tiers in effect; tags (compute_tags) and
entitlements (entitlements, entitlement_changes) come from the final tiers.
"""
from __future__ import annotations

import polars as pl

from transforms.core.calendar import Month
from transforms.grade.rulepack import METRIC_CATALOGUE, RulePack

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
    frame = _with_ranks(pack, metrics.select("subs_id", *sorted(pack.grading_metrics())), ranks)
    return (frame.lazy()
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
    (number ranked), for the eligible subscribers of `metrics` only, in the order of `metrics`.
    Ties are broken by ascending subs_id (byte order), so the ranks are a strict order and deterministic.
    Reads only the eligibility and rank-key columns: cheap next to the cascade."""
    _validate_metrics(pack, metrics, pack.rank_metrics())
    keys = [rank.key.alias(f"_key{i}") for i, rank in enumerate(pack.ranks)]
    eligible = metrics.lazy().filter(_eligible(pack)).select("subs_id", *keys).collect()
    # Input sorted by subs_id (as the monthly metrics are): an ordinal rank, which orders ties by position, is
    # already tie-broken by subs_id; otherwise sort on (key, subs_id).
    in_id_order = eligible["subs_id"].is_sorted()
    columns = []
    for i, rank in enumerate(pack.ranks):
        key = pl.col(f"_key{i}")
        if in_id_order:
            position = key.rank("ordinal", descending=rank.descending).cast(pl.Int64)
        else:
            position = pl.arg_sort_by([key, pl.col("subs_id")], descending=[rank.descending, False]).arg_sort() + 1
        columns += [position.cast(pl.Int64).alias(rank.name),
                    pl.lit(eligible.height, dtype=pl.Int64).alias(rank.count_name)]
    return eligible.select("subs_id", *columns)


def _eligible(pack: RulePack) -> pl.Expr:
    excluded = [check.condition.expr for check in pack.eligibility]
    return ~pl.any_horizontal(excluded) if excluded else pl.lit(True)


def _rank_columns(pack: RulePack) -> list[str]:
    return [name for rank in pack.ranks for name in (rank.name, rank.count_name)]


def _with_ranks(pack: RulePack, frame: pl.DataFrame, ranks: pl.DataFrame | None) -> pl.DataFrame:
    """`frame` (with the eligibility and rank-key metrics) plus the rank columns, null where not ranked.

    `ranks` None: ranked among the eligible rows of `frame`. Otherwise a rank table (or part of one) of a larger
    population: when its rows are the eligible rows of `frame` in the same order (a shard of both) the
    columns are placed by position, else joined by subs_id."""
    if not pack.ranks:
        return frame
    missing = [] if ranks is None else [c for c in ["subs_id", *_rank_columns(pack)] if c not in ranks.columns]
    if missing:
        raise ValueError(f"rank table lacks {', '.join(missing)} (pack {pack.name})")
    eligible = frame.select(_eligible(pack)).to_series()
    if ranks is None:
        ranks = rank_table(pack, frame)
    else:
        ranks = ranks.with_columns(pl.col("subs_id").cast(frame.schema["subs_id"]))
    if ranks.height == eligible.sum() and ranks["subs_id"].equals(frame["subs_id"].filter(eligible)):
        at = pl.arg_where(eligible, eager=True)
        return frame.with_columns(pl.repeat(None, frame.height, dtype=pl.Int64, eager=True)
                                  .scatter(at, ranks[name]).alias(name) for name in _rank_columns(pack))
    return frame.join(ranks.select("subs_id", *_rank_columns(pack)), on="subs_id", how="left", validate="m:1",
                      maintain_order="left")


# --- tags and entitlements ------------------------------------------------------------------------------------
# Lists are built from bit masks: a row's tags (or entitlements) are an Int64 with bit i for the i-th name in
# pack order, and the few distinct masks are turned into lists once (building lists row by row is slow).

def compute_tags(pack: RulePack, metrics: pl.DataFrame, assigned: pl.DataFrame,
                 ranks: pl.DataFrame | None = None) -> pl.DataFrame:
    """subs_id, tags (List[String], in pack order) for every row of `assigned` (same order). Tags are computed
    for rated subscribers (eligible, tier above the unrated tier); everyone else has an empty list.

    metrics: as for assign_tiers, with the columns of pack.tag_metrics(). assigned: the output of assign_tiers
    (after apply_protection): subs_id, tier, reason, eligible. ranks: as for assign_tiers.
    A tag with `assigning_rule_fails_with` holds only if the tier and reason are those of the first rule that
    matches the metrics (the rule that assigned the tier) and that rule would not match under the substitutes.
    """
    needed = sorted(pack.tag_metrics())
    _validate_metrics(pack, metrics, frozenset(needed))
    result = assigned.select("subs_id", pl.col("tier").cast(pl.Enum(pack.tiers)), "reason", "eligible")
    if result["subs_id"].equals(metrics["subs_id"]):  # assign_tiers keeps the order of metrics: no join
        frame = result.hstack(metrics.select(needed))
    else:
        frame = result.join(metrics.select("subs_id", *needed), on="subs_id", how="left", validate="1:1",
                            maintain_order="left")
    frame = _with_ranks(pack, frame, ranks)
    rated = pl.col("eligible") & (_tier_index() > 0)
    mask = _mask([rated & tag.condition.expr & _assigning_rule_fails(pack, tag.rule_fails)
                  for tag in pack.tags.values()])
    tagged = frame.lazy().select("subs_id", mask.alias("_mask")).collect()
    return _with_names(tagged, "_mask", list(pack.tags), "tags").select("subs_id", "tags")


def _tier_index(column: str = "tier") -> pl.Expr:
    """Index of the tier in pack order, from a column of the pack's tier Enum."""
    return pl.col(column).to_physical().cast(pl.Int64)


def _assigning_rule_fails(pack: RulePack, rule_fails) -> pl.Expr:
    """True when the first matching rule assigned the final tier (same tier and reason) and its what-if
    condition fails; constant True for a tag without a what-if part."""
    if rule_fails is None:
        return pl.lit(True)
    position = _first_rule(pack)
    rule_tier = _lookup([pack.tier_index(r.tier) for r in pack.rules] + [None], position, pl.Int64)
    rule_reason = _lookup([r.reason for r in pack.rules] + [None], position, pl.String)
    fails = pl.lit(False)
    for i, fails_here in enumerate(rule_fails):
        if fails_here is not None:  # `otherwise` always matches: it cannot fail
            fails = pl.when(position == i).then(fails_here).otherwise(fails)
    return (_tier_index() == rule_tier) & (pl.col("reason") == rule_reason) & fails


def _mask(flags: list[pl.Expr]) -> pl.Expr:
    """Int64 with bit i set where flags[i] holds (null counts as false)."""
    bits = [pl.when(flag).then(pl.lit(1 << i, dtype=pl.Int64)).otherwise(pl.lit(0, dtype=pl.Int64))
            for i, flag in enumerate(flags)]
    return pl.sum_horizontal(bits) if bits else pl.lit(0, dtype=pl.Int64)


def _names(mask: int, names: list[str]) -> list[str]:
    return [name for i, name in enumerate(names) if mask >> i & 1]


def _with_names(frame: pl.DataFrame, mask_column: str, names: list[str], alias: str) -> pl.DataFrame:
    """`frame` plus `alias`: the List[String] of the names whose bit is set in `mask_column`, in order."""
    masks = frame[mask_column].unique().sort().to_list()
    lookup = pl.DataFrame({mask_column: masks, alias: [_names(m, names) for m in masks]},
                          schema={mask_column: pl.Int64, alias: pl.List(pl.String)})
    return frame.join(lookup, on=mask_column, how="left", maintain_order="left")


def _entitlement_keys(pack: RulePack, frame: pl.DataFrame) -> pl.DataFrame:
    """subs_id and `_key`: what entitlements depend on, tier index * 2^tags + tag mask (tags of other packs
    ignored), so that conditions are evaluated once per distinct key instead of once per row."""
    missing = [c for c in ("subs_id", "tier", "tags") if c not in frame.columns]
    if missing:
        raise ValueError(f"entitlements need subs_id, tier, tags; missing {', '.join(missing)}")
    bits = {name: 1 << i for i, name in enumerate(pack.tags)}
    tag_mask = (pl.col("tags").list.eval(pl.element().replace_strict(bits, default=0, return_dtype=pl.Int64))
                .list.unique().list.sum().fill_null(0)) if bits else pl.lit(0, dtype=pl.Int64)
    tier = pl.col("tier").cast(pl.Enum(pack.tiers)).to_physical().cast(pl.Int64)
    return frame.lazy().select("subs_id", (tier * (1 << len(pack.tags)) + tag_mask).alias("_key")).collect()


def _entitlement_lookup(pack: RulePack, keys: pl.Series, names: list[str]) -> pl.DataFrame:
    """_key -> `_ent`: the mask (over `names`) of the entitlements of each distinct key; a null key (no tier)
    has none."""
    shift = len(pack.tags)
    small = pl.DataFrame({"_key": keys.unique()}, schema={"_key": pl.Int64}).drop_nulls()
    tier = _lookup(list(pack.tiers), pl.col("_key") // (1 << shift), pl.String)
    tags = {name: (pl.col("_key") % (1 << shift)) // (1 << i) % 2 == 1 for i, name in enumerate(pack.tags)}
    flags = [pack.entitlements[n].expr if n in pack.entitlements else pl.lit(False) for n in names]
    return small.with_columns(tier=tier, **tags).select("_key", _mask(flags).alias("_ent"))


def entitlements(pack: RulePack, frame: pl.DataFrame) -> pl.DataFrame:
    """subs_id, entitlements (List[String], in pack order) for every row of `frame` (subs_id, tier, tags)."""
    names = list(pack.entitlements)
    keys = _entitlement_keys(pack, frame)
    lookup = _with_names(_entitlement_lookup(pack, keys["_key"], names), "_ent", names, "entitlements")
    return keys.join(lookup.select("_key", "entitlements"), on="_key", how="left", maintain_order="left").select(
        "subs_id", pl.col("entitlements").fill_null(pl.lit([], dtype=pl.List(pl.String))))


def _paired(prev: pl.DataFrame, cur: pl.DataFrame) -> pl.DataFrame:
    """subs_id, _prev, _cur: the `_key` of each subscriber on each side (null where absent).
    Both sides sorted by subs_id (as the monthly frames are): one linear merge, pairing equal neighbours;
    otherwise a hash join. Each side must have one row per subscriber."""
    if not (prev["subs_id"].is_sorted() and cur["subs_id"].is_sorted()):
        return prev.rename({"_key": "_prev"}).join(cur.rename({"_key": "_cur"}), on="subs_id", how="full",
                                                   coalesce=True, validate="1:1")
    merged = (prev.with_columns(pl.col("subs_id").set_sorted(), _side=pl.lit(0, dtype=pl.Int8))
              .merge_sorted(cur.with_columns(pl.col("subs_id").set_sorted(), _side=pl.lit(1, dtype=pl.Int8)),
                            key="subs_id"))
    same_as_next = (pl.col("subs_id") == pl.col("subs_id").shift(-1)).fill_null(False)
    same_as_last = (pl.col("subs_id") == pl.col("subs_id").shift(1)).fill_null(False)
    merged = merged.with_columns(_next=same_as_next, _last=same_as_last, _next_key=pl.col("_key").shift(-1),
                                 _next_side=pl.col("_side").shift(-1))
    if merged.select((pl.col("_next") & (pl.col("_next_side") == pl.col("_side"))).any()).item():
        raise ValueError("more than one row for a subscriber on one side of entitlement_changes")
    side, key, other = pl.col("_side"), pl.col("_key"), pl.col("_next_key")
    return merged.filter(~pl.col("_last")).select(
        "subs_id",
        _prev=pl.when(side == 0).then(key).when(pl.col("_next")).then(other),
        _cur=pl.when(side == 1).then(key).when(pl.col("_next")).then(other))


def entitlement_changes(pack: RulePack, previous: pl.DataFrame, current: pl.DataFrame,
                        previous_pack: RulePack | None = None) -> pl.DataFrame:
    """subs_id, entitlements_gained, entitlements_lost (List[String]) of every subscriber whose entitlements
    differ between `previous` and `current` (each subs_id, tier, tags); a subscriber missing on one side has no
    entitlements there. `previous_pack` (default `pack`) reads `previous` when the pack changed between the
    months. Names in pack order (then names only the previous pack had); sorted by subs_id; no row without a
    change."""
    old_pack = previous_pack or pack
    names = list(pack.entitlements) + [n for n in old_pack.entitlements if n not in pack.entitlements]
    prev = _entitlement_keys(old_pack, previous)
    cur = _entitlement_keys(pack, current.with_columns(pl.col("subs_id").cast(previous.schema["subs_id"])))
    pairs = _paired(prev, cur)
    if old_pack is pack:  # same key, same entitlements: only changed keys need a look
        pairs = pairs.filter(pl.col("_prev").ne_missing(pl.col("_cur")))
    before = _entitlement_lookup(old_pack, pairs["_prev"], names).rename({"_key": "_prev", "_ent": "_had"})
    after = _entitlement_lookup(pack, pairs["_cur"], names).rename({"_key": "_cur", "_ent": "_has"})
    distinct = (pairs.select("_prev", "_cur").unique()
                .join(before, on="_prev", how="left").join(after, on="_cur", how="left")
                .with_columns(pl.col("_had", "_has").fill_null(0))
                .with_columns(_gained=pl.col("_has") & ~pl.col("_had"), _lost=pl.col("_had") & ~pl.col("_has"))
                .filter((pl.col("_gained") != 0) | (pl.col("_lost") != 0)))
    distinct = _with_names(_with_names(distinct, "_gained", names, "entitlements_gained"),
                           "_lost", names, "entitlements_lost")
    return (pairs.join(distinct, on=["_prev", "_cur"], how="inner", nulls_equal=True)
            .select("subs_id", "entitlements_gained", "entitlements_lost")
            .sort("subs_id"))
