"""The pruning loop shared by ICE and the iterative baseline, written once.

A run is: :func:`start_run` (plan, and for ICE the reference accuracy, the freeze trial
and its hyperparameters), then :func:`run_steps`, the one loop: for each planned step
it prunes, evaluates the pruned model when the method decides on it, asks
:func:`decide`, fine-tunes at :func:`step_lr` when a fine-tune is due (evaluating after
it for the curve), and records the step with :func:`record_step`.

The loop does not touch a model itself: it calls a :class:`StepOps`, which does the
work. :class:`ModelSteps` works on a model in memory (:func:`iterate`, the auto-tuner's
trials); the Prefect flow (``flows/prune.py``) passes one whose operations are cached
tasks over checkpoints. Both run the same loop and the same building blocks
(:func:`prune_and_lr`, :func:`decision_check`, :func:`decide`, :func:`finetune_after`),
so their steps and figures are the same.

The baseline pays only for what it needs: it fine-tunes after every step, so it never
evaluates a freshly pruned model (only ICE's decision needs that). Both methods
evaluate after a fine-tune when ``prune.eval_after_finetune`` is on (the per-step
curve), and both pay for it.

**Cost, in one place.** Every building block reports its seconds and its work, in
billions of MACs (GMACs) by :mod:`ice.metrics`' accounting: an evaluation is a forward
pass per image, a fine-tune :func:`ice.metrics.train_macs` per image plus the teacher's
forward pass, and frozen layers skip their weight gradients. :func:`run_cost` adds a
run's parts up: the search (for ICE), the setup (reference accuracy and freeze trial)
and every step. A run's seconds are this sum of compute seconds, never a wall clock.
"""

from __future__ import annotations

import copy
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, NotRequired, Protocol, TypedDict

import torch
from torch import nn

from ice.config import Params
from ice.data import AnySplit, Dataset, probe_batch
from ice.methods.finetune import finetune
from ice.methods.ice import (
    freeze_trial,
    ice_hparams,
    pruning_aware_lr,
    select_frozen,
    should_finetune,
)
from ice.methods.plan import RunPlan, RunStart, last_accuracy, plan_steps
from ice.methods.recovery import RecoveryOps, recover_chunk, recover_to_target, target_check
from ice.methods.registry import spec
from ice.metrics import G, count_macs, count_params, prunable_conv_params
from ice.pruning import prunable_units, prune_unit
from ice.pruning.graph import GraphError
from ice.pruning.importance import criterion_spec
from ice.recalibrate import recalibrate_bn
from ice.train import accuracy, freeze, frozen_convs, unfreeze

__all__ = [
    "Callbacks",
    "StepRecord",
    "PruningResult",
    "finetune",
    "start_run",
    "StepOps",
    "ModelSteps",
    "run_steps",
    "Outcome",
    "finish_run",
    "prune_only",
    "prune_and_lr",
    "decision_check",
    "needs_decision_eval",
    "decision_split",
    "val_accuracy",
    "decide",
    "decision_reference",
    "step_lr",
    "record_step",
    "run_cost",
    "add_search",
    "iterate",
    "unit_by_name",
    "apply_frozen",
    "finetune_after",
    "plan_steps",
    "recovery_freeze",
]


@dataclass
class Callbacks:
    """Optional hooks: progress lines, each finished step, each auto-tune trial."""

    on_log: Callable[[str], None] | None = None
    on_step: Callable[[Mapping[str, Any]], None] | None = None
    on_trial: Callable[[dict[str, Any]], None] | None = None

    def log(self, msg: str) -> None:
        if self.on_log is not None:
            self.on_log(msg)


