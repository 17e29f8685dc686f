import pytest
import torch

from ice.config import parse_params
from ice.methods import METHODS, run_pruning
from ice.methods.training import FilterPruner
from ice.models import build_model
from ice.train import accuracy, fit, make_optimizer, train_epoch

BASE = {
    "prune": {"batch_size": 64, "augment": False, "max_units": 6},
    "ice": {"autotune": {"enabled": False}},
    "schedule": {"epochs": 1, "interval": 3},
}


@pytest.fixture(scope="module")
def pretrained(digits):
    torch.manual_seed(0)
    m = build_model("cifar_resnet20", 10, in_channels=1)
    fit(m, digits, epochs=10, lr=0.1, batch_size=64, augment=False, seed=0)
    return m


def params(**over):
    import copy

    raw = copy.deepcopy(BASE)
    for section, vals in over.items():
        raw.setdefault(section, {}).update(vals)
    return parse_params(raw)


def test_ice_fine_tunes_less_than_iterative_and_stays_close(digits, pretrained):
    # a well-trained net at a mild ratio: some steps lose less than thre and skip fine-tuning
    p = params(prune={"ratio": 0.3}, ice={"thre": 1.5, "autotune": {"enabled": False}})
    it = run_pruning(pretrained, digits, "iterative", p)
    ice = run_pruning(pretrained, digits, "ice", p)
    assert it.finetunes == 6 == len(it.steps)
    assert ice.finetunes < it.finetunes
    a_it = accuracy(it.model, digits, "test")["acc"]
    a_ice = accuracy(ice.model, digits, "test")["acc"]
    assert a_ice > a_it - 5.0, (a_ice, a_it)
    # identical structure: the same units at the same ratio
    assert ice.info["params"] == it.info["params"] < sum(q.numel() for q in pretrained.parameters())
    rec = ice.steps[0]
    for key in (
        "step",
        "unit",
        "ratio",
        "params",
        "macs",
        "acc_pruned",
        "finetuned",
        "lr",
        "frozen",
        "acc_finetuned",
        "t_prune",
        "t_eval",
        "t_finetune",
    ):
        assert key in rec
    assert all(r["lr"] == pytest.approx(0.001) for r in it.steps)
    assert all(r["frozen"] == 0 for r in it.steps) and ice.steps[0]["frozen"] > 0


def test_the_callers_model_is_untouched(digits, pretrained):
    before = {k: v.clone() for k, v in pretrained.state_dict().items()}
    run_pruning(pretrained, digits, "iterative", params(prune={"max_units": 2}))
    after = pretrained.state_dict()
    assert before.keys() == after.keys() and all(torch.equal(before[k], after[k]) for k in before)


def test_same_seed_same_result(digits, pretrained):
    p = params(prune={"max_units": 3})
    a = run_pruning(pretrained, digits, "ice", p)
    b = run_pruning(pretrained, digits, "ice", p)
    strip = lambda steps: [{k: v for k, v in r.items() if not k.startswith("t_")} for r in steps]  # noqa: E731
    assert strip(a.steps) == strip(b.steps)
    sa, sb = a.model.state_dict(), b.model.state_dict()
    assert all(torch.equal(sa[k], sb[k]) for k in sa)


def test_autotune_time_is_in_the_total_and_trials_are_reported(digits, pretrained):
    p = params(prune={"max_units": 2}, ice={"autotune": {"enabled": True, "n_trials": 2, "subset": 0.3}})
    res = run_pruning(pretrained, digits, "ice", p)
    assert len(res.search) == 2 and sum(t["best"] for t in res.search) == 1
    search = res.info["search_seconds"]
    assert search >= sum(t["seconds"] for t in res.search) * 0.99
    step_time = sum(r["t_prune"] + r["t_eval"] + r["t_finetune"] for r in res.steps)
    assert res.seconds >= search + step_time
    best = next(t for t in res.search if t["best"])
    assert res.info["hp"]["thre"] == best["thre"] and res.info["hp"]["base"] == best["base"]


def test_real_trials_pick_the_lowest_objective(digits, pretrained):
    from ice.methods.autotune import run_trial, sample_trials, score, select_best

    p = params(prune={"max_units": 2}, ice={"autotune": {"enabled": True, "n_trials": 3, "subset": 0.3}})
    results = [run_trial(pretrained, digits, p, hp, i) for i, hp in enumerate(sample_trials(p))]
    assert all(r.work > 0 for r in results)
    for objective in ("balanced", "paper"):
        for cost in ("seconds", "work"):
            best = select_best(results, objective, cost=cost)
            t = (lambda r: r.seconds) if cost == "seconds" else (lambda r: r.work)  # noqa: E731
            assert score(t(best), best.drop, objective) == min(score(t(r), r.drop, objective) for r in results)
    # auto: seconds for the paper objective, work for the balanced one
    assert select_best(results, "paper") is select_best(results, "paper", cost="seconds")
    assert select_best(results, "balanced") is select_best(results, "balanced", cost="work")


