"""Unstructured magnitude pruning with masks, local (per layer) or global."""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import nn

__all__ = ["Masks", "magnitude_masks", "prunable_weights"]


def prunable_weights(model: nn.Module) -> dict[str, torch.Tensor]:
    """Conv and linear weights, the tensors unstructured pruning applies to."""
    return {
        f"{n}.weight" if n else "weight": m.weight
        for n, m in model.named_modules()
        if isinstance(m, nn.Conv2d | nn.Linear)
    }


@dataclass
class Masks:
    """Boolean keep-masks by parameter name. ``apply`` zeroes the pruned weights in place."""

    masks: dict[str, torch.Tensor] = field(default_factory=dict)

    @torch.no_grad()
    def apply(self, model: nn.Module) -> None:
        params = dict(model.named_parameters())
        for name, mask in self.masks.items():
            p = params[name]
            p.mul_(mask.to(p.device, p.dtype))

    def sparsity(self) -> float:
        total = sum(m.numel() for m in self.masks.values())
        zeros = sum(int((~m).sum()) for m in self.masks.values())
        return zeros / total if total else 0.0


def _lowest(scores: torch.Tensor, k: int) -> torch.Tensor:
    """Keep-mask removing exactly the ``k`` lowest entries (ties broken by position)."""
    keep = torch.ones(scores.numel(), dtype=torch.bool)
    if k > 0:
        idx = torch.sort(scores.flatten().double().cpu(), stable=True).indices[:k]
        keep[idx] = False
    return keep.view(scores.shape)


@torch.no_grad()
def magnitude_masks(model: nn.Module, sparsity: float, scope: str = "local", apply: bool = True) -> Masks:
    """Masks removing exactly ``round(sparsity * n)`` of the smallest-magnitude weights.

    ``local`` prunes that fraction of every layer; ``global`` ranks all layers together.
    Already-zero weights count as the smallest, so masks only grow as sparsity rises.
    """
    if not 0.0 <= sparsity < 1.0:
        raise ValueError(f"sparsity must be in [0, 1), got {sparsity}")
    weights = prunable_weights(model)
    masks: dict[str, torch.Tensor] = {}
    if scope == "local":
        for name, w in weights.items():
            masks[name] = _lowest(w.detach().abs(), round(sparsity * w.numel()))
    elif scope == "global":
        flat = torch.cat([w.detach().abs().flatten().cpu() for w in weights.values()])
        keep = _lowest(flat, round(sparsity * flat.numel()))
        i = 0
        for name, w in weights.items():
            masks[name] = keep[i : i + w.numel()].view(w.shape)
            i += w.numel()
    else:
        raise ValueError(f"scope must be 'local' or 'global', got {scope!r}")
    out = Masks(masks)
    if apply:
        out.apply(model)
    return out
