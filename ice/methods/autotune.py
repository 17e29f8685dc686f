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

Two savings keep the search cheap without changing what it finds:

- **One freeze trial for all trials.** The freeze trial's scores do not depend on the
  hyperparameters (``fr`` only decides how many of the lowest-scoring convs to freeze),
  so :func:`search_setup` runs it once on the trials' subsets and every trial reuses it.
  Its cost counts once, in the search.
- **Early stopping that cannot change the winner** (``early_stop``, balanced objective):
  the balanced objective is never below a trial's cost, so once a trial's cost so far
  reaches the best finished trial's objective it can no longer win, and it stops.

The paper's objective times a trial without the freeze trial, as the reference code does.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol

import torch
from torch import nn

from ice.config import Params
from ice.data import Dataset

if TYPE_CHECKING:
    from ice.methods.core import StepRecord

__all__ = [
    "TrialResult",
    "sample_trials",
    "search_setup",
    "run_trial",
    "trial_data",
    "score",
    "cost_of",
    "select_best",
    "objective_of",
    "autotune",
    "SearchOps",
    "SearchOutcome",
    "run_search",
    "trial_of",
    "trial_row",
    "trial_line",
]


@dataclass
class TrialResult:
    number: int
    hp: dict[str, float]
    seconds: float  # compute seconds of the trial (without the shared freeze trial)
    acc_original: float
    acc_final: float
    finetunes: int
    work: float = 0.0  # billions of MACs
    stopped_at: int | None = None  # the step after which early stopping ended it

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


def search_setup(model: nn.Module, data: Dataset, params: Params) -> dict[str, Any]:
    """What every trial shares: the freeze trial's scores on the trials' subsets, with its cost."""
    from ice.methods.ice import freeze_trial
    from ice.pruning import prunable_units

    sub = trial_data(data, params)
    t0 = time.perf_counter()
    trial = freeze_trial(model, sub, params, prunable_units(model)[0])
    return {"freeze_scores": trial["scores"], "work": trial["work"], "seconds": time.perf_counter() - t0}


def _cost_unit(params: Params) -> str:
    cfg = params.ice.autotune
    return ("seconds" if cfg.objective == "paper" else "work") if cfg.cost == "auto" else cfg.cost


def run_trial(
    model: nn.Module,
    data: Dataset,
    params: Params,
    hp: dict[str, float],
    number: int = 0,
    *,
    freeze_scores: dict[str, float] | None = None,
    bound: float | None = None,
    resume: dict[str, Any] | None = None,
    checkpoint: Any = None,
    callbacks: Any = None,
) -> TrialResult:
    """One full ICE run on ``subset`` fractions of train and validation.

    ``resume`` and ``checkpoint`` are :func:`ice.methods.core.iterate`'s: a trial can be
    saved after every step and continued after a kill.

    ``freeze_scores`` (from :func:`search_setup`) skip the trial's own freeze trial.
    ``bound`` is the best objective so far: with the balanced objective and
    ``early_stop`` on, the trial stops once its cost reaches it, since it can no longer win.
    ``callbacks`` get the trial's step lines.
    """
    from ice.methods.core import iterate

    sub = trial_data(data, params)
    cfg = params.ice.autotune
    unit = _cost_unit(params)
    stop = None
    if bound is not None and cfg.early_stop and cfg.objective == "balanced":

        def stop(k: int, cost: dict[str, float], rec: StepRecord) -> bool:
            return (cost["work_gmacs"] if unit == "work" else cost["seconds"]) >= bound

    res = iterate(
        model,
        sub,
        "ice",
        params,
        hp=hp,
        freeze_scores=freeze_scores,
        stop=stop,
        resume=resume,
        checkpoint=checkpoint,
        callbacks=callbacks,
        recover=False,  # a trial is judged by the search's objective, on its subsets
    )
    cost = res.info["cost"]
    # the paper's objective times the steps only, as the reference code (no freeze trial)
    seconds = cost["seconds"] - (res.info["seconds_freeze_trial"] if cfg.objective == "paper" else 0.0)
    after = [r["acc_finetuned"] for r in res.steps if r["acc_finetuned"] is not None]
    acc_final = after[-1] if after else res.info["acc_original"]
    return TrialResult(
        number,
        hp,
        seconds,
        res.info["acc_original"],
        acc_final,
        res.finetunes,
        res.info["work_gmacs"],
        res.info.get("stopped_at"),
    )


def trial_data(data: Dataset, params: Params) -> Dataset:
    """The trials' subsets: ``subset`` of train and of validation, the latter at least
    ``min_val_images`` images (or all of it)."""
    cfg = params.ice.autotune
    sub = data.subset(cfg.subset, seed=cfg.seed)
    if len(sub.val) < min(cfg.min_val_images, len(data.val)):
        sub.val = data.val.sample(cfg.min_val_images, torch.Generator().manual_seed(cfg.seed + 1))
    return sub


def select_best(
    results: list[TrialResult], objective: str = "balanced", acc_tolerance: float = 1.0, cost: str = "auto"
) -> TrialResult:
    """The trial with the lowest objective (ties: the earlier trial)."""
    if not results:
        raise ValueError("no trial results to choose from")
    return min(results, key=lambda r: (score(cost_of(r, objective, cost), r.drop, objective, acc_tolerance), r.number))


