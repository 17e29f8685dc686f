"""The prune stage's tasks: one cached task per step (prune, evaluate, decide, fine-tune), per
recovery chunk and check, and the training-time methods as one task each."""

from __future__ import annotations

from typing import Any

from prefect import task

from ice.methods.plan import RunPlan
from plumbing.artifacts import (
    load_data,
    load_model,
    load_teacher,
    params_of,
    project_paths,
    save_model,
    task_device,
)
from plumbing.log import STEP_SINK, progress
from plumbing.store import resolve, store_of

__all__ = [
    "start_pruning",
    "prune_one_step",
    "decision_check_checkpoint",
    "decide_finetune",
    "finetune_checkpoint",
    "recover_checkpoint",
    "check_target",
    "train_with_pruning",
]


@task(name="start-pruning", tags=["compute"], task_run_name="start-pruning-{method}")
def start_pruning(
    root: str,
    data_ref: dict[str, str],
    model_ref: dict[str, str],
    method: str,
    hp: dict[str, float] | None,
    cfg: dict[str, Any],
) -> dict[str, Any]:
    """Plan the steps and measure the reference accuracy; ICE also runs its freeze trial.
    Returns the :class:`~ice.methods.plan.RunStart` as plain data; each step task gets its
    :class:`~ice.methods.plan.RunPlan` (``run``) as plain data too."""
    from ice.methods.core import start_run

    paths = project_paths(root)
    params = params_of(cfg)
    model = load_model(paths, model_ref, task_device(cfg))
    return start_run(model, load_data(paths, data_ref), method, params, hp=hp).to_dict()


def _step_run_name(kind: str) -> Any:
    """A task-run name with the step number and unit, e.g. ``prune-step-3-layer1.2.conv1``."""

    def name() -> str:
        from prefect.runtime import task_run

        params = task_run.parameters
        k = int(params["k"])
        return f"{kind}-{k + 1}-{params['run']['plan'][k]['unit']}"

    return name


@task(name="prune-step", tags=["compute"], task_run_name=_step_run_name("prune-step"))
def prune_one_step(
    root: str, data_ref: dict[str, str], model_ref: dict[str, str], run: dict[str, Any], k: int, cfg: dict[str, Any]
) -> dict[str, Any]:
    """Apply planned step ``k`` to the checkpoint; return the new reference, sizes and the step's lr."""
    from ice.methods.core import apply_frozen, prune_and_lr

    paths = project_paths(root)
    params = params_of(cfg)
    plan = RunPlan.from_dict(run)
    model = load_model(paths, model_ref, task_device(cfg))
    apply_frozen(model, plan, params)
    info = prune_and_lr(model, load_data(paths, data_ref), plan, k, params)
    info["ref"] = save_model(
        paths, model, f"{run['method']}-step{k:03d}-pruned", {"method": run["method"], "step": k}, store_of(data_ref)
    )
    return info


@task(name="decision-check", tags=["compute"])
def decision_check_checkpoint(
    root: str, data_ref: dict[str, str], model_ref: dict[str, str], cfg: dict[str, Any]
) -> dict[str, float]:
    """Accuracy of a checkpoint on the decision split (validation), with its seconds and work."""
    from ice.methods.core import decision_check

    paths = project_paths(root)
    return decision_check(load_model(paths, model_ref, task_device(cfg)), load_data(paths, data_ref), params_of(cfg))


@task(name="decide-finetune")
def decide_finetune(run: dict[str, Any], reference: float | None, acc_now: float | None) -> bool:
    """ICE's rule (or always, for the baseline): fine-tune when the drop from ``reference``
    (:func:`ice.methods.core.decision_reference`) reaches ``thre``."""
    from ice.methods.core import decide

    return decide(RunPlan.from_dict(run), reference, acc_now)


def _train_checkpoint(
    root: str,
    data_ref: dict[str, str],
    model_ref: dict[str, str],
    teacher_ref: dict[str, str],
    cfg: dict[str, Any],
    train: Any,
    stem: str,
    meta: dict[str, Any],
) -> dict[str, Any]:
    """Load the checkpoint, ``train(model, teacher, data, params)`` it in place (the caller
    sets what is frozen), and save it to the store its data came from."""
    paths = project_paths(root)
    params = params_of(cfg)
    device = task_device(cfg)
    model = load_model(paths, model_ref, device)
    teacher = load_teacher(paths, teacher_ref, device) if params.prune.kd else None
    stats = train(model, teacher, load_data(paths, data_ref), params)
    return {"ref": save_model(paths, model, stem, meta, store_of(data_ref)), **stats}


