"""How a simulation is shown (`tierflow simulate`): a text table, CSV files (the matrix, the entitlements, who
moves) and a self-contained HTML page under <home>/simulations/. Same simulation, same bytes.
"""
from __future__ import annotations

import csv
import io
import re
from pathlib import Path

import plotly.graph_objects as go
import polars as pl

from transforms.core.calendar import Month
from transforms.core.files import write_atomic
from transforms.grade.rulepack import RulePack
from transforms.report.pages import chart, heat_map, render
from transforms.runs.simulate import Simulation

TOTAL = "total"
MIGRATION_CSV, ENTITLEMENTS_CSV, MOVERS_CSV, PAGE = ("migration.csv", "entitlements.csv", "movers.csv",
                                                     "simulation.html")
NO_REGION = "(none)"  # a subscriber whose snapshot row has no region


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
    """One self-contained page (templates/simulation.html): the matrix as a plotly heat map and as a table
    coloured by direction, the entitlements, the movers per region and a link to movers.csv beside the page."""
    header, rows = matrix_rows(sim)
    same_tiers = tuple(sim.official.tiers) == tuple(sim.candidate.tiers)
    regions = region_rows(sim, same_tiers)
    return render("simulation.html", sim=sim, title=title(sim), migration_chart=migration_chart(sim),
                  header=header, matrix=matrix_cells(sim, rows, header, same_tiers),
                  entitlements=entitlement_rows(sim), regions=regions, region_chart=region_chart(regions, same_tiers),
                  same_tiers=same_tiers, movers_file=MOVERS_CSV, colours=_COLOURS)


def migration_chart(sim: Simulation):
    counts = {(o, c): n for o, c, n in sim.migration.iter_rows()}
    rows, columns = list(sim.official.tiers), list(sim.candidate.tiers)
    figure = heat_map([[counts[o, c] for c in columns] for o in rows], [_named(sim.candidate, c) for c in columns],
                      [_named(sim.official, o) for o in rows], "official %{y} → candidate %{x}: %{z}")
    figure.update_layout(xaxis_title=f"candidate tier ({sim.candidate.name})",
                         yaxis_title=f"official tier ({sim.official.name})")
    return chart(figure, "chart-migration", height=460)


def _named(pack: RulePack, tier: str) -> str:
    label = pack.tier_labels.get(tier, tier)
    return tier if label == tier else f"{label} {tier}"


def matrix_cells(sim: Simulation, rows: list[list], header: list[str], same_tiers: bool) -> list[dict]:
    """The matrix table: per cell its count, kind (cell, zero, total) and heat colour (by direction)."""
    peak = max([n for row in rows[:-1] for n in row[1:-1]] + [1])
    table = []
    for row in rows:
        cells = []
        for j, n in enumerate(row[1:]):
            total = row is rows[-1] or j == len(row) - 2
            colour = "" if total or n == 0 else _heat(n, peak, _direction(row[0], header[j + 1], sim, same_tiers))
            cells.append({"n": n, "kind": "total" if total else "cell" if n else "zero", "colour": colour})
        table.append({"tier": row[0], "cells": cells})
    return table


def entitlement_rows(sim: Simulation) -> list[dict]:
    return [{"name": n, "official": o, "candidate": c, "change": _signed(d), "sign": _sign(d)}
            for n, o, c, d in sim.entitlements.iter_rows()]


def region_rows(sim: Simulation, same_tiers: bool) -> list[dict]:
    """Per region: subscribers, movers and, when both packs share their tiers, how many go higher or lower."""
    higher = _higher_by_region(sim) if same_tiers else {}
    rows = []
    for region, subscribers, moved in sim.regions.iter_rows():
        up = higher.get(region, 0)
        rows.append({"region": region or NO_REGION, "subscribers": subscribers, "moved": moved,
                     "higher": up, "lower": moved - up})
    return rows


def _higher_by_region(sim: Simulation) -> dict:
    """Movers whose candidate tier ranks above their official one, per region (both packs share the tiers)."""
    rank = {t: i for i, t in enumerate(sim.candidate.tiers)}
    ranked = [pl.col(c).replace_strict(rank, return_dtype=pl.Int64) for c in ("candidate_tier", "official_tier")]
    higher = sim.movers.filter(ranked[0] > ranked[1]).group_by("region_code").len()
    return dict(higher.iter_rows())


def region_chart(regions: list[dict], same_tiers: bool):
    names = [r["region"] for r in regions]
    bars = ([("higher with the candidate", "higher", "up"), ("lower with the candidate", "lower", "down")]
            if same_tiers else [("another tier", "moved", "other")])
    figure = go.Figure([go.Bar(name=name, x=names, y=[r[key] for r in regions],
                               marker_color=f"rgb({_COLOURS[colour]})") for name, key, colour in bars])
    figure.update_layout(barmode="stack", xaxis={"type": "category", "title": "region"},
                         yaxis_title="subscribers with another tier")
    return chart(figure, "chart-regions", height=340)


def movers_csv(sim: Simulation) -> str:
    return _csv([sim.movers.columns, *sim.movers.iter_rows()])


_COLOURS = {"same": "33,102,172", "up": "26,127,55", "down": "198,40,40", "other": "110,110,110"}


def _direction(official_tier: str, candidate_tier: str, sim: Simulation, same_tiers: bool) -> str:
    if official_tier == candidate_tier:
        return "same"
    if not same_tiers:
        return "other"
    tiers = sim.candidate.tiers
    return "up" if tiers.index(candidate_tier) > tiers.index(official_tier) else "down"


def _heat(n: int, peak: int, direction: str) -> str:
    return f"rgba({_COLOURS[direction]},{0.15 + 0.75 * n / peak:.3f})"


def _signed(change: int) -> str:
    return f"{change:+,}" if change else "0"


def _sign(change: int) -> str:
    return "up" if change > 0 else "down" if change < 0 else ""


def write_simulation(sim: Simulation, directory: Path) -> list[Path]:
    """Writes migration.csv, entitlements.csv, movers.csv and simulation.html (each atomically)."""
    return [write_atomic(directory / name, text.encode("utf-8"), "report")
            for name, text in ((MIGRATION_CSV, migration_csv(sim)), (ENTITLEMENTS_CSV, entitlements_csv(sim)),
                               (MOVERS_CSV, movers_csv(sim)), (PAGE, html_page(sim)))]
