"""Durable, atomic file writes: the one way tierflow puts a file in place.

A file is written aside under a hidden name in its own folder (`.<name>.<pid>.tmp`), fsynced, renamed over its
target and the folder fsynced: a reader sees the old file or the new one, never a part, and a crash leaves at
most a hidden leftover that the next write of the same file removes.
"""
from __future__ import annotations

import os
from collections.abc import Iterable
from pathlib import Path

from transforms.core.faults import fault_point

FILE_MODE = 0o640  # outputs carry subscriber data: never world-readable
DIR_MODE = 0o750


def make_private_dirs(path: Path, stop: Path | None = None) -> None:
    """Creates the missing directories down to `path` (not above `stop`), each DIR_MODE whatever the umask."""
    missing = []
    while not path.exists() and path != stop and path != path.parent:
        missing.append(path)
        path = path.parent
    for directory in reversed(missing):
        directory.mkdir(mode=DIR_MODE, exist_ok=True)
        os.chmod(directory, DIR_MODE)


def aside_path(path: Path) -> Path:
    """The hidden name a file is written under before it is renamed into place."""
    return path.with_name(f".{path.name}.{os.getpid()}.tmp")


def remove_leftovers(path: Path) -> None:
    """Hidden leftovers of a write of `path` that a killed process never renamed."""
    for stale in path.parent.glob(f".{path.name}.*.tmp"):
        stale.unlink(missing_ok=True)


def remove_leftovers_under(folder: Path) -> None:
    """Every hidden leftover below a folder that only a dead process was writing."""
    for stale in Path(folder).rglob(".*.tmp"):
        stale.unlink(missing_ok=True)


def write_aside(path: Path, data: bytes, mode: int = FILE_MODE) -> Path:
    """Writes `data` under the hidden name of `path`, fsynced; returns that name (rename it with `commit`)."""
    return _aside(path, mode, lambda fd: _write_all(fd, data))


def copy_aside(path: Path, source: Path, mode: int = FILE_MODE) -> Path:
    """Copies the file `source`, block by block, under the hidden name of `path`, fsynced; returns that name."""
    def copy(fd: int) -> None:
        with open(source, "rb") as fh:
            while block := fh.read(_BLOCK):
                _write_all(fd, block)
    return _aside(path, mode, copy)


_BLOCK = 1 << 22


def _aside(path: Path, mode: int, write) -> Path:
    remove_leftovers(path)
    tmp = aside_path(path)
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW, mode)
    try:
        os.fchmod(fd, mode)
        write(fd)
        os.fsync(fd)
    finally:
        os.close(fd)
    return tmp


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view):]


def fsync_file(path: Path) -> None:
    with open(path, "rb") as fh:
        os.fsync(fh.fileno())


def fsync_dir(directory: Path) -> None:
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def commit(tmp: Path, path: Path, kind: str) -> None:
    """Renames a file written aside over its target and makes the rename durable; `kind` names the file's kind
    for fault injection (before-rename:<kind>, after-rename:<kind>)."""
    fault_point(f"before-rename:{kind}")
    os.replace(tmp, path)
    fsync_dir(path.parent)
    fault_point(f"after-rename:{kind}")


def write_atomic(path: Path, data: bytes, kind: str, mode: int = FILE_MODE) -> Path:
    """Puts `data` at `path` atomically and durably (`kind`: see commit)."""
    return write_atomic_blocks(path, [data], kind, mode)


def write_atomic_blocks(path: Path, blocks: Iterable[bytes], kind: str, mode: int = FILE_MODE) -> Path:
    """write_atomic of the bytes `blocks` yield one after the other, never all held at once."""
    path.parent.mkdir(parents=True, exist_ok=True)
    def write(fd: int) -> None:
        for block in blocks:
            _write_all(fd, block)
    commit(_aside(path, mode, write), path, kind)
    return path


def holds(path: Path, data: bytes) -> bool:
    """True when `path` already holds exactly `data`."""
    try:
        return path.stat().st_size == len(data) and path.read_bytes() == data
    except FileNotFoundError:
        return False
