"""A task sees only the params its config holds: what a method does not read is no default."""

from __future__ import annotations

import copy

import pytest

from ice.config import parse_params
from ice.methods.registry import method_inputs
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


def test_ice_reads_its_section():
    params = parse_params({"ice": {"thre": 3.0}})
    task = params_of(method_inputs(params, "ice"))
    assert task.ice.thre == 3.0 and task.ice.lr.beta == params.ice.lr.beta