class SearchOps(Protocol):
    """How trials run: in turn in memory (:func:`autotune`), or as cached tasks in flight
    together (the autotune flow). The search loop itself is :func:`run_search`, written once."""

    def run_batch(self, batch: list[tuple[int, dict[str, float]]], bound: float | None) -> list[TrialResult]:
        """Run these (number, hyperparameters) trials under early stopping's ``bound``; their
        results in the batch's order."""
        ...


@dataclass
class SearchOutcome:
    best: TrialResult
    results: list[TrialResult]
    table: list[dict[str, Any]]  # one row per trial, the best marked
    seconds: float  # compute: the shared freeze trial plus every trial
    work: float  # GMACs, the same parts


def run_search(
    ops: SearchOps,
    params: Params,
    points: list[dict[str, float]],
    setup: dict[str, Any],
    workers: int = 1,
    on_trial: Any = None,
) -> SearchOutcome:
    """Every trial, ``workers`` at a time; each batch is bounded by the best objective among the
    trials finished before it (early stopping); the best of the trials that ran to the end wins."""
    cfg = params.ice.autotune
    results: list[TrialResult] = []
    for start in range(0, len(points), workers):
        bound = min((objective_of(r, params) for r in results if r.stopped_at is None), default=None)
        for r in ops.run_batch(list(enumerate(points[start : start + workers], start)), bound):
            results.append(r)
            if on_trial is not None:
                on_trial(r, trial_row(r, cfg.objective, cfg.acc_tolerance, cfg.cost))
    best = select_best([r for r in results if r.stopped_at is None], cfg.objective, cfg.acc_tolerance, cfg.cost)
    table = [trial_row(r, cfg.objective, cfg.acc_tolerance, cfg.cost) | {"best": r is best} for r in results]
    return SearchOutcome(
        best,
        results,
        table,
        setup["seconds"] + sum(r.seconds for r in results),
        setup["work"] + sum(r.work for r in results),
    )


class _InMemory:
    def __init__(self, model: nn.Module, data: Dataset, params: Params, setup: dict[str, Any]) -> None:
        self.model, self.data, self.params, self.setup = model, data, params, setup

    def run_batch(self, batch: list[tuple[int, dict[str, float]]], bound: float | None) -> list[TrialResult]:
        return [
            run_trial(
                self.model, self.data, self.params, hp, number=i, freeze_scores=self.setup["freeze_scores"], bound=bound
            )
            for i, hp in batch
        ]


def autotune(
    model: nn.Module, data: Dataset, params: Params, callbacks: Any = None
) -> tuple[dict[str, float], list[dict[str, Any]], dict[str, float]]:
    """Run every trial in turn; return the best hyperparameters, the trial table and the
    search's cost (``seconds`` and ``work``: the shared freeze trial plus every trial)."""
    setup = search_setup(model, data, params)
    points = sample_trials(params)

    def on_trial(_r: TrialResult, row: dict[str, Any]) -> None:
        if callbacks is not None:
            callbacks.log(trial_line(row, len(points)))
            if callbacks.on_trial is not None:
                callbacks.on_trial(row)

    out = run_search(_InMemory(model, data, params, setup), params, points, setup, on_trial=on_trial)
    return out.best.hp, out.table, {"seconds": out.seconds, "work": out.work}


def trial_of(row: dict[str, Any], hp_keys: list[str]) -> TrialResult:
    """A trial's result from its table row (what a trial task returns)."""
    return TrialResult(
        row["trial"],
        {k: row[k] for k in hp_keys},
        row["seconds"],
        row["acc_original"],
        row["acc_final"],
        row["finetunes"],
        row["work_gmacs"],
        row["stopped_at"],
    )


def objective_of(r: TrialResult, params: Params) -> float:
    cfg = params.ice.autotune
    return score(cost_of(r, cfg.objective, cfg.cost), r.drop, cfg.objective, cfg.acc_tolerance)


def trial_line(row: dict[str, Any], n: int) -> str:
    stopped = f", stopped after step {row['stopped_at'] + 1} (cannot win)" if row.get("stopped_at") is not None else ""
    return (
        f"[autotune] trial {row['trial'] + 1}/{n}: {row['seconds']:.1f}s, {row['work_gmacs']:.0f} GMACs, "
        f"drop {row['drop']:.2f} pts, {row['finetunes']} fine-tunes, objective {row['objective']:.3g}{stopped}"
    )


def trial_row(r: TrialResult, objective: str, acc_tolerance: float, cost: str = "auto") -> dict[str, Any]:
    return {
        "trial": r.number,
        **r.hp,
        "seconds": r.seconds,
        "work_gmacs": r.work,
        "acc_original": r.acc_original,
        "acc_final": r.acc_final,
        "drop": r.drop,
        "finetunes": r.finetunes,
        "stopped_at": r.stopped_at,
        "objective": score(cost_of(r, objective, cost), r.drop, objective, acc_tolerance),
    }