@task(name="finetune", tags=["compute"], task_run_name=_step_run_name("finetune"))
def finetune_checkpoint(
    root: str,
    data_ref: dict[str, str],
    model_ref: dict[str, str],
    teacher_ref: dict[str, str],
    run: dict[str, Any],
    k: int,
    lr: float,
    cfg: dict[str, Any],
) -> dict[str, Any]:
    """Fine-tune after step ``k`` (fresh SGD, CE + KD, frozen layers left out)."""
    from ice.methods.core import apply_frozen, finetune_after

    def train(model: Any, teacher: Any, data: Any, params: Any) -> dict[str, Any]:
        apply_frozen(model, RunPlan.from_dict(run), params)
        return finetune_after(model, teacher, data, k, lr, params)

    meta = {"method": run["method"], "step": k}
    return _train_checkpoint(
        root, data_ref, model_ref, teacher_ref, cfg, train, f"{run['method']}-step{k:03d}-finetuned", meta
    )


def _chunk_run_name() -> str:
    from prefect.runtime import task_run

    return f"recover-chunk-{int(task_run.parameters['i']) + 1}"


@task(name="recover-chunk", tags=["compute"], task_run_name=_chunk_run_name)
def recover_checkpoint(
    root: str,
    data_ref: dict[str, str],
    model_ref: dict[str, str],
    teacher_ref: dict[str, str],
    run: dict[str, Any],
    i: int,
    budget: float | None,
    cfg: dict[str, Any],
) -> dict[str, Any]:
    """Recovery chunk ``i`` toward the target (CE + KD, the recovery's lr; ``budget`` the
    decay's B). The recovery's SGD state travels in the chunk checkpoints' meta: chunk ``i``
    reads the one chunk ``i - 1`` wrote (none before the first) and writes its own, so a
    killed recovery resumes with the same momentum and the same bytes."""
    from ice.checkpoint import load_checkpoint
    from ice.methods.core import recovery_freeze
    from ice.methods.recovery import recover_chunk

    paths = project_paths(root)
    params = params_of(cfg)
    device = task_device(cfg)
    model, meta = load_checkpoint(resolve(paths, model_ref), sha256=model_ref["sha256"], map_location=device)
    teacher = load_teacher(paths, teacher_ref, device) if params.prune.kd else None
    state = meta.get("optimizer") if i > 0 else None
    recovery_freeze(model, RunPlan.from_dict(run), params)
    stats = recover_chunk(model, teacher, load_data(paths, data_ref), i, params, budget, state)
    out_meta: dict[str, Any] = {"method": run["method"], "recover": i}
    if stats["optimizer"] is not None:
        out_meta["optimizer"] = stats["optimizer"]
    stats.pop("optimizer")
    ref = save_model(paths, model, f"{run['method']}-recover{i:03d}", out_meta, store_of(data_ref))
    return {"ref": ref, **stats}


@task(name="check-target", tags=["compute"])
def check_target(
    root: str, data_ref: dict[str, str], model_ref: dict[str, str], cfg: dict[str, Any]
) -> dict[str, float]:
    """Accuracy of a checkpoint on the target's split (the whole of it), with its seconds and work."""
    from ice.methods.recovery import target_check

    paths = project_paths(root)
    return target_check(load_model(paths, model_ref, task_device(cfg)), load_data(paths, data_ref), params_of(cfg))


@task(name="train-with-pruning", tags=["compute"], task_run_name="train-with-pruning-{method}")
def train_with_pruning(
    root: str, data_ref: dict[str, str], model_ref: dict[str, str] | None, method: str, cfg: dict[str, Any]
) -> dict[str, Any]:
    """A training-time method (one_shot, iterative_schedule, agp, one_cycle, prune_while_training),
    epoch by epoch: from scratch (``model_ref`` None) or from the pre-trained checkpoint."""
    from ice.methods import Callbacks, run_pruning

    paths = project_paths(root)
    params = params_of(cfg)
    model = load_model(paths, model_ref, task_device(cfg)) if model_ref is not None else None
    # each epoch goes to the flow's sink as it ends, so MLflow's curves grow while the method trains
    res = run_pruning(
        model, load_data(paths, data_ref), method, params, Callbacks(on_log=progress, on_step=STEP_SINK.get())
    )
    ref = save_model(paths, res.model, f"{method}-final", {"method": method}, store_of(data_ref))
    return {
        "ref": ref,
        "steps": res.steps,
        "seconds": res.seconds,
        "info": {k: v for k, v in res.info.items() if isinstance(v, int | float | str)},
    }
