"""The monthly report page (`tierflow report --month M`, outputs.md "Reports"): the figures of
transforms.report.monthly drawn with plotly and laid out by the Jinja2 template templates/monthly.html.

One self-contained file: plotly.js inlined once, the change lists embedded as CSV data: links, and the figures
as a JSON block (`<script type="application/json" id="report-data">`) for whoever checks the page against the
warehouse. Same published data, same bytes. A change list longer than EMBEDDED_LIST_ROWS is written beside the
page instead (`tierflow-YYYY-MM-<type>.csv`, linked by its name): embedded, a first graded month at 10M made a
679 MB page that no browser opens.
"""
from __future__ import annotations

import dataclasses
from itertools import chain
from pathlib import Path

import plotly.graph_objects as go
from plotly.colors import sample_colorscale

from transforms.core.calendar import Month
from transforms.core.files import write_atomic, write_atomic_blocks
from transforms.report.monthly import (CHANGE_LABELS, CHANGE_TYPES, MonthlyFigures, change_list_batches,
                                       monthly_figures, open_published)
from transforms.report.pages import CSV_BOM, chart, csv_data_uri, csv_lines, csv_text, heat_map, json_block, render

REPORTS_DIR = "reports"
EMBEDDED_LIST_ROWS = 20_000  # a longer change list goes beside the page (about 2 MB of base64 at this size)
MANAGER_ROWS = 30   # account managers shown (most changes first); the CSV holds every manager
NONE_LABEL = "(none)"  # a subscriber without region or account manager in the snapshot
CHANGE_COLOURS = {"NEW": "#4c78a8", "UPGRADE": "#54a24b", "DOWNGRADE": "#e45756", "LOST": "#9d9d9d"}
UNRATED_COLOUR = "#c7c7c7"
LIST_HEADER = ["subs_id", "change_type", "from_tier", "from_label", "to_tier", "to_label", "region_code",
               "manager_id", "reason"]


def default_report_path(home: Path, month: Month) -> Path:
    return Path(home) / REPORTS_DIR / f"{month.compact}.html"


def write_report(home: Path, month: Month, out: Path | None = None) -> Path:
    """Reads the published copy of `home`, writes the report of M (atomically) to `out` or
    <home>/reports/<YYYYMM>.html, its long change lists beside it; returns the page's path."""
    path = Path(out) if out else default_report_path(home, month)
    con = open_published(home)
    try:
        figures = monthly_figures(con, month)
        lists = change_lists(con, figures, path.parent)
    finally:
        con.close()
    return write_atomic(path, html_page(figures, lists).encode("utf-8"), "report")


def html_page(fig: MonthlyFigures, lists: list[dict]) -> str:
    """The page of the figures, with the change lists of change_lists."""
    regions, risk = pivot(fig.by_region, "region_code"), risk_table(fig)
    return render("monthly.html", fig=fig, data=json_block(page_data(fig)), labels=fig.labels,
                  change_types=[(t, CHANGE_LABELS[t]) for t in CHANGE_TYPES],
                  distribution_chart=distribution_chart(fig), migration_chart=migration_chart(fig),
                  region_chart=region_chart(regions) if regions else None,
                  risk_chart=risk_chart(fig, risk) if risk["rows"] else None,
                  regions=regions, managers=manager_table(fig), change_lists=lists, risk=risk,
                  gates=gate_rows(fig))


def page_data(fig: MonthlyFigures) -> dict:
    """The figures shown, as the page's JSON block: everything but the change lists, which are counted (they
    are on the page and in the CSV links)."""
    data = dataclasses.asdict(fig)
    data["changes"] = data.pop("change_counts")
    return data


# --- charts ----------------------------------------------------------------------------------------------------

def tier_colours(tiers: list[str]) -> dict[str, str]:
    """Unrated grey, rated tiers from light to dark: higher tiers read as more."""
    rated = tiers[1:]
    shades = sample_colorscale("YlGnBu", [0.25 + 0.7 * i / max(len(rated) - 1, 1) for i in range(len(rated))])
    return {tiers[0]: UNRATED_COLOUR, **dict(zip(rated, shades))}


def distribution_chart(fig: MonthlyFigures):
    months = sorted({r["month"] for r in fig.distribution})
    counts = {(r["month"], r["tier"]): r["subscribers"] for r in fig.distribution}
    colours = tier_colours(fig.tiers)
    figure = go.Figure([go.Bar(name=fig.labels[t], x=months, y=[counts.get((m, t), 0) for m in months],
                               marker_color=colours[t]) for t in fig.tiers])
    figure.update_layout(barmode="stack", xaxis={"type": "category", "title": "grading month 评级月份"},
                         yaxis_title="subscribers 用户数", legend_traceorder="reversed")
    return chart(figure, "chart-distribution")


def migration_chart(fig: MonthlyFigures):
    counts = {(r["from_tier"], r["to_tier"]): r["subscribers"] for r in fig.migration}
    names = [fig.labels[t] for t in fig.tiers]
    figure = heat_map([[counts[f, t] for t in fig.tiers] for f in fig.tiers], names, names, "%{y} → %{x}: %{z}")
    figure.update_layout(xaxis_title=f"tier of {fig.month} 本月等级", yaxis_title="tier of the month before 上月等级")
    return chart(figure, "chart-migration", height=460)