class StepRecord(TypedDict):
    """One step of a step-wise run, from :func:`record_step` to the step table (``steps.csv``,
    the MLflow metrics, the prune report); it is a plain dict at run time, so it crosses task
    results and JSON as it is."""

    step: int
    unit: str
    ratio: float
    params: int
    sparsity: float  # share of the original model's parameters removed (the name every method logs)
    macs: int
    acc_pruned: float | None  # None: not measured (the baseline does not need it)
    finetuned: bool
    lr: float
    frozen: int
    acc_finetuned: float | None  # accuracy after the step (fine-tuned or not); None: not measured
    t_prune: float
    t_eval: float
    t_finetune: float
    work_eval: float  # GMACs
    work_finetune: float  # GMACs
    skipped: str  # the units of this step that could not be pruned, and why ("" when none)
    # the run's cost up to and including this step (plumbing.steptable.cumulative_cost)
    cum_seconds: NotRequired[float]
    cum_gmacs: NotRequired[float]


@dataclass
class PruningResult:
    model: nn.Module
    method: str
    # a step-wise method's steps, or a training-time method's epochs
    steps: list[StepRecord] | list[dict[str, Any]] = field(default_factory=list)
    seconds: float = 0.0
    finetunes: int = 0
    search: list[dict[str, Any]] = field(default_factory=list)
    info: dict[str, Any] = field(default_factory=dict)


# ----------------------------------------------------------------------------- building blocks
def unit_by_name(model: nn.Module, name: str) -> Any:
    for u in prunable_units(model):
        if u.name == name:
            return u
    raise KeyError(f"unit {name!r} is not in the model")


def decision_split(data: Dataset, params: Params) -> AnySplit:
    """The images every per-step evaluation uses: ``prune.eval_images`` of the validation
    split (a seeded draw, the same for every method), or all of it."""
    n = params.prune.eval_images
    if n is None or n >= len(data.val):
        return data.val
    return data.val.sample(n, torch.Generator().manual_seed(params.seed + 7919))


def val_accuracy(model: nn.Module, data: Dataset, params: Params) -> float:
    """Accuracy on the decision split (validation, never test)."""
    return accuracy(model, data, decision_split(data, params), batch_size=params.prune.eval_batch_size)["acc"]


def decision_check(model: nn.Module, data: Dataset, params: Params) -> dict[str, float]:
    """Accuracy on the decision split, with its seconds and work (one forward pass per image)."""
    t0 = time.perf_counter()
    acc = val_accuracy(model, data, params)
    n = len(decision_split(data, params))
    return {"acc": acc, "seconds": time.perf_counter() - t0, "work": n * count_macs(model, data.input_shape()) / G}


def needs_decision_eval(plan: RunPlan) -> bool:
    """Whether a freshly pruned model is evaluated: only ICE decides on it."""
    return plan.spec.finetune == "decide"


def start_run(
    model: nn.Module,
    data: Dataset,
    method: str,
    params: Params,
    *,
    hp: dict[str, float] | None = None,
    callbacks: Callbacks | None = None,
    freeze_scores: dict[str, float] | None = None,
) -> RunStart:
    """Everything a run decides before its first step.

    For ``ice`` this measures the reference accuracy and runs the freeze trial (unless
    ``freeze_scores`` from an earlier trial on the same model and data are given); both
    count in ``seconds_setup`` and ``work_setup``. ``hp`` overrides ICE's
    hyperparameters (thre, fr, base, delta, p, beta), for example from the auto-tuner.
    """
    cb = callbacks or Callbacks()
    t0 = time.perf_counter()
    units = prunable_units(model)
    if params.prune.max_units:
        units = units[: params.prune.max_units]
    conv_params_original, params_original = prunable_conv_params(model), count_params(model)
    input_shape = tuple(data.input_shape())
    how = spec(method)
    acc_original: float | None = None
    work_setup, seconds_freeze_trial = 0.0, 0.0
    hparams: dict[str, float] = {}
    frozen: list[str] = []
    if how.finetune == "decide":  # the rule's reference accuracy and thresholds
        ev = decision_check(model, data, params)
        acc_original = ev["acc"]
        work_setup += ev["work"]
        hparams = ice_hparams(params, hp)
    if how.freezes:
        hparams = hparams or ice_hparams(params, hp)
    if how.freezes and hparams["fr"] > 0:
        t1 = time.perf_counter()
        if freeze_scores is None:
            trial = freeze_trial(model, data, params, units[0])
            freeze_scores = trial["scores"]
            work_setup += trial["work"]
        frozen = select_frozen(freeze_scores, hparams["fr"])
        seconds_freeze_trial = time.perf_counter() - t1
        cb.log(f"freeze trial: {len(frozen)} convs frozen")
    else:
        freeze_scores = None  # this run froze nothing: it records no scores
    plan = RunPlan(
        method=method,
        steps=plan_steps(method, [u.name for u in units], params.prune.ratio),
        frozen=tuple(frozen),
        hp=hparams,
        input_shape=input_shape,
        conv_params_original=conv_params_original,
    )
    return RunStart(
        plan=plan,
        acc_original=acc_original,
        params_original=params_original,
        seconds_setup=time.perf_counter() - t0,
        work_setup=work_setup,
        seconds_freeze_trial=seconds_freeze_trial,
        freeze_scores=freeze_scores,
    )


