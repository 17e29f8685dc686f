"""The pruning loop shared by ICE and the iterative baseline, drivable one step at a time.

A run is: :func:`start_run` (reference accuracy, plan, ICE's freeze trial and search),
then for each planned step :func:`prune_step`, :func:`decide`, and when it says so
:func:`finetune` at :func:`step_lr`, then :func:`record_step`. Inputs and outputs
are plain data plus the model, so an orchestrator can checkpoint between calls and
make each call its own cached task. :func:`iterate` chains them in memory.
"""

from __future__ import annotations

import copy
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from typing import Any

import torch
from torch import nn

from ice.config import Params
from ice.data import Dataset, probe_batch
from ice.metrics import count_macs, count_params, prunable_conv_params, train_macs
from ice.pruning import prunable_units, prune_unit
from ice.pruning.importance import DATA_CRITERIA
from ice.train import epoch_fractions, evaluate, freeze, frozen_names, make_optimizer, train_epoch

__all__ = [
    "Callbacks",
    "StepRecord",
    "PruningResult",
    "finetune",
    "start_run",
    "prune_step",
    "prune_only",
    "val_accuracy",
    "decide",
    "step_lr",
    "record_step",
    "iterate",
    "unit_by_name",
    "apply_frozen",
    "finetune_step",
]


@dataclass
class Callbacks:
    """Optional hooks: progress lines, each finished step, each auto-tune trial."""

    on_log: Callable[[str], None] | None = None
    on_step: Callable[[dict[str, Any]], None] | None = None
    on_trial: Callable[[dict[str, Any]], None] | None = None

    def log(self, msg: str) -> None:
        if self.on_log is not None:
            self.on_log(msg)


@dataclass
class StepRecord:
    step: int
    unit: str
    ratio: float
    params: int
    macs: int
    acc_pruned: float
    finetuned: bool
    lr: float
    frozen: int
    acc_finetuned: float
    t_prune: float
    t_eval: float
    t_finetune: float


@dataclass
class PruningResult:
    model: nn.Module
    method: str
    steps: list[dict[str, Any]] = field(default_factory=list)
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


def finetune(
    model: nn.Module,
    data: Dataset,
    params: Params,
    *,
    lr: float,
    teacher: nn.Module | None,
    seed: int,
    epochs: float | None = None,
) -> dict[str, float]:
    """ICE's fine-tune: SGD (momentum, wd) with a fresh optimizer, CE + KD from the teacher."""
    cfg = params.prune
    epochs = cfg.finetune_epochs if epochs is None else epochs
    opt = make_optimizer(model, lr, cfg.momentum, cfg.weight_decay)
    g = torch.Generator().manual_seed(seed)
    t0 = time.perf_counter()
    stats: dict[str, float] = {}
    for frac in epoch_fractions(epochs):
        stats = train_epoch(
            model, data, opt,
            batch_size=cfg.batch_size, fraction=frac, augment=cfg.augment, generator=g,
            teacher=teacher if cfg.kd else None, temperature=cfg.kd_temperature,
            channels_last=params.train.channels_last,
        )
    stats["seconds"] = time.perf_counter() - t0
    return stats


def val_accuracy(model: nn.Module, data: Dataset, params: Params) -> float:
    """Accuracy on the validation split: the split every decision is made on."""
    return evaluate(model, data, "val", batch_size=params.prune.eval_batch_size)["acc"]


def start_run(
    model: nn.Module,
    data: Dataset,
    method: str,
    params: Params,
    *,
    hp: dict[str, float] | None = None,
    callbacks: Callbacks | None = None,
) -> dict[str, Any]:
    """Everything a run decides before its first step, as plain data.

    For ``ice`` this runs the freeze trial (its time is counted). ``hp`` overrides ICE's
    hyperparameters (thre, fr, base, delta, p, beta), for example from the auto-tuner.
    """
    from ice.methods.ice import freeze_trial, ice_hparams

    cb = callbacks or Callbacks()
    t0 = time.perf_counter()
    units = prunable_units(model)
    if params.prune.max_units:
        units = units[: params.prune.max_units]
    acc0 = val_accuracy(model, data, params)
    state: dict[str, Any] = {
        "method": method,
        "acc_original": acc0,
        "acc_previous": acc0,
        "conv_params_original": prunable_conv_params(model),
        "input_shape": list(data.input_shape()),
        "plan": [{"step": k, "unit": u.name, "ratio": params.prune.ratio} for k, u in enumerate(units)],
        "frozen": [],
        "hp": {},
        "seconds_setup": 0.0,
    }
    if method == "ice":
        state["hp"] = ice_hparams(params, hp)
        if state["hp"]["fr"] > 0:
            state["frozen"] = freeze_trial(model, data, params, units[0], state["hp"]["fr"])
            cb.log(f"freeze trial: {len(state['frozen'])} convs frozen")
    state["seconds_setup"] = time.perf_counter() - t0
    return state


def apply_frozen(model: nn.Module, state: dict[str, Any], params: Params) -> None:
    """(Re)apply the run's freeze list; cheap, and safe after any structural change."""
    if state["frozen"]:
        freeze(model, state["frozen"], bn=params.ice.freeze_bn)


def prune_only(model: nn.Module, data: Dataset, state: dict[str, Any], k: int, params: Params) -> dict[str, Any]:
    """Apply planned step ``k`` to ``model`` in place (no evaluation); return sizes and time."""
    plan = state["plan"][k]
    t0 = time.perf_counter()
    unit = unit_by_name(model, plan["unit"])
    batch = None
    if params.prune.criterion in DATA_CRITERIA:
        batch = probe_batch(data, device=next(model.parameters()).device)
    info = prune_unit(
        model, unit, plan["ratio"], params.prune.criterion, data=batch,
        seed=params.seed * 1000 + k, input_shape=tuple(state["input_shape"]),
    )
    apply_frozen(model, state, params)
    return {
        "step": k,
        "unit": plan["unit"],
        "ratio": plan["ratio"],
        "params": info["params_after"],
        "macs": info["macs_after"],
        "t_prune": time.perf_counter() - t0,
    }


