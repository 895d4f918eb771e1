"""Durable local file helpers shared by the filesystem store and the spool."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any


def fsync_directory(directory: Path) -> None:
    """Make a rename or unlink inside ``directory`` durable."""
    fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def atomic_write_bytes(path: Path, data: bytes, *, temp_dir: Path | None = None) -> int:
    """Replace ``path`` with ``data`` so that readers see the old or the new file, never a mix.

    Writes a temporary file (in ``temp_dir``, default the target's directory; it must be
    on the same filesystem), fsyncs it, renames it over the target and fsyncs the
    directory. Returns the inode number of the new file.
    """
    directory = temp_dir if temp_dir is not None else path.parent
    temp = directory / f".{path.name}.{os.getpid()}.{os.urandom(4).hex()}.tmp"
    fd = os.open(temp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o640)
    try:
        view = memoryview(data)
        while view:
            written = os.write(fd, view)
            view = view[written:]
        os.fsync(fd)
        inode = os.fstat(fd).st_ino
    except BaseException:
        os.close(fd)
        temp.unlink(missing_ok=True)
        raise
    os.close(fd)
    try:
        os.replace(temp, path)
    except BaseException:
        temp.unlink(missing_ok=True)
        raise
    fsync_directory(path.parent)
    return inode


def atomic_write_json(path: Path, document: Any, *, temp_dir: Path | None = None) -> None:
    """:func:`atomic_write_bytes` of ``document`` as compact UTF-8 JSON."""
    data = json.dumps(document, separators=(",", ":"), sort_keys=True).encode("utf-8")
    atomic_write_bytes(path, data, temp_dir=temp_dir)