def apply_frozen(model: nn.Module, plan: RunPlan, params: Params) -> None:
    """(Re)apply the run's freeze list; cheap, and safe after any structural change."""
    if plan.frozen:
        freeze(model, list(plan.frozen), bn=params.ice.freeze_bn, bn_stats=params.ice.freeze_bn_stats)


def prune_only(model: nn.Module, data: Dataset, plan: RunPlan, k: int, params: Params) -> dict[str, Any]:
    """Apply planned step ``k`` to ``model`` in place (no evaluation); return sizes, time and work."""
    step = plan.steps[k]
    t0 = time.perf_counter()
    work = 0.0
    info: dict[str, Any] = {}
    skipped: list[str] = []  # units the dependency graph cannot prune (GraphError): left whole
    # prune_once's one step walks every unit; the seed of unit j is the one the j-th step would use
    for j, name in ((k + j, n) for j, n in enumerate(step.unit_names())):
        batch = None
        crit = criterion_spec(params.prune.criterion)
        if crit.needs_data:
            batch = probe_batch(data, device=next(model.parameters()).device)
            work += len(batch[1]) * count_macs(model, data.input_shape()) * crit.passes / G
        try:
            info = prune_unit(
                model,
                unit_by_name(model, name),
                step.ratio,
                params.prune.criterion,
                data=batch,
                seed=params.seed * 1000 + j,
                input_shape=plan.input_shape,
                rounding=params.prune.rounding,
                round_to=params.prune.round_to,
            )
        except GraphError as err:  # this unit cannot be pruned; the model is as it was, the others go on
            skipped.append(f"{name}: {err}")
    if not info:  # every unit of the step was skipped
        info = {"params_after": count_params(model), "macs_after": count_macs(model, plan.input_shape)}
    apply_frozen(model, plan, params)
    # the statistics the pruned layers' inputs now have, before anything evaluates or trains it
    bn = recalibrate_bn(
        model, data, params.prune.bn_recal_batches, params.prune.batch_size, params.seed * 1000 + 500_009 + k
    )
    work += bn["work"]
    return {
        "step": k + 1,  # steps count from 1, as the logs and task names do
        "unit": step.unit,
        "ratio": step.ratio,
        "params": info["params_after"],
        "macs": info["macs_after"],
        "t_prune": time.perf_counter() - t0,
        "work_prune": work,
        "bn_images": bn["images"],
        "skipped": "; ".join(skipped),
    }


def prune_and_lr(model: nn.Module, data: Dataset, plan: RunPlan, k: int, params: Params) -> dict[str, Any]:
    """:func:`prune_only`, plus the lr a fine-tune after this step would use and the number of frozen convs."""
    out = prune_only(model, data, plan, k, params)
    out["lr"] = step_lr(model, plan, params)
    out["frozen"] = frozen_convs(model)
    return out


def decision_reference(acc_original: float | None, acc_previous: float | None, params: Params) -> float | None:
    """The accuracy ICE's rule compares a pruned model with: the unpruned model's
    (``ice.reference: original``) or the accuracy after the step before (``previous``)."""
    return acc_original if params.ice.reference == "original" else acc_previous


