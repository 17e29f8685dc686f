"""The four components of ICE-Pruning (Hu, Cano and Henderson, 2025), each small and pure.

1. :func:`should_finetune`: fine-tune iff the accuracy drop reaches ``thre`` points.
2. :func:`freeze_scores` / :func:`select_frozen` / :func:`freeze_trial`: freeze the convs
   that barely move during a trial fine-tune.
3. :func:`pruning_aware_lr`: a learning rate that falls as the network shrinks.
4. Auto-tuning lives in :mod:`ice.methods.autotune`.
"""

from __future__ import annotations

import copy
import math
from typing import Any, cast

import torch
from torch import nn

from ice.config import Params
from ice.data import Dataset
from ice.methods.finetune import finetune
from ice.names import DEFAULT_CRITERION
from ice.pruning import prune_unit
from ice.pruning.importance import criterion_spec

__all__ = [
    "should_finetune",
    "pruning_aware_lr",
    "freeze_scores",
    "select_frozen",
    "freeze_candidates",
    "freeze_trial",
    "ice_hparams",
    "HP_KEYS",
]

HP_KEYS = ("thre", "fr", "base", "delta", "p", "beta")


def should_finetune(acc_ref: float, acc_now: float, thre: float) -> bool:
    """Fine-tune if and only if ``acc_ref - acc_now >= thre`` (percentage points)."""
    return acc_ref - acc_now >= thre


def pruning_aware_lr(x: float, base: float, delta: float, p: float, beta: float) -> float:
    """lr = base - delta / (1 + (x / (2(1-p) - x))^beta).

    ``x`` is the remaining share of kernel>1 conv parameters (stem excluded). While x is
    near 1 the lr stays near ``base``; once x falls well below ``1 - p`` it settles at
    ``base - delta``. The midpoint of the drop sits at x = 1 - p.
    """
    denom = 2 * (1 - p) - x
    if denom <= 0:  # x beyond 2(1-p): the ratio is infinite, the lr is base
        return base
    ratio = x / denom
    # (ratio)^beta overflows a float for large ratios; it only needs to be "huge"
    log_term = beta * math.log(ratio) if ratio > 0 else -math.inf
    if log_term > 700:
        return base
    return base - delta / (1 + math.exp(log_term))


def freeze_scores(
    pre: dict[str, torch.Tensor], post: dict[str, torch.Tensor], orig: dict[str, torch.Tensor]
) -> dict[str, float]:
    """Per conv: | ||W_post||_1 - ||W_pre||_1 | / ||W_orig||_2."""
    return {
        name: float((post[name].abs().sum() - pre[name].abs().sum()).abs() / orig[name].norm().clamp_min(1e-12))
        for name in pre
    }


def select_frozen(scores: dict[str, float], fr: float) -> list[str]:
    """The ``ceil(fr * N)`` lowest-scoring convs, in model order (ties by order)."""
    n = math.ceil(fr * len(scores) - 1e-9)
    names = list(scores)
    ranked = sorted(range(len(names)), key=lambda i: (scores[names[i]], i))
    chosen = set(ranked[:n])
    return [names[i] for i in range(len(names)) if i in chosen]


def freeze_candidates(model: nn.Module, which: str = "units") -> list[str]:
    """The convs that may be frozen, in model order: those of the prunable units (a residual
    block's conv1 and conv2, as the reference code), or every conv (``all``)."""
    convs = [n for n, m in model.named_modules() if isinstance(m, nn.Conv2d)]
    if which == "all":
        return convs
    from ice.pruning import prunable_units

    members = {mem.name for u in prunable_units(model) for mem in u.members}
    return [n for n in convs if n in members]


def _conv_weights(model: nn.Module, names: list[str]) -> dict[str, torch.Tensor]:
    return {n: cast(nn.Conv2d, model.get_submodule(n)).weight.detach().clone() for n in names}


def freeze_trial(model: nn.Module, data: Dataset, params: Params, unit: Any) -> dict[str, Any]:
    """Prune ``unit`` on a copy, fine-tune it once at ``trial_lr`` (one fine-tune's worth of
    images, ``prune.finetune_epochs``, as the reference code's one pass over its loader) and
    score how far each candidate conv moved. Returns the scores and the work (GMACs).

    The scores do not depend on ICE's hyperparameters, so auto-tuning trials on the same
    model and data share one trial and differ only in how many convs they freeze.
    """

    trial = copy.deepcopy(model)
    names = freeze_candidates(trial, params.ice.freeze_candidates)
    orig = _conv_weights(trial, names)
    crit = params.prune.criterion if criterion_spec(params.prune.criterion).freeze_trial else DEFAULT_CRITERION
    prune_unit(
        trial,
        unit,
        params.prune.ratio,
        crit,
        seed=params.seed,
        input_shape=data.input_shape(),
        rounding=params.prune.rounding,
        round_to=params.prune.round_to,
    )
    pre = _conv_weights(trial, names)
    teacher = model.eval() if params.prune.kd else None
    stats = finetune(trial, data, params, lr=params.ice.trial_lr, teacher=teacher, seed=params.seed)
    post = _conv_weights(trial, names)
    return {"scores": freeze_scores(pre, post, orig), "work": stats["work"], "seconds": stats["seconds"]}


def ice_hparams(params: Params, override: dict[str, float] | None = None) -> dict[str, float]:
    """ICE's hyperparameters from params, with an optional override (e.g. the tuner's pick)."""
    override = override or {}
    for k in override:
        if k not in HP_KEYS:
            raise ValueError(f"unknown ICE hyperparameter {k!r}; allowed: {', '.join(HP_KEYS)}")

    def from_params(k: str) -> float:  # read only what the override leaves to params
        value: float = getattr(params.ice, k) if k in ("thre", "fr") else getattr(params.ice.lr, k)
        return value

    hp = {k: float(override[k]) if k in override else from_params(k) for k in HP_KEYS}
    if hp["delta"] >= hp["base"]:
        raise ValueError(f"delta {hp['delta']} must be below base {hp['base']} so the lr stays positive")
    return hp
