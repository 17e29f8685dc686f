import math

import pytest
import torch

from ice.config import parse_params
from ice.methods.autotune import TrialResult, sample_trials, score, select_best
from ice.methods.ice import freeze_scores, pruning_aware_lr, select_frozen, should_finetune
from ice.schedules import agp, iterative_schedule, one_cycle, one_shot


# ----------------------------------------------------------------------------- lr
def test_pruning_aware_lr_near_base_while_dense():
    assert pruning_aware_lr(1.0, 0.001, 0.0008, 0.15, 50) == pytest.approx(0.001, rel=1e-6)
    assert pruning_aware_lr(0.95, 0.001, 0.0008, 0.15, 50) == pytest.approx(0.001, rel=1e-4)


def test_pruning_aware_lr_settles_at_base_minus_delta():
    assert pruning_aware_lr(0.5, 0.001, 0.0008, 0.15, 50) == pytest.approx(0.0002, rel=1e-6)
    assert pruning_aware_lr(0.7, 0.001, 0.0008, 0.15, 50) == pytest.approx(0.0002, rel=1e-3)


def test_pruning_aware_lr_midpoint_at_one_minus_p():
    # at x = 1-p, x / (2(1-p) - x) = 1, so lr = base - delta/2
    assert pruning_aware_lr(0.85, 0.001, 0.0008, 0.15, 50) == pytest.approx(0.0006)
    # hand-computed: x=0.8, p=0.15 -> 0.8/0.9 = 0.888..; ^40 = 0.00896; lr = 0.005 - 0.0007/1.00896
    assert pruning_aware_lr(0.8, 0.005, 0.0007, 0.15, 40) == pytest.approx(0.005 - 0.0007 / (1 + (0.8 / 0.9) ** 40))


def test_pruning_aware_lr_is_monotone_in_x():
    xs = [i / 100 for i in range(1, 101)]
    lrs = [pruning_aware_lr(x, 0.001, 0.0008, 0.15, 50) for x in xs]
    assert all(a <= b + 1e-15 for a, b in zip(lrs, lrs[1:], strict=False))


# ----------------------------------------------------------------------------- schedules
def test_one_cycle_fractions_of_the_target():
    end = 0.9
    assert one_cycle(0.0, 0.0, end) / end == pytest.approx((1 + math.exp(-9)) / (1 + math.exp(5)))
    assert one_cycle(0.0, 0.0, end) / end == pytest.approx(0.0067, abs=2e-4)
    assert one_cycle(0.5, 0.0, end) / end == pytest.approx(0.881, abs=1e-3)
    assert one_cycle(1.0, 0.0, end) / end == pytest.approx(1.0)


def test_agp_values():
    # s_f + (s_i - s_f)(1 - (t-t0)/(t1-t0))^3 with s_i=0, s_f=0.8, t0=0.2, t1=1
    assert agp(0.1, 0.0, 0.8, 0.2, 1.0) == 0.0
    assert agp(0.6, 0.0, 0.8, 0.2, 1.0) == pytest.approx(0.8 - 0.8 * 0.5**3)  # 0.7
    assert agp(0.4, 0.0, 0.8, 0.2, 1.0) == pytest.approx(0.8 - 0.8 * 0.75**3)  # 0.4625
    assert agp(1.0, 0.0, 0.8, 0.2, 1.0) == pytest.approx(0.8)


def test_one_shot_and_iterative():
    assert one_shot(0.44, 0, 0.8, at=0.45) == 0 and one_shot(0.45, 0, 0.8, at=0.45) == 0.8
    vals = [iterative_schedule(t, 0.0, 0.9, n=3, t0=0.2, t1=1.0) for t in (0.1, 0.2, 0.4, 0.47, 0.8, 1.0)]
    assert vals == pytest.approx([0.0, 0.3, 0.3, 0.6, 0.9, 0.9])


# ----------------------------------------------------------------------------- decision
@pytest.mark.parametrize(
    "ref, now, thre, expected",
    [(95.0, 93.5, 1.5, True), (95.0, 93.6, 1.5, False), (95.0, 96.0, 0.5, False), (95.0, 90.0, 0.5, True)],
)
def test_should_finetune_branches(ref, now, thre, expected):
    assert should_finetune(ref, now, thre) is expected


def test_decide_uses_the_configured_reference():
    from ice.methods.core import decide, decision_reference
    from ice.methods.plan import RunPlan

    plan = RunPlan("ice", (), hp={"thre": 1.5})
    orig = parse_params({"ice": {"reference": "original"}})
    prev = parse_params({"ice": {"reference": "previous"}})
    assert decision_reference(95.0, 92.0, orig) == 95.0 and decision_reference(95.0, 92.0, prev) == 92.0
    assert decide(plan, decision_reference(95.0, 92.0, orig), 91.0) is True  # 4 points below the original
    assert decide(plan, decision_reference(95.0, 92.0, prev), 91.0) is False  # 1 point below the previous step
    assert decide(plan, decision_reference(95.0, 92.0, prev), 90.5) is True
    baseline = RunPlan("iterative", ())
    assert decide(baseline, None, None) is True  # the baseline always fine-tunes, on nothing measured
    assert decide(RunPlan("prune_once", ()), None, None) is False  # prune_once leaves it all to the recovery


