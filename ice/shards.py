"""Shard files: many image records in one file, read back by position with bounded memory.

A shard is ``MAGIC | count (u64) | offsets (u64 x count+1) | records``: record ``i`` is the
bytes ``offsets[i]:offsets[i+1]`` after the header. A record is either a decoded image
(``raw``: ``C*H*W`` uint8 bytes, for small images) or an encoded one (``jpeg``/``png``,
decoded when read). Shards are named by the sha256 of their bytes, so a shard's name says
what it holds and any copy of it can be verified.

:class:`ShardReader` reads records with ``os.pread`` on a few open files (no mapping, no
whole-file read), so its memory is the batch it returns plus the offsets of the open shards,
whatever the dataset's size. Encoded records decode in a thread pool (PIL releases the GIL
while it decodes). Where a shard's bytes come from is the caller's ``locate(sha256)``: a
local directory, or a download cache (``plumbing``), so this module stays storage-free.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import os
import struct
import threading
from collections import OrderedDict
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np
import torch

__all__ = ["MAGIC", "RAW_MAX_SIZE", "ShardWriter", "ShardReader", "record_kind", "encode_image", "shard_name"]

MAGIC = b"ICESHRD1"
RAW_MAX_SIZE = 64  # images up to this side are stored decoded; larger ones encoded
SHARD_BYTES = 64 << 20
JPEG_QUALITY = 95


def record_kind(shape: Sequence[int], setting: str = "auto") -> str:
    """``raw`` (decoded) for images up to :data:`RAW_MAX_SIZE` px, ``jpeg`` above (``png`` on request)."""
    if setting != "auto":
        return setting
    return "raw" if max(shape[-2:]) <= RAW_MAX_SIZE else "jpeg"


def shard_name(sha256: str) -> str:
    return f"{sha256}.shard"


def encode_image(hwc: np.ndarray, kind: str) -> bytes:
    """One ``[H, W, C]`` uint8 image as a record of ``kind``."""
    if kind == "raw":
        return np.ascontiguousarray(hwc.transpose(2, 0, 1)).tobytes()
    from PIL import Image

    img = Image.fromarray(hwc[:, :, 0] if hwc.shape[2] == 1 else hwc)
    buf = io.BytesIO()
    if kind == "jpeg":
        img.save(buf, format="JPEG", quality=JPEG_QUALITY)
    else:
        img.save(buf, format="PNG", compress_level=1)
    return buf.getvalue()


class ShardWriter:
    """Collect records and write them as shards of about ``shard_bytes`` into ``out_dir``.

    A shard is held in memory until it is full (so memory is one shard, not the dataset),
    written to a temporary name, and renamed to its sha256 once whole: a killed prepare
    leaves no half-written shard under a real name."""

    def __init__(self, out_dir: str | Path, shard_bytes: int = SHARD_BYTES) -> None:
        self.out = Path(out_dir)
        self.out.mkdir(parents=True, exist_ok=True)
        self.shard_bytes = shard_bytes
        self.records: list[bytes] = []
        self.size = 0
        self.shards: list[dict[str, Any]] = []

    def add(self, record: bytes) -> None:
        self.records.append(record)
        self.size += len(record)
        if self.size >= self.shard_bytes:
            self.flush()

    def flush(self) -> None:
        if not self.records:
            return
        offsets = np.zeros(len(self.records) + 1, dtype="<u8")
        offsets[1:] = np.cumsum([len(r) for r in self.records])
        head = MAGIC + struct.pack("<Q", len(self.records)) + offsets.tobytes()
        h = hashlib.sha256(head)
        tmp = self.out / f".pending-{os.getpid()}-{threading.get_ident()}"
        try:
            with open(tmp, "wb") as f:
                f.write(head)
                for r in self.records:
                    h.update(r)
                    f.write(r)
            sha = h.hexdigest()
            os.replace(tmp, self.out / shard_name(sha))
        finally:
            tmp.unlink(missing_ok=True)
        self.shards.append({"sha256": sha, "count": len(self.records), "bytes": len(head) + self.size})
        self.records, self.size = [], 0

    def close(self) -> list[dict[str, Any]]:
        """Write the last shard; the list of shards written, in order."""
        self.flush()
        return self.shards


class _Open:
    __slots__ = ("fd", "offsets", "base")

    def __init__(self, path: Path) -> None:
        self.fd = os.open(path, os.O_RDONLY)
        head = os.pread(self.fd, 16, 0)
        if len(head) < 16 or head[:8] != MAGIC:
            os.close(self.fd)
            raise ValueError(f"{path}: not a shard (bad header); rerun the prepare stage")
        (count,) = struct.unpack("<Q", head[8:16])
        raw = os.pread(self.fd, 8 * (count + 1), 16)
        self.offsets = np.frombuffer(raw, dtype="<u8")
        self.base = 16 + 8 * (count + 1)

    def record(self, i: int) -> bytes:
        a, b = int(self.offsets[i]), int(self.offsets[i + 1])
        return os.pread(self.fd, b - a, self.base + a)


class ShardReader:
    """Records ``0..N-1`` of a list of shards (in order), as images ``[C, H, W]``.

    ``locate(sha256)`` returns a local file holding that shard (verified by whoever fetched
    it). At most ``max_open`` shards are open at once; the least recently used closes first.
    """

    def __init__(
        self,
        shards: Sequence[dict[str, Any]],
        kind: str,
        shape: Sequence[int],
        locate: Callable[[str], Path],
        *,
        max_open: int = 32,
        threads: int | None = None,
    ) -> None:
        self.shards = [dict(s) for s in shards]
        self.kind = kind
        self.shape = tuple(int(v) for v in shape)  # C, H, W
        self.locate = locate
        self.starts = np.concatenate([[0], np.cumsum([int(s["count"]) for s in self.shards])]).astype(np.int64)
        self.max_open = max_open
        self._open: OrderedDict[int, _Open] = OrderedDict()
        self._lock = threading.Lock()
        self.threads = threads or min(8, os.cpu_count() or 1)
        self._pool: ThreadPoolExecutor | None = None

    def __len__(self) -> int:
        return int(self.starts[-1])

    @property
    def nbytes(self) -> int:
        return sum(int(s["bytes"]) for s in self.shards)

    def _shard(self, k: int) -> _Open:
        with self._lock:
            found = self._open.get(k)
            if found is not None:
                self._open.move_to_end(k)
                return found
            opened = _Open(self.locate(self.shards[k]["sha256"]))
            self._open[k] = opened
            while len(self._open) > self.max_open:
                _, old = self._open.popitem(last=False)
                os.close(old.fd)
            return opened

    def record(self, row: int) -> bytes:
        k = int(np.searchsorted(self.starts, row, side="right")) - 1
        if k < 0 or row >= len(self):
            raise IndexError(f"record {row} out of range (0..{len(self) - 1})")
        return self._shard(k).record(row - int(self.starts[k]))

    def _decode(self, data: bytes) -> np.ndarray:
        c, h, w = self.shape
        if self.kind == "raw":
            return np.frombuffer(data, dtype=np.uint8).reshape(c, h, w)
        from PIL import Image

        with Image.open(io.BytesIO(data)) as img:
            arr = np.asarray(img.convert("L" if c == 1 else "RGB"))
        return arr.reshape(h, w, c).transpose(2, 0, 1)

    def _one(self, row: int) -> np.ndarray:
        return self._decode(self.record(row))

    def read(self, rows: torch.Tensor | Sequence[int]) -> torch.Tensor:
        """uint8 ``[B, C, H, W]`` for records ``rows``, in that order."""
        rs = [int(r) for r in (rows.tolist() if isinstance(rows, torch.Tensor) else rows)]
        out = np.empty((len(rs), *self.shape), dtype=np.uint8)
        if self.kind == "raw" or self.threads <= 1 or len(rs) < 8:
            for i, r in enumerate(rs):
                out[i] = self._one(r)
        else:
            with self._lock:  # one pool, even when several tasks' threads read at once
                if self._pool is None:
                    self._pool = ThreadPoolExecutor(self.threads, thread_name_prefix="ice-decode")
                pool = self._pool
            for i, arr in enumerate(pool.map(self._one, rs)):
                out[i] = arr
        return torch.from_numpy(out)

    def close(self) -> None:
        with self._lock:
            for o in self._open.values():
                os.close(o.fd)
            self._open.clear()
        if self._pool is not None:
            self._pool.shutdown(wait=False)
            self._pool = None

    def __del__(self) -> None:  # pragma: no cover - interpreter shutdown order varies
        with contextlib.suppress(Exception):
            self.close()
