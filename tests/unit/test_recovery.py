"""Cost to target: prune_once, the recovery in chunks, and where a run stops."""

from __future__ import annotations

import copy

import pytest
import torch

from ice.config import ParamsError, parse_params
from ice.methods import run_pruning
from ice.methods.recovery import chunk_epochs, n_chunks, sgdr_lr
from ice.models import build_model
from ice.train import fit

BASE = {
    "prune": {"batch_size": 64, "augment": False, "max_units": 6, "finetune_epochs": 0.5},
    "ice": {"autotune": {"enabled": False}, "thre": 1.0},
}


@pytest.fixture(scope="module")
def pretrained(digits):
    torch.manual_seed(0)
    m = build_model("cifar_resnet20", 10, in_channels=1)
    fit(m, digits, epochs=8, lr=0.1, batch_size=64, augment=False, seed=0)
    return m


def params(**target):
    raw = copy.deepcopy(BASE)
    raw["prune"]["target"] = target
    return parse_params(raw)


def widths(model):
    return [tuple(p.shape) for p in model.state_dict().values()]


def test_prune_once_ends_at_the_same_architecture_as_the_step_wise_methods(digits, pretrained):
    p = params()  # no target: the fixed-budget behaviour, no recovery
    runs = {m: run_pruning(pretrained, digits, m, p) for m in ("prune_once", "iterative", "ice")}
    assert len(runs["prune_once"].steps) == 1 and len(runs["iterative"].steps) == 6
    assert runs["prune_once"].finetunes == 0 and runs["iterative"].finetunes == 6
    assert widths(runs["prune_once"].model) == widths(runs["iterative"].model) == widths(runs["ice"].model)
    assert len({r.info["macs"] for r in runs.values()}) == 1
    assert all("target" not in r.info and "recovery" not in r.info for r in runs.values())
    # prune_once skips every evaluation of a freshly pruned model: it decides nothing; all it
    # spends is the batch-norm re-estimation's forward passes
    once = runs["prune_once"]
    assert once.steps[0]["acc_pruned"] is None
    assert 0 < once.info["work_gmacs"] == pytest.approx(once.steps[0]["work_eval"])
    off = copy.deepcopy(BASE)
    off["prune"]["bn_recal_batches"] = 0
    assert run_pruning(pretrained, digits, "prune_once", parse_params(off)).info["work_gmacs"] == 0


def test_a_run_that_reaches_its_target_stops_at_the_first_passing_check(digits, pretrained):
    p = params(tolerance=2.0, max_epochs=4.0, check_every=0.25)
    res = run_pruning(pretrained, digits, "prune_once", p)
    checks, target = res.info["recovery"], res.info["target"]
    assert target["reached"] and checks[-1]["reached"]
    assert len(checks) >= 2, "the pruned model was already within 2 points: the test needs a real recovery"
    assert all(not c["reached"] and c["acc"] < target["goal"] for c in checks[:-1])
    assert checks[-1]["acc"] >= target["goal"]
    assert target["goal"] == pytest.approx(target["acc_reference"] - 2.0)
    assert target["recovery_epochs"] == pytest.approx(0.25 * (len(checks) - 1))
    assert target["recovery_epochs"] < 4.0
    # the cost to target is everything up to that check, and the curve climbs to it
    assert target["cost_gmacs"] == pytest.approx(checks[-1]["cum_gmacs"])
    assert target["cost_gmacs"] == pytest.approx(res.info["work_gmacs"])
    assert target["cost_seconds"] == pytest.approx(res.seconds)
    cum = [c["cum_gmacs"] for c in checks]
    assert cum == sorted(cum) and checks[0]["work_recover"] == 0  # check 0 is the model as the steps left it
    assert target["val_acc"] == checks[-1]["acc"]


def test_a_run_that_cannot_reach_its_target_stops_at_max_epochs_and_says_so(digits, pretrained):
    p = params(tolerance=0.01, max_epochs=0.5, check_every=0.2)  # chunks 0.2, 0.2, 0.1
    logs: list[str] = []
    from ice.methods import Callbacks

    res = run_pruning(pretrained, digits, "prune_once", p, Callbacks(on_log=logs.append))
    checks, target = res.info["recovery"], res.info["target"]
    assert not target["reached"] and target["cost_gmacs"] is None and target["cost_seconds"] is None
    assert [c["epochs"] for c in checks] == pytest.approx([0.0, 0.2, 0.4, 0.5])
    assert target["recovery_epochs"] == pytest.approx(0.5)
    assert target["work_gmacs"] == pytest.approx(checks[-1]["cum_gmacs"])  # what it spent, reported as such
    assert any("recovery 0.5 epochs" in line and "target" in line for line in logs)


