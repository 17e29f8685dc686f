"""Batch-norm statistics re-estimated after pruning (adaptive BN, EagleEye: Li et al. 2020).

Removing channels changes what every later layer sees, so the running means and
variances a model carries from training no longer describe its inputs: a model pruned
in one go can fall to near chance on them and recover most of the way when they are
measured again. :func:`recalibrate_bn` measures them again: forward passes only, on
``n_batches`` training batches drawn with a seed, with every other parameter left as it
was. Frozen layers (ICE's freeze list) are re-estimated too: freezing stops their
weights from training, but their statistics describe inputs that pruning upstream has
changed, and stale ones are what made the pruned model inaccurate.
"""

from __future__ import annotations

import time

import torch
from torch import nn

from ice.data import Dataset, batches
from ice.metrics import G, count_macs

__all__ = ["recalibrate_bn", "bn_layers"]

_BN = nn.modules.batchnorm._BatchNorm


def bn_layers(model: nn.Module) -> list[_BN]:
    """The batch norms that track running statistics."""
    return [m for m in model.modules() if isinstance(m, _BN) and m.track_running_stats]


@torch.no_grad()
def recalibrate_bn(
    model: nn.Module, data: Dataset, n_batches: int, batch_size: int, seed: int, *, channels_last: bool = False
) -> dict[str, float]:
    """Re-estimate every batch norm's running mean and variance, in place, from ``n_batches``
    training batches (unaugmented, drawn with ``seed``): the plain average over the batches
    (momentum ``None``), not an exponential one. Only batch-norm buffers change. Returns the
    images, seconds and work (GMACs, one forward pass per image); nothing when ``n_batches``
    is 0 or the model has no batch norm."""
    layers = bn_layers(model)
    if n_batches <= 0 or not layers:
        return {"images": 0.0, "seconds": 0.0, "work": 0.0}
    t0 = time.perf_counter()
    device = next(model.parameters()).device
    was_training = {m: m.training for m in model.modules()}
    momenta = [m.momentum for m in layers]
    model.eval()  # dropout and the rest as at inference; only the batch norms measure
    for m in layers:
        m.reset_running_stats()
        m.momentum = None
        m.train()
    g = torch.Generator().manual_seed(seed)
    n = min(len(data.train), n_batches * batch_size)
    split = data.train.sample(n, g) if n < len(data.train) else data.train
    images = 0
    for x, _ in batches(
        split, batch_size, data.mean, data.std, shuffle=True, generator=g, device=device, channels_last=channels_last
    ):
        if len(x) < 2:  # a batch norm cannot measure a variance from one image
            continue
        model(x)
        images += len(x)
    for m, mom in zip(layers, momenta, strict=True):
        m.momentum = mom
    for mod, mode in was_training.items():
        mod.train(mode)
    return {
        "images": float(images),
        "seconds": time.perf_counter() - t0,
        "work": images * count_macs(model, data.input_shape()) / G,
    }
