"""Datasets of uint8 images, in memory or in shards on disk, with batch-level augmentation.

``load_dataset(spec)`` returns a :class:`Dataset` whose ``train``, ``val`` and ``test``
splits hold ``uint8`` images ``[N, C, H, W]`` and ``int64`` labels. The validation
split is held out from train with a seed; the test split is never used for decisions.
A split is a :class:`Split` (one tensor in memory) or a :class:`ShardedSplit` (records in
shard files, :mod:`ice.shards`, read per batch): both answer ``len``, ``shape``,
``read(idx)``, ``take`` and ``sample``, and :func:`batches` gives the same batches from
either for the same seed.

By concern: :mod:`~ice.data.splits` (the split and dataset types), :mod:`~ice.data.sources`
(digits, CIFAR and ImageFolder, one dispatch), :mod:`~ice.data.cache` (the decode cache),
:mod:`~ice.data.load` (``load_dataset``), :mod:`~ice.data.prepared` (the prepared-data file
and the shard locator) and :mod:`~ice.data.batches` (batches and augmentation). The names
below are the public surface.
"""

from __future__ import annotations

from ice.data.batches import (
    augment_batch,
    augment_kind,
    batches,
    n_steps,
    normalize,
    probe_batch,
    read_ahead,
    resized_crop_batch,
)
from ice.data.load import load_dataset
from ice.data.prepared import PREPARED_FORMAT, SHARDED_FORMAT, load_prepared, save_prepared, verified_dir
from ice.data.sources import IMAGE_EXTS, ImageDecoder, class_lookup, decoded, list_members, stream_images
from ice.data.splits import AnySplit, Dataset, ShardedSplit, Split, holdout

__all__ = [
    "augment_kind",
    "resized_crop_batch",
    "Split",
    "ShardedSplit",
    "AnySplit",
    "Dataset",
    "load_dataset",
    "holdout",
    "save_prepared",
    "load_prepared",
    "verified_dir",
    "PREPARED_FORMAT",
    "SHARDED_FORMAT",
    "batches",
    "probe_batch",
    "read_ahead",
    "n_steps",
    "augment_batch",
    "normalize",
    "IMAGE_EXTS",
    "ImageDecoder",
    "class_lookup",
    "decoded",
    "list_members",
    "stream_images",
]
