"""Files written whole or not at all, and their sha256: the one home of both.

- :func:`atomic_write_bytes`: readers see the old file or the whole new one;
- :func:`staged_copy`: copy into an open temporary file while hashing;
- :func:`sha256_file`: the hash every reference and checkpoint is verified by;
- :func:`disk_full_names`: a full disk names the file and the bytes it needed.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import BinaryIO

__all__ = ["atomic_write_bytes", "disk_full_names", "sha256_file", "staged_copy", "temp_beside", "fsync_dir"]

CHUNK = 1 << 20


def sha256_file(path: str | Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(CHUNK), b""):
            h.update(chunk)
    return h.hexdigest()


@contextlib.contextmanager
def disk_full_names(path: str | Path, size: int | None = None) -> Iterator[None]:
    """A full disk while writing ``path`` raises an OSError (ENOSPC) that names the file and,
    where known, the bytes it needed: a write to a temporary file descriptor says neither."""
    try:
        yield
    except OSError as err:
        if err.errno != errno.ENOSPC:
            raise
        need = f" ({size:,} bytes needed)" if size is not None else ""
        raise OSError(errno.ENOSPC, f"no space left on the device{need}", str(path)) from None


def temp_beside(path: Path, suffix: str = ".tmp") -> tuple[int, Path]:
    """An open temporary file in ``path``'s directory, with a name unique to this write
    (concurrent writers of the same path never share it)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=suffix, dir=path.parent)
    return fd, Path(name)


def staged_copy(src: Path, out: BinaryIO, dst: Path) -> str:
    """Copy ``src`` into ``out`` (flushed and fsynced); the sha256 of the bytes copied.
    A full disk names ``dst``, the file the copy is for."""
    h = hashlib.sha256()
    with disk_full_names(dst, src.stat().st_size), open(src, "rb") as f:
        for chunk in iter(lambda: f.read(CHUNK), b""):
            h.update(chunk)
            out.write(chunk)
        out.flush()
        os.fsync(out.fileno())
    return h.hexdigest()


def fsync_dir(path: Path) -> None:
    """Make a rename in ``path`` durable (best effort: some filesystems refuse)."""
    try:
        fd = os.open(path, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
    except OSError:
        pass


def atomic_write_bytes(path: str | Path, data: bytes) -> None:
    """Write ``data`` to ``path`` so readers see the old file or the whole new one."""
    path = Path(path)
    fd, tmp = temp_beside(path)
    try:
        os.chmod(tmp, 0o644)  # mkstemp's 0600 would hide outputs from other users
        with disk_full_names(path, len(data)), os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    fsync_dir(path.parent)
