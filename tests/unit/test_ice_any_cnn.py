"""ICE end to end on a network outside the paper's: torchvision's MobileNetV2 on digits.

The decision, the freezing, the pruning-aware learning rate and the hyperparameter search
all run on Torch-Pruning's groups; freezing candidates and the lr's x (the remaining share
of conv parameters) are defined for any model.
"""

from __future__ import annotations

import pytest
import torch

from ice.checkpoint import load_checkpoint, save_checkpoint
from ice.config import parse_params
from ice.methods import run_pruning
from ice.methods.ice import freeze_candidates
from ice.metrics import count_params, prunable_conv_params
from ice.models import seeded_model
from ice.pruning import prunable_units
from ice.train import accuracy, fit


@pytest.mark.slow
def test_ice_prunes_a_torchvision_mobilenet_end_to_end(digits, tmp_path):
    model = seeded_model("tv:mobilenet_v2", digits, 0)
    fit(model, digits, epochs=4, lr=0.05, batch_size=64, augment=False, seed=0)
    base_acc = accuracy(model, digits, "test")["acc"]
    units = prunable_units(model)
    assert all(u.engine == "graph" for u in units)
    cands = freeze_candidates(model)
    assert len(cands) > 10 and prunable_conv_params(model) > 0

    p = parse_params(
        {
            "model": {"arch": "tv:mobilenet_v2"},
            "prune": {"batch_size": 64, "augment": False, "max_units": 8, "ratio": 0.4},
            "ice": {"thre": 1.0, "autotune": {"enabled": True, "n_trials": 2, "subset": 0.3}},
        }
    )
    res = run_pruning(model, digits, "ice", p)

    assert [r["unit"] for r in res.steps] == [u.name for u in units[:8]]
    assert len(res.search) == 2 and sum(t["best"] for t in res.search) == 1  # the search ran
    tuned = next(t for t in res.search if t["best"])
    assert res.info["hp"]["thre"] == tuned["thre"]
    assert res.finetunes >= 1 and all(isinstance(r["finetuned"], bool) for r in res.steps)  # the decision
    assert any(r["frozen"] > 0 for r in res.steps)  # freezing
    lrs = [r["lr"] for r in res.steps if r["finetuned"]]
    assert len(lrs) < 2 or len(set(lrs)) > 1  # the lr follows x, which shrinks every step
    assert res.info["params"] < count_params(model)
    acc = accuracy(res.model, digits, "test")["acc"]
    assert acc > 25.0 and acc > base_acc - 30.0, (acc, base_acc)  # chance is 10%
    # the pruned torchvision model is a checkpoint like any other
    save_checkpoint(tmp_path / "ice.pt", res.model)
    back, _ = load_checkpoint(tmp_path / "ice.pt")
    x = digits.input_shape(4)
    probe = torch.randn(x)
    assert torch.equal(back.eval()(probe), res.model.eval()(probe))
