"""A task sees only the params its config holds: what a method does not read is no default."""

from __future__ import annotations

import copy

import pytest

from ice.config import parse_params
from ice.methods.registry import method_inputs, without
from plumbing.artifacts import params_of


def test_a_narrowed_config_reads_back_without_defaults_for_what_it_left_out():
    params = parse_params({"prune": {"ratio": 0.4}, "ice": {"thre": 3.0}, "train": {"batch_size": 32}})
    task = params_of(method_inputs(params, "iterative"))  # the baseline reads no ICE key
    assert task.prune.ratio == 0.4 and task.prune.target.tolerance == params.prune.target.tolerance
    assert task.train.device == params.train.device  # the device keys travel
    with pytest.raises(AttributeError, match=r"params\.ice\.thre"):
        _ = task.ice.thre
    with pytest.raises(AttributeError, match=r"params\.train\.batch_size"):
        _ = task.train.batch_size  # train holds only its device keys: 32 must not read as the default
    with pytest.raises(AttributeError, match=r"params\.data\.source"):
        _ = task.data.source
    again = copy.deepcopy(task)  # tasks copy params (trials); the guard goes with the copy
    with pytest.raises(AttributeError):
        _ = again.ice.fr
    assert again.prune.ratio == 0.4


def test_without_leaves_out_only_the_named_keys_and_never_changes_its_input():
    inputs = method_inputs(parse_params({}), "ice")
    before = copy.deepcopy(inputs)
    out = without(inputs, "ice", "autotune", "thre", "not-a-key")
    assert inputs == before
    assert set(out["ice"]) == set(inputs["ice"]) - {"autotune", "thre"}
    assert {k: v for k, v in out.items() if k != "ice"} == {k: v for k, v in inputs.items() if k != "ice"}


def test_ice_reads_its_section():
    params = parse_params({"ice": {"thre": 3.0}})
    task = params_of(method_inputs(params, "ice"))
    assert task.ice.thre == 3.0 and task.ice.lr.beta == params.ice.lr.beta


@pytest.mark.parametrize("init", ["scratch", "pretrained"])
def test_every_method_runs_on_what_its_config_holds(digits, init):
    """Each method, run on exactly the params its task gets, reads nothing its config leaves
    out (an unread key would raise): its cache key holds everything it depends on."""
    import torch

    from ice.methods import METHODS, run_pruning, spec
    from ice.models import build_model

    torch.manual_seed(0)
    model = build_model("cifar_resnet20", 10, in_channels=1)
    params = parse_params(
        {
            "model": {"arch": "cifar_resnet20"},
            "train": {"batch_size": 64, "device": "cpu"},
            "prune": {"max_units": 2, "finetune_epochs": 0.05, "target": {"max_epochs": 0.25}},
            "ice": {"autotune": {"enabled": False}},
            "schedule": {"init": init, "epochs": 0.2},
        }
    )
    for method in METHODS:
        if spec(method).stepwise and init == "scratch":
            continue  # the step-wise methods always start from the pre-trained model
        task = params_of(method_inputs(params, method))
        start = None if not spec(method).stepwise and init == "scratch" else model
        result = run_pruning(start, digits, method, task)
        assert result.model is not None, method
