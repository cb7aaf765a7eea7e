"""The cases beside the packs: every rules/cases/<pack>.yaml is graded against rules/<pack>.yaml.

Each case (format and defaults in the header of every case file) becomes one test, test_case[<pack>/<name>]:
its subscribers are graded together by the engine (assign_tiers with their overrides, apply_protection with
their previous tiers, compute_tags, entitlements) and every expected value must match. A case file that cannot
be read, or a case naming an unknown metric, tier, tag or entitlement, fails with the file and the case name.
test_every_part_of_the_pack_has_a_case keeps the files complete when a pack grows.
"""
from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path

import polars as pl
import pytest
import yaml

from transforms.core.calendar import Month
from transforms.core.resources import rules_dir
from transforms.grade.engine import apply_protection, assign_tiers, compute_tags, entitlements
from transforms.grade.rulepack import METRIC_CATALOGUE, PackError, RulePack, load_pack

CASES_DIR = rules_dir() / "cases"
MONTH = Month(2026, 7)  # the grading month of every case (protection counts months from `since` to it)
# The subscriber a case starts from (documented in every case file's header): eligible, nothing going on.
DEFAULTS = {"status": "NORMAL", "subs_type": "PERSONAL", "brand": "MZONE", "region_code": "4110",
            "realname_flag": True, "vip_flag": False, "group_key_flag": False, "tenure_months": 24}
DEFAULTS |= {name: 0 for name, kind in METRIC_CATALOGUE.items() if kind == "int" and name not in DEFAULTS}
DTYPES = {"int": pl.Int64, "bool": pl.Boolean, "str": pl.String}
PYTHON_TYPES = {"int": int, "bool": bool, "str": str}
EXPECT_KEYS = ("tier", "reason", "computed_tier", "protected", "tags", "entitlements")
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")


class CaseError(Exception):
    pass


@dataclass
class Subscriber:
    id: str
    metrics: dict
    override: str | None = None
    previous: tuple[str, Month] | None = None  # tier in effect during M, grading month its spell began
    expect: dict | None = None                 # None: background population, not checked


@dataclass
class Case:
    file: Path
    name: str
    pack: RulePack | None = None
    subscribers: list[Subscriber] = field(default_factory=list)
    error: str | None = None

    @property
    def id(self) -> str:
        return f"{self.file.stem}/{self.name}"


# --- loading ---------------------------------------------------------------------------------------------------

def load_case_file(path: Path, rules: Path | None = None) -> list[Case]:
    """The cases of one file, graded with <rules>/<file stem>.yaml (rules: the folder above cases/). Errors do
    not raise: they become cases carrying the error, so that each fails on its own with file and case name."""
    rules = rules or path.parent.parent
    try:
        pack = load_pack(rules / f"{path.stem}.yaml")
        doc = yaml.safe_load(path.read_text(encoding="utf-8"))
        if not isinstance(doc, dict) or set(doc) != {"cases"} or not isinstance(doc["cases"], list):
            raise CaseError("a case file is a mapping with one key, `cases:`, holding a list")
    except (OSError, PackError, yaml.YAMLError, CaseError) as exc:
        return [Case(path, "(file)", error=f"{path}: {exc}")]
    cases, seen = [], set()
    for position, entry in enumerate(doc["cases"], 1):
        name = entry.get("name") if isinstance(entry, dict) else None
        if not isinstance(name, str) or not _NAME.match(name) or name in seen:
            name, problem = f"#{position}", "each case needs a unique `name` (letters, digits, - _ .)"
        else:
            problem = None
        seen.add(name)
        case = Case(path, name, pack)
        try:
            if problem:
                raise CaseError(problem)
            case.subscribers = _subscribers(pack, entry)
        except CaseError as exc:
            case.error = f"{path}: case {name}: {exc}"
        cases.append(case)
    return cases


