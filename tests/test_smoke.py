"""Smoke: everything tierflow ships loads. Every rule pack in rules/ and each version in force from its month,
the channel configuration, every Great Expectations suite in expectations/ (as a GE suite), and the CLI parser
for every sub-command."""
from __future__ import annotations

import argparse

import pytest

from flows.cli import COMMANDS, build_parser
from transforms.core.calendar import Month
from transforms.core.resources import expectations_dir, rules_dir
from transforms.deliver.channels import FEED_OF, load_channels
from transforms.grade.packs import pack_in_force, pack_versions
from transforms.grade.rulepack import load_pack
from transforms.quality import suites

PACK_FILES = sorted(rules_dir().glob("*.yaml"))
PACK_NAMES = sorted({p.stem.split("@")[0] for p in PACK_FILES})
SUITES = sorted(p.stem for p in expectations_dir().glob("*.json"))


@pytest.mark.parametrize("path", PACK_FILES, ids=lambda p: p.name)
def test_pack_loads(path):
    pack = load_pack(path)
    assert pack.name == path.stem.split("@")[0]
    assert pack.tiers and pack.rules and pack.eligibility


@pytest.mark.parametrize("name", PACK_NAMES)
def test_each_version_is_in_force_from_its_month(name):
    versions = pack_versions(rules_dir(), name)
    assert versions[0][0] is None, f"{name}: no base file rules/{name}.yaml"
    for start, path in versions:
        month = start or Month(2000, 1)
        assert pack_in_force(rules_dir(), name, month).version == load_pack(path).version


def test_shipped_packs_and_suites_are_there():
    assert {"six-star", "national-score", "abc", "points-level"} <= set(PACK_NAMES)
    assert {"raw_file", "grading_inputs", "outputs", "circuit_breaker"} <= set(SUITES)


def test_channels_load():
    channels = load_channels()
    assert channels and {c.name for c in channels} <= set(FEED_OF)


@pytest.mark.parametrize("name", SUITES)
def test_suite_is_a_valid_great_expectations_suite(name):
    spec = suites.load_suite(name)
    assert spec["name"] == name
    # GE builds each expectation and validates its kwargs: an unknown type or a misspelt kwarg raises here, and
    # one GE would silently drop fails the count
    suite = suites._prepared(name).suite
    assert sorted(e.expectation_type for e in suite.expectations) == sorted(e["type"] for e in spec["expectations"])
    declared = set(spec.get("meta", {}).get("params", {}))
    assert set(suite.suite_parameter_options) == declared, "every $PARAMETER is declared in meta.params"


# Every sub-command with its required arguments (a new sub-command must be added here).
REQUIRED = {
    "demo": [], "status": [],
    "generate": ["--subscribers", "10", "--start", "2025-01", "--months", "2"],
    "nightly": ["--day", "2026-01-15"],
    "monthly": ["--month", "2026-07"],
    "backfill": ["--start", "2025-01", "--end", "2025-08"],
    "rules": ["check", "six-star"],
    "simulate": ["--month", "2026-07", "--rules", "abc"],
    "serve": [],
    "report": ["--month", "2026-07"],
}


def _subcommands(parser: argparse.ArgumentParser) -> set[str]:
    return {name for action in parser._actions if isinstance(action, argparse._SubParsersAction)
            for name in action.choices}


def test_every_subcommand_is_listed_here_and_has_a_handler():
    assert _subcommands(build_parser()) == set(REQUIRED) == set(COMMANDS)


@pytest.mark.parametrize("command", sorted(REQUIRED))
def test_subcommand_parses_with_its_required_arguments(command):
    args = build_parser().parse_args([command, "--home", "/tmp/nowhere", *REQUIRED[command]])
    assert args.command == command and args.home == "/tmp/nowhere"


@pytest.mark.parametrize("argv", [[], *([c] for c in sorted(REQUIRED)), ["rules", "check"]], ids=" ".join)
def test_help_exits_cleanly(argv, capsys):
    with pytest.raises(SystemExit) as exit_:
        build_parser().parse_args([*argv, "--help"])
    assert exit_.value.code == 0
    assert capsys.readouterr().out.startswith(f"usage: {' '.join(['tierflow', *argv])}")


def test_demo_takes_a_subscriber_count():
    assert build_parser().parse_args(["demo", "--subscribers", "300"]).subscribers == 300
    with pytest.raises(SystemExit):
        build_parser().parse_args(["demo", "--subscribers", "0"])
