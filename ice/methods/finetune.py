"""ICE's fine-tune, shared by the loop (:mod:`ice.methods.core`) and the freeze trial (:mod:`ice.methods.ice`)."""

from __future__ import annotations

import time
from collections.abc import Callable

import torch
from torch import nn

from ice.config import Params
from ice.data import Dataset
from ice.metrics import G, count_macs, train_macs
from ice.train import epoch_fractions, make_optimizer, train_epoch

__all__ = ["finetune"]


def finetune(
    model: nn.Module,
    data: Dataset,
    params: Params,
    *,
    lr: float,
    teacher: nn.Module | None,
    seed: int,
    epochs: float | None = None,
    lr_at_epoch: Callable[[float], float] | None = None,
    optimizer: torch.optim.Optimizer | None = None,
) -> dict[str, float]:
    """ICE's fine-tune: SGD (momentum, wd) with a fresh optimizer, CE + KD from the teacher.

    ``lr_at_epoch(e)`` sets the lr before each step, ``e`` the epochs trained so far in
    this fine-tune (the recovery's schedule); without it the lr stays ``lr``. ``optimizer``
    continues one that already holds state (the recovery's momentum) instead of a fresh one.
    Returns loss, accuracy, images, seconds and ``work`` (GMACs, with the teacher's
    forward pass; frozen layers skip their weight gradients).
    """
    cfg = params.prune
    epochs = cfg.finetune_epochs if epochs is None else epochs
    shape = data.input_shape()
    per_image = train_macs(model, shape) + (count_macs(teacher, shape) if teacher is not None and cfg.kd else 0)
    opt = optimizer if optimizer is not None else make_optimizer(model, lr, cfg.momentum, cfg.weight_decay)
    g = torch.Generator().manual_seed(seed)
    t0 = time.perf_counter()
    stats: dict[str, float] = {}
    images = 0.0
    for e, frac in enumerate(epoch_fractions(epochs)):
        lr_at = None
        if lr_at_epoch is not None:

            def lr_at(step: int, n: int, e: int = e, frac: float = frac) -> float:
                return lr_at_epoch(e + frac * step / max(n, 1))

        stats = train_epoch(
            model,
            data,
            opt,
            batch_size=cfg.batch_size,
            fraction=frac,
            augment=cfg.augment,
            generator=g,
            teacher=teacher if cfg.kd else None,
            temperature=cfg.kd_temperature,
            kd_t2=cfg.kd_t2,
            channels_last=params.train.channels_last,
            lr_at=lr_at,
            amp=params.train.amp,
        )
        images += stats["images"]
    stats["seconds"] = time.perf_counter() - t0
    stats["images"] = images
    stats["work"] = images * per_image / G
    return stats
