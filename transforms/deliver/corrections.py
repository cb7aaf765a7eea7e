"""Corrections (outputs.md "Channel files", "Corrections"): what a channel must be sent so that what it has been
told about a month equals the month's state now. Pure, over Polars frames.

What a channel was told is the sequence of records it received for a grading month (ops.sent_record, in the
order sent): the month's first file, numbered correction sets after it, and for the SMS gateway the nightly
LOST notices of the month's days. A record about a subscriber replaces whatever that channel was told about them
before; a REVERSAL says that the last change it was told no longer holds. So the told state of a subscriber is
their last record, and nothing after a reversal.

A new set holds, per subscriber: the change now in force when it differs from the told one (new or altered), or
a REVERSAL of the told change when none is in force any more. A subscriber whose state equals what the channel
was told gets nothing; a rerun with the same inputs sends nothing.
"""
from __future__ import annotations

import polars as pl

from transforms.deliver.channels import REVERSAL

CHANGE, NIGHTLY_LOST, NOTICE = "CHANGE", "NIGHTLY_LOST", "NOTICE"  # kinds of told records besides reversals
CHANGE_COLUMNS = ("subs_id", "from_tier", "to_tier", "change_type", "entitlements_gained", "entitlements_lost")
_EMPTY_LIST = pl.List(pl.String)


def told_state(sent: pl.DataFrame) -> pl.DataFrame:
    """The last record told about each subscriber (sent: subs_id, seq, kind and the CHANGE_COLUMNS, for one
    channel and month), with its kind, without the subscribers whose last record is a reversal."""
    last = sent.sort("seq", maintain_order=True).group_by("subs_id", maintain_order=True).last()
    return last.filter(pl.col("kind") != REVERSAL).select(*CHANGE_COLUMNS, "kind").sort("subs_id")


def change_set(in_force: pl.DataFrame, told: pl.DataFrame, with_entitlements: bool) -> pl.DataFrame:
    """The records that bring what a channel was told (`told`) to the changes now in force (`in_force`), both
    with the CHANGE_COLUMNS: changed or new changes, and reversals of told changes no longer in force; column
    `kind` is CHANGE or REVERSAL; sorted by subs_id. `with_entitlements`: the channel carries the entitlements,
    so a change of entitlements alone is an altered change."""
    key = ["from_tier", "to_tier", "change_type"] + (["entitlements_gained", "entitlements_lost"]
                                                     if with_entitlements else [])
    current = in_force.select(*CHANGE_COLUMNS)
    was = told.select(*CHANGE_COLUMNS)
    same = pl.concat([current.join(was, on=["subs_id", *key], how="semi", nulls_equal=True).select("subs_id"),
                      _lost_told_nightly(current, told)])
    changed = current.join(same.select("subs_id"), on="subs_id", how="anti").with_columns(kind=pl.lit(CHANGE))
    gone = was.join(current.select("subs_id"), on="subs_id", how="anti")
    reversals = gone.select(
        "subs_id", from_tier=pl.col("to_tier"), to_tier=pl.col("from_tier"), change_type=pl.lit(REVERSAL),
        entitlements_gained=pl.col("entitlements_lost"), entitlements_lost=pl.col("entitlements_gained"),
        kind=pl.lit(REVERSAL))
    return pl.concat([changed, reversals.cast(changed.schema)]).sort("subs_id")


def _lost_told_nightly(current: pl.DataFrame, told: pl.DataFrame) -> pl.DataFrame:
    """Subscribers LOST now who were told so by a nightly notice: one event, one message (the notice may name
    the tier in effect on its day, before the month before was graded)."""
    nightly = told.filter(pl.col("kind") == NIGHTLY_LOST).select("subs_id")
    return current.filter(pl.col("change_type") == "LOST").join(nightly, on="subs_id", how="semi").select("subs_id")


def new_notices(notices: pl.DataFrame, told: pl.DataFrame) -> pl.DataFrame:
    """Nightly LOST notices (subs_id, ...) of subscribers not already told they are LOST for the month."""
    told_lost = told.filter(pl.col("change_type") == "LOST").select("subs_id")
    return notices.join(told_lost, on="subs_id", how="anti").sort("subs_id")


def empty_changes() -> pl.DataFrame:
    return pl.DataFrame(schema={"subs_id": pl.String, "from_tier": pl.String, "to_tier": pl.String,
                                "change_type": pl.String, "entitlements_gained": _EMPTY_LIST,
                                "entitlements_lost": _EMPTY_LIST})
