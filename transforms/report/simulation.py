"""How a simulation is shown (`tierflow simulate`): a text table, CSV files and a self-contained HTML page under
<home>/simulations/. Same simulation, same bytes.
"""
from __future__ import annotations

import csv
import html
import io
import re
from pathlib import Path

from transforms.core.calendar import Month
from transforms.core.files import write_atomic
from transforms.grade.rulepack import RulePack
from transforms.runs.simulate import Simulation

TOTAL = "total"
MIGRATION_CSV, ENTITLEMENTS_CSV, PAGE = "migration.csv", "entitlements.csv", "simulation.html"


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
    """Writes migration.csv, entitlements.csv and simulation.html (each atomically)."""
    return [write_atomic(directory / name, text.encode("utf-8"), "report")
            for name, text in ((MIGRATION_CSV, migration_csv(sim)), (ENTITLEMENTS_CSV, entitlements_csv(sim)),
                               (PAGE, html_page(sim)))]
