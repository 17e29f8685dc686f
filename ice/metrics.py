"""Model size and cost: parameters, MACs, sparsity and measured latency."""

from __future__ import annotations

import statistics
import time
from typing import Any

import torch
from torch import nn

__all__ = [
    "G",
    "count_params",
    "count_macs",
    "module_macs",
    "train_macs",
    "sparsity",
    "conv_param_fraction",
    "prunable_conv_params",
    "measure_latency",
    "bootstrap_interval",
]


G = 1e9  # MACs in a GMAC: every cost in GMACs is a MAC count divided by this


def count_params(model: nn.Module, nonzero: bool = False) -> int:
    """Number of parameters (only the non-zero ones with ``nonzero``)."""
    if nonzero:
        return int(sum(int((p != 0).sum()) for p in model.parameters()))
    return int(sum(p.numel() for p in model.parameters()))


def count_macs(model: nn.Module, input_shape: tuple[int, ...]) -> int:
    """Multiply-accumulates of one forward pass of conv and linear layers, batch 1."""
    return sum(module_macs(model, input_shape).values())


@torch.no_grad()
def module_macs(model: nn.Module, input_shape: tuple[int, ...]) -> dict[str, int]:
    """Forward MACs of each conv and linear layer (by module name), batch 1."""
    macs: dict[str, int] = {}

    def hook(name: str) -> Any:
        def record(m: nn.Module, _i: Any, out: torch.Tensor) -> None:
            if isinstance(m, nn.Conv2d):
                kh, kw = m.kernel_size
                n = out[0].numel() * (m.in_channels // m.groups) * kh * kw
            else:
                assert isinstance(m, nn.Linear)
                n = m.in_features * m.out_features * (out[0].numel() // m.out_features)
            macs[name] = macs.get(name, 0) + int(n)

        return record

    handles = [
        m.register_forward_hook(hook(n)) for n, m in model.named_modules() if isinstance(m, nn.Conv2d | nn.Linear)
    ]
    was_training = model.training
    model.eval()
    try:
        dev = next(model.parameters()).device
        model(torch.zeros((1, *input_shape[1:]), device=dev))
    finally:
        for h in handles:
            h.remove()
        model.train(was_training)
    return macs


def train_macs(model: nn.Module, input_shape: tuple[int, ...]) -> int:
    """MACs of one training image (batch 1), as a deterministic cost model.

    Forward M, input gradients about M, and weight gradients for the layers that still
    train (a frozen layer skips its weight gradient): 2M + sum of the trainable layers' M.
    """
    per = module_macs(model, input_shape)
    modules = dict(model.named_modules())
    trainable = sum(n for name, n in per.items() if modules[name].weight.requires_grad)
    return 2 * sum(per.values()) + trainable


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
    model: nn.Module,
    input_shape: tuple[int, ...],
    *,
    iters: int = 20,
    warmup: int = 5,
    device: torch.device | None = None,
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
    return {
        "median_ms": statistics.median(times),
        "p90_ms": times[int(0.9 * (len(times) - 1))],
        "batch": float(input_shape[0]),
    }


def bootstrap_interval(
    acc: float, n: int, *, draws: int = 4000, level: float = 0.95, seed: int = 0
) -> tuple[float, float]:
    """The ``level`` bootstrap interval (percentile) of an accuracy in percent over ``n`` evaluated images.

    Resampling ``n`` images with replacement from a set in which ``k`` are correct draws
    Binomial(n, k/n) correct ones, so the bootstrap is drawn from that binomial directly:
    the same distribution as resampling the per-image results, for a fraction of the work."""
    if n <= 0:
        return (acc, acc)
    p = min(1.0, max(0.0, acc / 100.0))
    g = torch.Generator().manual_seed(seed)
    counts = torch.binomial(torch.full((draws,), float(n)), torch.full((draws,), p), generator=g)
    q = torch.quantile(counts / n * 100.0, torch.tensor([(1 - level) / 2, (1 + level) / 2], dtype=counts.dtype))
    return (float(q[0]), float(q[1]))
