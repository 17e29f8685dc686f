"""Pruning during training: one_shot, agp, one_cycle (Hubens et al., 2021) and
prune_while_training (Roy et al., 2020).

Each trains from the given (pretrained) model for ``schedule.epochs`` epochs with a
cosine learning rate, pruning as it goes:

- ``weight`` granularity keeps unstructured magnitude masks (local or global) at the
  schedule's sparsity, re-applied after every optimizer step;
- ``filter`` granularity removes whole channels from the prunable units, for real,
  and carries the optimizer's momentum across, so the surviving weights keep training.

``prune_while_training`` removes a fixed share of filters every ``interval`` steps
until ``target`` of them are gone, with no retraining afterwards.
"""

from __future__ import annotations

import copy
import math
import time
from collections.abc import Callable
from typing import Any

import torch
from torch import nn

from ice.config import Params
from ice.data import Dataset, n_steps, probe_batch
from ice.methods.core import Callbacks, PruningResult
from ice.metrics import count_macs, count_params, sparsity
from ice.pruning import Masks, channel_importance, magnitude_masks, prunable_units, prune_channels
from ice.pruning.structured import n_to_remove, split_lowest
from ice.schedules import agp, one_cycle, one_shot
from ice.train import (
    cosine_lr,
    epoch_fractions,
    evaluate,
    make_optimizer,
    remap_optimizer,
    train_epoch,
)

__all__ = ["TRAINING_METHODS", "schedule_for", "FilterPruner", "train_with_pruning"]

TRAINING_METHODS = ("one_shot", "agp", "one_cycle", "prune_while_training")


def schedule_for(method: str, params: Params) -> Callable[[float], float]:
    """Target sparsity as a function of progress, for a training-time method."""
    s = params.schedule
    if method == "one_shot":
        return lambda t: one_shot(t, 0.0, s.target, s.one_shot_at)
    if method == "agp":
        return lambda t: agp(t, 0.0, s.target, s.start, s.end)
    if method == "one_cycle":
        return lambda t: one_cycle(t, 0.0, s.target, s.alpha, s.beta)
    raise ValueError(f"no sparsity schedule for method {method!r}; choose one of one_shot, agp, one_cycle")


class FilterPruner:
    """Removes channels from every prunable unit up to a target fraction of its original width."""

    def __init__(self, model: nn.Module, criterion: str = "l1", seed: int = 0, max_units: int | None = None):
        self.model = model
        self.criterion = criterion
        self.seed = seed
        units = prunable_units(model)
        self.units = units[:max_units] if max_units else units
        self.original = {u.name: u.width(model) for u in self.units}
        self.events = 0

    def fraction(self) -> float:
        """Share of the units' original filters removed so far."""
        cur = sum(u.width(self.model) for u in self.units)
        orig = sum(self.original.values())
        return 1 - cur / orig if orig else 0.0

    def prune_to(self, frac: float, optimizer: torch.optim.Optimizer | None, data: Any = None) -> int:
        removed = 0
        for u in self.units:
            width = u.width(self.model)
            k = n_to_remove(self.original[u.name], frac) - (self.original[u.name] - width)
            k = min(k, width - 1)
            if k <= 0:
                continue
            scores = channel_importance(self.model, u, self.criterion, data=data, seed=self.seed + self.events)
            _, keep = split_lowest(scores, k)
            changes = prune_channels(self.model, u, keep)
            if optimizer is not None:
                remap_optimizer(optimizer, changes)
            removed += k
        self.events += 1
        return removed


def train_with_pruning(
    model: nn.Module, data: Dataset, method: str, params: Params, callbacks: Callbacks | None = None
) -> PruningResult:
    """Train ``model`` (a copy) while pruning it with ``method``'s schedule."""
    if method not in TRAINING_METHODS:
        raise ValueError(f"unknown training-time method {method!r}; choose one of {', '.join(TRAINING_METHODS)}")
    cb = callbacks or Callbacks()
    cfg = params.schedule
    t_start = time.perf_counter()
    model = copy.deepcopy(model)
    device = next(model.parameters()).device
    shape = data.input_shape()
    fractions = epoch_fractions(cfg.epochs)
    n_epochs = len(fractions)
    per_epoch = [n_steps(len(data.train), params.prune.batch_size, f) for f in fractions]
    total = sum(per_epoch)
    opt = make_optimizer(model, cfg.lr, params.prune.momentum, params.prune.weight_decay)
    g = torch.Generator().manual_seed(params.seed)
    probe = probe_batch(data, device=device)  # for data-driven criteria

    granularity = "filter" if method == "prune_while_training" else cfg.granularity
    filters = (
        FilterPruner(
            model,
            cfg.pwt_criterion if method == "prune_while_training" else params.prune.criterion,
            params.seed,
            params.prune.max_units,
        )
        if granularity == "filter"
        else None
    )
    masks: Masks | None = None
    state = {"global": 0, "level": 0.0}
    if method == "prune_while_training":
        n_events = max(1, math.floor(cfg.pwt_until * total / cfg.interval))
        per_event = cfg.target / n_events
        target_at: Callable[[float], float] = lambda _t: min(cfg.target, state["level"] + per_event)  # noqa: E731
    else:
        target_at = schedule_for(method, params)

    def on_step(_step: int, _loss: float) -> None:
        nonlocal masks
        state["global"] += 1
        gstep = state["global"]
        t = gstep / total
        if method == "prune_while_training":
            due = gstep % cfg.interval == 0 and state["level"] < cfg.target - 1e-9
        else:
            due = gstep % cfg.update_every == 0 or gstep == total
        if due:
            level = target_at(t)
            if level > state["level"] + 1e-12:
                if filters is not None:
                    filters.prune_to(level, opt, probe)
                else:
                    masks = magnitude_masks(model, level, scope=cfg.scope)
                state["level"] = level
        if masks is not None:
            masks.apply(model)  # pruned weights stay at zero after every update

    result = PruningResult(model=model, method=method, info={"granularity": granularity})
    done = 0
    for e in range(n_epochs):
        stats = train_epoch(
            model,
            data,
            opt,
            batch_size=params.prune.batch_size,
            fraction=fractions[e],
            augment=params.prune.augment,
            generator=g,
            channels_last=params.train.channels_last,
            on_step=on_step,
            lr_at=cosine_lr(cfg.lr, done, total),
        )
        done += per_epoch[e]
        acc = evaluate(model, data, "val", batch_size=params.prune.eval_batch_size)["acc"]
        rec = {
            "step": e,
            "epoch": e + 1,
            "target": state["level"],
            "sparsity": sparsity(model),
            "filters_removed": filters.fraction() if filters is not None else 0.0,
            "params": count_params(model),
            "params_nonzero": count_params(model, nonzero=True),
            "macs": count_macs(model, shape),
            "acc_finetuned": acc,
            "train_loss": stats["loss"],
            "t_train": stats["seconds"],
        }
        result.steps.append(rec)
        if cb.on_step is not None:
            cb.on_step(rec)
        cb.log(f"[{method}] epoch {e + 1}/{n_epochs}: target {state['level']:.3f}, val acc {acc:.2f}")
    result.seconds = time.perf_counter() - t_start
    result.info.update({"params": count_params(model), "macs": count_macs(model, shape), "sparsity": sparsity(model)})
    return result
