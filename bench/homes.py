"""Bench homes: a generated province (the tierflow home, with its landing/) and saved states of it.

A saved state holds every mutable entry of the home (warehouse.duckdb, published/, outbox/, ops/, reports/,
... whatever exists) but not landing/, which runs never modify, nor .bench/, where the states themselves live.
Restoring a state before each measured run makes every run start from exactly the same files.

Copies are real for DuckDB files (DuckDB writes them in place) and for small files; larger files are hard
links (outbox files are written aside and renamed, so a run never changes a linked file). That assumption is
checked: the links' size and mtime are recorded when a state is saved and verified before each restore, and
a state that changed fails loudly (rerun with --full-copies, which copies everything).
"""
from __future__ import annotations

import hashlib
import json
import os
import shutil
from pathlib import Path

NEVER_SAVED = {"landing", ".bench"}
LINK_MIN_BYTES = 1 << 20
DISK_MARGIN_BYTES = 1 << 30
PIPELINE_SOURCES = ("transforms", "flows", "rules", "expectations", "channels", "pyproject.toml")


class StateError(RuntimeError):
    pass


def bench_dir(home: Path) -> Path:
    return home / ".bench"


def read_marker(path: Path) -> dict | None:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


def write_marker(path: Path, content: dict) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(content, indent=2, default=str))
    os.replace(tmp, path)


def pipeline_fingerprint(root: Path) -> str:
    """Hash of the pipeline's code and data: a saved state made by other code is rebuilt, not reused (the
    other worktrees change the pipeline's internals, and with them the warehouse schema)."""
    digest = hashlib.sha256()
    for name in PIPELINE_SOURCES:
        base = root / name
        files = [base] if base.is_file() else sorted(p for p in base.rglob("*") if p.is_file()
                                                      and "__pycache__" not in p.parts)
        for path in files:
            digest.update(str(path.relative_to(root)).encode() + b"\0" + path.read_bytes() + b"\0")
    return digest.hexdigest()[:16]


def mutable_entries(home: Path) -> list[Path]:
    return sorted(p for p in home.iterdir() if p.name not in NEVER_SAVED) if home.is_dir() else []


def clear_state(home: Path) -> None:
    """Removes every mutable entry of the home (a fresh warehouse), keeping landing/ and .bench/."""
    for entry in mutable_entries(home):
        if entry.is_dir() and not entry.is_symlink():
            shutil.rmtree(entry)
        else:
            entry.unlink()


def _must_copy(path: Path, full_copies: bool) -> bool:
    return full_copies or ".duckdb" in path.name or path.stat().st_size < LINK_MIN_BYTES


def _files(entries: list[Path]):
    for entry in entries:
        if entry.is_dir():
            yield from (p for p in entry.rglob("*") if p.is_file())
        elif entry.is_file():
            yield entry


def _check_space(source_entries: list[Path], target: Path, full_copies: bool) -> None:
    needed = sum(p.stat().st_size for p in _files(source_entries) if _must_copy(p, full_copies))
    free = shutil.disk_usage(target if target.exists() else target.parent).free
    if needed + DISK_MARGIN_BYTES > free:
        raise StateError(f"not enough disk space to copy {needed / 2**30:.1f} GiB into {target} "
                         f"({free / 2**30:.1f} GiB free, {DISK_MARGIN_BYTES / 2**30:.0f} GiB kept as margin)")


def _copy_entries(entries: list[Path], source_root: Path, target_root: Path, full_copies: bool) -> dict:
    """Copies (or links) entries below source_root into target_root; returns the linked files' signatures."""
    linked = {}
    for entry in entries:
        destination = target_root / entry.relative_to(source_root)
        if entry.is_dir():
            destination.mkdir(parents=True, exist_ok=True)
            shutil.copystat(entry, destination)
            for path in sorted(entry.rglob("*")):
                relative = path.relative_to(source_root)
                if path.is_dir():
                    (target_root / relative).mkdir(parents=True, exist_ok=True)
                    shutil.copystat(path, target_root / relative)
                else:
                    linked |= _copy_file(path, target_root / relative, relative, full_copies)
        else:
            linked |= _copy_file(entry, destination, entry.relative_to(source_root), full_copies)
    return linked


def _copy_file(source: Path, destination: Path, relative: Path, full_copies: bool) -> dict:
    destination.parent.mkdir(parents=True, exist_ok=True)
    if _must_copy(source, full_copies):
        shutil.copy2(source, destination)
        return {}
    os.link(source, destination)
    stat = source.stat()
    return {str(relative): [stat.st_size, stat.st_mtime_ns]}


def save_state(home: Path, name: str, full_copies: bool = False, info: dict | None = None) -> Path:
    """Saves the home's mutable entries as state `name` (replacing an older one)."""
    target = bench_dir(home) / "states" / name
    if target.exists():
        shutil.rmtree(target)
    target.mkdir(parents=True)
    entries = mutable_entries(home)
    _check_space(entries, target, full_copies)
    linked = _copy_entries(entries, home, target, full_copies)
    write_marker(_manifest_path(home, name), {"linked": linked, "info": info or {}})
    return target


def _manifest_path(home: Path, name: str) -> Path:
    return bench_dir(home) / "states" / f"{name}.manifest.json"


def state_info(home: Path, name: str) -> dict | None:
    """The info saved with a state, or None when there is no complete state of that name."""
    manifest = read_marker(_manifest_path(home, name))
    if manifest is None or not (bench_dir(home) / "states" / name).is_dir():
        return None
    return manifest["info"]


def restore_state(home: Path, name: str, full_copies: bool = False) -> None:
    """Replaces the home's mutable entries by state `name`, after checking the state is unchanged."""
    source = bench_dir(home) / "states" / name
    manifest = read_marker(_manifest_path(home, name))
    if manifest is None or not source.is_dir():
        raise StateError(f"no saved state {name!r} in {bench_dir(home)}")
    changed = [rel for rel, (size, mtime) in manifest["linked"].items()
               if not (source / rel).is_file() or [(source / rel).stat().st_size,
                                                    (source / rel).stat().st_mtime_ns] != [size, mtime]]
    if changed:
        raise StateError(f"saved state {name!r} was modified through a hard link ({changed[0]} and "
                         f"{len(changed) - 1} more): a run rewrote a file in place; rebuild with --rebuild "
                         f"--full-copies")
    clear_state(home)
    entries = mutable_entries(source)
    _check_space(entries, home, full_copies)
    _copy_entries(entries, source, home, full_copies)
    # Flush the copy now: otherwise its writeback (GBs at 10M) would compete with the measured run.
    os.sync()


def link_landing(source_home: Path, target_home: Path) -> None:
    """A second home over the same landing files: hard links (same inodes, no space; runs never write them)."""
    target = target_home / "landing"
    if target.exists():
        shutil.rmtree(target)
    for path in sorted((source_home / "landing").rglob("*")):
        destination = target / path.relative_to(source_home / "landing")
        if path.is_dir():
            destination.mkdir(parents=True, exist_ok=True)
        else:
            destination.parent.mkdir(parents=True, exist_ok=True)
            os.link(path, destination)


def du_bytes(path: Path) -> int:
    """Bytes of the files below path, each inode once."""
    seen, total = set(), 0
    for file in ([path] if path.is_file() else path.rglob("*")):
        if file.is_file() and not file.is_symlink():
            stat = file.stat()
            if (stat.st_dev, stat.st_ino) not in seen:
                seen.add((stat.st_dev, stat.st_ino))
                total += stat.st_size
    return total
