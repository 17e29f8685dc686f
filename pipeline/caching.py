"""Task cache keys: a task's key hashes its inputs (references carry the sha256, configs are
plain dicts; ``root`` is excluded so keys do not depend on where the project sits), the
task's source and the source of the ``ice`` package, so changing the library invalidates
every cached step."""

from __future__ import annotations

import functools
import hashlib
from pathlib import Path

__all__ = ["ice_code_hash"]


@functools.cache
def ice_code_hash() -> str:
    """sha256 over the ``ice`` package's source files: part of every task's cache key."""
    import ice

    base = Path(ice.__file__).parent
    h = hashlib.sha256()
    for f in sorted(base.rglob("*.py")):
        h.update(f.relative_to(base).as_posix().encode())
        h.update(f.read_bytes())
    return h.hexdigest()
