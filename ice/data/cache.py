"""The decode cache: a source's decoded tensors saved as one ``.pt`` file (read back with
``weights_only=True``), keyed by the source's path, size and modification time, so a second
load of CIFAR-10 takes a fraction of a second. A damaged cache file is rebuilt, never trusted."""

from __future__ import annotations

import hashlib
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from ice.config import DataConfig

__all__ = ["cached", "channel_stats", "CACHE_FORMAT"]

CACHE_FORMAT = 2


def channel_stats(x: torch.Tensor) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """Per-channel mean and std of uint8 images, rounded to 6 places.

    float64 sums over chunks: exact enough and the same on every run."""
    c = x.shape[1]
    s = torch.zeros(c, dtype=torch.float64)
    s2 = torch.zeros(c, dtype=torch.float64)
    for chunk in x.split(4096):
        f = chunk.to(torch.float64) / 255.0
        s += f.sum(dim=(0, 2, 3))
        s2 += (f * f).sum(dim=(0, 2, 3))
    n = x.shape[0] * x.shape[2] * x.shape[3]
    mean = s / n
    std = (s2 / n - mean * mean).clamp_min(1e-12).sqrt()
    return tuple(round(float(v), 6) for v in mean), tuple(round(float(v), 6) for v in std)


def _source_key(spec: DataConfig) -> str:
    root = Path(spec.root or "data/raw")
    h = hashlib.sha256(f"{CACHE_FORMAT}|{spec.source}|{root.resolve()}".encode())
    if spec.image_size is not None:  # the decoded size is part of what is cached
        h.update(f"|size={spec.image_size}".encode())
    if root.is_file():
        st = root.stat()
        h.update(f"|{st.st_size}|{st.st_mtime_ns}".encode())
    elif root.is_dir():
        st = root.stat()
        h.update(f"|{st.st_mtime_ns}".encode())
    return h.hexdigest()[:16]


def cached(spec: DataConfig, decode: Callable[[], dict[str, Any]]) -> dict[str, Any]:
    """``decode()``'s tensors for ``spec``, from the cache when it holds them; saved atomically."""
    cache = Path(spec.cache_dir) / f"{spec.source}-{_source_key(spec)}.pt"
    if cache.exists():
        try:
            return torch.load(cache, weights_only=True, mmap=True)
        except Exception:  # a damaged cache is rebuilt, never trusted
            cache.unlink(missing_ok=True)
    raw = decode()
    raw["stats"] = [list(v) for v in channel_stats(raw["train_x"])]
    cache.parent.mkdir(parents=True, exist_ok=True)
    tmp = cache.with_suffix(f".tmp{os.getpid()}")
    try:
        torch.save(raw, tmp)
        os.replace(tmp, cache)
    finally:
        tmp.unlink(missing_ok=True)
    return raw
