"""What-if grading (outputs.md, `tierflow simulate`): grade month M with a candidate rule pack over the same
metrics, overrides and official tier history as the official run, and compare with the official tiers of M.

Nothing here writes the warehouse (callers open it read-only) or the outbox; the results are a migration matrix
(official tier x candidate tier) and the entitlement counts of both packs, written as CSV and a self-contained
HTML page under <home>/simulations/ and printed as a text table. Same inputs, same bytes.
"""
from __future__ import annotations

import csv
import html
import io
import os
import re
from dataclasses import dataclass
from pathlib import Path

import duckdb
import polars as pl

from transforms.core.calendar import Month
from transforms.grade.engine import apply_protection, assign_tiers, compute_tags, entitlements
from transforms.runs.monthly import _spell_start, active_overrides, grading_metrics, is_current
from transforms.grade.rulepack import RulePack
from transforms.warehouse.db import first_row, snapshot_date_for

TOTAL = "total"
MIGRATION_CSV, ENTITLEMENTS_CSV, PAGE = "migration.csv", "entitlements.csv", "simulation.html"


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


def eligible_by(pack: RulePack) -> pl.Expr:
    """True where none of the pack's eligibility checks excludes the subscriber."""
    excluded = [check.condition.expr for check in pack.eligibility]
    return ~pl.any_horizontal(excluded) if excluded else pl.lit(True)


def official_grades(con, month: Month, metrics: pl.DataFrame, official: RulePack) -> pl.DataFrame:
    """subs_id, tier, reason of mart.tier_assignment for M, with `eligible` as the official pack decides it
    from the metrics (tags exist for eligible subscribers only). One row per row of `metrics`."""
    graded = con.sql("SELECT subs_id, tier, reason FROM mart.tier_assignment WHERE grade_month = ? "
                     "ORDER BY subs_id", params=[month.first_day]).pl()
    if not graded["subs_id"].equals(metrics["subs_id"], check_names=False):
        raise SimulationError(f"the official tiers of {month} do not cover the snapshot S({month}): "
                              f"run `tierflow backfill --start {month} --end {month}` first")
    unknown = sorted(set(graded["tier"].unique().to_list()) - set(official.tiers))
    if unknown:
        raise SimulationError(f"official tiers of {month} not in pack {official.name}: {', '.join(unknown)}")
    return graded.with_columns(eligible=metrics.select(eligible_by(official)).to_series())


# --- the candidate side ----------------------------------------------------------------------------------------

def usable_overrides(pack: RulePack, overrides: pl.DataFrame) -> tuple[pl.DataFrame, list[str]]:
    """Overrides name tiers of the official pack; those a candidate pack lacks cannot apply and are reported."""
    foreign = overrides.filter(~pl.col("tier").is_in(list(pack.tiers)))
    if foreign.height == 0:
        return overrides, []
    names = ", ".join(sorted(set(foreign["tier"].to_list())))
    return (overrides.filter(pl.col("tier").is_in(list(pack.tiers))),
            [f"{foreign.height} override(s) name tiers pack {pack.name} does not have ({names}): ignored"])


def candidate_grades(con, month: Month, pack: RulePack, metrics: pl.DataFrame) -> tuple[pl.DataFrame, list[str]]:
    """The cascade of the candidate pack, then its downgrade protection against the official tier history."""
    overrides, notes = usable_overrides(pack, active_overrides(con, month))
    assigned = assign_tiers(pack, metrics, overrides)
    graded = apply_protection(assigned, _spell_start(con, month), month, list(pack.tiers), pack.protection_months)
    return graded.select("subs_id", "tier", "reason", "eligible"), notes


# --- entitlements ----------------------------------------------------------------------------------------------