def _keys(entry, allowed: set, required: set, what: str) -> dict:
    if not isinstance(entry, dict):
        raise CaseError(f"{what} must be a mapping, got {entry!r}")
    unknown, missing = set(entry) - allowed, required - set(entry)
    if unknown or missing:
        raise CaseError(f"{what}: " + "; ".join(
            ([f"unknown key(s) {', '.join(sorted(map(str, unknown)))}"] if unknown else [])
            + ([f"missing {', '.join(sorted(missing))}"] if missing else [])))
    return entry


def _subscribers(pack: RulePack, entry: dict) -> list[Subscriber]:
    if "subscribers" in entry:
        _keys(entry, {"name", "subscribers"}, set(), "case")
        rows = entry["subscribers"]
        if not isinstance(rows, list) or not rows:
            raise CaseError("`subscribers` must be a non-empty list")
        members = []
        for row in rows:
            _keys(row, {"id", "metrics", "override", "previous", "expect", "repeat"}, {"id"}, "subscriber")
            repeat = row.get("repeat", 1)
            if type(repeat) is not int or repeat < 1:
                raise CaseError(f"subscriber {row['id']}: repeat must be a positive integer")
            ids = [str(row["id"])] if repeat == 1 else [f"{row['id']}.{i:0{len(str(repeat))}d}"
                                                         for i in range(1, repeat + 1)]
            members += [_subscriber(pack, sid, row, f"subscriber {sid}") for sid in ids]
        if len({m.id for m in members}) != len(members):
            raise CaseError("subscriber ids must be unique")
        return members
    _keys(entry, {"name", "metrics", "override", "previous", "expect"}, {"expect"}, "case")
    return [_subscriber(pack, entry["name"], entry, "case")]


def _subscriber(pack: RulePack, sid: str, row: dict, what: str) -> Subscriber:
    metrics = row.get("metrics") or {}
    if not isinstance(metrics, dict):
        raise CaseError(f"{what}: metrics must be a mapping")
    for name, value in metrics.items():
        kind = METRIC_CATALOGUE.get(name)
        if kind is None:
            raise CaseError(f"{what}: unknown metric {name!r} (the metrics of docs/metrics.md)")
        if type(value) is not PYTHON_TYPES[kind]:
            raise CaseError(f"{what}: metric {name} is {kind}, got {value!r}")
    previous = None
    if row.get("previous") is not None:
        _keys(row["previous"], {"tier", "since"}, {"tier", "since"}, f"{what}: previous")
        try:
            since = Month.parse(row["previous"]["since"])
        except ValueError as exc:
            raise CaseError(f"{what}: previous since: {exc}") from None
        previous = (_tier(pack, row["previous"]["tier"], what), since)
    override = None if row.get("override") is None else _tier(pack, row["override"], what)
    expect = row.get("expect")
    if expect is not None:
        _keys(expect, set(EXPECT_KEYS), {"tier", "reason"}, f"{what}: expect")
        for key in ("tier", "computed_tier"):
            if key in expect:
                _tier(pack, expect[key], what)
        if "protected" in expect and type(expect["protected"]) is not bool:
            raise CaseError(f"{what}: expect protected must be true or false")
        for key, known in (("tags", pack.tags), ("entitlements", pack.entitlements)):
            names = expect.get(key, [])
            if not isinstance(names, list) or set(names) - set(known):
                raise CaseError(f"{what}: expect {key} must be a list of {', '.join(known)}; got {names!r}")
    return Subscriber(sid, metrics, override, previous, expect)


def _tier(pack: RulePack, tier, what: str) -> str:
    if tier not in pack.tiers:
        raise CaseError(f"{what}: unknown tier {tier!r} (pack {pack.name}: {', '.join(pack.tiers)})")
    return tier


def all_cases() -> list[Case]:
    return [case for path in sorted(CASES_DIR.glob("*.yaml")) for case in load_case_file(path)]


# --- grading ---------------------------------------------------------------------------------------------------

