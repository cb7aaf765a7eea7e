"""The packs in rules/ and their versions: which file is a pack's name, which version is in force for a month.

A pack is named by its file (`rules/six-star.yaml`) or given by path; a newer version of pack `name` is a file
`rules/<name>@YYYY-MM.yaml` with `effective_from: YYYY-MM`, in force from that grading month (rules.md: a pack
change takes effect from a stated grading month; regrading uses the version then in force).
"""
from __future__ import annotations

import glob
import hashlib
import re
from pathlib import Path

from transforms.core.calendar import Month
from transforms.core.resources import rules_dir
from transforms.grade.rulepack import PackError, RulePack, load_pack

DEFAULT_PACK = "six-star"

PACK_SUFFIX = ".yaml"
_VERSION_MONTH = re.compile(r"[0-9]{4}-[0-9]{2}")


def pack_versions(folder: Path, name: str) -> list[tuple[Month | None, Path]]:
    """The files of pack `name`, oldest first: rules/<name>.yaml (in force from the beginning, month None) and
    rules/<name>@YYYY-MM.yaml (in force from that grading month)."""
    versions = []
    for path in sorted(Path(folder).glob(f"{glob.escape(name)}*{PACK_SUFFIX}")):
        stem = path.name[:-len(PACK_SUFFIX)]
        if stem == name:
            versions.append((None, path))
        elif stem.startswith(f"{name}@"):
            text = stem[len(name) + 1:]
            try:
                month = Month.parse(text) if _VERSION_MONTH.fullmatch(text) else None
            except ValueError:
                month = None
            if month is None:
                raise PackError(f"{path}:0: a pack version file is named <pack>@YYYY-MM{PACK_SUFFIX}")
            versions.append((month, path))
    return sorted(versions, key=lambda v: (v[0] is not None, v[0] or Month(1900, 1)))


def pack_in_force(folder: Path, name: str, month: Month) -> RulePack:
    """The version of pack `name` in force for grading month M: the file with the greatest effective month <= M
    (rules.md: a pack change takes effect from a stated grading month; regrading uses the version then in force).
    The file name's month and the pack's effective_from must agree, and the pack inside must be `name`."""
    versions = pack_versions(folder, name)
    if not versions:
        raise PackError(f"{Path(folder) / (name + PACK_SUFFIX)}:0: no rule pack {name!r} in {folder}")
    in_force = [(start, path) for start, path in versions if start is None or start <= month]
    if not in_force:
        first = versions[0][0]
        raise PackError(f"{versions[0][1]}:0: no version of pack {name!r} is in force for {month} "
                        f"(the first takes effect from {first})")
    start, path = in_force[-1]
    pack = load_pack(path)
    if pack.name != name:
        raise PackError(f"{path}:1: the file holds pack {pack.name!r}, expected {name!r}")
    if pack.effective_from != start:
        expected = f"effective_from: '{start}'" if start else "no effective_from"
        raise PackError(f"{path}:0: the file name says {expected}, the pack says "
                        f"{pack.effective_from or 'none'}")
    return pack


def pack_path(rules: str) -> Path:
    """A pack by path, or by name in rules/ (as `tierflow monthly --rules`)."""
    path = Path(rules)
    if not path.suffix:
        path = rules_dir() / f"{rules}{PACK_SUFFIX}"
    if not path.is_file():
        raise PackError(f"{path}:0: rule pack {rules!r} not found")
    return path


def pack_for_month(rules: str | None, month: Month | None) -> RulePack:
    """A pack file by path, or by name (default six-star): the version of rules/<name>[@YYYY-MM].yaml in force
    for the grading month (the base file when no month is given)."""
    rules = rules or DEFAULT_PACK
    if Path(rules).suffix or month is None:
        return load_pack(pack_path(rules))
    return pack_in_force(rules_dir(), rules, month)


def find_pack_by_version(version: str, directories: list[Path]) -> RulePack | None:
    """The pack file whose version (content hash) is `version`, among the *.yaml files of the directories."""
    for directory in directories:
        for path in sorted(Path(directory).glob(f"*{PACK_SUFFIX}")):
            if hashlib.sha256(path.read_bytes()).hexdigest()[:12] == version:
                return load_pack(path)
    return None
