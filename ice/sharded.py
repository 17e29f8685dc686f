"""Prepare a dataset into shards, streaming: one image decoded at a time, one shard in memory.

``write_sharded(spec, manifest, shard_dir)`` reads the source (an ImageFolder, or digits and
CIFAR through their in-memory loaders), writes its ``train`` and ``test`` images as shards
(:mod:`ice.shards`) and a small manifest that :func:`ice.data.load_prepared` reads: the
classes, normalisation statistics, the kind and shape of the records, the shard list, and
each split (train, the held-out val, test) as labels plus positions into the shards.

Peak memory is one shard being written (64 MiB by default) plus the labels, whatever the
number of images; the in-memory path (``save_prepared``) holds every decoded image several
times over. Same source and spec give the same shards and manifest, byte for byte.
"""

from __future__ import annotations

import hashlib
import io
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ice.config import DataConfig
from ice.data import SHARDED_FORMAT, Dataset, ShardedSplit, augment_kind, holdout, list_members, stream_images
from ice.shards import ShardWriter, encode_image, record_kind

__all__ = ["storage", "write_sharded", "MEMORY_LIMIT"]

MEMORY_LIMIT = 1 << 30  # data.format auto: shards once the decoded images would pass 1 GiB


def storage(spec: DataConfig) -> str:
    """``data.format`` resolved: ``memory`` or ``shards``. ``auto`` shards a folder whose decoded
    images would take more than :data:`MEMORY_LIMIT`; digits and CIFAR stay in memory."""
    if spec.format != "auto":
        return spec.format
    if spec.source != "folder" or spec.root is None or not Path(spec.root).is_dir():
        return "memory"
    files = list_members(spec)
    n = len(files["train"]) + len(files["test"])
    if n == 0:
        return "memory"
    if spec.image_size:
        h = w = spec.image_size
    else:
        from PIL import Image

        with Image.open(files["train"][0][1] if files["train"] else files["test"][0][1]) as img:
            w, h = img.size
    return "shards" if n * 3 * h * w > MEMORY_LIMIT else "memory"


class _Stats:
    """Per-channel mean and std of the training images from exact integer sums, one image at a
    time (memory: nothing kept). Rounded to 6 places, as ``ice.data.cache.channel_stats`` rounds."""

    def __init__(self) -> None:
        self.s: np.ndarray | None = None
        self.s2: np.ndarray | None = None
        self.pixels = 0

    def add(self, chw: np.ndarray) -> None:
        v = chw.reshape(chw.shape[0], -1).astype(np.int64)
        if self.s is None or self.s2 is None:
            self.s = np.zeros(chw.shape[0], dtype=np.int64)
            self.s2 = np.zeros(chw.shape[0], dtype=np.int64)
        self.s += v.sum(axis=1)
        self.s2 += (v * v).sum(axis=1)
        self.pixels += v.shape[1]

    def result(self) -> tuple[list[float], list[float]]:
        assert self.s is not None and self.s2 is not None
        mean = self.s.astype(np.float64) / (255.0 * self.pixels)
        sq = self.s2.astype(np.float64) / (255.0 * 255.0 * self.pixels)
        std = np.sqrt(np.clip(sq - mean * mean, 1e-12, None))
        return [round(float(v), 6) for v in mean], [round(float(v), 6) for v in std]


