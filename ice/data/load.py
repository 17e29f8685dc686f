"""``load_dataset(spec)``: a source's images as a :class:`~ice.data.splits.Dataset`, with the
validation split held out from train with a seed (the test split is never used for decisions)."""

from __future__ import annotations

from typing import Any

import torch

from ice.config import DataConfig
from ice.data.batches import augment_kind
from ice.data.cache import channel_stats
from ice.data.sources import decoded
from ice.data.splits import Dataset, Split, holdout

__all__ = ["load_dataset"]


def load_dataset(spec: DataConfig | dict[str, Any] | None = None, **overrides: Any) -> Dataset:
    """Load a dataset from a :class:`~ice.config.DataConfig` (or a dict of its fields)."""
    if spec is None:
        spec = DataConfig(**overrides)
    elif isinstance(spec, dict):
        spec = DataConfig(**{**spec, **overrides})
    elif overrides:
        spec = spec.model_copy(update=overrides)
    raw = decoded(spec)
    kind = augment_kind(spec.augmentation, tuple(raw["train_x"].shape[2:]))

    train, val = holdout(Split(raw["train_x"], raw["train_y"]), spec.val_fraction, spec.seed)
    test = Split(raw["test_x"], raw["test_y"], torch.arange(len(raw["test_y"])))
    # normalisation statistics of the whole training set (train + val), as is customary;
    # computed once at decode time and cached with the tensors
    mean, std = raw["stats"] if "stats" in raw else channel_stats(raw["train_x"])
    mean, std = tuple(float(v) for v in mean), tuple(float(v) for v in std)
    meta: dict[str, Any] = {"source": spec.source}
    if kind != "pad_crop":  # the default is not written, so existing prepared data keeps its bytes
        meta["augment"] = kind
    ds = Dataset(spec.source, train, val, test, list(raw["classes"]), mean, std, meta)
    if spec.subset < 1.0:
        ds = ds.subset(spec.subset, seed=spec.seed)
    return ds
