"""Pruning methods behind one entry point, :func:`run_pruning`.

- ``iterative``: the baseline; prune each unit in turn, always fine-tune at a fixed lr.
- ``prune_once``: prune every unit in one step, then recover (Torch-Pruning's recipe).
- ``ice``: ICE-Pruning; auto-tuned, fine-tunes only when accuracy drops, freezes the
  layers that barely move, and uses a pruning-aware lr.
- ``one_shot``, ``iterative_schedule``, ``agp``, ``one_cycle``, ``prune_while_training``: pruning
  during training, from scratch by default (``schedule.init``).
"""

from __future__ import annotations

from torch import nn

from ice.config import Params
from ice.data import Dataset
from ice.methods.core import Callbacks, PruningResult, iterate
from ice.methods.registry import METHODS, STEPWISE, TRAINING_METHODS, Method, spec
from ice.methods.training import train_with_pruning

__all__ = [
    "METHODS",
    "STEPWISE",
    "TRAINING_METHODS",
    "Method",
    "spec",
    "Callbacks",
    "PruningResult",
    "run_pruning",
]


def run_pruning(
    model: nn.Module | None, dataset: Dataset, method: str, params: Params, callbacks: Callbacks | None = None
) -> PruningResult:
    """Prune a copy of ``model`` with ``method``; the caller's model is left as it is.

    A training-time method with ``schedule.init: scratch`` trains a fresh ``model.arch``
    instead, and needs no ``model`` (None).

    For ``ice`` with auto-tuning on, the search runs first and its time is part of
    ``result.seconds``; its trials are in ``result.search``.
    """
    cb = callbacks or Callbacks()
    how = spec(method)
    if not how.stepwise:
        return train_with_pruning(model, dataset, method, params, cb)
    if model is None:
        raise ValueError(f"{method} prunes a pre-trained model; none was given")
    if how.searches:
        search: list[dict] = []
        search_cost = {"seconds": 0.0, "work": 0.0}
        hp = None
        if params.ice.autotune.enabled:
            from ice.methods.autotune import autotune

            hp, search, search_cost = autotune(model, dataset, params, cb)
            cb.log(f"[autotune] best: {hp} ({search_cost['seconds']:.1f}s, {search_cost['work']:.0f} GMACs)")
        result = iterate(model, dataset, method, params, hp=hp, callbacks=cb, search_cost=search_cost)
        result.search = search
        result.info.update(search_seconds=search_cost["seconds"], search_work=search_cost["work"])
        return result
    return iterate(model, dataset, method, params, callbacks=cb)
