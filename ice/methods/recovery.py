"""Recovery to a quality target: what a pruning recipe costs to reach "good enough".

After a step-wise method's last pruning step (ice, iterative, prune_once), the pruned
model is fine-tuned in chunks of ``prune.target.check_every`` epochs. Before the first
chunk and after each one, the whole validation split is checked; the recovery stops at
the first check that is within ``prune.target.tolerance`` points of the unpruned model's
accuracy on that split, or once ``max_epochs`` are spent. The recipe's *cost to target*
is everything it spent up to that check: search, freeze trial, steps, fine-tunes,
evaluations, the reference check of the unpruned model, the chunks and their checks.

The recovery is the same for every method (MLPerf's rule: one measurement for all):
CE + KD from the unpruned model, and by default (``policy: decay``) one SGD optimizer
for the whole recovery, its momentum carried from chunk to chunk (in the chunk's
checkpoint, so a killed run resumes with the same bytes), and one linear decay of the
lr over a budget of B epochs that never rises again (budgeted training: Li, Yumer and
Ramanan 2020). B comes from the gap the pruned model leaves at the first check
(:func:`recovery_budget`), so a model that starts close to the target gets a short,
fast-annealing budget and one that starts far a long one; past B the lr stays at its
last value. ``policy: sgdr`` keeps the earlier recovery: a fresh optimizer each chunk and
a cosine with warm restarts (SGDR, Loshchilov and Hutter 2017).
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from typing import Any, Protocol

from torch import nn

from ice.config import Params, TargetConfig
from ice.data import Dataset
from ice.methods.finetune import finetune
from ice.metrics import G, count_macs
from ice.train import accuracy, make_optimizer

__all__ = [
    "RecoveryOps",
    "sgdr_lr",
    "decay_lr",
    "recovery_lr",
    "recovery_budget",
    "n_chunks",
    "chunk_epochs",
    "target_check",
    "recover_chunk",
    "run_recovery",
    "cost_to_target",
    "target_goal",
    "recovery_line",
    "recover_to_target",
]

_EPS = 1e-9


def sgdr_lr(pos: float, t: TargetConfig) -> float:
    """The recovery's lr at ``pos`` epochs into it: cosine cycles of ``cycle_epochs``,
    each next one ``cycle_mult`` times longer, each starting again at ``lr``."""
    start, length = 0.0, t.cycle_epochs
    while pos >= start + length - _EPS:
        start += length
        length *= t.cycle_mult
    return 0.5 * t.lr * (1 + math.cos(math.pi * (pos - start) / length))


def decay_lr(pos: float, budget: float, t: TargetConfig) -> float:
    """The decay's lr at ``pos`` epochs: linear from ``lr`` to ``lr * final_lr_frac`` at
    ``budget`` epochs, and that last value after it; it never rises."""
    done = min(max(pos, 0.0) / budget, 1.0)
    return t.lr * (1.0 - (1.0 - t.final_lr_frac) * done)


def recovery_lr(pos: float, t: TargetConfig, budget: float | None) -> float:
    """The recovery's lr at ``pos`` epochs into it, by ``t.policy``."""
    if t.policy == "sgdr":
        return sgdr_lr(pos, t)
    assert budget is not None, "the decay needs its budget"
    return decay_lr(pos, budget, t)


def recovery_budget(t: TargetConfig, acc_start: float, goal: float) -> float | None:
    """The decay's budget B in epochs: ``budget_epochs`` when fixed, else ``epochs_per_point``
    times the points ``acc_start`` (the first check) misses ``goal`` by, within
    [``min_budget_epochs``, ``max_epochs``] and rounded up to a whole number of checks.
    None for SGDR, which has no budget."""
    if t.policy == "sgdr":
        return None
    if t.budget_epochs is not None:
        return t.budget_epochs
    raw = min(max(t.epochs_per_point * max(goal - acc_start, 0.0), t.min_budget_epochs), t.max_epochs)
    return min(math.ceil(raw / t.check_every - _EPS) * t.check_every, t.max_epochs)


def n_chunks(t: TargetConfig) -> int:
    """How many chunks fit in ``max_epochs`` (the last one may be shorter)."""
    return max(1, math.ceil(t.max_epochs / t.check_every - _EPS))


def chunk_epochs(t: TargetConfig, i: int) -> tuple[float, float]:
    """Chunk ``i``'s start (epochs into the recovery) and length."""
    start = i * t.check_every
    return start, max(0.0, min(t.check_every, t.max_epochs - start))