def decide(plan: RunPlan, reference: float | None, acc_now: float | None) -> bool:
    """Whether the step calls for a fine-tune: always for the baseline, never for prune_once
    (its recovery does all the training), by ICE's rule for ICE (:func:`decision_reference`)."""
    rule = plan.spec.finetune
    if rule != "decide":
        return rule == "always"
    assert acc_now is not None and reference is not None, "ICE decides on the pruned model's accuracy"
    return should_finetune(reference, acc_now, plan.hp["thre"])


def step_lr(model: nn.Module, plan: RunPlan, params: Params) -> float:
    if not plan.spec.pruning_aware_lr:
        return params.prune.finetune_lr
    hp = plan.hp
    x = prunable_conv_params(model) / plan.conv_params_original
    return pruning_aware_lr(x, hp["base"], hp["delta"], hp["p"], hp["beta"])


def eval_after_finetune(plan: RunPlan, params: Params) -> bool:
    """Evaluate after a fine-tune: for the curve (both methods), or for ICE's ``previous`` reference."""
    decides = plan.spec.finetune == "decide"
    return params.prune.eval_after_finetune or (decides and params.ice.reference == "previous")


def finetune_after(
    model: nn.Module, teacher: nn.Module | None, data: Dataset, k: int, lr: float, params: Params
) -> dict[str, Any]:
    """The fine-tune after step ``k`` (fresh SGD at ``lr``, CE + KD, frozen layers left out), seeded by the step."""
    stats = finetune(model, data, params, lr=lr, teacher=teacher, seed=params.seed * 1000 + k)
    return {"seconds": stats["seconds"], "work": stats["work"], "train_loss": stats.get("loss", 0.0)}


def record_step(
    start: RunStart, pruned: dict[str, Any], ft: dict[str, Any] | None, lr: float, frozen: int
) -> StepRecord:
    """Merge a step's parts into its record (its ``acc_finetuned`` is the accuracy after the
    step, fine-tuned or not: the next step's ``previous`` reference, :func:`last_accuracy`)."""
    acc_after = ft["acc"] if ft is not None else pruned["acc_pruned"]
    return StepRecord(
        step=pruned["step"],
        unit=pruned["unit"],
        ratio=pruned["ratio"],
        params=pruned["params"],
        sparsity=1 - pruned["params"] / start.params_original,
        macs=pruned["macs"],
        acc_pruned=pruned["acc_pruned"],
        finetuned=ft is not None,
        lr=lr if ft is not None else 0.0,
        frozen=frozen,
        acc_finetuned=acc_after,
        t_prune=pruned["t_prune"],
        t_eval=pruned["t_eval"] + (ft["t_eval"] if ft is not None else 0.0),
        t_finetune=ft["seconds"] if ft is not None else 0.0,
        work_eval=pruned["work_eval"] + pruned.get("work_prune", 0.0) + (ft["work_eval"] if ft is not None else 0.0),
        work_finetune=ft["work"] if ft is not None else 0.0,
        skipped=pruned.get("skipped", ""),
    )


def run_cost(
    start: RunStart, steps: Sequence[StepRecord], search_seconds: float = 0.0, search_work: float = 0.0
) -> dict[str, float]:
    """A run's total seconds and work (GMACs), and their parts: the one definition of cost."""
    parts = {
        "search_seconds": search_seconds,
        "search_work": search_work,
        "setup_seconds": start.seconds_setup,
        "setup_work": start.work_setup,
        "finetune_seconds": sum(r["t_finetune"] for r in steps),
        "finetune_work": sum(r["work_finetune"] for r in steps),
        "eval_seconds": sum(r["t_eval"] for r in steps),
        "eval_work": sum(r["work_eval"] for r in steps),
        "prune_seconds": sum(r["t_prune"] for r in steps),
    }
    parts["seconds"] = sum(v for k, v in parts.items() if k.endswith("_seconds"))
    parts["work_gmacs"] = sum(v for k, v in parts.items() if k.endswith("_work"))
    return parts


