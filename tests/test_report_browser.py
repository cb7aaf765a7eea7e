"""The report and simulation pages as a person sees them: headless Chromium (Debian's /usr/bin/chromium, which
.ci/run installs; playwright's own browser download is never used) opens each page from disk with the network
cut off, and the test checks that nothing was fetched, nothing was logged as an error, every chart is drawn,
and the CSV links download. Screenshots go to the test's tmp dir and to $TIERFLOW_ARTIFACTS when set.

One browser for the module; the province is test_report.py's, built once per session.
"""
from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest

from flows.cli import main
from tests.test_report import CHANGES_BY_HAND, golden_report_home, with_downgrade_risk
from tests.test_monthly_golden import JUL
from transforms.report.monthly_page import write_report

CHROMIUM = Path("/usr/bin/chromium")
# No first-run, sync, update or background traffic of the browser's own: only the page may ask for anything.
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
                 "--no-first-run", "--disable-sync"]
# A chart is drawn when plotly's SVG holds marks: bar paths with a shape, or the heat map's image.
MARKS_JS = """id => {
    const svg = document.querySelector('#' + id + ' .main-svg');
    if (!svg) return 0;
    const bars = [...svg.querySelectorAll('.point path')].filter(p => (p.getAttribute('d') || '').length > 2);
    const heat = [...svg.querySelectorAll('.hm image')].filter(i => (i.getAttribute('href') || '').length > 0);
    return bars.length + heat.length;
}"""

pytestmark = pytest.mark.skipif(not CHROMIUM.exists(), reason="needs Debian's chromium (.ci/run installs it)")


@pytest.fixture(scope="module")
def browser(tmp_path_factory):
    from playwright.sync_api import sync_playwright
    with sync_playwright() as playwright:
        context = playwright.chromium.launch_persistent_context(
            tmp_path_factory.mktemp("chromium-profile"), executable_path=str(CHROMIUM), headless=True,
            args=CHROMIUM_ARGS, accept_downloads=True, viewport={"width": 1280, "height": 900})
        yield context
        context.close()


class Visit:
    """A page opened from disk with every non-file request aborted, and what it asked for and logged."""

    def __init__(self, context, path: Path):
        self.page = context.new_page()
        self.blocked: list[str] = []
        self.errors: list[str] = []
        self.page.route("**/*", self._only_files)
        self.page.on("console", lambda m: self.errors.append(m.text) if m.type == "error" else None)
        self.page.on("pageerror", lambda exc: self.errors.append(str(exc)))
        self.page.goto(path.as_uri(), wait_until="load")

    def _only_files(self, route) -> None:
        if route.request.url.startswith(("file:", "data:")):
            route.continue_()
        else:
            self.blocked.append(route.request.url)
            route.abort()

    def chart_ids(self) -> list[str]:
        return self.page.eval_on_selector_all(".plotly-graph-div", "divs => divs.map(d => d.id)")

    def marks(self, chart_id: str) -> int:
        self.page.wait_for_selector(f"#{chart_id} .main-svg")
        return self.page.evaluate(MARKS_JS, chart_id)

    def screenshot(self, folder: Path, name: str) -> Path:
        path = folder / name
        self.page.screenshot(path=path, full_page=True)
        if os.environ.get("TIERFLOW_ARTIFACTS"):
            artifacts = Path(os.environ["TIERFLOW_ARTIFACTS"])
            artifacts.mkdir(parents=True, exist_ok=True)
            shutil.copy(path, artifacts / name)
        return path


@pytest.fixture(scope="module")
def report(tmp_path_factory, browser) -> Visit:
    path = write_report(golden_report_home(tmp_path_factory), JUL, tmp_path_factory.mktemp("report") / "202607.html")
    return Visit(browser, path)


def test_report_opens_offline_and_draws_every_chart(report, tmp_path):
    assert report.chart_ids() == ["chart-distribution", "chart-migration", "chart-regions"]  # no one at risk
    for chart_id in report.chart_ids():
        assert report.marks(chart_id) > 0, f"{chart_id} is empty"
    assert report.page.locator(".hm image").count() == 1  # the migration heat map
    assert report.blocked == [] and report.errors == []
    assert report.screenshot(tmp_path, "report-202607.png").stat().st_size > 10_000


def test_report_shows_chinese_labels_and_the_change_lists(report):
    text = report.page.inner_text("body")
    for change_type, label in (("NEW", "新增"), ("UPGRADE", "升级"), ("DOWNGRADE", "降级"), ("LOST", "不符合资格")):
        heading = report.page.inner_text(f"#list-{change_type.lower()}")
        assert heading == f"{label} ({change_type}): {len(CHANGES_BY_HAND[change_type])}"
    assert "六星" in text and "5,021" in text  # D's former tier; the points liability


def test_every_csv_link_downloads_its_list(report, tmp_path):
    links = report.page.locator("a[download][href^='data:text/csv']")
    names = [links.nth(i).get_attribute("download") for i in range(links.count())]
    assert names == ["tierflow-2026-07-managers.csv", *(f"tierflow-2026-07-{t.lower()}.csv" for t in CHANGES_BY_HAND)]
    with report.page.expect_download() as download:
        report.page.click("a[download='tierflow-2026-07-upgrade.csv']")
    saved = tmp_path / download.value.suggested_filename
    download.value.save_as(saved)
    assert saved.read_text(encoding="utf-8-sig").splitlines()[1:] == [
        "B,UPGRADE,STAR4,四星,STAR5,五星,4110,,AVG6", "S,UPGRADE,STAR3,三星,STAR5,五星,4110,,AVG6"]
    assert report.blocked == [] and report.errors == []


def test_the_downgrade_risk_chart_is_drawn_when_someone_is_at_risk(tmp_path_factory, browser, tmp_path):
    home = with_downgrade_risk(golden_report_home(tmp_path_factory), tmp_path)
    visit = Visit(browser, write_report(home, JUL))
    assert "chart-risk" in visit.chart_ids() and visit.marks("chart-risk") > 0
    assert visit.blocked == [] and visit.errors == []


def test_simulation_page_opens_offline_with_its_heat_map_and_regions(tmp_path_factory, browser, tmp_path):
    home, out = golden_report_home(tmp_path_factory), tmp_path_factory.mktemp("simulation")
    assert main(["simulate", "--home", str(home), "--month", "2026-07", "--rules", "national-score",
                 "--out", str(out)]) == 0
    visit = Visit(browser, out / "simulation.html")
    assert visit.chart_ids() == ["chart-migration", "chart-regions"]
    assert all(visit.marks(chart_id) > 0 for chart_id in visit.chart_ids())
    assert visit.page.get_attribute("a[href='movers.csv']", "download") is not None
    assert visit.blocked == [] and visit.errors == []
    visit.screenshot(tmp_path, "simulation-202607.png")
