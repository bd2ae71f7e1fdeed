"""Small durable files (the Raft hard state): atomic replace and read.

`atomic_write` writes a temporary file beside the target, fsyncs it, renames it over
the target and fsyncs the directory, so after a crash the path holds either the old
or the new content in full, never a mix.
"""

from __future__ import annotations

import os
from pathlib import Path

from zstream.storage._errors import StorageIOError

__all__ = ["atomic_write", "fsync_directory", "read_file_if_exists"]


def fsync_directory(directory: Path | str) -> None:
    """Make the directory's entries (creates, renames, unlinks) durable."""
    fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def atomic_write(path: Path | str, data: bytes) -> None:
    """Replace ``path`` with ``data`` atomically and durably."""
    target = Path(path)
    tmp = target.with_name(target.name + ".tmp")
    try:
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
        try:
            view = memoryview(data)
            while view:
                written = os.write(fd, view)
                view = view[written:]
            os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(tmp, target)
        fsync_directory(target.parent)
    except OSError as exc:
        raise StorageIOError(f"cannot write {target}: {exc}") from exc


def read_file_if_exists(path: Path | str) -> bytes | None:
    """The content of ``path``, or None when it does not exist."""
    try:
        return Path(path).read_bytes()
    except FileNotFoundError:
        return None
    except OSError as exc:
        raise StorageIOError(f"cannot read {path}: {exc}") from exc
