"""Channel importance criteria. Each maps a unit to one score per channel (low = remove).

:data:`CRITERIA` is the one registry: a criterion is its name in :data:`ice.names.Criterion`
and one :class:`CriterionSpec` here, which says everything the rest of the code asks of it
(whether it reads data, how many passes per probe image it costs, what scores a
Torch-Pruning group, whether the freeze trial may use it). Nothing else names a criterion;
``tests/unit/test_registry.py`` fails on a criterion's name used outside this module and
``ice/names.py``.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from ice.names import CRITERION_NAMES, DEFAULT_CRITERION
from ice.pruning.units import Unit

__all__ = ["CRITERIA", "CriterionSpec", "criterion_spec", "channel_importance"]


def _weight(model: nn.Module, unit: Unit) -> torch.Tensor:
    w = model.get_submodule(unit.conv).weight
    assert isinstance(w, torch.Tensor)
    return w.detach()


def _l1(model: nn.Module, unit: Unit, **_: Any) -> torch.Tensor:
    return _weight(model, unit).abs().flatten(1).sum(1)


def _l2(model: nn.Module, unit: Unit, **_: Any) -> torch.Tensor:
    return _weight(model, unit).flatten(1).norm(dim=1)


def _random(model: nn.Module, unit: Unit, seed: int = 0, **_: Any) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed + sum(map(ord, unit.name)))
    return torch.rand(unit.width(model), generator=g)


def _batches(data: Any) -> Iterable[tuple[torch.Tensor, torch.Tensor]]:
    if data is None:
        raise ValueError("this criterion needs data: an (x, y) batch or an iterable of batches")
    if isinstance(data, tuple) and len(data) == 2 and isinstance(data[0], torch.Tensor):
        return [data]
    return data


def _activation_node(model: nn.Module, unit: Unit) -> nn.Module:
    """The module whose output is the unit's post-normalisation activation."""
    bns = [m for m in unit.members if m.role == "bn"]
    return model.get_submodule(bns[0].name if bns else unit.conv)


def _collect(model: nn.Module, unit: Unit, data: Any, reduce: Callable[[torch.Tensor], torch.Tensor]) -> torch.Tensor:
    node = _activation_node(model, unit)
    acc: list[torch.Tensor] = []

    def hook(_m: nn.Module, _i: Any, out: torch.Tensor) -> None:
        a = torch.relu(out.detach())
        acc.append(a if a.dim() == 2 else reduce(a))  # a linear unit's output is already [N, C]

    was_training = model.training
    model.eval()
    handle = node.register_forward_hook(hook)
    try:
        with torch.no_grad():
            dev = next(model.parameters()).device
            for x, _y in _batches(data):
                model(x.to(dev))
    finally:
        handle.remove()
        model.train(was_training)
    return torch.cat(acc, 0)  # [N, C]


def _mean_activation(model: nn.Module, unit: Unit, data: Any = None, **_: Any) -> torch.Tensor:
    return _collect(model, unit, data, lambda a: a.mean(dim=(2, 3))).mean(0)


def _entropy(model: nn.Module, unit: Unit, data: Any = None, bins: int = 32, **_: Any) -> torch.Tensor:
    # Luo & Wu (2017): entropy of each channel's pooled activation over the samples
    pooled = _collect(model, unit, data, lambda a: a.mean(dim=(2, 3))).float()
    out = torch.empty(pooled.shape[1])
    for c in range(pooled.shape[1]):
        col = pooled[:, c]
        lo, hi = float(col.min()), float(col.max())
        if hi - lo < 1e-12:
            out[c] = 0.0
            continue
        p = torch.histc(col, bins=bins, min=lo, max=hi)
        p = p[p > 0] / p.sum()
        out[c] = float(-(p * p.log()).sum())
    return out