def entitlement_counts(pack: RulePack, metrics: pl.DataFrame, graded: pl.DataFrame) -> dict[str, int]:
    """Subscribers holding each entitlement of the pack, in pack order, from the tags of the graded result
    (grading.compute_tags) and the pack's entitlement conditions (grading.entitlements).
    graded: subs_id, tier, reason, eligible for the subscribers of `metrics`."""
    if not pack.entitlements:
        return {}
    tags = compute_tags(pack, metrics, graded)
    held = entitlements(pack, graded.select("subs_id", "tier").join(tags, on="subs_id", how="left",
                                                                    validate="1:1"))
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
    metrics = grading_metrics(con, month, snapshot_date_for(con, month))
    theirs = official_grades(con, month, metrics, official)
    ours, notes = candidate_grades(con, month, candidate, metrics)
    pairs = theirs.join(ours, on="subs_id", how="inner", suffix="_candidate", validate="1:1")
    migration = migration_matrix(pairs.select(pl.col("tier").alias("official_tier"),
                                              pl.col("tier_candidate").alias("candidate_tier")),
                                 official.tiers, candidate.tiers)
    entitlements_held = entitlement_table(entitlement_counts(official, metrics, theirs),
                                          entitlement_counts(candidate, metrics, ours))
    return Simulation(month, candidate, official, migration, entitlements_held, tuple(notes))


# --- outputs ---------------------------------------------------------------------------------------------------

def default_directory(home: Path, month: Month, pack: RulePack) -> Path:
    """<home>/simulations/<YYYYMM>-<pack name>-<version>/ (the name made safe as one path component)."""
    safe = re.sub(r"[^\w.-]", "_", pack.name)
    return Path(home) / "simulations" / f"{month.compact}-{safe}-{pack.version}"


def matrix_rows(sim: Simulation) -> tuple[list[str], list[list]]:
    """Header and rows of the wide matrix: one row per official tier, one column per candidate tier, totals."""
    columns = list(sim.candidate.tiers)
    counts = {(o, c): n for o, c, n in sim.migration.iter_rows()}
    rows = [[o, *(counts[o, c] for c in columns)] for o in sim.official.tiers]
    rows = [r + [sum(r[1:])] for r in rows]
    rows.append([TOTAL, *(sum(r[i] for r in rows) for i in range(1, len(columns) + 2))])
    return ["official_tier", *columns, TOTAL], rows


def migration_csv(sim: Simulation) -> str:
    header, rows = matrix_rows(sim)
    return _csv([header, *rows])


def entitlements_csv(sim: Simulation) -> str:
    return _csv([sim.entitlements.columns, *sim.entitlements.iter_rows()])


def _csv(rows) -> str:
    out = io.StringIO()
    csv.writer(out, lineterminator="\n").writerows(rows)
    return out.getvalue()


def title(sim: Simulation) -> str:
    return (f"simulation of {sim.month}: pack {sim.candidate.name} (version {sim.candidate.version}) against the "
            f"official grading with {sim.official.name} (version {sim.official.version})")


def text_report(sim: Simulation) -> str:
    header, rows = matrix_rows(sim)
    lines = [title(sim), f"{sim.subscribers:,} subscribers, {sim.moved:,} with another tier", *sim.notes, "",
             "migration (rows: official tier, columns: candidate tier)"]
    lines += _aligned([["official \\ candidate", *header[1:]], *rows])
    lines += ["", "entitlements (subscribers holding each)"]
    table = [[n, o, c, _signed(d)] for n, o, c, d in sim.entitlements.iter_rows()]
    lines += _aligned([["entitlement", "official", "candidate", "change"], *table]) if table else ["  (none)"]
    return "\n".join(lines)


def _aligned(rows: list[list]) -> list[str]:
    """First column left-aligned, the others right-aligned, numbers with thousands separators."""
    cells = [[f"{v:,}" if isinstance(v, int) else str(v) for v in row] for row in rows]
    widths = [max(len(row[i]) for row in cells) for i in range(len(cells[0]))]
    return ["  " + "  ".join(v.ljust(w) if i == 0 else v.rjust(w) for i, (v, w) in enumerate(zip(row, widths)))
            for row in cells]


