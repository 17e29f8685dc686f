"""Recovery to a quality target: what a pruning recipe costs to reach "good enough".

After a step-wise method's last pruning step (ice, iterative, prune_once), the pruned
model is fine-tuned in chunks of ``prune.target.check_every`` epochs. Before the first
chunk and after each one, the whole validation split is checked; the recovery stops at
the first check that is within ``prune.target.tolerance`` points of the unpruned model's
accuracy on that split, or once ``max_epochs`` are spent. The recipe's *cost to target*
is everything it spent up to that check: search, freeze trial, steps, fine-tunes,
evaluations, the reference check of the unpruned model, the chunks and their checks.

The recovery is the same for every method (MLPerf's rule: one measurement for all):
CE + KD from the unpruned model, SGD with a fresh optimizer each chunk, and an lr that
follows a cosine with warm restarts (SGDR, Loshchilov and Hutter 2017) over the
recovery's position in epochs, so a check late in a cycle sees an annealed model and a
model already close to the target stops within the first short cycle.
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
from ice.train import accuracy

__all__ = [
    "RecoveryOps",
    "sgdr_lr",
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
    model: nn.Module, teacher: nn.Module | None, data: Dataset, i: int, params: Params
) -> dict[str, float]:
    """Train recovery chunk ``i`` in place: the fine-tune (CE + KD, fresh SGD) with the
    recovery's lr by position. The chunk's batches are drawn with a generator seeded by
    ``seed`` and ``i``, so a chunk run again from the same checkpoint gives the same bytes."""
    t = params.prune.target
    start, length = chunk_epochs(t, i)
    stats = finetune(
        model,
        data,
        params,
        lr=sgdr_lr(start, t),
        teacher=teacher,
        seed=params.seed * 1000 + 700_003 + i,
        epochs=length,
        lr_at_epoch=lambda e: sgdr_lr(start + e, t),
    )
    return {
        "seconds": stats["seconds"],
        "work": stats["work"],
        "images": stats["images"],
        "train_loss": stats.get("loss", 0.0),
        "lr_start": sgdr_lr(start, t),
    }


class RecoveryOps(Protocol):
    """The work a recovery needs, on whatever holds the model (memory, checkpoints, tasks)."""

    def recover(self, i: int) -> dict[str, Any]:
        """Train recovery chunk ``i`` (:func:`recover_chunk`); ``seconds`` and ``work``."""
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
    zero epochs, is the pruned model as the steps left it)."""
    t = params.prune.target
    records: list[dict[str, Any]] = []
    spent = 0.0
    for i in range(n_chunks(t) + 1):
        tr: dict[str, Any] = {"seconds": 0.0, "work": 0.0, "lr_start": 0.0}
        if i > 0:
            tr = ops.recover(i - 1)
            spent += chunk_epochs(t, i - 1)[1]
        ev = ops.target_check()
        rec = {
            "check": i,
            "epochs": round(spent, 6),
            "acc": ev["acc"],
            "images": ev["images"],
            "reached": ev["acc"] >= goal - _EPS,
            "lr": tr["lr_start"],
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
        "val_acc": checks[-1]["acc"] if checks else None,
    }


def target_goal(acc_reference: float, params: Params) -> float:
    """The accuracy a recovery must reach: the unpruned model's, less ``prune.target.tolerance``."""
    tol = params.prune.target.tolerance
    assert tol is not None, "no target is set"
    return acc_reference - tol


def recovery_line(method: str, rec: dict[str, Any], goal: float) -> str:
    """One progress line per recovery check."""
    mark = "reached" if rec["reached"] else f"target {goal:.2f}"
    return f"[{method}] recovery {rec['epochs']:g} epochs: val {rec['acc']:.2f}% ({mark})"


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
    log(
        f"[{method}] recovery: to {goal:.2f}% on {t.split} (unpruned {reference['acc']:.2f}%, tolerance "
        f"{t.tolerance:g}), checks every {t.check_every:g} epoch, at most {t.max_epochs:g} epochs"
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
