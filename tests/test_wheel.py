"""The project as a user gets it: a wheel built from the project, installed with plain `pip install --no-deps`
into a fresh venv, its `tierflow demo` run from another directory. Checks that it graded the months and that the
code, the packs, the suites and the channel configuration came from the installed wheel, not the source tree."""
from __future__ import annotations

import shutil
import subprocess
import sys
import sysconfig
import time
import tomllib
from pathlib import Path

import pytest

from transforms.warehouse.db import connect

pytestmark = pytest.mark.flow
PROJECT = Path(__file__).resolve().parent.parent


def _run(cmd: list, **kwargs) -> subprocess.CompletedProcess:
    result = subprocess.run([str(c) for c in cmd], capture_output=True, text=True, **kwargs)
    assert result.returncode == 0, f"{' '.join(map(str, cmd))} failed:\n{result.stdout}\n{result.stderr}"
    return result


def _copy_sources(dest: Path) -> Path:
    """The files a wheel is built from (pyproject, README, the top-level packages it lists), copied aside:
    setuptools writes build/ and *.egg-info next to the sources, which must not land in the work tree."""
    config = tomllib.loads((PROJECT / "pyproject.toml").read_text(encoding="utf-8"))
    tops = {name.split(".")[0] for name in config["tool"]["setuptools"]["packages"]}
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(PROJECT / name, dest / name)
    for top in sorted(tops):
        shutil.copytree(PROJECT / top, dest / top, ignore=shutil.ignore_patterns("__pycache__"))
    return dest


def _build_wheel(src: Path, dist: Path) -> Path:
    # setuptools builds wheels itself from 70.1 on, older ones need the `wheel` package. The project's venv has
    # whatever `python -m venv` bundled (65.5 on Python 3.11) and no `wheel`: then pip builds with isolation,
    # installing setuptools>=68 (pyproject's build-system) from the configured index (a local mirror here).
    import setuptools
    version = tuple(int(p) for p in setuptools.__version__.split(".")[:2])
    can_build_here = version >= (70, 1) or _has_module("wheel")
    isolation = ["--no-build-isolation", "--no-index"] if can_build_here else []
    _run([sys.executable, "-m", "pip", "wheel", "--no-deps", *isolation, "-q", "-w", dist, src])
    [wheel] = dist.glob("tierflow-*.whl")
    return wheel


def _has_module(name: str) -> bool:
    import importlib.util
    return importlib.util.find_spec(name) is not None


def _fresh_venv(root: Path, wheel: Path) -> tuple[Path, Path]:
    """A new venv with the wheel installed, and its site-packages.

    The third-party dependencies (prefect, duckdb, polars, GE, ...) are not installed again: a .pth file in the
    new site-packages appends the project venv's site-packages to sys.path, so the install needs no network
    and takes seconds. Only plain paths are read from that .pth: the project's editable-install hook, a .pth
    inside the project's site-packages, is not run, so `transforms` can only come from the new site-packages."""
    _run([sys.executable, "-m", "venv", root])
    python = root / "bin" / "python"
    site = Path(_run([python, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"]).stdout.strip())
    deps = dict.fromkeys([sysconfig.get_paths()["purelib"], sysconfig.get_paths()["platlib"]])
    (site / "tierflow-test-deps.pth").write_text("".join(f"{p}\n" for p in deps), encoding="utf-8")
    _run([root / "bin" / "pip", "install", "--no-deps", "--no-index", "-q", wheel])
    return root / "bin", site


def test_installed_wheel_runs_the_demo(tmp_path, cli_env):
    started = time.monotonic()
    (tmp_path / "src").mkdir()
    wheel = _build_wheel(_copy_sources(tmp_path / "src"), tmp_path / "dist")
    bin_dir, site = _fresh_venv(tmp_path / "venv", wheel)
    built = time.monotonic()
    elsewhere = tmp_path / "elsewhere"  # neither the project nor the venv: nothing importable from the cwd
    elsewhere.mkdir()
    env = {k: v for k, v in cli_env.items() if k not in ("PYTHONPATH", "TIERFLOW_HOME")}

    where = _run([bin_dir / "python", "-c", "import flows, transforms\n"
                  "from transforms.core.resources import channels_config, expectations_dir, rules_dir\n"
                  "for p in (transforms.__file__, flows.__file__, rules_dir() / 'six-star.yaml',\n"
                  "          rules_dir() / 'cases' / 'six-star.yaml', expectations_dir() / 'outputs.json',\n"
                  "          channels_config()):\n"
                  "    print(p if __import__('os').path.isfile(p) else f'missing {p}')"],
                 cwd=elsewhere, env=env).stdout.splitlines()
    assert len(where) == 6 and all(Path(p).is_relative_to(site) for p in where), where

    home = tmp_path / "home"
    # A small province: its DOWNGRADE + LOST share runs at 3-5% a month, so the seed is one whose months all stay
    # under the breaker's 5% (as in tests/test_crash_safety.py).
    demo = _run([bin_dir / "tierflow", "demo", "--home", home, "--subscribers", "300", "--months", "8",
                 "--seed", "14"], cwd=elsewhere, env=env)
    ran = time.monotonic()
    print(f"wheel + venv {built - started:.1f} s, demo {ran - built:.1f} s")
    # 8 months from 2025-01: graded from 2025-06 (the first complete 6-month window) to 2025-08
    assert "graded: 2025-06 .. 2025-08 (3 month(s), pack six-star" in demo.stdout, demo.stdout
    assert "stale: none" in demo.stdout
    con = connect(home, read_only=True)
    try:
        assert con.execute("SELECT count(*) FILTER (graded), count(*) FROM ops.month_state").fetchone() == (3, 8)
        assert con.execute("SELECT count(DISTINCT grade_month) FROM mart.tier_assignment").fetchone() == (3,)
        assert con.execute("SELECT count(*) FROM ops.run_ledger WHERE status <> 'SUCCESS'").fetchone() == (0,)
    finally:
        con.close()
    assert (home / "outbox" / "boss" / "202508" / "GRADE_CHG_202508.chk").is_file()
    assert f"report of 2025-08: {home / 'reports' / '202508.html'}" in demo.stdout
    assert (home / "reports" / "202508.html").stat().st_size > 1_000_000  # plotly's code is in the page
    assert not any(elsewhere.iterdir())  # everything went under --home
