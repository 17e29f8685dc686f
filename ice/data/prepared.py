"""The prepared-data format: one file the ``prepare`` stage writes and every later stage reads.

In memory (``ice-prepared/1``) the file holds the three splits' tensors; sharded
(``ice-prepared-shards/1``, written by :func:`ice.sharded.write_sharded`) it is a manifest of
labels, positions and shard names, whose images a locator finds (:func:`verified_dir`).
Both hold tensors and plain data only, read with ``weights_only=True``.
"""

from __future__ import annotations

import hashlib
import io
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from ice.data.splits import AnySplit, Dataset, ShardedSplit, Split

__all__ = ["PREPARED_FORMAT", "SHARDED_FORMAT", "save_prepared", "load_prepared", "verified_dir"]

PREPARED_FORMAT = "ice-prepared/1"
SHARDED_FORMAT = "ice-prepared-shards/1"  # a manifest: labels, splits and shard list (ice.sharded)


def save_prepared(ds: Dataset, path: str | Path) -> str:
    """Write ``ds`` (its three splits, classes and statistics) atomically; return the sha256.

    The file holds tensors and plain data only, so :func:`load_prepared` reads it with
    ``weights_only=True``. The same dataset always gives the same bytes.
    """
    from ice.files import atomic_write_bytes

    payload: dict[str, Any] = {
        "format": PREPARED_FORMAT,
        "name": ds.name,
        "classes": list(ds.classes),
        "mean": list(ds.mean),
        "std": list(ds.std),
        "meta": dict(ds.meta),
    }
    for split in ("train", "val", "test"):
        s = getattr(ds, split)
        if not isinstance(s, Split):
            raise TypeError(
                f"save_prepared writes in-memory splits; {split} is a {type(s).__name__} "
                "(sharded data is written by ice.sharded.write_sharded)"
            )
        payload[split] = {
            "x": s.x.contiguous(),
            "y": s.y.contiguous(),
            "index": s.index.contiguous() if s.index is not None else torch.arange(len(s)),
        }
    buf = io.BytesIO()
    torch.save(payload, buf)
    data = buf.getvalue()
    atomic_write_bytes(path, data)
    return hashlib.sha256(data).hexdigest()


def load_prepared(path: str | Path, sha256: str | None = None, locate: Any = None) -> Dataset:
    """Read a file written by :func:`save_prepared` or :func:`ice.sharded.write_sharded`;
    verify ``sha256`` when given.

    A sharded dataset's file is its manifest: its splits read their images from shards that
    ``locate(sha256) -> Path`` finds (default: ``shards/`` beside ``path``, each shard
    verified against its name the first time it is opened)."""
    try:
        data = Path(path).read_bytes()
    except OSError as err:
        raise ValueError(f"{path}: cannot be read ({err.strerror or err})") from None
    if sha256 is not None and hashlib.sha256(data).hexdigest() != sha256:
        raise ValueError(
            f"{path}: sha256 mismatch; the prepared data changed since it was recorded (rerun the prepare stage)"
        )
    try:
        p = torch.load(io.BytesIO(data), weights_only=True)
    except Exception as err:  # truncated zip, garbage bytes
        raise ValueError(
            f"{path}: truncated or corrupt prepared data ({type(err).__name__}); rerun the prepare stage"
        ) from None
    if not isinstance(p, dict) or p.get("format") not in (PREPARED_FORMAT, SHARDED_FORMAT):
        raise ValueError(f"{path}: not prepared data (run the prepare stage)")
    splits: dict[str, AnySplit]
    if p["format"] == SHARDED_FORMAT:
        splits = _sharded_splits(p, locate or verified_dir(Path(path).parent / "shards"))
    else:
        splits = {k: Split(p[k]["x"], p[k]["y"], p[k]["index"]) for k in ("train", "val", "test")}
    return Dataset(
        p["name"],
        splits["train"],
        splits["val"],
        splits["test"],
        list(p["classes"]),
        tuple(p["mean"]),
        tuple(p["std"]),
        dict(p["meta"]),
    )


def _sharded_splits(p: dict[str, Any], locate: Any) -> dict[str, AnySplit]:
    from ice.shards import ShardReader

    readers = {name: ShardReader(shards, p["kind"], p["shape"], locate) for name, shards in p["sources"].items()}
    return {
        k: ShardedSplit(readers[p[k]["source"]], p[k]["rows"], p[k]["y"], p[k]["index"])
        for k in ("train", "val", "test")
    }


def verified_dir(*dirs: Path) -> Callable[[str], Path]:
    """A ``locate`` for shards in the directories ``dirs`` (the first that holds one wins):
    each shard is hashed the first time it is asked for, and one whose bytes do not match
    its name is refused."""
    from ice.files import sha256_file
    from ice.shards import shard_name

    seen: set[str] = set()

    def locate(sha: str) -> Path:
        for d in dirs:
            f = d / shard_name(sha)
            if f.is_file():
                if sha not in seen:
                    if sha256_file(f) != sha:
                        raise ValueError(
                            f"{f}: sha256 does not match its name; the shard changed (rerun the prepare stage)"
                        )
                    seen.add(sha)
                return f
        where = " or ".join(str(d) for d in dirs)
        raise FileNotFoundError(
            f"shard {sha[:12]}… is not in {where}, though the prepared data lists it; rerun the prepare stage"
        )

    return locate
