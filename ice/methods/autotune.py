"""Auto-tuning ICE's hyperparameters with Optuna over the paper's grid.

Trials are independent: :func:`sample_trials` draws the points, :func:`run_trial` runs
one full ICE pass on small subsets, :func:`select_best` scores them. A caller may run
the trials in parallel; :func:`autotune` runs them in turn.

Objectives (lower is better), with t the trial's cost and Δ its accuracy drop in
points (original minus final, on the subset's validation split):

- ``paper``: t / max(Δ, t) + Δ / max(Δ, t), as in the reference code. When t > Δ it
  equals 1 + Δ/t, which *rewards* longer runs; kept for reproduction only.
- ``balanced`` (default): t · (1 + max(Δ, 0) / tol), with tol = ``acc_tolerance`` points
  (1 by default). It rises with both cost and accuracy loss, and rescaling the cost (a
  faster machine) never changes the ranking: one more point lost must buy a run
  (1 + 1/tol) times cheaper to win.

The cost t (``cost``) is either the trial's measured ``seconds``, as in the reference,
or its ``work``: the MACs it spent (evaluations, fine-tunes with the teacher's forward
pass, the freeze trial; frozen layers skip their weight gradients), in billions. Work
is the same on every machine and in every run, so the chosen trial, and with it
``dvc repro``'s metrics, do not depend on timing noise. ``auto`` (default) uses seconds
for the paper objective and work for the balanced one. Either way, the search's
*measured* seconds are what ICE's total reports.

``min_val_images`` puts a floor under the trials' validation subset: 2% of a small
validation split is a handful of images, and a drop measured on 20 images moves in
steps of 5 points, below any sensible ``thre``.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from ice.config import Params
from ice.data import Dataset

__all__ = ["TrialResult", "sample_trials", "run_trial", "trial_data", "score", "cost_of", "select_best", "autotune"]


@dataclass
class TrialResult:
    number: int
    hp: dict[str, float]
    seconds: float
    acc_original: float
    acc_final: float
    finetunes: int
    work: float = 0.0  # billions of MACs

    @property
    def drop(self) -> float:
        return self.acc_original - self.acc_final


def score(cost: float, drop: float, objective: str = "balanced", acc_tolerance: float = 1.0) -> float:
    """The objective for a trial of ``cost`` (seconds or work) and accuracy drop ``drop``."""
    if objective == "paper":
        m = max(drop, cost)
        return cost / m + drop / m if m > 0 else 0.0
    if objective == "balanced":
        return cost * (1.0 + max(drop, 0.0) / acc_tolerance)
    raise ValueError(f"unknown objective {objective!r}; choose 'balanced' or 'paper'")


def cost_of(r: TrialResult, objective: str = "balanced", cost: str = "auto") -> float:
    """The trial's cost under ``cost`` (auto: seconds for the paper objective, else work)."""
    if cost == "auto":
        cost = "seconds" if objective == "paper" else "work"
    if cost == "seconds":
        return r.seconds
    if cost == "work":
        return r.work
    raise ValueError(f"unknown cost {cost!r}; choose 'auto', 'work' or 'seconds'")


def sample_trials(params: Params) -> list[dict[str, float]]:
    """Draw ``n_trials`` distinct points of the grid with Optuna's grid sampler (seeded)."""
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    cfg = params.ice.autotune
    grid = {k: list(v) for k, v in cfg.grid.items()}
    size = 1
    for v in grid.values():
        size *= len(v)
    study = optuna.create_study(sampler=optuna.samplers.GridSampler(grid, seed=cfg.seed))
    points: list[dict[str, float]] = []
    seen: set[tuple[tuple[str, float], ...]] = set()
    while len(points) < min(cfg.n_trials, size):
        trial = study.ask()
        hp = {k: float(trial.suggest_categorical(k, v)) for k, v in grid.items()}
        key = tuple(sorted(hp.items()))
        study.tell(trial, 0.0)  # the value is ours to compute; telling frees the grid point
        if key not in seen:
            seen.add(key)
            points.append(hp)
    return points


def run_trial(model: nn.Module, data: Dataset, params: Params, hp: dict[str, float], number: int = 0) -> TrialResult:
    """One full ICE run on ``subset`` fractions of train and validation."""
    from ice.methods.core import iterate

    sub = trial_data(data, params)
    t0 = time.perf_counter()
    res = iterate(model, sub, "ice", params, hp=hp)
    seconds = time.perf_counter() - t0
    acc_final = res.steps[-1]["acc_finetuned"] if res.steps else res.info["acc_original"]
    return TrialResult(number, hp, seconds, res.info["acc_original"], acc_final, res.finetunes, res.info["work_gmacs"])


def trial_data(data: Dataset, params: Params) -> Dataset:
    """The trials' subsets: ``subset`` of train and of validation, the latter at least
    ``min_val_images`` images (or all of it)."""
    cfg = params.ice.autotune
    sub = data.subset(cfg.subset, seed=cfg.seed)
    if len(sub.val) < min(cfg.min_val_images, len(data.val)):
        sub.val = data.val.sample(cfg.min_val_images, torch.Generator().manual_seed(cfg.seed + 1))
    return sub


def select_best(results: list[TrialResult], objective: str = "balanced", acc_tolerance: float = 1.0, cost: str = "auto") -> TrialResult:
    """The trial with the lowest objective (ties: the earlier trial)."""
    if not results:
        raise ValueError("no trial results to choose from")
    return min(results, key=lambda r: (score(cost_of(r, objective, cost), r.drop, objective, acc_tolerance), r.number))


def autotune(model: nn.Module, data: Dataset, params: Params, callbacks: Any = None) -> tuple[dict[str, float], list[dict[str, Any]], float]:
    """Run every trial in turn; return the best hyperparameters, the trial table and the seconds spent."""
    cfg = params.ice.autotune
    t0 = time.perf_counter()
    results = []
    points = sample_trials(params)
    for i, hp in enumerate(points):
        r = run_trial(model, data, params, hp, number=i)
        results.append(r)
        row = trial_row(r, cfg.objective, cfg.acc_tolerance, cfg.cost)
        if callbacks is not None:
            callbacks.log(f"[autotune] trial {i + 1}/{len(points)}: {row['seconds']:.1f}s, {row['work_gmacs']:.0f} GMACs, "
                          f"drop {row['drop']:.2f} pts, {row['finetunes']} fine-tunes, objective {row['objective']:.3g}")
            if callbacks.on_trial is not None:
                callbacks.on_trial(row)
    best = select_best(results, cfg.objective, cfg.acc_tolerance, cfg.cost)
    table = [trial_row(r, cfg.objective, cfg.acc_tolerance, cfg.cost) | {"best": r is best} for r in results]
    return best.hp, table, time.perf_counter() - t0


def trial_row(r: TrialResult, objective: str, acc_tolerance: float, cost: str = "auto") -> dict[str, Any]:
    return {
        "trial": r.number, **r.hp, "seconds": r.seconds, "work_gmacs": r.work, "acc_original": r.acc_original,
        "acc_final": r.acc_final, "drop": r.drop, "finetunes": r.finetunes,
        "objective": score(cost_of(r, objective, cost), r.drop, objective, acc_tolerance),
    }