class _Written:
    """The shards of one source as they are written: per split, the shards and labels; the
    image shape and record kind (from the first image) and the train images' statistics."""

    def __init__(self, shard_dir: str | Path, shard_bytes: int, total: int, progress: Callable[[str], None] | None):
        self.shard_dir, self.shard_bytes, self.total, self.progress = shard_dir, shard_bytes, total, progress
        self.done = 0
        self.kind = ""
        self.shape: tuple[int, int, int] | None = None
        self.stats = _Stats()
        self.labels: dict[str, list[int]] = {}
        self.shards: dict[str, list[dict[str, Any]]] = {}

    def split(self, split: str, images: Iterable[tuple[np.ndarray, int]]) -> None:
        writer = ShardWriter(self.shard_dir, self.shard_bytes)
        self.labels[split] = []
        for hwc, label in images:
            chw = hwc.transpose(2, 0, 1)
            if self.shape is None:
                self.shape = (int(chw.shape[0]), int(chw.shape[1]), int(chw.shape[2]))
                self.kind = record_kind(self.shape)
            if split == "train":
                self.stats.add(chw)
            writer.add(encode_image(hwc, self.kind))
            self.labels[split].append(label)
            self.done += 1
            if self.progress is not None and (self.done % 5000 == 0 or self.done == self.total):
                self.progress(f"[prepare] {self.done}/{self.total} images -> {len(writer.shards) + 1} {split} shards")
        self.shards[split] = writer.close()


def _manifest(
    ds: Dataset, kind: str, shape: tuple[int, int, int], shards: dict[str, list[dict[str, Any]]]
) -> dict[str, Any]:
    """The manifest's contents: the dataset's description, its shards, and each split's rows."""
    payload: dict[str, Any] = {
        "format": SHARDED_FORMAT,
        "name": ds.name,
        "classes": list(ds.classes),
        "mean": list(ds.mean),
        "std": list(ds.std),
        "meta": dict(ds.meta),
        "kind": kind,
        "shape": list(shape),
        "sources": shards,
    }
    for name, source in (("train", "train"), ("val", "train"), ("test", "test")):
        s = getattr(ds, name)
        payload[name] = {"source": source, "rows": s.rows.contiguous(), "y": s.y.contiguous(), "index": s.positions()}
    return payload


def write_sharded(
    spec: DataConfig,
    manifest: str | Path,
    shard_dir: str | Path,
    *,
    shard_bytes: int | None = None,
    progress: Callable[[str], None] | None = None,
) -> dict[str, Any]:
    """Write ``spec``'s data as shards into ``shard_dir`` and its manifest (atomically) at
    ``manifest``; a summary: the manifest's sha256, split sizes, classes, shape, record kind,
    and the shards (sha256, count, bytes) in order. Shards hold about ``shard_bytes`` each
    (default :data:`ice.shards.SHARD_BYTES`, 64 MiB)."""
    from ice import shards as shard_files
    from ice.files import atomic_write_bytes

    shard_bytes = shard_bytes or shard_files.SHARD_BYTES
    classes, sources, sizes = stream_images(spec)
    out = _Written(shard_dir, shard_bytes, sum(sizes.values()), progress)
    for split in ("train", "test"):
        out.split(split, sources[split])
    assert out.shape is not None
    shape, kind, shards = out.shape, out.kind, out.shards
    mean, std = out.stats.result()
    ys = {s: torch.tensor(out.labels[s], dtype=torch.int64) for s in out.labels}
    whole = ShardedSplit(None, torch.arange(len(ys["train"])), ys["train"])
    train, val = holdout(whole, spec.val_fraction, spec.seed)
    test = ShardedSplit(None, torch.arange(len(ys["test"])), ys["test"], torch.arange(len(ys["test"])))
    meta: dict[str, Any] = {"source": spec.source}
    augment = augment_kind(spec.augmentation, shape[1:])
    if augment != "pad_crop":
        meta["augment"] = augment
    ds = Dataset(spec.source, train, val, test, classes, tuple(mean), tuple(std), meta)
    if spec.subset < 1.0:
        ds = ds.subset(spec.subset, seed=spec.seed)
    payload = _manifest(ds, kind, shape, shards)
    buf = io.BytesIO()
    torch.save(payload, buf)
    data = buf.getvalue()
    atomic_write_bytes(manifest, data)
    return {
        "sha256": hashlib.sha256(data).hexdigest(),
        "train": len(ds.train),
        "val": len(ds.val),
        "test": len(ds.test),
        "classes": len(classes),
        "shape": list(shape),
        "kind": kind,
        "shards": [s for split in ("train", "test") for s in shards[split]],
    }
