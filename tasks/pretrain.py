"""Pre-training as tasks: one cached task per epoch (weights, optimizer, lr position and RNG
states), so a killed pre-training continues from its last finished epoch; and the evaluation
of an imported model (``model.weights``; fetching and checking it is :mod:`plumbing.weights`)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from prefect import task

from plumbing.artifacts import (
    accuracies,
    load_data,
    params_of,
    project_paths,
    save_model,
    task_device,
)
from plumbing.store import resolve, store_of

__all__ = ["import_pretrained", "pretrain_epoch", "finish_pretrain"]


@task(name="pretrain-epoch", tags=["compute"], task_run_name="pretrain-epoch-{epoch}")
def pretrain_epoch(
    root: str, data_ref: dict[str, str], state_ref: dict[str, str] | None, epoch: int, cfg: dict[str, Any]
) -> dict[str, Any]:
    """Train epoch ``epoch`` (1-based) from the previous epoch's state (None: a new, seeded model).

    The state (weights, optimizer, lr-schedule position, RNG states) is saved to the
    store after the epoch, so a killed pre-training continues from its last finished
    epoch and ends with the same bytes as one that never stopped.
    """
    from ice.checkpoint import load_checkpoint
    from ice.models import seeded_model
    from ice.train import fit_epoch

    paths = project_paths(root)
    params = params_of(cfg)
    device = task_device(cfg)
    data = load_data(paths, data_ref)
    if state_ref is None:
        model = seeded_model(params.model.arch, data, params.seed).to(device)
        state = None
    else:
        model, meta = load_checkpoint(resolve(paths, state_ref), sha256=state_ref["sha256"], map_location=device)
        state = meta["fit"]
        if int(state["epoch"]) != epoch - 1:
            raise ValueError(f"pretrain state {state_ref['uri']} ends at epoch {state['epoch']}, not {epoch - 1}")
    tr = params.train
    state, rec = fit_epoch(
        model,
        data,
        state,
        epochs=tr.epochs,
        lr=tr.lr,
        momentum=tr.momentum,
        weight_decay=tr.weight_decay,
        batch_size=tr.batch_size,
        augment=tr.augment,
        seed=params.seed,
        schedule=tr.lr_schedule,
        device=device,
        amp=tr.amp,
    )
    ref = save_model(
        paths, model, f"pretrain-epoch{epoch:03d}", {"stage": "pretrain", "fit": state}, store_of(data_ref)
    )
    return {"ref": ref, "record": rec}


@task(name="finish-pretrain", tags=["compute"], task_run_name="finish-pretrain")
def finish_pretrain(
    root: str, data_ref: dict[str, str], state_ref: dict[str, str], cfg: dict[str, Any]
) -> dict[str, Any]:
    """The pretrained model alone (no optimizer state), with its validation and test accuracy."""
    from ice.checkpoint import load_checkpoint

    paths = project_paths(root)
    params = params_of(cfg)
    model, meta = load_checkpoint(resolve(paths, state_ref), sha256=state_ref["sha256"], map_location=task_device(cfg))
    acc = accuracies(model, load_data(paths, data_ref))
    history = meta["fit"]["history"]
    # no timings in the checkpoint: the same params and seed give the same bytes
    ref = save_model(
        paths,
        model,
        "pretrained",
        {"stage": "pretrain", "arch": params.model.arch, **acc, "epochs": len(history)},
        store_of(data_ref),
    )
    return {"ref": ref, **acc, "history": history}


@task(name="import-pretrained", tags=["compute"], task_run_name="import-pretrained")
def import_pretrained(
    root: str, data_ref: dict[str, str], weights_ref: dict[str, str], cfg: dict[str, Any]
) -> dict[str, Any]:
    """Validation and test accuracy of the imported checkpoint."""
    from plumbing.artifacts import accuracies, load_data, load_model, task_device
    from plumbing.paths import Paths

    paths = Paths(Path(root))
    return accuracies(load_model(paths, weights_ref, task_device(cfg)), load_data(paths, data_ref))