def _taylor(model: nn.Module, unit: Unit, data: Any = None, **_: Any) -> torch.Tensor:
    # Molchanov et al. (2017): |mean over positions of activation * gradient|, averaged over samples
    node = _activation_node(model, unit)
    store: dict[str, torch.Tensor] = {}
    total: torch.Tensor | None = None

    def hook(_m: nn.Module, _i: Any, out: torch.Tensor) -> None:
        out.retain_grad()
        store["a"] = out

    was_training = model.training
    model.eval()
    handle = node.register_forward_hook(hook)
    try:
        dev = next(model.parameters()).device
        for x, y in _batches(data):
            model.zero_grad(set_to_none=True)
            loss = nn.functional.cross_entropy(model(x.to(dev)), y.to(dev))
            loss.backward()
            a = store["a"]
            assert a.grad is not None
            s = (a * a.grad).mean(dim=(2, 3)).abs().sum(0).detach()
            total = s if total is None else total + s
    finally:
        handle.remove()
        model.zero_grad(set_to_none=True)
        model.train(was_training)
    assert total is not None
    return total


def channel_importance(
    model: nn.Module, unit: Unit, criterion: str = DEFAULT_CRITERION, data: Any = None, seed: int = 0
) -> torch.Tensor:
    """One score per output channel of ``unit``; the lowest are removed first."""
    spec = criterion_spec(criterion)
    if spec.needs_data and data is None:
        raise ValueError(f"criterion {criterion!r} needs data (an (x, y) batch or an iterable of batches)")
    if unit.engine == "graph" and spec.group is not None:
        return spec.group(model, unit, data=data).detach().cpu().float()
    return spec.score(model, unit, data=data, seed=seed).detach().cpu()


def _group_magnitude(p: int) -> Callable[..., torch.Tensor]:
    def score(model: nn.Module, unit: Unit, **_: Any) -> torch.Tensor:
        import torch_pruning as tp

        from ice.pruning.graph import graph_group

        imp = tp.importance.GroupMagnitudeImportance(p=p, group_reduction="mean", normalizer=None)
        return imp(graph_group(model, unit.name))

    return score


def _group_taylor(model: nn.Module, unit: Unit, data: Any = None, **_: Any) -> torch.Tensor:
    import torch_pruning as tp

    from ice.pruning.graph import graph_group

    was_training = model.training
    model.eval()
    try:
        model.zero_grad(set_to_none=True)
        dev = next(model.parameters()).device
        for x, y in _batches(data):
            nn.functional.cross_entropy(model(x.to(dev)), y.to(dev)).backward()
        imp = tp.importance.GroupTaylorImportance(group_reduction="mean", normalizer=None)
        return imp(graph_group(model, unit.name))
    finally:
        model.zero_grad(set_to_none=True)
        model.train(was_training)


@dataclass(frozen=True)
class CriterionSpec:
    """What one criterion is to the rest of the code."""

    score: Callable[..., torch.Tensor]  # (model, unit, data=, seed=) -> one score per channel
    # forward passes per probe image it costs (0: weights only; a backward counts as two more)
    passes: int = 0
    # on Torch-Pruning groups (graph-engine units): the group importance (mean over every layer
    # of the group); None scores the root layer's output as on any unit
    group: Callable[..., torch.Tensor] | None = None

    @property
    def needs_data(self) -> bool:
        return self.passes > 0

    @property
    def freeze_trial(self) -> bool:
        """Whether ICE's freeze trial may score with it (the trial reads no data: a data criterion
        falls back to the default criterion there)."""
        return not self.needs_data


CRITERIA: dict[str, CriterionSpec] = {
    "l1": CriterionSpec(_l1, group=_group_magnitude(1)),
    "l2": CriterionSpec(_l2, group=_group_magnitude(2)),
    "random": CriterionSpec(_random),
    "mean_activation": CriterionSpec(_mean_activation, passes=1),
    "entropy": CriterionSpec(_entropy, passes=1),
    "taylor": CriterionSpec(_taylor, passes=3, group=_group_taylor),
}
assert tuple(CRITERIA) == CRITERION_NAMES, "ice.names.Criterion and CRITERIA must list the same criteria"


def criterion_spec(name: str) -> CriterionSpec:
    if name not in CRITERIA:
        raise ValueError(f"unknown criterion {name!r}; choose one of {', '.join(CRITERIA)}")
    return CRITERIA[name]