def test_the_recovery_lr_restarts_its_cosine_in_growing_cycles():
    t = params(tolerance=1.0, lr=0.01, cycle_epochs=1.0, cycle_mult=2.0).prune.target
    assert sgdr_lr(0.0, t) == pytest.approx(0.01)
    assert sgdr_lr(0.5, t) == pytest.approx(0.005)
    assert sgdr_lr(0.999, t) < 1e-5
    assert sgdr_lr(1.0, t) == pytest.approx(0.01)  # the second cycle starts again at the peak...
    assert sgdr_lr(2.0, t) == pytest.approx(0.005)  # ...and is twice as long
    assert sgdr_lr(3.0, t) == pytest.approx(0.01)
    assert n_chunks(t) == 100 and chunk_epochs(t, 99) == pytest.approx((9.9, 0.1))


def test_target_params_are_validated():
    with pytest.raises(ParamsError, match="check_every"):
        params(tolerance=1.0, max_epochs=0.5, check_every=1.0)
    with pytest.raises(ParamsError, match=r"prune.target.split = 'test' is not allowed"):
        params(tolerance=1.0, split="test")
    with pytest.raises(ParamsError, match="tolerance"):
        params(tolerance=-1.0)


# ----------------------------------------------------------------------------- the decay without restarts
def test_the_decay_lr_never_rises_and_holds_its_last_value_past_the_budget():
    from ice.methods.recovery import decay_lr, recovery_lr

    t = params(tolerance=1.0, lr=0.01, policy="decay", final_lr_frac=0.02, max_epochs=6.0).prune.target
    grid = [i / 100 for i in range(0, 601)]
    lrs = [recovery_lr(x, t, 2.0) for x in grid]
    assert lrs[0] == pytest.approx(0.01)
    assert all(b <= a + 1e-15 for a, b in zip(lrs, lrs[1:], strict=False)), "the lr rose"
    assert decay_lr(1.0, 2.0, t) == pytest.approx(0.01 * (1 - 0.98 / 2))  # linear
    assert decay_lr(2.0, 2.0, t) == pytest.approx(0.0002)
    assert decay_lr(5.0, 2.0, t) == pytest.approx(0.0002)  # past B: the last lr, never a jump back up


def test_the_budget_comes_from_the_first_checks_gap_or_is_fixed():
    from ice.methods.recovery import recovery_budget

    t = params(tolerance=1.0, epochs_per_point=0.1, min_budget_epochs=1.0, max_epochs=6.0, check_every=0.25)
    t = t.prune.target
    assert recovery_budget(t, acc_start=60.0, goal=86.0) == pytest.approx(2.75)  # 2.6 -> a whole number of checks
    assert recovery_budget(t, acc_start=85.0, goal=86.0) == pytest.approx(1.0)  # at least min_budget_epochs
    assert recovery_budget(t, acc_start=10.0, goal=86.0) == pytest.approx(6.0)  # at most max_epochs
    fixed = params(tolerance=1.0, budget_epochs=4.0).prune.target
    assert recovery_budget(fixed, acc_start=10.0, goal=86.0) == 4.0
    assert recovery_budget(params(tolerance=1.0, policy="sgdr").prune.target, 10.0, 86.0) is None


def test_a_decay_recovery_records_a_falling_lr_and_one_optimizer_across_chunks(digits, pretrained):
    from ice.methods.core import ModelSteps
    from ice.methods.recovery import recover_chunk

    p = params(tolerance=0.01, max_epochs=1.0, check_every=0.25, policy="decay", budget_epochs=1.0)
    res = run_pruning(pretrained, digits, "prune_once", p)
    checks = res.info["recovery"]
    lrs = [c["lr"] for c in checks[1:]]
    assert len(lrs) == 4 and lrs[0] == pytest.approx(0.01)
    assert all(b < a for a, b in zip(lrs, lrs[1:], strict=False)), lrs
    assert {c["budget_epochs"] for c in checks} == {1.0} and res.info["target"]["budget_epochs"] == 1.0
    # the momentum carried into chunk 1 is what chunk 0 left: training chunk 1 from a fresh
    # optimizer instead gives other weights
    model = copy.deepcopy(res.model)
    out = recover_chunk(model, None, digits, 0, p, 1.0, None)
    state = out["optimizer"]
    assert state is not None and any("momentum_buffer" in s for s in state["state"].values())
    a, b = copy.deepcopy(model), copy.deepcopy(model)
    recover_chunk(a, None, digits, 1, p, 1.0, copy.deepcopy(state))
    recover_chunk(b, None, digits, 1, p, 1.0, None)
    assert any(not torch.equal(x, y) for x, y in zip(a.state_dict().values(), b.state_dict().values(), strict=True))
    assert ModelSteps  # the in-memory ops carry the same state (test above went through them)