def test_trial_work_is_machine_independent_and_counts_finetunes(digits, pretrained):
    """Work (MACs) is identical across runs, unlike seconds; it grows with fine-tunes and shrinks with freezing."""
    from ice.methods.autotune import run_trial
    from ice.metrics import count_macs, train_macs

    # batch-norm re-estimation off: what is compared here is what fine-tunes cost
    p = params(prune={"max_units": 3, "bn_recal_batches": 0}, ice={"autotune": {"enabled": True, "subset": 0.3}})
    hp = {"thre": -1e9, "fr": 0.0, "base": 0.001, "delta": 0.0006, "p": 0.1, "beta": 40}  # thre -inf: always fine-tune
    a, b = run_trial(pretrained, digits, p, hp), run_trial(pretrained, digits, p, hp)
    assert a.work == b.work and a.finetunes == 3
    lazy = run_trial(pretrained, digits, p, hp | {"thre": 1e9})  # never fine-tunes
    assert lazy.finetunes == 0 and lazy.work < a.work / 5
    frozen = run_trial(pretrained, digits, p, hp | {"fr": 0.9})
    assert frozen.finetunes == 3
    shape = digits.input_shape()
    m0 = count_macs(pretrained, shape)
    trial_epoch = round(len(digits.train) * 0.3) * (train_macs(pretrained, shape) + m0) / 1e9  # teacher forward (kd)
    # the same three fine-tunes cost less with 90% of the convs skipping their weight gradients
    saved = a.work - (frozen.work - trial_epoch)
    assert 0 < saved < a.work / 3


def test_min_val_images_floors_the_trials_validation_subset(digits):
    from ice.methods.autotune import trial_data

    p = params(ice={"autotune": {"subset": 0.05, "min_val_images": 60}})
    sub = trial_data(digits, p)
    assert len(sub.train) == round(len(digits.train) * 0.05)
    assert len(sub.val) == 60 and len(set(sub.val.index.tolist())) == 60
    plain = trial_data(
        digits, params(ice={"autotune": {"subset": 0.05, "min_val_images": 0}})
    )  # the paper's 2%-style subset
    assert len(plain.val) == round(len(digits.val) * 0.05)
    assert len(trial_data(digits, params()).val) == 100  # the default floor
    big = trial_data(digits, params(ice={"autotune": {"subset": 0.05, "min_val_images": 10_000}}))
    assert len(big.val) == len(digits.val)


@pytest.mark.parametrize("method", ["one_shot", "iterative_schedule", "agp", "one_cycle"])
@pytest.mark.parametrize("scope", ["local", "global"])
def test_weight_schedules_reach_their_sparsity(digits, pretrained, method, scope):
    p = params(schedule={"target": 0.8, "granularity": "weight", "scope": scope, "epochs": 1})
    res = run_pruning(pretrained, digits, method, p)
    assert res.info["weight_sparsity"] == pytest.approx(0.8, abs=0.002)
    last = res.steps[-1]
    # `params` is the non-zero count for every method (the masked model still holds its dense tensors)
    assert last["params"] == res.info["params"] < 0.3 * last["params_dense"]
    assert last["sparsity"] == pytest.approx(1 - last["params"] / res.info["params_original"])


@pytest.mark.parametrize("method", ["one_shot", "iterative_schedule", "agp", "one_cycle", "prune_while_training"])
def test_filter_schedules_end_at_the_step_wise_methods_size(digits, pretrained, method):
    """The structured budget: a filter-granularity schedule cuts prune.ratio of each unit, as ICE's steps do."""
    from ice.methods.core import iterate

    # 0.6 of 32 channels is 19.2: ceil (ICE's reference rounding) and round differ, so this checks prune.rounding too
    p = params(prune={"ratio": 0.6}, schedule={"target": 0.9, "granularity": "filter", "epochs": 1})
    res = run_pruning(pretrained, digits, method, p)
    assert res.steps[-1]["filters_removed"] == pytest.approx(0.6, abs=0.05)
    stepwise = iterate(pretrained, digits, "iterative", params(prune={"ratio": 0.6, "finetune_epochs": 0.05}))
    assert res.info["params"] == stepwise.info["params"] < sum(q.numel() for q in pretrained.parameters())
    assert res.info["weight_sparsity"] == 0.0