def region_chart(regions: list[dict]):
    """Changes per region (the rows of `pivot`), one bar per change type."""
    names = [r["owner"] for r in regions]
    figure = go.Figure([go.Bar(name=CHANGE_LABELS[t], x=names, y=[r[t] for r in regions],
                               marker_color=CHANGE_COLOURS[t]) for t in CHANGE_TYPES])
    figure.update_layout(barmode="group", xaxis={"type": "category", "title": "region 地区"},
                         yaxis_title="subscribers 用户数")
    return chart(figure, "chart-regions", height=360)


def risk_chart(fig: MonthlyFigures, risk: dict):
    """Subscribers at risk per region (the columns of `risk_table`), stacked by tier."""
    colours = tier_colours(fig.tiers)
    figure = go.Figure([go.Bar(name=fig.labels[r["tier"]], x=risk["regions"], y=r["counts"],
                               marker_color=colours[r["tier"]]) for r in risk["rows"]])
    figure.update_layout(barmode="stack", xaxis={"type": "category", "title": "region 地区"},
                         yaxis_title="subscribers at risk 降级风险用户数", legend_traceorder="reversed")
    return chart(figure, "chart-risk", height=360)


# --- tables ----------------------------------------------------------------------------------------------------

def pivot(rows: list[dict], owner: str) -> list[dict]:
    """Counts per change type of each owner (region or account manager), in the order of `rows`."""
    table: dict = {}
    for r in rows:
        entry = table.setdefault(r[owner], {"owner": r[owner] or NONE_LABEL, **dict.fromkeys(CHANGE_TYPES, 0)})
        entry[r["change_type"]] = r["subscribers"]
    return [{**e, "total": sum(e[t] for t in CHANGE_TYPES)} for e in table.values()]


def manager_table(fig: MonthlyFigures) -> dict:
    managers = sorted(pivot(fig.by_manager, "manager_id"), key=lambda e: -e["total"])  # stable: ids stay sorted
    csv = csv_text(["manager_id", *CHANGE_TYPES, "total"],
                   ([m["owner"], *(m[t] for t in CHANGE_TYPES), m["total"]] for m in managers))
    return {"rows": managers[:MANAGER_ROWS], "count": len(managers), "csv": csv_data_uri(csv),
            "file": f"tierflow-{fig.month}-managers.csv"}


def change_lists(con, fig: MonthlyFigures, folder: Path) -> list[dict]:
    """One list per change type: its first rows shown and all of them as a CSV, embedded as a data: link up to
    EMBEDDED_LIST_ROWS, else written to `folder` (the page's) and linked by name. A list embedded now removes
    the file an earlier, longer version of it left there."""
    lists = []
    for change_type in CHANGE_TYPES:
        count, file = fig.change_counts[change_type], f"tierflow-{fig.month}-{change_type.lower()}.csv"
        blocks = list_csv(fig, change_list_batches(con, Month.parse(fig.month), change_type))
        beside = count > EMBEDDED_LIST_ROWS
        if beside:
            write_atomic_blocks(folder / file, (b.encode("utf-8") for b in chain([CSV_BOM], blocks)), "report")
        else:
            (folder / file).unlink(missing_ok=True)
        lists.append({"type": change_type, "label": CHANGE_LABELS[change_type], "count": count,
                      "rows": fig.changes_of(change_type), "beside": beside,
                      "csv": file if beside else csv_data_uri("".join(blocks)), "file": file})
    return lists


def list_csv(fig: MonthlyFigures, batches):
    """A change list without personal data, as CSV text a block per batch of rows: subs_id, the tiers (code and
    label), region, manager, reason."""
    labels = fig.labels
    yield csv_lines([LIST_HEADER])
    for rows in batches:
        yield csv_lines([subs_id, change_type, from_tier, labels[from_tier], to_tier, labels[to_tier],
                         region or "", manager or "", reason]
                        for subs_id, change_type, from_tier, to_tier, region, manager, reason in rows)


def risk_table(fig: MonthlyFigures) -> dict:
    """Subscribers at risk of a downgrade: tiers (rows, lowest first) x regions (columns, none last)."""
    codes = sorted({r["region_code"] for r in fig.downgrade_risk}, key=lambda g: (g is None, g or ""))
    counts = {(r["tier"], r["region_code"]): r["subscribers"] for r in fig.downgrade_risk}
    rows = [{"tier": t, "counts": [counts.get((t, g), 0) for g in codes]} for t in fig.tiers
            if any((t, g) in counts for g in codes)]
    return {"regions": [g or NONE_LABEL for g in codes], "rows": [{**r, "total": sum(r["counts"])} for r in rows],
            "total": sum(counts.values())}


def gate_rows(fig: MonthlyFigures) -> list[dict]:
    """Each gate of the run with its verdict and figures: GE's expectation counts and what the gate observed."""
    rows = []
    for gate in fig.quality.gates:
        stats = gate.get("statistics") or {}
        verdict = "accepted" if gate.get("accepted") else "passed" if gate.get("success") else "failed"
        rows.append({"gate": gate["gate"], "verdict": verdict, "message": gate.get("message") or "",
                     "evaluated": stats.get("evaluated_expectations"),
                     "successful": stats.get("successful_expectations"),
                     "observed": sorted((stats.get("observed") or {}).items())})
    return rows
