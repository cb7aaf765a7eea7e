"""What every tierflow HTML page shares: the Jinja2 templates shipped in transforms/report/templates, plotly's
JavaScript inlined once per page, charts as plotly divs with fixed ids, and CSV files embedded as data: links.

A page must open offline (no script, font or style from the network) and be byte-identical for the same data:
plotly.js is inlined from the installed package, every div id is given, and nothing depends on the clock.
"""
from __future__ import annotations

import base64
import csv
import io
import json
from functools import cache

import plotly.graph_objects as go
from jinja2 import Environment, PackageLoader, StrictUndefined, select_autoescape
from markupsafe import Markup
from plotly.offline import get_plotlyjs

# The page and its charts use the reader's installed fonts; these cover the Chinese tier labels on Windows, macOS
# and Linux desktops (nothing is downloaded: a missing font falls through to the next).
FONT_FAMILY = ('"Microsoft YaHei", "PingFang SC", "Noto Sans CJK SC", "WenQuanYi Micro Hei", '
               '"Helvetica Neue", Arial, sans-serif')
# No plotly logo or link to its cloud editor: the page is for people without network access.
PLOTLY_CONFIG = {"displaylogo": False, "responsive": True}


@cache
def environment() -> Environment:
    env = Environment(loader=PackageLoader("transforms.report", "templates"), autoescape=select_autoescape(),
                      undefined=StrictUndefined, trim_blocks=True, lstrip_blocks=True, keep_trailing_newline=True)
    env.filters["thousands"] = lambda n: f"{n:,}"
    env.globals["plotly_js"] = plotly_js
    env.globals["font_family"] = FONT_FAMILY
    return env


def render(template: str, **context) -> str:
    return environment().get_template(template).render(**context)


def plotly_js() -> Markup:
    """The plotly.js bundle of the pinned plotly package, for one inline <script> per page (it holds no
    '</script', so it can stand inside the element as it is)."""
    return Markup(get_plotlyjs())


def chart(figure: go.Figure, div_id: str, height: int = 420) -> Markup:
    """A plotly figure as a div with a fixed id (plotly would draw a random one), drawn by the page's inline
    plotly.js."""
    figure.update_layout(template="plotly_white", height=height, font_family=FONT_FAMILY,
                         margin={"l": 60, "r": 20, "t": 40, "b": 50})
    return Markup(figure.to_html(full_html=False, include_plotlyjs=False, div_id=div_id, config=PLOTLY_CONFIG))


def heat_map(z: list[list[int]], x: list[str], y: list[str], hover: str) -> go.Figure:
    """Counts as a heat map, rows top-down in the order given, each non-zero cell with its count written in
    (zeros left blank so the moves stand out)."""
    text = [[f"{n:,}" if n else "" for n in row] for row in z]
    figure = go.Figure(go.Heatmap(z=z, x=x, y=y, text=text, texttemplate="%{text}", colorscale="Blues",
                                  hovertemplate=hover + "<extra></extra>"))
    figure.update_layout(xaxis={"side": "top"}, yaxis={"autorange": "reversed"})
    return figure


def json_block(data) -> Markup:
    """`data` as JSON for a <script type="application/json"> element: '<' escaped so no text can end it."""
    return Markup(json.dumps(data, ensure_ascii=False, separators=(",", ":")).replace("<", "\\u003c"))


# First in every CSV file a page offers: without it Excel reads the Chinese tier labels as mojibake.
CSV_BOM = "\ufeff"


def csv_text(header: list[str], rows) -> str:
    return csv_lines([header, *rows])


def csv_lines(rows) -> str:
    out = io.StringIO()
    csv.writer(out, lineterminator="\n").writerows(rows)
    return out.getvalue()


def csv_data_uri(text: str) -> str:
    """A CSV file as a data: URI for a download link (no script needed), CSV_BOM first."""
    payload = base64.b64encode((CSV_BOM + text).encode("utf-8")).decode("ascii")
    return f"data:text/csv;charset=utf-8;base64,{payload}"