def test_prune_while_training_reaches_its_cut_with_every_criterion(digits, pretrained):
    for crit in ("mean_activation", "random", "l1"):
        p = params(prune={"ratio": 0.6}, schedule={"pwt_criterion": crit, "interval": 2, "epochs": 1})
        res = run_pruning(pretrained, digits, "prune_while_training", p)
        assert res.steps[-1]["filters_removed"] == pytest.approx(0.6, abs=0.03), crit
    # a run shorter than one interval still makes the whole cut (at pwt_until)
    short = params(prune={"ratio": 0.6}, schedule={"interval": 10_000, "epochs": 1})
    assert run_pruning(None, digits, "prune_while_training", short).steps[-1]["filters_removed"] == pytest.approx(
        0.6, abs=0.03
    )
    assert parse_params({}).schedule.pwt_criterion == "l1"  # the paper's best


def test_training_time_methods_start_from_scratch_by_default(digits, pretrained):
    from ice.methods.training import initial_model

    p = params()
    assert p.schedule.init == "scratch" and p.schedule.lr_policy == "one_cycle"
    fresh = initial_model(pretrained, digits, p)
    torch.manual_seed(p.seed)  # the very initialisation pre-training starts from
    seeded = build_model(p.model.arch, digits.num_classes, digits.in_channels)
    assert all(
        torch.equal(a, b) for a, b in zip(fresh.state_dict().values(), seeded.state_dict().values(), strict=True)
    )
    assert not torch.equal(fresh.fc.weight, pretrained.fc.weight)
    # from scratch no model is needed; from pretrained one is, and it is copied, never changed
    before = {k: v.clone() for k, v in pretrained.state_dict().items()}
    res = run_pruning(None, digits, "one_shot", p)
    assert res.info["init"] == "scratch" and res.steps[-1]["acc_finetuned"] < 60  # one epoch from random weights
    warm = run_pruning(
        pretrained, digits, "one_shot", params(schedule={"init": "pretrained", "lr": 0.01, "target": 0.5})
    )
    assert warm.info["init"] == "pretrained" and warm.steps[-1]["acc_finetuned"] > 80
    assert all(torch.equal(v, pretrained.state_dict()[k]) for k, v in before.items())
    with pytest.raises(ValueError, match="needs the pre-trained model"):
        run_pruning(None, digits, "agp", params(schedule={"init": "pretrained"}))


@pytest.mark.parametrize("policy", ["one_cycle", "cosine"])
def test_the_lr_policy_of_training_time_methods(digits, policy):
    """one_cycle warms up (the lr at the end of epoch 1 of 10 is under the peak and rising), cosine only falls."""
    small = digits.subset(0.25)
    res = run_pruning(None, small, "agp", params(schedule={"epochs": 10, "lr_policy": policy, "lr": 0.1}))
    lrs = [r["lr"] for r in res.steps]
    if policy == "one_cycle":
        assert lrs[0] < lrs[1] and lrs[1] > lrs[-1] and max(lrs) <= 0.1
    else:
        assert all(a > b for a, b in zip(lrs, lrs[1:], strict=False))
    assert lrs[-1] < 0.01


def test_training_time_work_is_counted_and_shrinks_with_the_filters(digits):
    from ice.metrics import count_macs, train_macs

    small = digits.subset(0.25)
    p = params(prune={"ratio": 0.5}, schedule={"epochs": 2})
    dense = run_pruning(None, small, "one_shot", p)  # weight masks: dense work every step
    m = build_model("cifar_resnet20", 10, in_channels=1)
    shape = small.input_shape()
    per_epoch = (len(small.train) * train_macs(m, shape) + len(small.val) * count_macs(m, shape)) / 1e9
    assert dense.info["work_gmacs"] == pytest.approx(2 * per_epoch, rel=1e-6)
    assert dense.steps[0]["work"] == pytest.approx(per_epoch, rel=1e-6)  # cumulative, per epoch
    pwt = run_pruning(None, small, "prune_while_training", p)
    assert pwt.info["work_gmacs"] < 0.9 * dense.info["work_gmacs"]


def test_structured_pruning_during_training_keeps_training_survivors(digits, pretrained):
    import copy

    m = copy.deepcopy(pretrained)
    opt = make_optimizer(m, 0.05)
    train_epoch(m, digits, opt, batch_size=64, fraction=0.2, augment=False)  # momentum buffers exist
    pruner = FilterPruner(m, "l1")
    pruner.prune_to(0.5, opt)
    conv = m.layer1[0].conv1
    assert conv.out_channels == 8
    in_opt = {id(q) for g in opt.param_groups for q in g["params"]}
    assert id(conv.weight) in in_opt, "the pruned layer's new weight must be in the optimizer"
    assert opt.state[conv.weight]["momentum_buffer"].shape == conv.weight.shape
    w = conv.weight.detach().clone()
    train_epoch(m, digits, opt, batch_size=64, fraction=0.2, augment=False)
    assert not torch.equal(conv.weight, w), "surviving weights must keep training after pruning"


