"""Writing channel files into `<home>/outbox/`: atomic, durable, private, never outside the outbox."""
from __future__ import annotations

import os
from pathlib import Path

from transforms.core.faults import fault_point
from transforms.core.files import fsync_dir, holds, write_aside
from transforms.deliver.channels import OUTBOX, ChannelError, check_relpath
from transforms.deliver.render import OutFile

DIR_MODE = 0o750  # the outbox carries msisdn: never world-readable


def write_outbox(home: Path, files: list[OutFile]) -> list[Path]:
    """Writes each file atomically under <home>/outbox/ and returns the paths (a control file after its data).

    Each file is written aside (hidden name, same directory), fsynced and renamed over the old one; an old
    control file is removed before its data file changes, so a reader never pairs new data with an old control
    file. A file whose bytes are already in place is left untouched. Leftovers of a killed run are removed.
    """
    for out in files:  # refuse a bad path before writing anything
        check_relpath(out.relpath, ChannelError, f"outbox file {out.relpath!r}")
    Path(home).mkdir(parents=True, exist_ok=True)
    root = Path(home) / OUTBOX
    _make_dirs(root, Path(home))
    written: list[Path] = []
    for out in files:
        target = _target(root, out.relpath)
        parts = [(target, out.payload)]
        if out.control is not None:
            parts.append((_target(root, out.control_relpath), out.control))
        _replace_all(parts)
        written.extend(p for p, _ in parts)
    return written


def _make_dirs(path: Path, stop: Path) -> None:
    """Creates the missing directories down to `path`, each 0o750 whatever the umask."""
    missing = []
    while not path.exists() and path != stop and path != path.parent:
        missing.append(path)
        path = path.parent
    for directory in reversed(missing):
        directory.mkdir(mode=DIR_MODE, exist_ok=True)
        os.chmod(directory, DIR_MODE)


def _target(root: Path, relpath: str) -> Path:
    check_relpath(relpath, ChannelError, f"outbox file {relpath!r}")
    target = root / relpath
    if not target.parent.resolve().is_relative_to(root.resolve()):  # checked before creating anything
        raise ChannelError(f"outbox file {relpath!r} resolves outside {root} (symbolic link?)")
    _make_dirs(target.parent, root)
    return target


def _replace_all(parts: list[tuple[Path, bytes]]) -> None:
    if all(holds(path, data) for path, data in parts):
        return  # rerun: the same bytes are already delivered
    temps = [write_aside(path, data) for path, data in parts]
    for path, _ in parts[1:]:
        path.unlink(missing_ok=True)  # the old control file goes first
    for (path, _), tmp in zip(parts, temps):
        fault_point("before-rename:outbox")
        os.replace(tmp, path)
        fsync_dir(path.parent)
        fault_point("after-rename:outbox")
