"""Where a sharded dataset's shards live, and how a task finds them.

A shard is stored under its sha256 (``<sha256>.shard``): in the local store
(``.ice-cache/store/shards/``), published beside the manifest for DVC
(``data/prepared/shards/``), and with an S3 store as the object ``objects/<sha256>.shard``.

A task whose dataset reference is in a bucket (a worker with no shared disk) reads shards
through :class:`ShardCache`: each shard is downloaded once, verified, and kept in a local
cache bounded to ``$ICE_SHARD_CACHE_BYTES`` (default 16 GiB); past the bound the least
recently used shards are deleted (a reader that still has one open keeps reading it).
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

from ice.data import verified_dir
from ice.shards import shard_name
from plumbing.paths import Paths
from plumbing.s3 import S3Store, is_s3, s3_store

__all__ = [
    "SUFFIX",
    "shard_locator",
    "upload_shards",
    "publish_shards",
    "prune_shards",
    "share_prepared",
    "published_shards",
    "ShardCache",
    "cache_bytes",
]

SUFFIX = ".shard"
DEFAULT_CACHE_BYTES = 16 << 30


def cache_bytes() -> int:
    raw = os.environ.get("ICE_SHARD_CACHE_BYTES", "")
    try:
        return int(raw) if raw else DEFAULT_CACHE_BYTES
    except ValueError:
        raise ValueError(f"ICE_SHARD_CACHE_BYTES={raw!r} is not a number of bytes") from None


class ShardCache:
    """``locate`` for shards in a bucket: download on first use into ``where``, at most
    ``max_bytes`` of shards kept there (least recently used deleted first)."""

    def __init__(self, store: S3Store, where: Path, max_bytes: int) -> None:
        self.store = S3Store(store.loc, where)
        self.where = where
        self.max_bytes = max_bytes
        self.seen: set[str] = set()
        self.downloads = 0

    def __call__(self, sha: str) -> Path:
        self.where.mkdir(parents=True, exist_ok=True)
        f = self.where / shard_name(sha)
        if sha in self.seen and f.is_file():
            os.utime(f)  # recently used
            return f
        had = f.is_file()
        got = self.store.get({"uri": self.store.object_uri(sha, SUFFIX), "sha256": sha})  # verified
        self.downloads += not had
        self.seen.add(sha)
        os.utime(got)
        self._evict(keep=got)
        return got

    def _evict(self, keep: Path) -> None:
        files = [(p.stat().st_mtime_ns, p) for p in self.where.glob(f"*{SUFFIX}") if p != keep]
        total = sum(p.stat().st_size for _, p in files) + keep.stat().st_size
        for _, p in sorted(files):
            if total <= self.max_bytes:
                break
            total -= p.stat().st_size
            p.unlink(missing_ok=True)
            self.seen.discard(p.name.removesuffix(SUFFIX))


def shard_locator(paths: Paths, ref: dict[str, str]) -> Callable[[str], Path]:
    """How the dataset ``ref`` (its manifest) finds its shards: the bucket through a bounded
    cache when the reference is in S3, else the project's published and stored copies."""
    on_disk = verified_dir(paths.prepared.parent / "shards", paths.store / "shards")
    if not is_s3(ref["uri"]):
        return on_disk
    cache = ShardCache(s3_store(paths, ref["uri"]), paths.store / "shard-cache", cache_bytes())

    def locate(sha: str) -> Path:  # a copy already on this disk (the producer's), else the bucket
        try:
            return on_disk(sha)
        except FileNotFoundError:
            return cache(sha)

    return locate


def upload_shards(paths: Paths, url: str, shards: Iterable[dict[str, Any]], src: Callable[[str], Path]) -> None:
    """Put each shard (a local file that ``src(sha)`` finds) into the S3 store ``url``, once."""
    store = s3_store(paths, url)
    for s in shards:
        store.put(src(s["sha256"]), s["sha256"], SUFFIX, name="shard")


def publish_shards(paths: Paths, shards: list[dict[str, Any]], src: Callable[[str], Path]) -> int:
    """Put ``shards`` into ``data/prepared/shards/`` (hard links where the disk allows, else
    copies, each renamed into place whole); the bytes published. Shards of an earlier dataset
    stay until :func:`prune_shards`, called once the manifest naming the new ones is in place."""
    out = paths.prepared.parent / "shards"
    out.mkdir(parents=True, exist_ok=True)
    size = 0
    for s in shards:
        dst = out / shard_name(s["sha256"])
        size += int(s["bytes"])
        if dst.is_file() and dst.stat().st_size == int(s["bytes"]):
            continue  # same name, same bytes: content-addressed
        tmp = out / f".{dst.name}.{os.getpid()}.tmp"
        try:
            try:
                os.link(src(s["sha256"]), tmp)
            except OSError:
                shutil.copyfile(src(s["sha256"]), tmp)
            os.replace(tmp, dst)
        finally:
            tmp.unlink(missing_ok=True)
    return size


def prune_shards(paths: Paths, shards: list[dict[str, Any]]) -> None:
    """Delete from ``data/prepared/shards/`` what ``shards`` does not list (an empty list: the
    in-memory format, which has none), so DVC tracks exactly the manifest's shards."""
    out = paths.prepared.parent / "shards"
    out.mkdir(parents=True, exist_ok=True)
    wanted = {shard_name(s["sha256"]) for s in shards}
    for stale in out.iterdir():
        if stale.name not in wanted:
            stale.unlink()


def published_shards(paths: Paths) -> list[dict[str, Any]]:
    """The shards (sha256, count, bytes) the published prepared data lists, in order; none for
    the in-memory format or where nothing is published."""
    import json

    import torch

    if not paths.prepared_record.is_file():
        return []
    if json.loads(paths.prepared_record.read_text()).get("format") != "shards":
        return []
    manifest = torch.load(paths.prepared, weights_only=True)
    return [s for source in manifest["sources"].values() for s in source]


def share_prepared(paths: Paths, url: str) -> None:
    """With an S3 store ``url``, put the published dataset's shards in the bucket too (the
    manifest itself is shared like any file), so a worker with no shared disk can read them."""
    if is_s3(url):
        local = verified_dir(paths.prepared.parent / "shards", paths.store / "shards")
        upload_shards(paths, url, published_shards(paths), local)
