"""Where tierflow finds the data it ships: rule packs, expectation suites and the channel configuration.

They are package data of the `rules`, `expectations` and `channels` packages (folders at the top of the project),
so an installed wheel finds them wherever it runs from, and an editable checkout finds the files being edited.
"""
from __future__ import annotations

from importlib.resources import files
from pathlib import Path


def _folder(package: str) -> Path:
    return Path(str(files(package)))


def rules_dir() -> Path:
    """rules/: `<pack>.yaml` and its versions `<pack>@YYYY-MM.yaml`."""
    return _folder("rules")


def expectations_dir() -> Path:
    """expectations/: one Great Expectations suite per gate, `<suite>.json`."""
    return _folder("expectations")


def channels_config() -> Path:
    """channels/channels.yaml: the default channel configuration."""
    return _folder("channels") / "channels.yaml"
