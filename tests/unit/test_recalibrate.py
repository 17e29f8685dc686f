"""Batch-norm re-estimation after pruning: only the statistics change, the same bytes every time."""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

from ice.models import build_model
from ice.pruning import prunable_units, prune_unit
from ice.recalibrate import recalibrate_bn
from ice.train import accuracy, fit, freeze


@pytest.fixture(scope="module")
def pruned(digits):
    torch.manual_seed(0)
    m = build_model("cifar_resnet20", 10, in_channels=1)
    fit(m, digits, epochs=4, lr=0.1, batch_size=64, augment=False, seed=0)
    for u in prunable_units(m):
        prune_unit(m, u, 0.6, "l1")
    return m


def _buffers(model: nn.Module) -> set[str]:
    return {f"{n}.{b}" for n, m in model.named_modules() if isinstance(m, nn.BatchNorm2d) for b in m._buffers}


def test_only_batch_norm_buffers_change_and_a_second_run_gives_the_same_bytes(digits, pruned):
    a, b = copy.deepcopy(pruned), copy.deepcopy(pruned)
    freeze(a, ["layer1.0.conv1"], bn=True, bn_stats=True)  # a frozen layer is re-estimated too
    freeze(b, ["layer1.0.conv1"], bn=True, bn_stats=True)
    a.train()
    out = recalibrate_bn(a, digits, n_batches=4, batch_size=64, seed=3)
    recalibrate_bn(b, digits, n_batches=4, batch_size=64, seed=3)
    assert out["images"] == 256 and out["work"] > 0
    before, after = pruned.state_dict(), a.state_dict()
    changed = {k for k in before if not torch.equal(before[k], after[k])}
    assert changed, "nothing was re-estimated"
    assert changed <= _buffers(pruned), f"more than batch-norm statistics changed: {changed - _buffers(pruned)}"
    assert "layer1.0.bn1.running_mean" in changed  # the frozen one as well
    assert all(torch.equal(after[k], v) for k, v in b.state_dict().items())  # same seed, same bytes
    assert a.training and all(m.momentum == 0.1 for m in a.modules() if isinstance(m, nn.BatchNorm2d))


def test_re_estimated_statistics_restore_accuracy_and_zero_batches_do_nothing(digits, pruned):
    m = copy.deepcopy(pruned)
    assert recalibrate_bn(m, digits, n_batches=0, batch_size=64, seed=0)["work"] == 0
    assert all(torch.equal(x, y) for x, y in zip(m.state_dict().values(), pruned.state_dict().values(), strict=True))
    stale = accuracy(m, digits, "val")["acc"]
    recalibrate_bn(m, digits, n_batches=10, batch_size=64, seed=0)
    assert accuracy(m, digits, "val")["acc"] > stale
