"""The monthly run of grading month M (rules.md): one DuckDB transaction, validated before it commits.

The steps, in order (each timed for ops.run_ledger):
  aggregate       BILL_M -> mart.subscriber_month (earlier months come from the stored aggregates); over
                  subscriber shards, from the partial sums BILL_M's byte ranges left, when options.shards is
                  given and they were kept
  gate 2          grading inputs (quality.gates.gate_grading_inputs)
  points          redemptions, expiry and accrual of M (over subscriber shards when options.shards is given)
                  -> points ledger and mart.points_balance
  grade           when BILL covers the pack's grading window: transforms.grade.grading over the inputs of M,
                  range by range of subscribers (transforms.warehouse.ranges: one range's frames at a time), or
                  over subscriber shards (transforms.runs.shards) when options.shards is given ->
                  tier_assignment, grade_change, entitlement_change, tier_history, tier_current,
                  tier_summary
  render          the channel sets of M (transforms.deliver.sets): the month's first files, or the correction
                  sets of a regrade, written to options.files_folder and recorded as told (the files rendered
                  in parts on the subscriber shards when options.shards is given)
  gate 3, gate 4  outputs, then the circuit breaker
and, in the same transaction, the effects it owes (transforms.runs.owed): its channel files, the publication
and the month's report, delivered once it has committed. A failed gate raises GateFailed and leaves the warehouse as it
was.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from datetime import date
from pathlib import Path

import duckdb
import polars as pl

from transforms.core.calendar import Month
from transforms.deliver.channels import Channel
from transforms.deliver.render import OutFile
from transforms.deliver.sets import month_sets, told_counts
from transforms.grade.engine import rank_table
from transforms.grade.grading import GradingInputs, grade
from transforms.grade.points import apply_points_to_totals
from transforms.grade.rulepack import RulePack
from transforms.quality.gates import gate_breaker, gate_grading_inputs, gate_outputs
from transforms.runs.ledger import StepTimer
from transforms.runs.owed import PUBLISH, REPORT, owe, owe_files
from transforms.runs.shards import ShardMap, aggregate_on_shards, grade_on_shards, points_on_shards
from transforms.runs.month_state import (MonthlyError, check_ordering, record_month_state, require_bill,
                                         window_complete)
from transforms.warehouse import inputs
from transforms.warehouse.db import snapshot_date_for, transaction
from transforms.warehouse.ranges import SubsRange, subscriber_ranges
from transforms.warehouse.marts import (SUM6_MONTHS, points_totals, rebuild_tier_current, rebuild_tier_history, write_grade_change,
                                        write_points, write_points_expiring, write_subscriber_month,
                                        write_tier_assignment, write_tier_summary)


@dataclass(frozen=True)
class MonthlyOptions:
    results_dir: Path | None = None        # where GE validation results are kept
    channels: tuple[Channel, ...] = ()     # channel configuration; empty = render no channel files
    files_folder: Path | None = None       # where the channel files wait to be delivered (owed.owed_folder)
    accept_mass_change: bool = False       # the operator accepted a tripped circuit breaker
    previous_pack: RulePack | None = None  # the pack version in force for M-1 (default: M's pack)
    shards: ShardMap | None = None         # grade over subscriber shards (transforms.runs.shards); None: here

    def __post_init__(self):
        if self.channels and self.files_folder is None:
            raise ValueError("MonthlyOptions: channel files need a files_folder (transforms.runs.owed.owed_folder)")


@dataclass
class MonthlyResult:
    month: Month
    graded: bool
    subscribers: int = 0
    changes: dict = field(default_factory=dict)
    tiers: dict = field(default_factory=dict)
    points: dict = field(default_factory=dict)
    note: str = ""
    files: list[OutFile] = field(default_factory=list)   # channel files to write once committed
    checks: list[dict] = field(default_factory=list)     # quality gate results (GateResult.as_dict())
    timings: dict = field(default_factory=dict)          # StepTimer.as_dict()

    def line(self) -> str:
        if not self.graded:
            return f"{self.month}: aggregated and accrued points; {self.note}"
        changes = ", ".join(f"{k} {v:,}" for k, v in sorted(self.changes.items())) or "no changes"
        return f"{self.month}: graded {self.subscribers:,} subscribers ({changes})"


def run_monthly(con: duckdb.DuckDBPyConnection, month: Month, pack: RulePack, run_id: str,
                options: MonthlyOptions = MonthlyOptions()) -> MonthlyResult:
    """Everything of M in one transaction (see the module docstring); the channel files are returned for the
    caller to write after the commit."""
    snapshot = _require_inputs(con, month)
    previous_pack = options.previous_pack or pack
    check_ordering(con, month, previous_pack.version)
    gradable = window_complete(con, month, pack.grading_window)
    steps = StepTimer()
    with transaction(con, "monthly"):
        with steps("aggregate"):
            sum6_complete = window_complete(con, month, SUM6_MONTHS)
            if options.shards is None or not aggregate_on_shards(con, month, snapshot, sum6_complete,
                                                                 options.shards, steps):
                write_subscriber_month(con, month, sum6_complete)
            spans = subscriber_ranges(con, month)  # of M's subscribers, now aggregated
        with steps("gate_grading_inputs"):
            checks = [gate_grading_inputs(con, month, pack.grading_window,
                                          options.results_dir).raise_if_failed().as_dict()]
        with steps("points"):
            points = _points(con, month, pack, snapshot, options.shards, steps)
            expiring = inputs.points_expiring(con, month, pack.points.expiry_months)
            write_points_expiring(con, month, expiring)
        if gradable:
            with steps("grade"):
                result = _grade(con, month, pack, previous_pack, snapshot, options.shards, steps, spans)
        else:
            first = month - (pack.grading_window - 1)
            result = MonthlyResult(month, graded=False, note=f"no tiers: BILL for {first}..{month} is incomplete")
        with steps("render"):
            sets = month_sets(con, month, pack, list(options.channels), gradable, expiring, options.files_folder,
                              spans, options.shards)
        if gradable:
            with steps("gate_outputs"):
                checks.append(gate_outputs(con, month, pack, told_counts(con, month, list(options.channels), spans),
                                           options.results_dir).raise_if_failed().as_dict())
            with steps("gate_breaker"):
                checks.append(gate_breaker(con, month, pack, options.accept_mass_change,
                                           options.results_dir).raise_if_failed().as_dict())
        result.files = [s.out for s in sets]
        result.points, result.checks = points, checks
        owe_files(con, result.files, run_id)
        owe(con, PUBLISH, "", run_id)
        if gradable:
            owe(con, REPORT, str(month), run_id)
        record_month_state(con, month, pack, gradable, run_id)
    result.timings = steps.as_dict()
    return result


def _require_inputs(con, month: Month) -> date:
    """BILL_M delivered and loaded, and S(M) dated within M; returns S(M)'s date."""
    require_bill(con, month)
    snapshot = snapshot_date_for(con, month)
    if snapshot is None or snapshot < month.first_day:
        found = f"the latest is {snapshot:%Y%m%d}" if snapshot else "none is loaded"
        raise MonthlyError(f"no ACCT snapshot dated in {month} ({found})")
    return snapshot


