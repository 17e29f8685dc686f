"""Model size and cost: parameters, MACs, sparsity and measured latency."""

from __future__ import annotations

import statistics
import time
from typing import Any

import torch
from torch import nn

__all__ = ["count_params", "count_macs", "sparsity", "conv_param_fraction", "prunable_conv_params", "measure_latency"]


def count_params(model: nn.Module, nonzero: bool = False) -> int:
    """Number of parameters (only the non-zero ones with ``nonzero``)."""
    if nonzero:
        return int(sum(int((p != 0).sum()) for p in model.parameters()))
    return int(sum(p.numel() for p in model.parameters()))


@torch.no_grad()
def count_macs(model: nn.Module, input_shape: tuple[int, ...]) -> int:
    """Multiply-accumulates of one forward pass of conv and linear layers, batch 1."""
    total = 0

    def conv_hook(m: nn.Conv2d, _i: Any, out: torch.Tensor) -> None:
        nonlocal total
        kh, kw = m.kernel_size
        total += out[0].numel() * (m.in_channels // m.groups) * kh * kw

    def linear_hook(m: nn.Linear, _i: Any, out: torch.Tensor) -> None:
        nonlocal total
        total += m.in_features * m.out_features * (out[0].numel() // m.out_features)

    handles = []
    for m in model.modules():
        if isinstance(m, nn.Conv2d):
            handles.append(m.register_forward_hook(conv_hook))
        elif isinstance(m, nn.Linear):
            handles.append(m.register_forward_hook(linear_hook))
    was_training = model.training
    model.eval()
    try:
        dev = next(model.parameters()).device
        model(torch.zeros((1, *input_shape[1:]), device=dev))
    finally:
        for h in handles:
            h.remove()
        model.train(was_training)
    return int(total)


def sparsity(model: nn.Module) -> float:
    """Fraction of zero weights among conv and linear weights."""
    total = zeros = 0
    for m in model.modules():
        if isinstance(m, nn.Conv2d | nn.Linear):
            total += m.weight.numel()
            zeros += int((m.weight == 0).sum())
    return zeros / total if total else 0.0


def prunable_conv_params(model: nn.Module) -> int:
    """Parameters of convs with kernel > 1, the stem (first conv) excluded."""
    convs = [m for m in model.modules() if isinstance(m, nn.Conv2d)]
    return int(sum(m.weight.numel() for m in convs[1:] if max(m.kernel_size) > 1))


def conv_param_fraction(model: nn.Module, original: int) -> float:
    """x in ICE's learning-rate formula: remaining share of :func:`prunable_conv_params`."""
    return prunable_conv_params(model) / original if original else 1.0


@torch.no_grad()
def measure_latency(
    model: nn.Module, input_shape: tuple[int, ...], *, iters: int = 20, warmup: int = 5, device: torch.device | None = None
) -> dict[str, float]:
    """Median and p90 forward latency in milliseconds for a batch of ``input_shape``."""
    device = device or next(model.parameters()).device
    was_training = model.training
    model.eval()
    x = torch.randn(input_shape, device=device)
    for _ in range(warmup):
        model(x)
    times = []
    for _ in range(iters):
        if device.type == "cuda":
            torch.cuda.synchronize()
        t = time.perf_counter()
        model(x)
        if device.type == "cuda":
            torch.cuda.synchronize()
        times.append((time.perf_counter() - t) * 1000)
    model.train(was_training)
    times.sort()
    return {"median_ms": statistics.median(times), "p90_ms": times[int(0.9 * (len(times) - 1))], "batch": float(input_shape[0])}