def target_check(model: nn.Module, data: Dataset, params: Params) -> dict[str, float]:
    """Accuracy on the target's split (all of it), with the images, seconds and work."""
    split = params.prune.target.split
    t0 = time.perf_counter()
    acc = accuracy(model, data, split, batch_size=params.prune.eval_batch_size)["acc"]
    n = len(getattr(data, split))
    return {
        "acc": acc,
        "images": n,
        "seconds": time.perf_counter() - t0,
        "work": n * count_macs(model, data.input_shape()) / G,
    }


def recover_chunk(
    model: nn.Module,
    teacher: nn.Module | None,
    data: Dataset,
    i: int,
    params: Params,
    budget: float | None = None,
    optimizer_state: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """Train recovery chunk ``i`` in place: CE + KD with the recovery's lr by position
    (:func:`recovery_lr`, ``budget`` the decay's B). The chunk's batches are drawn with a
    generator seeded by ``seed`` and ``i``, so a chunk run again from the same checkpoint
    gives the same bytes. Under ``policy: decay`` the SGD continues from ``optimizer_state``
    (the previous chunk's; None before the first) and the result's ``optimizer`` is its
    state after this chunk, for the next; under ``sgdr`` each chunk has a fresh SGD."""
    t = params.prune.target
    start, length = chunk_epochs(t, i)
    opt = None
    if t.policy == "decay":
        opt = make_optimizer(model, recovery_lr(start, t, budget), params.prune.momentum, params.prune.weight_decay)
        if optimizer_state is not None:
            opt.load_state_dict(optimizer_state)
    stats = finetune(
        model,
        data,
        params,
        lr=recovery_lr(start, t, budget),
        teacher=teacher,
        seed=params.seed * 1000 + 700_003 + i,
        epochs=length,
        lr_at_epoch=lambda e: recovery_lr(start + e, t, budget),
        optimizer=opt,
    )
    return {
        "seconds": stats["seconds"],
        "work": stats["work"],
        "images": stats["images"],
        "train_loss": stats.get("loss", 0.0),
        "lr_start": recovery_lr(start, t, budget),
        "lr_end": recovery_lr(start + length, t, budget),
        "optimizer": opt.state_dict() if opt is not None else None,
    }


class RecoveryOps(Protocol):
    """The work a recovery needs, on whatever holds the model (memory, checkpoints, tasks)."""

    def recover(self, i: int, budget: float | None) -> dict[str, Any]:
        """Train recovery chunk ``i`` (:func:`recover_chunk`, ``budget`` the decay's B, carrying
        the optimizer from chunk ``i - 1``); ``seconds``, ``work`` and ``lr_start``."""
        ...

    def target_check(self) -> dict[str, float]:
        """The current model on the target's split (:func:`target_check`)."""
        ...


def run_recovery(
    ops: RecoveryOps,
    goal: float,
    params: Params,
    *,
    on_check: Callable[[dict[str, Any]], None] | None = None,
) -> list[dict[str, Any]]:
    """Check, then train a chunk and check again, until a check reaches ``goal`` or the
    chunks of ``max_epochs`` are spent. Returns one record per check (the first, after
    zero epochs, is the pruned model as the steps left it); the decay's budget B is set from
    that first check (:func:`recovery_budget`) and held for the whole recovery."""
    t = params.prune.target
    records: list[dict[str, Any]] = []
    spent = 0.0
    budget: float | None = None
    for i in range(n_chunks(t) + 1):
        tr: dict[str, Any] = {"seconds": 0.0, "work": 0.0, "lr_start": 0.0}
        if i > 0:
            tr = ops.recover(i - 1, budget)
            spent += chunk_epochs(t, i - 1)[1]
        ev = ops.target_check()
        if i == 0:
            budget = recovery_budget(t, ev["acc"], goal)
        rec = {
            "check": i,
            "epochs": round(spent, 6),
            "acc": ev["acc"],
            "images": ev["images"],
            "reached": ev["acc"] >= goal - _EPS,
            "lr": tr["lr_start"],
            "budget_epochs": budget,
            "t_recover": tr["seconds"],
            "work_recover": tr["work"],
            "t_check": ev["seconds"],
            "work_check": ev["work"],
        }
        records.append(rec)
        if on_check is not None:
            on_check(rec)
        if rec["reached"]:
            break
    return records


def cost_to_target(base: dict[str, float], reference: dict[str, float], checks: list[dict[str, Any]]) -> dict[str, Any]:
    """A run's cost with its recovery: ``base`` (:func:`ice.methods.core.run_cost`'s totals)
    plus the reference check and every chunk and check; each check gets its cumulative
    ``cum_seconds`` and ``cum_gmacs`` (the accuracy-against-cost curve)."""
    sec, work = base["seconds"] + reference["seconds"], base["work_gmacs"] + reference["work"]
    for rec in checks:
        sec += rec["t_recover"] + rec["t_check"]
        work += rec["work_recover"] + rec["work_check"]
        rec["cum_seconds"], rec["cum_gmacs"] = sec, work
    reached = bool(checks) and checks[-1]["reached"]
    return {
        "reached": reached,
        "seconds": sec,
        "work_gmacs": work,
        "cost_seconds": sec if reached else None,
        "cost_gmacs": work if reached else None,
        "recovery_seconds": sum(r["t_recover"] for r in checks),
        "recovery_work": sum(r["work_recover"] for r in checks),
        "check_seconds": reference["seconds"] + sum(r["t_check"] for r in checks),
        "check_work": reference["work"] + sum(r["work_check"] for r in checks),
        "recovery_epochs": checks[-1]["epochs"] if checks else 0.0,
        "budget_epochs": checks[0].get("budget_epochs") if checks else None,
        "val_acc": checks[-1]["acc"] if checks else None,
    }


def target_goal(acc_reference: float, params: Params) -> float:
    """The accuracy a recovery must reach: the unpruned model's, less ``prune.target.tolerance``."""
    tol = params.prune.target.tolerance
    assert tol is not None, "no target is set"
    return acc_reference - tol


def recovery_line(method: str, rec: dict[str, Any], goal: float) -> str:
    """One progress line per recovery check (the first names the decay's budget)."""
    mark = "reached" if rec["reached"] else f"target {goal:.2f}"
    budget = rec.get("budget_epochs")
    plan = (
        f"; decay budget {budget:g} epochs" if rec["check"] == 0 and budget is not None and not rec["reached"] else ""
    )
    return f"[{method}] recovery {rec['epochs']:g} epochs: val {rec['acc']:.2f}% ({mark}){plan}"


def recover_to_target(
    ops: RecoveryOps,
    reference: dict[str, float],
    cost: dict[str, float],
    params: Params,
    method: str,
    log: Callable[[str], None],
    on_check: Callable[[dict[str, Any], str], None] | None = None,
) -> tuple[dict[str, float], dict[str, Any], list[dict[str, Any]]]:
    """After a run's last step: recover until val is within the tolerance of ``reference`` (the
    unpruned model's :func:`target_check`) or ``max_epochs`` are spent. Returns the run's
    ``cost`` up to the check that met the target (everything, when none did), the target's
    record (:func:`cost_to_target`, with ``goal`` and ``acc_reference``) and every check.
    ``on_check(record, line)`` sees each check with its progress line. Written once for the
    in-memory run (:func:`ice.methods.core.iterate`) and the prune flow's cached tasks."""
    goal = target_goal(reference["acc"], params)
    t = params.prune.target
    policy = "SGDR warm restarts" if t.policy == "sgdr" else "one linear lr decay, momentum kept"
    log(
        f"[{method}] recovery: to {goal:.2f}% on {t.split} (unpruned {reference['acc']:.2f}%, tolerance "
        f"{t.tolerance:g}), {policy} from lr {t.lr:g}, checks every {t.check_every:g} epoch, "
        f"at most {t.max_epochs:g} epochs"
    )
    checks = run_recovery(
        ops,
        goal,
        params,
        on_check=None if on_check is None else lambda rec: on_check(rec, recovery_line(method, rec, goal)),
    )
    target = cost_to_target(cost, reference, checks) | {"goal": goal, "acc_reference": reference["acc"]}
    cost = {**cost, **{k: target[k] for k in ("seconds", "work_gmacs")}}
    cost.update({k: target[k] for k in ("recovery_seconds", "recovery_work", "check_seconds", "check_work")})
    log(
        f"[{method}] target {'reached' if target['reached'] else 'NOT reached (max budget)'} after "
        f"{target['recovery_epochs']:g} recovery epochs: {target['work_gmacs']:,.0f} GMACs, "
        f"{target['seconds']:,.0f} s"
    )
    return cost, target, checks