def _points(con, month: Month, pack: RulePack, snapshot: date, shards: ShardMap | None, steps: StepTimer) -> dict:
    """Redemptions, expiry and accrual of M (rules.md 'Points'), written to the ledger and mart.points_balance."""
    if shards is None:
        result = apply_points_to_totals(month, *inputs.points_inputs(con, month, pack), pack.points.expiry_months)
    else:
        result = points_on_shards(con, month, snapshot, pack, shards, steps)
    write_points(con, month, result)
    return points_totals(con, month)


def _grade(con, month: Month, pack: RulePack, previous_pack: RulePack, snapshot: date,
           shards: ShardMap | None, steps: StepTimer, spans: list[SubsRange]) -> MonthlyResult:
    if shards is None:
        parts = graded_by_range(con, month, pack, previous_pack, snapshot, spans)
    else:  # the same ranges, read from the shards' outputs
        sharded = grade_on_shards(con, month, snapshot, pack, previous_pack, shards, steps)
        parts = ((span, *sharded.of(span)) for span in spans)
    subscribers, changes, tiers = 0, [], []  # per range: (change_type, len), (tier, len)
    for span, metrics, overrides, graded in parts:
        write_tier_assignment(con, month, pack.version, metrics, graded.assignment, overrides, span)
        write_grade_change(con, month, snapshot, graded.changes, span=span)
        write_grade_change(con, month, snapshot, graded.entitlement_changes, table="entitlement_change", span=span)
        subscribers += graded.assignment.height
        changes.append(pl.concat([graded.changes, graded.entitlement_changes]).group_by("change_type").len())
        tiers.append(graded.assignment.group_by("tier").len())
    rebuild_tier_history(con, month)
    rebuild_tier_current(con)
    write_tier_summary(con, month)
    return MonthlyResult(month, graded=True, subscribers=subscribers, changes=_summed(changes, "change_type"),
                         tiers=_summed(tiers, "tier"))


def graded_by_range(con, month: Month, pack: RulePack, previous_pack: RulePack, snapshot: date,
                    spans: list[SubsRange] | None = None):
    """M graded range by range of subscribers (`spans`, default warehouse.ranges.subscriber_ranges), each range's
    (span, metrics, overrides, graded) in subs_id order: one range's frames at a time. A rank pack's ranks are
    over the whole population: computed first, from the metrics of every range. Only the overrides (a few) are
    read whole; M-1's tiers and the spells, like the metrics, range by range."""
    overrides, names = inputs.active_overrides(con, month), inputs.metrics_read(pack)
    ranks = rank_table(pack, inputs.grading_metrics(con, month, snapshot, names)) if pack.ranks else None
    for span in spans or subscriber_ranges(con, month):
        metrics = inputs.grading_metrics_of(con, month, snapshot, span, names)
        grading_inputs = GradingInputs(month, metrics, span.of(overrides), inputs.tier_spells(con, month, span),
                                       inputs.assignment_of(con, month - 1, span),
                                       span.of(ranks) if ranks is not None else None)
        yield span, metrics, grading_inputs.overrides, grade(pack, grading_inputs, previous_pack)


def _summed(counts: list[pl.DataFrame], key: str) -> dict:
    """{key: count} from the (key, len) frames of the ranges, in key order (the run ledger keeps it)."""
    return dict(pl.concat(counts).group_by(key).agg(pl.col("len").sum()).sort(key).iter_rows())