def add_search(cost: dict[str, float], seconds: float, work: float) -> dict[str, float]:
    """``cost`` (from :func:`run_cost`) with a search's seconds and work added to its totals."""
    out = dict(cost)
    out["seconds"] += seconds - out["search_seconds"]
    out["work_gmacs"] += work - out["search_work"]
    out["search_seconds"], out["search_work"] = seconds, work
    return out


def recovery_freeze(model: nn.Module, plan: RunPlan, params: Params) -> None:
    """The layers that train during the recovery: ICE keeps its freeze list when
    ``ice.recovery_frozen`` (the list holds for the whole run); otherwise every layer trains."""
    if plan.frozen and plan.spec.freezes and params.ice.recovery_frozen:
        apply_frozen(model, plan, params)
    else:
        unfreeze(model)


# ----------------------------------------------------------------------------- the loop
class StepOps(Protocol):
    """The work one step needs, on whatever holds the model (memory, checkpoints, tasks)."""

    def prune(self, k: int) -> dict[str, Any]:
        """Apply planned step ``k``; :func:`prune_and_lr`'s record."""
        ...

    def decision_check(self) -> dict[str, float]:
        """The current model on the decision split: ``acc``, ``seconds``, ``work``."""
        ...

    def decide(self, reference: float | None, acc_now: float | None) -> bool:
        """Whether the step calls for a fine-tune (:func:`decide`)."""
        ...

    def finetune(self, k: int, lr: float) -> dict[str, Any]:
        """Fine-tune the current model after step ``k``; ``seconds`` and ``work``."""
        ...


class ModelSteps:
    """:class:`StepOps` on a model in memory, changed in place."""

    def __init__(self, model: nn.Module, teacher: nn.Module | None, data: Dataset, plan: RunPlan, params: Params):
        self.model, self.teacher, self.data, self.plan, self.params = model, teacher, data, plan, params
        self.optimizer_state: dict[str, Any] | None = None  # the recovery's SGD, carried across chunks

    def prune(self, k: int) -> dict[str, Any]:
        return prune_and_lr(self.model, self.data, self.plan, k, self.params)

    def decision_check(self) -> dict[str, float]:
        return decision_check(self.model, self.data, self.params)

    def decide(self, reference: float | None, acc_now: float | None) -> bool:
        return decide(self.plan, reference, acc_now)

    def finetune(self, k: int, lr: float) -> dict[str, Any]:
        return finetune_after(self.model, self.teacher, self.data, k, lr, self.params)

    def recover(self, i: int, budget: float | None) -> dict[str, Any]:
        recovery_freeze(self.model, self.plan, self.params)
        out = recover_chunk(self.model, self.teacher, self.data, i, self.params, budget, self.optimizer_state)
        self.optimizer_state = out.pop("optimizer")
        return out

    def target_check(self) -> dict[str, float]:
        return target_check(self.model, self.data, self.params)


