"""The auto-tune stage's tasks: the search's setup and one task per trial."""

from __future__ import annotations

import hashlib
import json
from typing import Any

from prefect import task

from plumbing.artifacts import (
    load_data,
    load_model,
    params_of,
    project_paths,
    task_device,
)
from plumbing.caching import ice_code_hash
from plumbing.log import check_stop, progress

__all__ = ["autotune_setup", "autotune_trial"]


@task(name="autotune-setup", tags=["compute"], task_run_name="autotune-setup")
def autotune_setup(
    root: str, data_ref: dict[str, str], model_ref: dict[str, str], cfg: dict[str, Any]
) -> dict[str, Any]:
    """The freeze trial every auto-tune trial shares (its scores do not depend on the hyperparameters)."""
    from ice.methods.autotune import search_setup

    paths = project_paths(root)
    model = load_model(paths, model_ref, task_device(cfg))
    return search_setup(model, load_data(paths, data_ref), params_of(cfg))


def _trial_run_name() -> str:
    from prefect.runtime import task_run

    return f"autotune-trial-{int(task_run.parameters['number']) + 1}"


@task(name="autotune-trial", tags=["compute"], task_run_name=_trial_run_name)
def autotune_trial(
    root: str,
    data_ref: dict[str, str],
    model_ref: dict[str, str],
    hp: dict[str, float],
    number: int,
    cfg: dict[str, Any],
    freeze_scores: dict[str, float] | None = None,
    bound: float | None = None,
) -> dict[str, Any]:
    """One full ICE run on the auto-tuner's subsets; returns its row of the trial table.

    The trial saves its model and state after every step (``.ice-cache/store/trial-*-partial.pt``),
    so a kill loses at most one step's fine-tune; the rerun continues from there.
    """
    from ice.checkpoint import CheckpointError, load_checkpoint, save_checkpoint
    from ice.methods import Callbacks
    from ice.methods.autotune import run_trial, trial_row

    paths = project_paths(root)
    params = params_of(cfg)
    device = task_device(cfg)
    model = load_model(paths, model_ref, device)
    key = hashlib.sha256(
        json.dumps(
            [data_ref, model_ref, hp, number, cfg, freeze_scores, bound, ice_code_hash()], sort_keys=True, default=str
        ).encode()
    ).hexdigest()[:16]
    partial = paths.store / f"trial-{number:02d}-{key}-partial.pt"
    resume = None
    if partial.exists():
        try:
            m, meta = load_checkpoint(partial, map_location=device)
            resume = {"model": m, "state": meta["state"], "steps": meta["steps"]}
            progress(f"[autotune] trial {number + 1}: resuming after step {len(meta['steps'])}")
        except (CheckpointError, KeyError):
            partial.unlink(missing_ok=True)

    def checkpoint(m: Any, state: dict[str, Any], steps: list[dict[str, Any]]) -> None:
        save_checkpoint(partial, m, {"state": state, "steps": steps})
        check_stop()  # asked to stop: end here, with this step saved

    def step_line(line: str) -> None:  # a trial takes minutes on real data: one line per step, as the real run
        if line.startswith("[ice] step "):
            progress(f"[autotune] trial {number + 1}, " + line.removeprefix("[ice] "))

    r = run_trial(
        model,
        load_data(paths, data_ref),
        params,
        hp,
        number=number,
        freeze_scores=freeze_scores,
        bound=bound,
        resume=resume,
        checkpoint=checkpoint,
        callbacks=Callbacks(on_log=step_line),
    )
    partial.unlink(missing_ok=True)
    tune = params.ice.autotune
    return trial_row(r, tune.objective, tune.acc_tolerance, tune.cost)