def html_page(sim: Simulation) -> str:
    """One self-contained page (inline CSS, no script, no external asset): the matrix as a heat map."""
    esc = html.escape
    header, rows = matrix_rows(sim)
    peak = max([n for row in rows[:-1] for n in row[1:-1]] + [1])
    same_tiers = tuple(sim.official.tiers) == tuple(sim.candidate.tiers)
    head = "".join(f"<th>{esc(c)}</th>" for c in header[1:])
    body = []
    for row in rows:
        cells = []
        for j, n in enumerate(row[1:]):
            total = row is rows[-1] or j == len(row) - 2
            style = "" if total else _heat(n, peak, _direction(row[0], header[j + 1], sim, same_tiers))
            kind = "total" if total else "cell" if n else "zero"
            cells.append(f'<td class="{kind}"{style}>{n:,}</td>')
        body.append(f"<tr><th>{esc(row[0])}</th>{''.join(cells)}</tr>")
    ents = "".join(
        f'<tr><th>{esc(n)}</th><td>{o:,}</td><td>{c:,}</td><td class="{_sign(d)}">{_signed(d)}</td></tr>'
        for n, o, c, d in sim.entitlements.iter_rows()) or '<tr><td colspan="4">none</td></tr>'
    notes = "".join(f"<p class=\"note\">{esc(n)}</p>" for n in sim.notes)
    return f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><title>{esc(title(sim))}</title>
<style>
body {{ font-family: sans-serif; margin: 2em; color: #222; }}
table {{ border-collapse: collapse; margin: 1em 0; }}
th, td {{ border: 1px solid #ccc; padding: .3em .7em; text-align: right; }}
th {{ background: #f4f4f4; }} tr th:first-child {{ text-align: left; }}
td.total {{ font-weight: bold; background: #f4f4f4; }} td.zero {{ color: #bbb; }}
.up {{ color: #1a7f37; }} .down {{ color: #c62828; }} .note {{ color: #8a5300; }}
.legend span {{ padding: 0 .5em; margin-right: 1em; }}
</style></head><body>
<h1>Simulation of {esc(str(sim.month))}</h1>
<p>{esc(title(sim))}.<br>{sim.subscribers:,} subscribers, {sim.moved:,} with another tier.</p>
{notes}
<h2>Migration: official tier (rows) &times; candidate tier (columns)</h2>
<p class="legend"><span style="background:rgba(33,102,172,.5)">same tier</span>
<span style="background:rgba(26,127,55,.5)">higher with the candidate</span>
<span style="background:rgba(198,40,40,.5)">lower with the candidate</span>
<span style="background:rgba(110,110,110,.5)">tiers of different packs</span></p>
<table><tr><th>official \\ candidate</th>{head}</tr>
{chr(10).join(body)}
</table>
<h2>Entitlements (subscribers holding each)</h2>
<table><tr><th>entitlement</th><th>official</th><th>candidate</th><th>change</th></tr>
{ents}
</table>
</body></html>
"""


_COLOURS = {"same": "33,102,172", "up": "26,127,55", "down": "198,40,40", "other": "110,110,110"}


def _direction(official_tier: str, candidate_tier: str, sim: Simulation, same_tiers: bool) -> str:
    if official_tier == candidate_tier:
        return "same"
    if not same_tiers:
        return "other"
    tiers = sim.candidate.tiers
    return "up" if tiers.index(candidate_tier) > tiers.index(official_tier) else "down"


def _heat(n: int, peak: int, direction: str) -> str:
    if n == 0:
        return ""
    return f' style="background:rgba({_COLOURS[direction]},{0.15 + 0.75 * n / peak:.3f})"'


def _signed(change: int) -> str:
    return f"{change:+,}" if change else "0"


def _sign(change: int) -> str:
    return "up" if change > 0 else "down" if change < 0 else ""


def write_simulation(sim: Simulation, directory: Path) -> list[Path]:
    """Writes migration.csv, entitlements.csv and simulation.html (each written aside, then renamed)."""
    directory.mkdir(parents=True, exist_ok=True)
    written = []
    for name, text in ((MIGRATION_CSV, migration_csv(sim)), (ENTITLEMENTS_CSV, entitlements_csv(sim)),
                       (PAGE, html_page(sim))):
        path = directory / name
        aside = directory / f".{name}.tmp"
        aside.write_text(text, encoding="utf-8")
        os.replace(aside, path)
        written.append(path)
    return written