def test_the_previous_reference_is_the_last_measured_accuracy():
    """What a resumed run compares with is found again from its finished steps."""
    from ice.methods.plan import last_accuracy

    steps = [{"acc_finetuned": 93.0}, {"acc_finetuned": 91.5}, {"acc_finetuned": None}]
    assert last_accuracy(steps, 95.0) == 91.5
    assert last_accuracy([], 95.0) == 95.0
    assert last_accuracy([{"acc_finetuned": None}], None) is None


def test_the_run_start_round_trips_as_plain_data(digits):
    import json

    from ice.methods.core import start_run
    from ice.methods.plan import RunStart
    from ice.models import build_model

    torch.manual_seed(0)
    m = build_model("cifar_resnet20", 10, in_channels=1)
    for method in ("ice", "prune_once"):
        p = parse_params({"ice": {"fr": 0.3, "autotune": {"enabled": False}}, "prune": {"max_units": 3}})
        start = start_run(m, digits, method, p)
        wire = json.loads(json.dumps(start.to_dict()))
        assert RunStart.from_dict(wire) == start
        assert set(wire) >= {"method", "plan", "frozen", "hp", "input_shape", "conv_params_original"}
    assert len(start.plan.steps[0].units) == 3 and [s.to_dict() for s in start.plan.steps] == [
        {"step": 1, "unit": "all", "units": list(start.plan.steps[0].units), "ratio": 0.6}
    ]


# ----------------------------------------------------------------------------- freezing
def test_freeze_scores_and_selection():
    orig = {"a": torch.tensor([3.0, 4.0]), "b": torch.tensor([1.0, 0.0]), "c": torch.tensor([0.0, 2.0])}
    pre = {"a": torch.tensor([3.0, 4.0]), "b": torch.tensor([1.0, 0.0]), "c": torch.tensor([0.0, 2.0])}
    post = {"a": torch.tensor([3.5, 4.0]), "b": torch.tensor([1.0, -0.1]), "c": torch.tensor([0.0, 2.0])}
    s = freeze_scores(pre, post, orig)
    assert s == pytest.approx({"a": 0.5 / 5.0, "b": 0.1 / 1.0, "c": 0.0})
    assert select_frozen(s, 0.3) == ["c"]  # ceil(0.9) = 1
    assert select_frozen(s, 0.5) == ["a", "c"]  # ceil(1.5) = 2; returned in model order
    assert select_frozen(s, 0.0) == []
    assert select_frozen(s, 1.0) == ["a", "b", "c"]


@pytest.mark.parametrize("candidates", ["units", "all"])
def test_freeze_trial_freezes_convs_with_their_batchnorm(digits, candidates):
    from ice.methods.core import apply_frozen, start_run
    from ice.models import build_model
    from ice.train import frozen_names, make_optimizer

    torch.manual_seed(0)
    m = build_model("cifar_resnet20", 10, in_channels=1)
    p = parse_params(
        {
            "ice": {"fr": 0.3, "freeze_candidates": candidates, "autotune": {"enabled": False}},
            "prune": {"batch_size": 64, "augment": False},
        }
    )
    plan = start_run(m, digits, "ice", p).plan
    convs = [n for n, x in m.named_modules() if isinstance(x, torch.nn.Conv2d)]
    # the reference code's candidates: each residual block's conv1 and conv2 (18 of ResNet-20's 21 convs)
    pool = (
        convs if candidates == "all" else [c for c in convs if c.endswith(("conv1", "conv2")) and c.startswith("layer")]
    )
    assert len(pool) == (21 if candidates == "all" else 18)
    assert len(plan.frozen) == math.ceil(0.3 * len(pool)) and set(plan.frozen) <= set(pool)
    apply_frozen(m, plan, p)
    names = frozen_names(m)
    for conv in plan.frozen:
        assert conv in names
        bn = conv.replace("conv", "bn").replace("shortcut.0", "shortcut.1")
        assert bn in names, f"{bn} should be frozen with {conv}"
    opt = make_optimizer(m, 0.01)
    in_opt = {id(p) for g in opt.param_groups for p in g["params"]}
    assert all(id(m.get_submodule(c).weight) not in in_opt for c in plan.frozen)


