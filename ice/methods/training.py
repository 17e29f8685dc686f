"""Pruning during training: one_shot, iterative_schedule, agp, one_cycle (Hubens et al., 2021)
and prune_while_training (Roy et al., 2020).

Each is one training run of ``schedule.epochs`` epochs that prunes as it goes. By default
(``schedule.init: scratch``) it starts from a fresh model, seeded as pre-training's, with
the one-cycle lr the One-Cycle paper trains with: the papers' own setting, where pruning
is part of training and there is no pre-training and no fine-tuning. ``init: pretrained``
sparsifies the pre-trained model instead.

- ``weight`` granularity keeps unstructured magnitude masks (local or global) at the
  schedule's sparsity, re-applied after every optimizer step;
- ``filter`` granularity removes whole channels from the prunable units, for real, and
  carries the optimizer's momentum across, so the surviving weights keep training. Its
  final cut is ``prune.ratio`` of each unit's filters: the same model size ICE and the
  iterative baseline reach.

``prune_while_training`` removes a fixed share of filters every ``interval`` steps until
the cut is reached (by ``pwt_until`` of the training), with no retraining afterwards.

Cost is counted as for the step-wise methods: compute seconds, and work in GMACs (each
training image's forward and backward at the model's size at that step, every
evaluation, and the probe batches of data-driven criteria). Masked weights are still
multiplied on CPU, so the weight-granularity methods do dense work.
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
from ice.methods.registry import TRAINING_METHODS, spec
from ice.metrics import G, count_macs, count_params, sparsity, train_macs
from ice.names import DEFAULT_CRITERION
from ice.pruning import Masks, channel_importance, magnitude_masks, prunable_units, prune_channels
from ice.pruning.importance import criterion_spec
from ice.pruning.structured import n_to_remove, split_lowest
from ice.schedules import agp, iterative_schedule, one_cycle, one_shot
from ice.train import (
    LR_SCHEDULES,
    accuracy,
    epoch_fractions,
    make_optimizer,
    pick_device,
    remap_optimizer,
    train_epoch,
)

__all__ = [
    "TRAINING_METHODS",
    "granularity_of",
    "final_target",
    "schedule_for",
    "initial_model",
    "FilterPruner",
    "train_with_pruning",
]


def granularity_of(method: str, params: Params) -> str:
    """``filter`` for prune_while_training (it removes filters by definition), else ``schedule.granularity``."""
    return "filter" if spec(method).filters else params.schedule.granularity


def final_target(method: str, params: Params) -> float:
    """Where the method's schedule ends: ``prune.ratio`` of the filters (the step-wise methods'
    cut) at filter granularity, ``schedule.target`` of the weights at weight granularity."""
    return params.prune.ratio if granularity_of(method, params) == "filter" else params.schedule.target


def schedule_for(method: str, params: Params) -> Callable[[float], float]:
    """Target sparsity (or filter fraction) as a function of training progress, for a training-time method."""
    s = params.schedule
    end = final_target(method, params)
    schedules: dict[str, Callable[[float], float]] = {
        "one_shot": lambda t: one_shot(t, 0.0, end, s.one_shot_at),
        "iterative_schedule": lambda t: iterative_schedule(t, 0.0, end, s.n_steps, s.start, s.end),
        "agp": lambda t: agp(t, 0.0, end, s.start, s.end),
        "one_cycle": lambda t: one_cycle(t, 0.0, end, s.alpha, s.beta),
    }
    name = spec(method).schedule
    if name not in schedules:
        with_one = [m for m in TRAINING_METHODS if spec(m).schedule is not None]
        raise ValueError(f"no sparsity schedule for method {method!r}; choose one of {', '.join(with_one)}")
    return schedules[name]


def initial_model(model: nn.Module | None, data: Dataset, params: Params) -> nn.Module:
    """The model a training-time method starts from: for ``schedule.init: scratch`` a fresh
    ``model.arch`` seeded with ``seed`` (the very initialisation pre-training starts from), for
    ``pretrained`` a copy of ``model``."""
    if params.schedule.init == "scratch":
        from ice.models import seeded_model

        device = next(model.parameters()).device if model is not None else pick_device(params.train.device)
        return seeded_model(params.model.arch, data, params.seed).to(device)
    if model is None:
        raise ValueError("schedule.init = 'pretrained' needs the pre-trained model; none was given")
    return copy.deepcopy(model)


class FilterPruner:
    """Removes channels from every prunable unit up to a target fraction of its original width."""

    def __init__(
        self,
        model: nn.Module,
        criterion: str = DEFAULT_CRITERION,
        seed: int = 0,
        max_units: int | None = None,
        rounding: str = "round",
        round_to: int = 1,
    ):
        self.model = model
        self.rounding = rounding  # as prune.rounding, so a full cut matches ICE's steps channel for channel
        self.round_to = round_to
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
            width, orig, g = u.width(self.model), self.original[u.name], u.channel_groups
            if g > 1:  # a grouped conv's channels: the same count goes from every group
                k = g * (n_to_remove(orig // g, frac, self.rounding) - (orig - width) // g)
            else:
                k = n_to_remove(orig, frac, self.rounding, self.round_to) - (orig - width)
            k = min(k, width - g)
            if k <= 0:
                continue
            scores = channel_importance(self.model, u, self.criterion, data=data, seed=self.seed + self.events)
            _, keep = split_lowest(scores, k, g)
            changes = prune_channels(self.model, u, keep)
            if optimizer is not None:
                remap_optimizer(optimizer, changes)
            removed += k
        self.events += 1
        return removed


class _Cuts:
    """The pruning hook of one run, called after every optimizer step: which cut is due, how
    far it goes, and the work counted so far (the steps, the probe batches, the evaluations)."""

    def __init__(
        self,
        model: nn.Module,
        data: Dataset,
        method: str,
        params: Params,
        total: int,
        opt: torch.optim.Optimizer,
        batch_size: int,
    ) -> None:
        cfg = params.schedule
        self.model, self.cfg, self.total, self.opt = model, cfg, total, opt
        self.batch_size = batch_size  # the run's, for the work of one optimizer step
        self.shape = data.input_shape()
        self.probe = probe_batch(data, device=next(model.parameters()).device)  # for data-driven criteria
        self.granularity = granularity_of(method, params)
        self.interval_cuts = spec(method).schedule is None  # prune_while_training: equal cuts every `interval` steps
        self.criterion = cfg.pwt_criterion if self.interval_cuts else params.prune.criterion
        pr = params.prune
        self.filters = (
            FilterPruner(model, self.criterion, params.seed, pr.max_units, pr.rounding, pr.round_to)
            if self.granularity == "filter"
            else None
        )
        self.masks: Masks | None = None
        self.step, self.level, self.work = 0, 0.0, 0.0
        self.per_image = train_macs(model, self.shape) / G
        self.end = final_target(method, params)
        self.target_at: Callable[[float], float]
        if self.interval_cuts:
            self.until = max(1, math.ceil(cfg.pwt_until * total))  # the step by which the whole cut is made
            # equal shares every `interval` steps; whatever is left (a run shorter than one interval) at `until`
            self.per_event = self.end / max(1, self.until // cfg.interval)
            self.target_at = self._pwt_target
        else:
            self.target_at = schedule_for(method, params)

    def _pwt_target(self, t: float) -> float:
        return self.end if t * self.total >= self.until else min(self.end, self.level + self.per_event)

    def _due(self) -> bool:
        n = self.step
        if self.interval_cuts:
            return (n % self.cfg.interval == 0 or n == self.until) and self.level < self.end - 1e-9
        return n % self.cfg.update_every == 0 or n == self.total

    def __call__(self, _step: int, _loss: torch.Tensor) -> None:
        self.step += 1
        self.work += self.batch_size * self.per_image  # the step just taken, at the model's size before pruning
        if self._due():
            level = self.target_at(self.step / self.total)
            if level > self.level + 1e-12:
                self._cut(level)
        if self.masks is not None:
            self.masks.apply(self.model)  # pruned weights stay at zero after every update

    def _cut(self, level: float) -> None:
        if self.filters is not None:
            if (crit := criterion_spec(self.criterion)).needs_data:
                self.work += len(self.probe[0]) * count_macs(self.model, self.shape) * crit.passes / G
            self.filters.prune_to(level, self.opt, self.probe)
            self.per_image = train_macs(self.model, self.shape) / G
        else:
            self.masks = magnitude_masks(self.model, level, scope=self.cfg.scope)
        self.level = level


def _epoch_record(
    e: int, model: nn.Module, data: Dataset, params: Params, cuts: _Cuts, stats: dict[str, float], dense: int
) -> dict[str, Any]:
    """An epoch's row, after its validation (whose forward passes join the work)."""
    acc = accuracy(model, data, "val", batch_size=params.prune.eval_batch_size)["acc"]
    macs = count_macs(model, cuts.shape)
    cuts.work += len(data.val) * macs / G
    nonzero = count_params(model, nonzero=True)
    return {
        "step": e + 1,  # epochs count from 1, as pre-training's do
        "epoch": e + 1,
        "target": cuts.level,
        "params": nonzero,  # non-zero parameters, as every method reports them
        "params_dense": count_params(model),
        "sparsity": 1 - nonzero / dense,  # share of the dense model's parameters removed or zero
        "weight_sparsity": sparsity(model),
        "filters_removed": cuts.filters.fraction() if cuts.filters is not None else 0.0,
        "macs": macs,
        "acc_finetuned": acc,
        "lr": float(cuts.opt.param_groups[0]["lr"]),
        "train_loss": stats["loss"],
        "t_train": stats["seconds"],
        "work": cuts.work,
    }