def run_steps(
    ops: StepOps,
    start: RunStart,
    params: Params,
    *,
    done: list[StepRecord] | None = None,
    on_step: Callable[[int, int, StepRecord], None] | None = None,
    stop: Callable[[int, dict[str, float], StepRecord], bool] | None = None,
    checkpoint: Callable[[list[StepRecord]], None] | None = None,
) -> tuple[list[StepRecord], int | None]:
    """The loop: every planned step after the ``done`` ones; returns the step records and
    the step after which ``stop`` ended the run (None: it ran to the end).

    ``on_step(k, n, record)`` follows every step; ``stop(k, cost, record)`` is asked after
    every step but the last; ``checkpoint(steps)`` is called after every step but the last.
    """
    steps = list(done or [])
    plan = start.plan
    n = len(plan.steps)
    previous = last_accuracy(steps, start.acc_original)  # the accuracy after the step before
    decides = needs_decision_eval(plan)  # only ICE's rule checks the pruned model and has a reference
    for k in range(len(steps), n):
        pruned = ops.prune(k)
        pruned.update(acc_pruned=None, t_eval=0.0, work_eval=0.0)
        if decides:
            ev = ops.decision_check()
            pruned.update(acc_pruned=ev["acc"], t_eval=ev["seconds"], work_eval=ev["work"])
        ft = None
        reference = decision_reference(start.acc_original, previous, params) if decides else None
        if ops.decide(reference, pruned["acc_pruned"]):
            ft = {"acc": None, "t_eval": 0.0, "work_eval": 0.0, **ops.finetune(k, pruned["lr"])}
            if eval_after_finetune(plan, params):
                ev = ops.decision_check()
                ft.update(acc=ev["acc"], t_eval=ev["seconds"], work_eval=ev["work"])
        rec = record_step(start, pruned, ft, pruned["lr"], pruned["frozen"])
        steps.append(rec)
        if rec["acc_finetuned"] is not None:
            previous = rec["acc_finetuned"]
        if on_step is not None:
            on_step(k, n, rec)
        if stop is not None and k + 1 < n and stop(k, run_cost(start, steps), rec):
            return steps, k
        if checkpoint is not None and k + 1 < n:
            checkpoint(steps)
    return steps, None


@dataclass
class Outcome:
    """How a step-wise run ended: assembled once, by :func:`finish_run`, for the in-memory loop
    (:func:`iterate`) and the prune flow alike. ``cost`` is :func:`run_cost`'s (plus the search
    and the recovery); ``target`` and ``recovery`` are set when a recovery to the target ran."""

    steps: list[StepRecord]
    cost: dict[str, float]
    hp: dict[str, float]
    frozen: list[str]
    acc_original: float | None
    target: dict[str, Any] | None = None
    recovery: list[dict[str, Any]] | None = None

    @property
    def finetunes(self) -> int:
        return sum(1 for r in self.steps if r["finetuned"])


def finish_run(
    ops: RecoveryOps,
    start: RunStart,
    steps: list[StepRecord],
    params: Params,
    method: str,
    *,
    search: dict[str, float] | None = None,
    reference: Callable[[], dict[str, float]] | None = None,
    log: Callable[[str], None] = lambda line: None,
    on_check: Callable[[dict[str, Any], str], None] | None = None,
) -> Outcome:
    """The run's :class:`Outcome` once its steps are done: their cost, plus ``search``'s
    (``seconds``, ``work``) when given, and, with ``prune.target.tolerance`` set and a
    ``reference`` (the unpruned model's :func:`~ice.methods.recovery.target_check`), the
    recovery to the target through ``ops``."""
    cost = run_cost(start, steps)
    if search is not None:
        cost = add_search(cost, search["seconds"], search["work"])
    out = Outcome(steps, cost, dict(start.plan.hp), list(start.plan.frozen), start.acc_original)
    if reference is not None and params.prune.target.tolerance is not None:
        out.cost, out.target, out.recovery = recover_to_target(ops, reference(), cost, params, method, log, on_check)
    return out