@pytest.mark.parametrize("bn_stats", [False, True])
def test_frozen_batchnorm_statistics_follow_freeze_bn_stats(digits, bn_stats):
    """The reference freezes a BN's affine parameters but lets its running statistics update."""
    from ice.methods.core import finetune
    from ice.models import build_model
    from ice.train import freeze

    torch.manual_seed(0)
    m = build_model("cifar_resnet20", 10, in_channels=1)
    freeze(m, ["layer1.0.conv1"], bn=True, bn_stats=bn_stats)
    bn = m.layer1[0].bn1
    mean, weight = bn.running_mean.clone(), bn.weight.detach().clone()
    p = parse_params({"prune": {"batch_size": 64, "augment": False, "kd": False}})
    finetune(m, digits, p, lr=0.01, teacher=None, seed=0, epochs=0.2)
    assert torch.equal(bn.weight, weight)
    assert torch.equal(bn.running_mean, mean) == bn_stats


def test_kd_t2_scales_the_kl_term_by_t_squared():
    from ice.train import kd_loss

    s, t = torch.randn(8, 10), torch.randn(8, 10)
    plain = kd_loss(s, t, 2.0, t2=False)
    # the reference code: kl_div(log_softmax(s/T), softmax(t/T), reduction="sum") / batch
    ref = torch.nn.functional.kl_div(torch.log_softmax(s / 2, 1), torch.softmax(t / 2, 1), reduction="sum") / 8
    assert torch.allclose(plain, ref)
    assert torch.allclose(kd_loss(s, t, 2.0, t2=True), 4 * ref)


def test_channels_removed_per_step_ceil_or_round():
    from ice.pruning.structured import n_to_remove

    assert [n_to_remove(w, 0.6, "ceil") for w in (16, 32, 64)] == [10, 20, 39]  # the reference: ceil(r * w)
    assert [n_to_remove(w, 0.6, "round") for w in (16, 32, 64)] == [10, 19, 38]
    assert n_to_remove(10, 0.7, "ceil") == 7  # 0.7 * 10 is 7.000000000000001 in floating point
    assert n_to_remove(4, 0.99, "ceil") == 3  # one channel always stays


# ----------------------------------------------------------------------------- auto-tuning
def test_sample_trials_draws_distinct_grid_points():
    p = parse_params({})
    points = sample_trials(p)
    assert len(points) == 6
    assert len({tuple(sorted(x.items())) for x in points}) == 6
    grid = p.ice.autotune.grid
    assert all(x[k] in grid[k] for x in points for k in grid)
    assert points == sample_trials(p)  # seeded


def test_objectives_pick_the_expected_trial_on_stub_results():
    stubs = [
        TrialResult(0, {"thre": 0.5}, seconds=10.0, acc_original=90.0, acc_final=89.9, finetunes=9),  # slow, no loss
        TrialResult(1, {"thre": 1.5}, seconds=4.0, acc_original=90.0, acc_final=89.5, finetunes=3),  # fast, small loss
        TrialResult(2, {"thre": 1.5}, seconds=1.0, acc_original=90.0, acc_final=80.0, finetunes=0),  # fastest, big loss
        TrialResult(3, {"thre": 0.5}, seconds=30.0, acc_original=90.0, acc_final=88.0, finetunes=9),  # slowest
    ]
    # balanced: t * (1 + drop): 11, 6, 11, 90 -> trial 1
    assert select_best(stubs, "balanced", cost="seconds").number == 1
    # paper: t/max(d,t) + d/max(d,t): 1.01, 1.125, 2.0 (d>t: 0.1+1), 1.0667 -> trial 0
    assert [round(score(r.seconds, r.drop, "paper"), 4) for r in stubs] == [1.01, 1.125, 1.1, 1.0667]
    assert select_best(stubs, "paper").number == 0
    # the paper's objective rewards a longer run with the same accuracy loss
    assert score(100.0, 2.0, "paper") < score(10.0, 2.0, "paper")
    assert score(100.0, 2.0, "balanced") > score(10.0, 2.0, "balanced")


def test_work_cost_ranks_by_macs_not_seconds():
    # the same two trials; on this machine trial 0 happened to run slower, but it did less work
    a = TrialResult(0, {}, seconds=9.0, acc_original=90.0, acc_final=89.0, finetunes=2, work=100.0)
    b = TrialResult(1, {}, seconds=8.0, acc_original=90.0, acc_final=89.0, finetunes=3, work=150.0)
    assert select_best([a, b], "balanced", cost="seconds").number == 1
    assert select_best([a, b], "balanced", cost="work").number == 0
    assert select_best([a, b], "balanced").number == 0  # auto: work for the balanced objective
    assert select_best([a, b], "paper").number == select_best([a, b], "paper", cost="seconds").number
    with pytest.raises(ValueError, match="'work'"):
        select_best([a, b], "balanced", cost="flops")


def test_objective_rejects_unknown_name():
    with pytest.raises(ValueError, match="balanced"):
        score(1.0, 1.0, "fastest")