def grade(pack: RulePack, subscribers: list[Subscriber]) -> dict[str, dict]:
    """Subscriber id -> tier, reason, computed_tier, protected, tags, entitlements, graded together."""
    schema = {"subs_id": pl.String, **{name: DTYPES[kind] for name, kind in METRIC_CATALOGUE.items()}}
    metrics = pl.DataFrame([{"subs_id": s.id, **DEFAULTS, **s.metrics} for s in subscribers], schema=schema)
    overrides = pl.DataFrame([(s.id, s.override) for s in subscribers if s.override],
                             schema={"subs_id": pl.String, "tier": pl.String}, orient="row")
    previous = pl.DataFrame([(s.id, s.previous[0], s.previous[1].first_day) for s in subscribers if s.previous],
                            schema={"subs_id": pl.String, "prev_tier": pl.String, "since_month": pl.Date},
                            orient="row")
    assigned = apply_protection(assign_tiers(pack, metrics, overrides), previous, MONTH, list(pack.tiers),
                                pack.protection_months)
    graded = assigned.join(compute_tags(pack, metrics, assigned), on="subs_id", maintain_order="left")
    graded = graded.join(entitlements(pack, graded), on="subs_id", maintain_order="left")
    ineligible = {e.reason for e in pack.eligibility}
    result = {}
    for row in graded.iter_rows(named=True):
        # not a case's choice: the engine marks ineligible exactly the subscribers an eligibility check excluded
        assert row["eligible"] == (row["reason"] not in ineligible), row
        result[row["subs_id"]] = {**{k: row[k] for k in ("tier", "reason", "computed_tier", "protected")},
                                  "tags": sorted(row["tags"]), "entitlements": sorted(row["entitlements"])}
    return result


def mismatches(case: Case) -> list[str]:
    got = grade(case.pack, case.subscribers)
    wrong = []
    for s in case.subscribers:
        for key, expected in (s.expect or {}).items():
            expected = sorted(expected) if isinstance(expected, list) else expected
            if got[s.id][key] != expected:
                wrong.append(f"subscriber {s.id}: {key} expected {expected!r}, got {got[s.id][key]!r}")
    return wrong


CASES = all_cases()


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_case(case: Case):
    if case.error:
        pytest.fail(case.error, pytrace=False)
    wrong = mismatches(case)
    if wrong:
        pytest.fail(f"{case.file}: case {case.name}:\n  " + "\n  ".join(wrong), pytrace=False)


# --- the case files themselves ---------------------------------------------------------------------------------

def test_every_shipped_pack_has_a_case_file():
    packs = {p.stem for p in rules_dir().glob("*.yaml") if "@" not in p.stem}  # versions may have cases too
    assert packs >= {"six-star", "national-score", "abc", "points-level"}
    assert {p.stem for p in CASES_DIR.glob("*.yaml")} >= packs


@pytest.mark.parametrize("path", sorted(CASES_DIR.glob("*.yaml")), ids=lambda p: p.stem)
def test_every_part_of_the_pack_has_a_case(path):
    """Every eligibility check, rule, cap, tag and entitlement of the pack appears in some expectation."""
    cases = [c for c in load_case_file(path) if not c.error]
    if not cases:
        pytest.skip("the file does not load (its test_case fails)")
    pack = cases[0].pack
    expected = [s.expect for c in cases for s in c.subscribers if s.expect]
    outcomes = {(e["tier"], e["reason"]) for e in expected}
    needed = ({(pack.unrated, e.reason) for e in pack.eligibility} | {(r.tier, r.reason) for r in pack.rules}
              | {(c.max_tier, c.reason) for c in pack.caps})
    assert not needed - outcomes, f"{path}: no case expects (tier, reason) {sorted(needed - outcomes)}"
    for key, names in (("tags", pack.tags), ("entitlements", pack.entitlements)):
        shown = {n for e in expected for n in e.get(key, [])}
        assert not set(names) - shown, f"{path}: no case expects the {key} {sorted(set(names) - shown)}"


