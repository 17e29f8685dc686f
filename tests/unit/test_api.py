"""ice.prune: one call on a user's own nn.Module and tensors returns a smaller model within the tolerance."""

from __future__ import annotations

import pytest
import torch
from torch import nn

import ice
from ice.train import fit


class SmallNet(nn.Module):
    """A plain user network: no ice_spec, no registry entry."""

    def __init__(self) -> None:
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(1, 32, 3, padding=1, bias=False),
            nn.BatchNorm2d(32),
            nn.ReLU(),
            nn.Conv2d(32, 64, 3, padding=1, bias=False),
            nn.BatchNorm2d(64),
            nn.ReLU(),
            nn.Conv2d(64, 64, 3, padding=1, bias=False),
            nn.BatchNorm2d(64),
            nn.ReLU(),
        )
        self.head = nn.Linear(64, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x).mean((2, 3)))


def test_prune_a_user_module_on_tensors_to_within_the_tolerance(digits):
    torch.manual_seed(0)
    model = SmallNet()
    fit(model, digits, epochs=6, lr=0.1, batch_size=64, augment=False, seed=0)
    tensors = (digits.train.x, digits.train.y, digits.val.x, digits.val.y)  # uint8 images, as a user holds them
    lines: list[str] = []
    small, report = ice.prune(
        model,
        tensors,
        ratio=0.5,
        tolerance=2.0,
        recipe="prune_once",
        params={"prune": {"batch_size": 64, "augment": False, "target": {"max_epochs": 6.0}}},
        log=lines.append,
    )
    assert report.reached and report.cost_gmacs is not None and report.cost_gmacs > 0
    assert report.params_after < report.params_before and report.macs_after < report.macs_before
    assert sum(p.numel() for p in small.parameters()) == report.params_after
    assert report.val_acc_after >= report.val_acc_before - 2.0 - 1e-9
    lo, hi = report.val_acc_ci95
    assert lo <= report.val_acc_after <= hi
    assert small(torch.zeros(2, 1, 8, 8)).shape == (2, 10)
    assert sum(p.numel() for p in model.parameters()) == report.params_before  # the caller's model is untouched
    assert any("recovery" in line for line in lines) and "prune_once at ratio 0.5" in str(report)


def test_bad_data_is_refused_in_one_line():
    with pytest.raises(TypeError, match="data: give a folder path"):
        ice.prune(SmallNet(), 42)
