"""The landing area (extracts.md "Landing layout"): `landing/<YYYYMMDD>/<FILE>.dat` with its `.chk`.

A `.dat` counts as delivered once its control file exists; without one it is pending (reported, never loaded).
Anything else in the landing area is reported as not an extract, never read.
"""
from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import date
from pathlib import Path

from transforms.core.calendar import parse_day
from transforms.ingest.layouts import ExtractName, parse_extract_name

_DAY_DIR = re.compile(r"^\d{8}$")
# Within one day folder the snapshot goes first so the day's events can be matched to known subscribers.
KIND_ORDER = {"ACCT": 0, "OVERRIDE": 1, "SUSP": 2, "REDEEM": 3, "BILL": 4}


@dataclass(frozen=True)
class Delivery:
    day: date
    dat_path: Path
    name: ExtractName

    @property
    def chk_path(self) -> Path:
        return self.dat_path.with_suffix(".chk")

    def relative_path(self, home: Path) -> str:
        return str(self.dat_path.relative_to(Path(home) / "landing"))


@dataclass
class LandingScan:
    delivered: list[Delivery]
    pending: list[Delivery]       # .dat without its .chk yet: reported, never loaded
    unrecognised: list[Path]      # names that are no extract of extracts.md


def scan_landing(home: Path, up_to: date | None = None) -> LandingScan:
    """Lists landing/<YYYYMMDD>/ folders up to a day, in delivery order (day, then kind, then name)."""
    landing = (Path(home) / "landing").resolve()
    delivered, pending, unrecognised = [], [], []
    if not landing.is_dir():
        return LandingScan([], [], [])
    for day_dir in sorted(landing.iterdir()):
        if not (day_dir.is_dir() and _DAY_DIR.match(day_dir.name)) or day_dir.is_symlink():
            unrecognised.append(day_dir)
            continue
        try:
            day = parse_day(day_dir.name)
        except ValueError:
            unrecognised.append(day_dir)
            continue
        if up_to is not None and day > up_to:
            continue
        for dat in sorted(day_dir.glob("*.dat")):
            if dat.is_symlink() or not dat.resolve().is_relative_to(landing):
                unrecognised.append(dat)
                continue
            try:
                name = parse_extract_name(dat.name)
            except ValueError:
                unrecognised.append(dat)
                continue
            target = delivered if dat.with_suffix(".chk").exists() else pending
            target.append(Delivery(day, dat, name))
    delivered.sort(key=lambda d: (d.day, KIND_ORDER[d.name.kind], d.name.file_name))
    return LandingScan(delivered, pending, unrecognised)