BAD = """\
cases:
  - {name: fine, expect: {tier: STAR1, reason: AVG6}}
  - {name: typo-metric, metrics: {sum7_fen: 1}, expect: {tier: STAR1, reason: AVG6}}
  - {name: typo-tier, metrics: {sum6_fen: 180000}, expect: {tier: STAR7, reason: AVG6}}
  - {name: bad-override, override: GOLD, expect: {tier: GOLD, reason: OVERRIDE}}
  - {name: wrong-type, metrics: {vip_flag: 'Y'}, expect: {tier: STAR6, reason: VIP_DESIGNATION}}
  - {name: unknown-tag, expect: {tier: STAR1, reason: AVG6, tags: [ROAMING]}}
  - {name: rank, subscribers: [{id: a, metrics: {sum6_fen: 1}}, {id: b, expect: {tier: STAR0, reason: X}}]}
  - {name: no-expect, metrics: {}}
  - {name: fine}
"""


def test_a_bad_case_fails_with_file_and_case_name(tmp_path):
    path = tmp_path / "cases" / "six-star.yaml"
    path.parent.mkdir()
    path.write_text(BAD, encoding="utf-8")
    errors = [c.error for c in load_case_file(path, rules_dir())]
    assert errors[0] is None
    assert [e.removeprefix(f"{path}: ") for e in errors[1:]] == [
        "case typo-metric: case: unknown metric 'sum7_fen' (the metrics of docs/metrics.md)",
        "case typo-tier: case: unknown tier 'STAR7' (pack six-star: UNRATED, STAR1, STAR2, STAR3, STAR4, STAR5, "
        "STAR6)",
        "case bad-override: case: unknown tier 'GOLD' (pack six-star: UNRATED, STAR1, STAR2, STAR3, STAR4, STAR5, "
        "STAR6)",
        "case wrong-type: case: metric vip_flag is bool, got 'Y'",
        "case unknown-tag: case: expect tags must be a list of GROUP_KEY, HIGH_DATA, ROAMER, NEW_JOINER, ARREARS, "
        "CHURN_RISK, DOWNGRADE_RISK; got ['ROAMING']",
        "case rank: subscriber b: unknown tier 'STAR0' (pack six-star: UNRATED, STAR1, STAR2, STAR3, STAR4, STAR5, "
        "STAR6)",
        "case no-expect: case: missing expect",
        "case #9: each case needs a unique `name` (letters, digits, - _ .)"]
    with pytest.raises(pytest.fail.Exception, match=r"six-star.yaml: case typo-metric: case: unknown metric"):
        test_case(load_case_file(path, rules_dir())[1])
    # a file that does not parse, or names no pack, is one failing case
    path.write_text("cases: [\n", encoding="utf-8")
    assert load_case_file(path, rules_dir())[0].error.startswith(f"{path}: while parsing")
    (tmp_path / "cases" / "gold.yaml").write_text(BAD, encoding="utf-8")
    [only] = load_case_file(tmp_path / "cases" / "gold.yaml", rules_dir())
    assert only.error == f"{tmp_path / 'cases' / 'gold.yaml'}: {rules_dir() / 'gold.yaml'}:0: cannot read the pack: " \
        "No such file or directory"


def test_a_wrong_expectation_fails_with_what_differs(tmp_path):
    path = tmp_path / "cases" / "six-star.yaml"
    path.parent.mkdir()
    path.write_text("cases:\n  - {name: off-by-one, metrics: {sum6_fen: 179999}, expect: {tier: STAR5, reason: "
                    "AVG6, tags: [DOWNGRADE_RISK]}}\n", encoding="utf-8")
    with pytest.raises(pytest.fail.Exception) as failed:
        test_case(load_case_file(path, rules_dir())[0])
    assert str(failed.value) == (f"{path}: case off-by-one:\n  subscriber off-by-one: tier expected 'STAR5', "
                                 "got 'STAR4'\n  subscriber off-by-one: tags expected ['DOWNGRADE_RISK'], got []")