def iterate(
    model: nn.Module,
    data: Dataset,
    method: str,
    params: Params,
    *,
    hp: dict[str, float] | None = None,
    callbacks: Callbacks | None = None,
    freeze_scores: dict[str, float] | None = None,
    stop: Callable[[int, dict[str, float], StepRecord], bool] | None = None,
    resume: dict[str, Any] | None = None,
    checkpoint: Callable[[nn.Module, dict[str, Any], list[StepRecord]], None] | None = None,
    search_cost: dict[str, float] | None = None,
    recover: bool = True,
) -> PruningResult:
    """Run ICE or the iterative baseline in memory on a copy of ``model``.

    ``result.seconds`` and ``result.info["work_gmacs"]`` are :func:`run_cost`'s totals
    (without a search; :func:`ice.methods.run_pruning` adds it). ``stop(k, cost, record)``
    is asked after each step and ends the run early when it says so (the auto-tuner's
    early stopping); ``result.info["stopped_at"]`` then names the step.

    ``checkpoint(model, state, steps)`` is called after every step but the last, with the
    run's :class:`~ice.methods.plan.RunStart` as plain data (``to_dict``); passing those
    back as ``resume={"model", "state", "steps"}``
    continues the run where it stopped, with the same result.

    ``search_cost`` (``seconds``, ``work``) is a search's cost, counted in the totals. With
    ``prune.target.tolerance`` set (and ``recover``), the steps are followed by the
    recovery to the target (:mod:`ice.methods.recovery`); ``result.info["target"]`` then
    holds the cost to target and ``result.info["recovery"]`` one record per check.
    """
    cb = callbacks or Callbacks()
    original = model
    teacher = copy.deepcopy(model).eval() if params.prune.kd else None
    if resume is not None:
        model, start, done = resume["model"], RunStart.from_dict(resume["state"]), list(resume["steps"])
    else:
        model = copy.deepcopy(model)
        start = start_run(model, data, method, params, hp=hp, callbacks=cb, freeze_scores=freeze_scores)
        done = []
    plan = start.plan
    apply_frozen(model, plan, params)
    result = _opened(model, method, start, done)

    def on_step(k: int, n: int, rec: StepRecord) -> None:
        if cb.on_step is not None:
            cb.on_step(rec)
        cb.log(step_line(method, k, n, rec))

    ops = ModelSteps(model, teacher, data, plan, params)
    result.steps, stopped = run_steps(
        ops,
        start,
        params,
        done=done,
        on_step=on_step,
        stop=stop,
        checkpoint=None if checkpoint is None else lambda steps: checkpoint(model, start.to_dict(), steps),
    )
    if stopped is not None:
        result.info["stopped_at"] = stopped
    out = finish_run(
        ops,
        start,
        result.steps,
        params,
        method,
        search=search_cost,
        reference=(lambda: target_check(original, data, params)) if recover and stopped is None else None,
        log=cb.log,
        on_check=lambda rec, line: cb.log(line),
    )
    result.finetunes = out.finetunes
    if out.target is not None:
        result.info.update(recovery=out.recovery, target=out.target)
    return _closed(result, start, out.cost, tuple(data.input_shape()))


def _opened(model: nn.Module, method: str, start: RunStart, done: list[dict[str, Any]]) -> PruningResult:
    """The result of a run as it starts (or resumes): what its start measured and decided."""
    plan = start.plan
    return PruningResult(
        model=model,
        method=method,
        steps=done,
        info={
            "acc_original": start.acc_original,
            "hp": dict(plan.hp),
            "frozen": list(plan.frozen),
            "freeze_scores": None if start.freeze_scores is None else dict(start.freeze_scores),
        },
    )


def _closed(result: PruningResult, start: RunStart, cost: dict[str, float], shape: tuple[int, ...]) -> PruningResult:
    """``result`` with its final size and its cost totals."""
    result.seconds = cost["seconds"]
    result.info.update(
        {
            "params": count_params(result.model),
            "macs": count_macs(result.model, shape),
            "work_gmacs": cost["work_gmacs"],
            "cost": cost,
            "seconds_freeze_trial": start.seconds_freeze_trial,
        }
    )
    return result


def step_line(method: str, k: int, n: int, rec: Mapping[str, Any]) -> str:
    """One progress line per step."""

    def acc(v: float | None) -> str:
        return "-" if v is None else f"{v:.2f}"

    left = f"; left whole, it cannot be pruned ({rec['skipped']})" if rec.get("skipped") else ""
    if not rec["finetuned"]:
        return f"[{method}] step {k + 1}/{n} {rec['unit']}: acc {acc(rec['acc_pruned'])} (no fine-tune){left}"
    before = f"acc {acc(rec['acc_pruned'])} -> " if rec["acc_pruned"] is not None else ""
    return (
        f"[{method}] step {k + 1}/{n} {rec['unit']}: {before}fine-tune (lr {rec['lr']:.2e}) "
        f"{acc(rec['acc_finetuned'])}{left}"
    )