def prune_step(model: nn.Module, data: Dataset, state: dict[str, Any], k: int, params: Params) -> dict[str, Any]:
    """Apply planned step ``k`` to ``model`` in place; return sizes, accuracy and timings."""
    out = prune_only(model, data, state, k, params)
    t1 = time.perf_counter()
    out["acc_pruned"] = val_accuracy(model, data, params)
    out["t_eval"] = time.perf_counter() - t1
    return out


def decide(state: dict[str, Any], acc_now: float, params: Params) -> bool:
    """Whether step's accuracy calls for a fine-tune (always, for the baseline)."""
    from ice.methods.ice import should_finetune

    if state["method"] == "iterative":
        return True
    ref = state["acc_original"] if params.ice.reference == "original" else state["acc_previous"]
    return should_finetune(ref, acc_now, state["hp"]["thre"])


def step_lr(model: nn.Module, state: dict[str, Any], params: Params) -> float:
    from ice.methods.ice import pruning_aware_lr

    if state["method"] == "iterative":
        return params.prune.finetune_lr
    hp = state["hp"]
    x = prunable_conv_params(model) / state["conv_params_original"]
    return pruning_aware_lr(x, hp["base"], hp["delta"], hp["p"], hp["beta"])


def record_step(state: dict[str, Any], pruned: dict[str, Any], ft: dict[str, Any] | None, lr: float, frozen: int) -> dict[str, Any]:
    """Merge a step's parts into its record and move the run's 'previous' accuracy on."""
    acc_after = ft["acc"] if ft is not None else pruned["acc_pruned"]
    rec = StepRecord(
        step=pruned["step"], unit=pruned["unit"], ratio=pruned["ratio"], params=pruned["params"], macs=pruned["macs"],
        acc_pruned=pruned["acc_pruned"], finetuned=ft is not None, lr=lr if ft is not None else 0.0, frozen=frozen,
        acc_finetuned=acc_after, t_prune=pruned["t_prune"],
        t_eval=pruned["t_eval"] + (ft["t_eval"] if ft is not None else 0.0),
        t_finetune=ft["seconds"] if ft is not None else 0.0,
    )
    state["acc_previous"] = acc_after
    return asdict(rec)


def finetune_step(
    model: nn.Module, teacher: nn.Module | None, data: Dataset, state: dict[str, Any], k: int, lr: float, params: Params
) -> dict[str, Any]:
    """Fine-tune after step ``k`` and measure the accuracy it reaches."""
    stats = finetune(model, data, params, lr=lr, teacher=teacher, seed=params.seed * 1000 + k)
    t = time.perf_counter()
    acc = val_accuracy(model, data, params)
    return {"acc": acc, "seconds": stats["seconds"], "t_eval": time.perf_counter() - t, "train_loss": stats.get("loss", 0.0)}


def iterate(
    model: nn.Module,
    data: Dataset,
    method: str,
    params: Params,
    *,
    hp: dict[str, float] | None = None,
    callbacks: Callbacks | None = None,
) -> PruningResult:
    """Run ICE or the iterative baseline in memory on a copy of ``model``.

    Besides measured seconds, ``info["work_gmacs"]`` counts the run's compute in billions
    of MACs (evaluations, fine-tunes with their teacher, the freeze trial; see
    :func:`ice.metrics.train_macs`): a cost that does not depend on the machine.
    """
    cb = callbacks or Callbacks()
    t0 = time.perf_counter()
    teacher = copy.deepcopy(model).eval() if params.prune.kd else None
    model = copy.deepcopy(model)
    shape = tuple(data.input_shape())
    n_train, n_val = len(data.train), len(data.val)
    m0 = count_macs(model, shape)
    teacher_macs = m0 if teacher is not None else 0
    work = n_val * m0  # the reference accuracy
    state = start_run(model, data, method, params, hp=hp, callbacks=cb)
    if state["frozen"]:  # the freeze trial: one epoch of the unfrozen model
        work += n_train * (train_macs(model, shape) + teacher_macs)
    apply_frozen(model, state, params)
    result = PruningResult(model=model, method=method, info={"acc_original": state["acc_original"], "hp": state["hp"], "frozen": state["frozen"]})
    n = len(state["plan"])
    for k in range(n):
        pruned = prune_step(model, data, state, k, params)
        ft = None
        lr = step_lr(model, state, params)
        if decide(state, pruned["acc_pruned"], params):
            ft = finetune_step(model, teacher, data, state, k, lr, params)
        rec = record_step(state, pruned, ft, lr, len(frozen_names(model)))
        work += n_val * rec["macs"] * (2 if ft is not None else 1)
        if ft is not None:
            work += round(n_train * params.prune.finetune_epochs) * (train_macs(model, shape) + teacher_macs)
        result.steps.append(rec)
        if cb.on_step is not None:
            cb.on_step(rec)
        cb.log(
            f"[{method}] step {k + 1}/{n} {rec['unit']}: acc {rec['acc_pruned']:.2f}"
            + (f" -> fine-tune (lr {lr:.2e}) {rec['acc_finetuned']:.2f}" if rec["finetuned"] else " (no fine-tune)")
        )
    result.finetunes = sum(1 for r in result.steps if r["finetuned"])
    result.seconds = time.perf_counter() - t0
    result.info.update({"params": count_params(model), "macs": count_macs(model, shape), "work_gmacs": work / 1e9})
    return result
