"""Structured removal that really shrinks the layers."""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import nn

from ice.names import DEFAULT_CRITERION
from ice.pruning.importance import channel_importance
from ice.pruning.units import Unit

__all__ = ["prune_unit", "prune_channels"]


Change = tuple[torch.Tensor, nn.Parameter, int, torch.Tensor]
"""(old parameter, new parameter, pruned dimension, kept indices)."""


def _keep_param(p: torch.Tensor, idx: torch.Tensor, dim: int, changes: list[Change]) -> nn.Parameter:
    # requires_grad carries over, so frozen layers stay frozen through surgery
    new = nn.Parameter(p.data.index_select(dim, idx.to(p.device)).clone(), requires_grad=p.requires_grad)
    changes.append((p, new, dim, idx))
    return new


def _keep_buffer(b: torch.Tensor, idx: torch.Tensor) -> torch.Tensor:
    return b.index_select(0, idx.to(b.device)).clone()


@torch.no_grad()
def prune_channels(model: nn.Module, unit: Unit, keep: torch.Tensor) -> list[Change]:
    """Keep only the channels ``keep`` of ``unit`` in every member.

    Returns every replaced parameter as ``(old, new, dim, kept indices)``, so a caller
    can carry optimizer state across (see ``ice.train.remap_optimizer``).
    """
    keep = keep.sort().values
    if unit.engine == "graph":
        from ice.pruning.graph import graph_prune

        width = unit.width(model)
        kept = set(keep.tolist())
        return graph_prune(model, unit, torch.tensor([i for i in range(width) if i not in kept], dtype=torch.long))
    changes: list[Change] = []
    for member in unit.members:
        m = model.get_submodule(member.name)
        if member.role == "out":
            assert isinstance(m, nn.Conv2d | nn.Linear)
            m.weight = _keep_param(m.weight, keep, 0, changes)
            if m.bias is not None:
                m.bias = _keep_param(m.bias, keep, 0, changes)
            if isinstance(m, nn.Conv2d):
                m.out_channels = len(keep)
            else:
                m.out_features = len(keep)
        elif member.role == "in":
            if isinstance(m, nn.Conv2d):
                if m.groups != 1:
                    raise ValueError(f"{member.name}: cannot cut input channels of a grouped conv")
                m.weight = _keep_param(m.weight, keep, 1, changes)
                m.in_channels = len(keep)
            elif isinstance(m, nn.Linear):
                m.weight = _keep_param(m.weight, keep, 1, changes)
                m.in_features = len(keep)
        elif member.role == "dw":
            assert isinstance(m, nn.Conv2d) and m.groups == m.in_channels
            m.weight = _keep_param(m.weight, keep, 0, changes)
            if m.bias is not None:
                m.bias = _keep_param(m.bias, keep, 0, changes)
            m.in_channels = m.out_channels = m.groups = len(keep)
        elif member.role == "bn":
            assert isinstance(m, nn.BatchNorm2d)
            if m.affine:
                m.weight = _keep_param(m.weight, keep, 0, changes)
                m.bias = _keep_param(m.bias, keep, 0, changes)
            if m.running_mean is not None:
                m.running_mean = _keep_buffer(m.running_mean, keep)
                m.running_var = _keep_buffer(m.running_var, keep)  # type: ignore[arg-type]
            m.num_features = len(keep)
        else:
            raise ValueError(f"unknown member role {member.role!r}")
    return changes


def split_lowest(scores: torch.Tensor, k: int, groups: int = 1) -> tuple[torch.Tensor, torch.Tensor]:
    """(removed, kept) channel indices, each sorted: the ``k`` lowest scores go.

    A stable sort breaks ties by channel index, so the result is deterministic. With
    ``groups`` > 1 (a grouped conv's channels), the same local positions go in every
    group, ranked by their mean score over the groups; ``k`` must be a multiple of it.
    """
    if groups > 1:
        size = scores.numel() // groups
        local = scores.double().cpu().view(groups, size).mean(0)
        gone, _ = split_lowest(local, k // groups)
        removed = torch.cat([gone + g * size for g in range(groups)])
        mask = torch.ones(scores.numel(), dtype=torch.bool)
        mask[removed] = False
        return removed.sort().values, torch.arange(scores.numel())[mask]
    order = torch.sort(scores.double().cpu(), stable=True).indices
    return order[:k].sort().values, order[k:].sort().values


def n_to_remove(width: int, ratio: float, rounding: str = "round", round_to: int = 1) -> int:
    """Channels removed at ``ratio`` (``ceil`` as the ICE reference code, or ``round``); one always stays.

    With ``round_to`` > 1 the width kept is the nearest multiple of it (at least one multiple),
    so that conv kernels see aligned channel counts; a width already below it is left alone.
    """
    exact = width * ratio
    k = math.ceil(exact - 1e-9) if rounding == "ceil" else int(round(exact))
    if round_to > 1 and width > round_to:
        kept = max(round_to, int(round((width - k) / round_to)) * round_to)
        k = max(0, width - kept)
    return min(width - 1, k)


def prune_unit(
    model: nn.Module,
    unit: Unit,
    ratio: float,
    criterion: str = DEFAULT_CRITERION,
    data: Any = None,
    *,
    seed: int = 0,
    input_shape: tuple[int, ...] | None = None,
    rounding: str = "round",
    round_to: int = 1,
) -> dict[str, Any]:
    """Remove the fraction ``ratio`` of ``unit``'s channels with the lowest importance.

    The layers really shrink. Returns widths, params and MACs before and after, and the
    removed channel indices (and, under ``changes``, the replaced parameters for
    :func:`ice.train.remap_optimizer`). ``data`` (an ``(x, y)`` batch or an iterable of them) is
    needed by ``mean_activation``, ``entropy`` and ``taylor``.
    """
    from ice.metrics import count_macs, count_params

    if not 0.0 <= ratio < 1.0:
        raise ValueError(f"ratio must be in [0, 1), got {ratio}")
    shape = input_shape or _input_shape(model, data)
    params_before = count_params(model)
    macs_before = count_macs(model, shape)
    width = unit.width(model)
    g = unit.channel_groups
    k = g * n_to_remove(width // g, ratio, rounding) if g > 1 else n_to_remove(width, ratio, rounding, round_to)
    removed = torch.empty(0, dtype=torch.long)
    changes: list[Change] = []
    if k > 0:
        scores = channel_importance(model, unit, criterion, data=data, seed=seed)
        removed, keep = split_lowest(scores, k, g)
        changes = prune_channels(model, unit, keep)
    return {
        "unit": unit.name,
        "ratio": ratio,
        "criterion": criterion,
        "width_before": width,
        "width_after": width - k,
        "removed": removed.tolist(),
        "params_before": params_before,
        "params_after": count_params(model),
        "macs_before": macs_before,
        "macs_after": count_macs(model, shape),
        "changes": changes,
    }


def _input_shape(model: nn.Module, data: Any) -> tuple[int, ...]:
    if isinstance(data, tuple | list) and data and isinstance(data[0], torch.Tensor):
        return (1, *data[0].shape[1:])
    spec = getattr(model, "ice_spec", None) or {}
    size = spec.get("image_size", 32)
    h, w = (size, size) if isinstance(size, int) else size
    return (1, spec.get("in_channels", 3), h, w)
