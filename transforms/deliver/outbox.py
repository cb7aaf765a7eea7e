"""Writing channel files into `<home>/outbox/`: atomic, durable, private, never outside the outbox."""
from __future__ import annotations

import os
from pathlib import Path

from transforms.core.faults import fault_point
from transforms.core.files import copy_aside, fsync_dir, holds, make_private_dirs, write_aside
from transforms.deliver.channels import OUTBOX, ChannelError, check_relpath
from transforms.deliver.render import OutFile
from transforms.ingest.control import file_md5

def write_outbox(home: Path, files: list[OutFile]) -> list[Path]:
    """Writes each file (see write_new) and returns the paths written, a control file after its data file."""
    for out in files:  # refuse a bad path before writing anything
        check_relpath(out.relpath, ChannelError, f"outbox file {out.relpath!r}")
    return [path for out in files for path in write_new(home, out)]


def write_new(home: Path, out: OutFile) -> list[Path]:
    """Puts one channel file (and its control file, last) under <home>/outbox/, atomically and durably, copied
    from where its bytes were kept (out.kept).

    A file once written has been sent: it is never rewritten with other content. Finding the same bytes in
    place (a run killed after writing, before recording it) is fine; finding other bytes refuses the write.
    """
    Path(home).mkdir(parents=True, exist_ok=True)
    root = Path(home) / OUTBOX
    make_private_dirs(root, Path(home))
    data = _target(root, out.relpath)
    control = _target(root, out.control_relpath) if out.control is not None else None
    in_place = [_holds_payload(data, out)] + ([holds(control, out.control)] if control else [])
    for path, same in zip((data, control), in_place):
        if path is not None and path.exists() and not same:
            raise ChannelError(f"outbox file {path.relative_to(root)} was already sent with other content: "
                               "refusing to overwrite it (corrections go to a numbered set)")
    if not all(in_place):
        if not out.kept.is_file():
            raise ChannelError(f"outbox file {out.relpath}: its bytes, kept in {out.kept} until delivered, are "
                               "missing: restore that file (a run writes it before its commit) to deliver it")
        parts = [(data, copy_aside(data, out.kept))]
        if control is not None:
            parts.append((control, write_aside(control, out.control)))
        _rename_in_order(parts)
    return [data] + ([control] if control else [])


def _holds_payload(path: Path, out: OutFile) -> bool:
    """True when `path` already holds the file's bytes (same MD5)."""
    return path.exists() and file_md5(path) == out.md5


def _target(root: Path, relpath: str) -> Path:
    check_relpath(relpath, ChannelError, f"outbox file {relpath!r}")
    target = root / relpath
    if not target.parent.resolve().is_relative_to(root.resolve()):  # checked before creating anything
        raise ChannelError(f"outbox file {relpath!r} resolves outside {root} (symbolic link?)")
    make_private_dirs(target.parent, root)
    return target


def _rename_in_order(parts: list[tuple[Path, Path]]) -> None:
    """Each part, written aside first (target, aside), renamed in order: the control file after its data file."""
    for path, tmp in parts:
        fault_point("before-rename:outbox")
        os.replace(tmp, path)
        fsync_dir(path.parent)
        fault_point("after-rename:outbox")