def train_with_pruning(
    model: nn.Module | None, data: Dataset, method: str, params: Params, callbacks: Callbacks | None = None
) -> PruningResult:
    """Train while pruning with ``method``'s schedule, from scratch or from (a copy of) ``model``
    as ``schedule.init`` says; the caller's model is left as it is."""
    if method not in TRAINING_METHODS:
        raise ValueError(f"unknown training-time method {method!r}; choose one of {', '.join(TRAINING_METHODS)}")
    cb = callbacks or Callbacks()
    cfg = params.schedule
    t_start = time.perf_counter()
    model = initial_model(model, data, params)
    dense = count_params(model)
    # from scratch a method is a whole training run, with pre-training's settings
    hyper = params.train if cfg.init == "scratch" else params.prune
    fractions = epoch_fractions(cfg.epochs)
    per_epoch = [n_steps(len(data.train), hyper.batch_size, f) for f in fractions]
    total = sum(per_epoch)
    opt = make_optimizer(model, cfg.lr, hyper.momentum, hyper.weight_decay)
    g = torch.Generator().manual_seed(params.seed)
    cuts = _Cuts(model, data, method, params, total, opt, hyper.batch_size)
    epochs: list[dict[str, Any]] = []  # one record per epoch
    result = PruningResult(
        model=model, method=method, steps=epochs, info={"granularity": cuts.granularity, "init": cfg.init}
    )
    done = 0
    lr_policy = LR_SCHEDULES[cfg.lr_policy]
    for e, fraction in enumerate(fractions):
        stats = train_epoch(
            model,
            data,
            opt,
            batch_size=hyper.batch_size,
            fraction=fraction,
            augment=hyper.augment,
            generator=g,
            channels_last=params.train.channels_last,
            on_step=cuts,
            lr_at=lr_policy(cfg.lr, done, total),
            amp=params.train.amp,
        )
        # the last batch may be short: count the images that were really seen
        cuts.work += (stats["images"] - per_epoch[e] * hyper.batch_size) * cuts.per_image
        done += per_epoch[e]
        rec = _epoch_record(e, model, data, params, cuts, stats, dense)
        epochs.append(rec)
        if cb.on_step is not None:
            cb.on_step(rec)
        cb.log(
            f"[{method}] epoch {e + 1}/{len(fractions)}: target {cuts.level:.3f}, val acc {rec['acc_finetuned']:.2f}, "
            f"{rec['params']:,} non-zero params"
        )
    result.seconds = time.perf_counter() - t_start
    last = epochs[-1]
    result.info.update(
        {k: last[k] for k in ("params", "params_dense", "sparsity", "weight_sparsity", "filters_removed", "macs")}
        | {"work_gmacs": cuts.work, "params_original": dense, "epochs": cfg.epochs, "target": cuts.end}
    )
    return result
