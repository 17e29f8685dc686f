"""What a dataset is: splits of uint8 images ``[N, C, H, W]`` with int64 labels, in memory
(:class:`Split`) or in shard files (:class:`ShardedSplit`), and the :class:`Dataset` of three.

Both kinds answer ``len``, ``shape``, ``read(idx)``, ``take`` and ``sample``, so
:func:`ice.data.batches.batches` gives the same batches from either for the same seed.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch

__all__ = ["Split", "ShardedSplit", "AnySplit", "Dataset", "holdout"]


class _Sampled:
    y: torch.Tensor
    index: torch.Tensor | None

    def __len__(self) -> int:
        return int(self.y.shape[0])

    def positions(self) -> torch.Tensor:
        """Each item's position in the source split (for disjointness checks and manifests)."""
        return self.index if self.index is not None else torch.arange(len(self))

    def take(self, idx: torch.Tensor) -> Any:
        raise NotImplementedError

    def sample(self, n: int, generator: torch.Generator) -> Any:
        """``n`` items drawn at random with ``generator``, kept in their original order."""
        return self.take(torch.randperm(len(self), generator=generator)[:n].sort().values)


@dataclass
class Split(_Sampled):
    x: torch.Tensor  # uint8 [N, C, H, W]
    y: torch.Tensor  # int64 [N]
    index: torch.Tensor | None = None  # positions in the source split (for disjointness checks)

    prefetch = False  # reading is indexing a tensor: nothing to overlap

    @property
    def shape(self) -> tuple[int, int, int]:
        """One image's ``(C, H, W)``."""
        return int(self.x.shape[1]), int(self.x.shape[2]), int(self.x.shape[3])

    def read(self, idx: torch.Tensor) -> torch.Tensor:
        """uint8 images ``[B, C, H, W]`` at positions ``idx``."""
        return self.x[idx]

    def take(self, idx: torch.Tensor) -> Split:
        return Split(self.x[idx], self.y[idx], self.positions()[idx])


@dataclass
class ShardedSplit(_Sampled):
    """A split whose images stay in shard files: ``rows`` are its records in ``reader``.

    Views (``take``, ``sample``, the val holdout) share one reader and copy only positions
    and labels, so every view of a large dataset costs a few bytes per image."""

    reader: Any  # ice.shards.ShardReader
    rows: torch.Tensor  # int64 [N]: records of reader
    y: torch.Tensor  # int64 [N]
    index: torch.Tensor | None = None

    prefetch = True  # reads touch the disk (and decode): the next batch is read beside this one

    @property
    def shape(self) -> tuple[int, int, int]:
        c, h, w = self.reader.shape
        return int(c), int(h), int(w)

    def read(self, idx: torch.Tensor) -> torch.Tensor:
        return self.reader.read(self.rows[idx])

    def take(self, idx: torch.Tensor) -> ShardedSplit:
        return ShardedSplit(self.reader, self.rows[idx], self.y[idx], self.positions()[idx])


AnySplit = Split | ShardedSplit


@dataclass
class Dataset:
    name: str
    train: AnySplit
    val: AnySplit
    test: AnySplit
    classes: list[str]
    mean: tuple[float, ...]
    std: tuple[float, ...]
    meta: dict[str, Any] = field(default_factory=dict)

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    @property
    def in_channels(self) -> int:
        return self.train.shape[0]

    @property
    def augment(self) -> str:
        """The training augmentation these images take: ``pad_crop`` or ``resized_crop``."""
        return str(self.meta.get("augment", "pad_crop"))

    @property
    def image_size(self) -> tuple[int, int]:
        return self.train.shape[1], self.train.shape[2]

    def input_shape(self, batch: int = 1) -> tuple[int, int, int, int]:
        return (batch, self.in_channels, *self.image_size)

    def subset(self, fraction: float, seed: int = 0) -> Dataset:
        """A copy keeping ``fraction`` of train and val (test untouched), drawn with ``seed``."""
        g = torch.Generator().manual_seed(seed)
        return Dataset(
            self.name,
            _fraction(self.train, fraction, g),
            _fraction(self.val, fraction, g),
            self.test,
            self.classes,
            self.mean,
            self.std,
            {**self.meta, "subset": fraction},
        )


def _fraction(split: AnySplit, fraction: float, g: torch.Generator) -> AnySplit:
    if fraction >= 1.0:
        return split
    return split.sample(max(1, round(len(split) * fraction)), g)


def holdout(split: Any, fraction: float, seed: int) -> tuple[Any, Any]:
    """``(train, val)``: ``fraction`` of ``split`` held out with ``seed``, each in the original order.

    The reference checkpoint's split depends on this draw (a test pins it)."""
    perm = torch.randperm(len(split), generator=torch.Generator().manual_seed(seed))
    n_val = max(1, round(len(split) * fraction))
    return split.take(perm[n_val:].sort().values), split.take(perm[:n_val].sort().values)
