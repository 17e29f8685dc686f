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
    device = next(model.parameters()).device
    shape = data.input_shape()
    dense = count_params(model)
    # from scratch a method is a whole training run, with pre-training's settings
    hyper = params.train if cfg.init == "scratch" else params.prune
    batch_size = hyper.batch_size
    fractions = epoch_fractions(cfg.epochs)
    n_epochs = len(fractions)
    per_epoch = [n_steps(len(data.train), batch_size, f) for f in fractions]
    total = sum(per_epoch)
    opt = make_optimizer(model, cfg.lr, hyper.momentum, hyper.weight_decay)
    g = torch.Generator().manual_seed(params.seed)
    probe = probe_batch(data, device=device)  # for data-driven criteria

    granularity = granularity_of(method, params)
    interval_cuts = spec(method).schedule is None  # prune_while_training: equal cuts every `interval` steps
    criterion = cfg.pwt_criterion if interval_cuts else params.prune.criterion
    filters = (
        FilterPruner(
            model, criterion, params.seed, params.prune.max_units, params.prune.rounding, params.prune.round_to
        )
        if granularity == "filter"
        else None
    )
    masks: Masks | None = None
    state: dict[str, Any] = {"global": 0, "level": 0.0, "work": 0.0, "per_image": train_macs(model, shape) / G}
    end = final_target(method, params)
    if interval_cuts:
        until = max(1, math.ceil(cfg.pwt_until * total))  # the step by which the whole cut is made
        n_events = max(1, until // cfg.interval)
        per_event = end / n_events
        # equal shares every `interval` steps; whatever is left (a run shorter than one interval) at `until`

        def pwt_target(t: float) -> float:
            return end if t * total >= until else min(end, state["level"] + per_event)

        target_at: Callable[[float], float] = pwt_target
    else:
        target_at = schedule_for(method, params)

    def on_step(_step: int, _loss: torch.Tensor) -> None:
        nonlocal masks
        state["global"] += 1
        state["work"] += batch_size * state["per_image"]  # the step just taken, at the model's size before pruning
        gstep = state["global"]
        t = gstep / total
        if interval_cuts:
            due = (gstep % cfg.interval == 0 or gstep == until) and state["level"] < end - 1e-9
        else:
            due = gstep % cfg.update_every == 0 or gstep == total
        if due:
            level = target_at(t)
            if level > state["level"] + 1e-12:
                if filters is not None:
                    if (crit := criterion_spec(criterion)).needs_data:
                        state["work"] += len(probe[0]) * count_macs(model, shape) * crit.passes / G
                    filters.prune_to(level, opt, probe)
                    state["per_image"] = train_macs(model, shape) / G
                else:
                    masks = magnitude_masks(model, level, scope=cfg.scope)
                state["level"] = level
        if masks is not None:
            masks.apply(model)  # pruned weights stay at zero after every update

    result = PruningResult(model=model, method=method, info={"granularity": granularity, "init": cfg.init})
    done = 0
    lr_policy = LR_SCHEDULES[cfg.lr_policy]
    for e in range(n_epochs):
        stats = train_epoch(
            model,
            data,
            opt,
            batch_size=batch_size,
            fraction=fractions[e],
            augment=hyper.augment,
            generator=g,
            channels_last=params.train.channels_last,
            on_step=on_step,
            lr_at=lr_policy(cfg.lr, done, total),
            amp=params.train.amp,
        )
        # the last batch may be short: count the images that were really seen
        state["work"] += (stats["images"] - per_epoch[e] * batch_size) * state["per_image"]
        done += per_epoch[e]
        acc = accuracy(model, data, "val", batch_size=params.prune.eval_batch_size)["acc"]
        macs = count_macs(model, shape)
        state["work"] += len(data.val) * macs / G
        nonzero = count_params(model, nonzero=True)
        rec = {
            "step": e + 1,  # epochs count from 1, as pre-training's do
            "epoch": e + 1,
            "target": state["level"],
            "params": nonzero,  # non-zero parameters, as every method reports them
            "params_dense": count_params(model),
            "sparsity": 1 - nonzero / dense,  # share of the dense model's parameters removed or zero
            "weight_sparsity": sparsity(model),
            "filters_removed": filters.fraction() if filters is not None else 0.0,
            "macs": macs,
            "acc_finetuned": acc,
            "lr": float(opt.param_groups[0]["lr"]),
            "train_loss": stats["loss"],
            "t_train": stats["seconds"],
            "work": state["work"],
        }
        result.steps.append(rec)
        if cb.on_step is not None:
            cb.on_step(rec)
        cb.log(
            f"[{method}] epoch {e + 1}/{n_epochs}: target {state['level']:.3f}, val acc {acc:.2f}, "
            f"{nonzero:,} non-zero params"
        )
    result.seconds = time.perf_counter() - t_start
    last = result.steps[-1]
    result.info.update(
        {k: last[k] for k in ("params", "params_dense", "sparsity", "weight_sparsity", "filters_removed", "macs")}
        | {"work_gmacs": state["work"], "params_original": dense, "epochs": cfg.epochs, "target": end}
    )
    return result