def test_unknown_method():
    with pytest.raises(ValueError, match="choose one of ice, iterative"):
        run_pruning(None, None, "lottery", parse_params({}))  # type: ignore[arg-type]
    assert set(METHODS) >= {"ice", "iterative", "one_shot", "agp", "one_cycle", "prune_while_training"}


def test_driving_the_loop_one_step_at_a_time_through_checkpoints_matches(digits, pretrained, tmp_path):
    """What an orchestrator does: plain-data state, the model only in checkpoint files, the same loop."""
    import json

    from ice.checkpoint import load_checkpoint, save_checkpoint
    from ice.methods.core import (
        apply_frozen,
        decide,
        decision_check,
        finetune_after,
        iterate,
        prune_and_lr,
        run_steps,
        start_run,
    )
    from ice.methods.plan import RunPlan, RunStart

    p = params(
        prune={"max_units": 3, "ratio": 0.5, "bn_recal_batches": 0}
    )  # at 0.5 without BN re-estimation the first step fine-tunes, the others not
    reference = iterate(pretrained, digits, "ice", p)

    pre = tmp_path / "pretrained.pt"
    save_checkpoint(pre, pretrained)
    model, _ = load_checkpoint(pre)
    wire = json.loads(json.dumps(start_run(model, digits, "ice", p).to_dict()))  # it travels as plain data
    start = RunStart.from_dict(wire)
    plan = RunPlan.from_dict(json.loads(json.dumps(start.plan.to_dict())))  # what each step task gets

    class FileSteps:  # every call loads its input checkpoint and writes a new one, as the flow's tasks do
        ckpt = pre

        def _load(self):
            m, _ = load_checkpoint(self.ckpt)
            apply_frozen(m, plan, p)
            return m

        def prune(self, k):
            m = self._load()
            out = prune_and_lr(m, digits, plan, k, p)
            self.ckpt = tmp_path / f"pruned-{k}.pt"
            save_checkpoint(self.ckpt, m)
            return out

        def decision_check(self):
            return decision_check(self._load(), digits, p)

        def decide(self, reference, acc_now):
            return decide(plan, reference, acc_now)

        def finetune(self, k, lr):
            m = self._load()
            out = finetune_after(m, load_checkpoint(pre)[0], digits, k, lr, p)
            self.ckpt = tmp_path / f"finetuned-{k}.pt"
            save_checkpoint(self.ckpt, m)
            return out

    ops = FileSteps()
    steps, stopped = run_steps(ops, start, p)
    assert stopped is None and len(steps) == 3
    strip = lambda rs: [{k: v for k, v in r.items() if not k.startswith("t_")} for r in rs]  # noqa: E731
    assert strip(steps) == strip(reference.steps)
    assert any(r["finetuned"] for r in steps) and not all(r["finetuned"] for r in steps)  # both branches ran
    final, _ = load_checkpoint(ops.ckpt)
    ref_state = reference.model.state_dict()
    assert all(torch.equal(v, ref_state[k]) for k, v in final.state_dict().items())


def test_a_trial_continued_from_its_checkpoint_ends_the_same(digits, pretrained, tmp_path):
    """A killed auto-tune trial loses at most one step: it continues from the state saved after the last one."""
    import json

    from ice.checkpoint import load_checkpoint, save_checkpoint
    from ice.methods.autotune import run_trial

    p = params(prune={"max_units": 3}, ice={"autotune": {"enabled": True, "subset": 0.3}})
    hp = {"thre": 0.5, "fr": 0.3, "base": 0.005, "delta": 0.0006, "p": 0.1, "beta": 40}
    saved = []

    def checkpoint(model, state, steps):
        path = tmp_path / f"after-{len(steps)}.pt"
        save_checkpoint(path, model, {"state": state, "steps": steps})
        saved.append(path)

    full = run_trial(pretrained, digits, p, hp, checkpoint=checkpoint)
    assert len(saved) == 2  # after steps 1 and 2 of 3
    model, meta = load_checkpoint(saved[0])
    resumed = run_trial(
        pretrained,
        digits,
        p,
        hp,
        resume={"model": model, "state": json.loads(json.dumps(meta["state"])), "steps": meta["steps"]},
    )
    assert (resumed.acc_final, resumed.finetunes, resumed.work) == (full.acc_final, full.finetunes, full.work)
