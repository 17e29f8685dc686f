"""The Prefect tasks: thin wrappers that call ``ice`` and move files by reference.

Every task takes plain data (references ``{"uri", "sha256"}``, config dicts, numbers)
and returns plain data. A task writes its outputs to the store its inputs came from
(the local store, or the S3 bucket of ``store.url``), so a task on a Dask worker or a
process worker on another machine needs no shared disk. Tasks that compute carry the ``gpu`` tag, so a Prefect
concurrency limit (``prefect concurrency-limit create gpu 1``) can bound them; they
run on cuda when it is there (``train.device: auto``).

Use :func:`bind` to get a task that caches under a project root: its key hashes the
inputs (``root`` left out), the task's source and the ``ice`` package's source.
"""

from __future__ import annotations

import hashlib
import inspect
import json
import os
from pathlib import Path
from typing import Any

from prefect import task

from ice.files import temp_beside
from pipeline.caching import ice_code_hash
from pipeline.log import STEP_SINK, check_stop, progress, warn
from pipeline.paths import Paths, make_ref, project_root, resolve, s3_store, store_of, store_path
from pipeline.records import IntegrityError, verify_refs

__all__ = [
    "bind",
    "run_view",
    "prepare_data",
    "pretrain_epoch",
    "finish_pretrain",
    "start_pruning",
    "prune_one_step",
    "evaluate_checkpoint",
    "decide_finetune",
    "finetune_checkpoint",
    "recover_checkpoint",
    "check_target",
    "train_with_schedule",
    "autotune_setup",
    "autotune_trial",
    "evaluate_model",
]

_DATA: dict[str, Any] = {}
_MODELS: dict[str, Any] = {}


# ----------------------------------------------------------------------------- caching
def cache_key(context: Any, parameters: dict[str, Any]) -> str:
    """sha256 of the task's source, the ice library's source and the inputs (no ``root``)."""
    fn = context.task.fn
    try:
        source = inspect.getsource(fn)
    except (OSError, TypeError):
        source = fn.__code__.co_code.hex()
    inputs = {k: v for k, v in parameters.items() if k != "root"}
    blob = json.dumps([context.task.name, source, ice_code_hash(), inputs], sort_keys=True, default=str)
    return hashlib.sha256(blob.encode()).hexdigest()


class Verified:
    """A bound task whose results are checked: every reference it returns must hash to its sha256.

    A cached result that points at a damaged or missing file is a cache miss: one
    warning line, the file goes, and the task runs again. It is never an output.
    """

    def __init__(self, task: Any, paths: Paths) -> None:
        self.task, self.paths = task, paths
        self.name = task.name

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        out = self.task(*args, **kwargs)
        bad = verify_refs(self.paths, out)
        if bad:
            warn(f"{self.name}: the cached result's {bad[0]} fails its sha256 check; recomputing")
            for rel in bad:
                if "://" not in rel:  # a remote object cannot be unlinked here; the recompute rewrites it
                    (self.paths.root / rel).unlink(missing_ok=True)
            out = self.task.with_options(refresh_cache=True)(*args, **kwargs)
            still = verify_refs(self.paths, out)
            if still:
                raise IntegrityError(f"{still[0]}: written by {self.name} but fails its sha256 check")
        return out

    def submit(self, *args: Any, runner: Any = None, **kwargs: Any) -> Any:
        """Submit to the flow's task runner, or to ``runner`` (an entered Prefect task runner,
        e.g. Dask's) when given."""
        if runner is None:
            return self.task.submit(*args, **kwargs)
        bound = inspect.signature(self.task.fn).bind(*args, **kwargs)
        return runner.submit(self.task, parameters=dict(bound.arguments))

    def named(self, run_name: str) -> Verified:
        """The same task (same cache key), its next run shown in the UI as ``run_name``."""
        return Verified(self.task.with_options(task_run_name=run_name), self.paths)


def bind(t: Any, root: Path, store_url: str = "") -> Verified:
    """``t`` caching its results, with verified references: under ``<root>/.ice-cache/results``,
    or, with an S3 ``store_url``, in the bucket (``<prefix>/results``), so that a task cached by
    one machine is a cache hit on another."""
    paths = Paths(root)
    if store_url:
        storage: Any = result_storage(store_url)
    else:
        paths.results.mkdir(parents=True, exist_ok=True)
        storage = paths.results
    task = t.with_options(
        cache_key_fn=cache_key,
        persist_result=True,
        result_storage=storage,
        result_serializer="json",  # tasks return plain data; a JSON result never runs code when read
    )
    return Verified(task, paths)


_RESULT_BLOCKS: dict[str, Any] = {}


def result_storage(store_url: str) -> Any:
    """prefect-aws's S3Bucket on ``<store>/results``, saved as a block (Prefect requires result
    storage to be persisted server-side). It carries no credentials: each machine's boto3 reads
    its own ``AWS_*`` environment, as the content store does."""
    if store_url not in _RESULT_BLOCKS:
        from prefect_aws import S3Bucket

        from pipeline.store import parse_store_url

        loc = parse_store_url(store_url)
        block = S3Bucket(bucket_name=loc.bucket, bucket_folder=loc.key("results"))
        name = "ice-results-" + hashlib.sha256(store_url.encode()).hexdigest()[:12]
        block.save(name, overwrite=True)
        _RESULT_BLOCKS[store_url] = block
    return _RESULT_BLOCKS[store_url]


# ----------------------------------------------------------------------------- loading
def _params(cfg: dict[str, Any]) -> Any:
    from ice.config import parse_params

    return parse_params(cfg, source="task config")


def task_device(cfg: dict[str, Any]) -> Any:
    from ice.train import pick_device

    return pick_device(cfg.get("train", {}).get("device", "auto"))


def load_data(paths: Paths, ref: dict[str, str]) -> Any:
    """The prepared dataset, decoded once per process."""
    from ice.data import load_prepared

    key = ref["sha256"]
    if key not in _DATA:
        _DATA.clear()  # one dataset at a time
        _DATA[key] = load_prepared(resolve(paths, ref), sha256=key)
    return _DATA[key]


def load_model(paths: Paths, ref: dict[str, str], device: Any) -> Any:
    from ice.checkpoint import load_checkpoint

    model, _ = load_checkpoint(resolve(paths, ref), sha256=ref["sha256"], map_location=device)
    return model


def _teacher(paths: Paths, ref: dict[str, str], device: Any) -> Any:
    """The unpruned model, for distillation; kept in memory across steps."""
    key = ref["sha256"]
    if key not in _MODELS:
        _MODELS.clear()
        _MODELS[key] = load_model(paths, ref, device).eval()
    return _MODELS[key]


def save_model(paths: Paths, model: Any, stem: str, meta: dict[str, Any], to: str = "") -> dict[str, str]:
    """Save to the content store ``to`` ("" local, else an S3 store url); the name carries the sha256."""
    from ice.checkpoint import save_checkpoint

    return _store(paths, stem, lambda tmp: save_checkpoint(tmp, model, meta), to)


def _paths(root: str) -> Paths:
    """The project's paths on this machine: ``root`` where it exists here, else this worker's
    own project (``$ICE_PROJECT_DIR`` or the working directory), e.g. on a Dask worker on
    another machine, where only the local download cache is used."""
    return Paths(Path(root)) if Path(root).is_dir() else Paths(project_root(None))


def _store(paths: Paths, stem: str, write: Any, to: str = "") -> dict[str, str]:
    """Write through ``write(tmp_path) -> sha256`` and move the file to its sha-named place;
    with an S3 store ``to``, upload it too (it stays in the local cache, already verified).

    The temporary name is unique to this write (two processes storing the same step at
    once never share it), and the rename happens only after the hash is known, so a
    sha-named file always holds the bytes its name says.
    """
    fd, tmp = temp_beside(paths.store / stem, ".pending")
    os.close(fd)
    try:
        sha = write(tmp)
        if to:
            store = s3_store(paths, to)
            dst = store.cached(store.object_uri(sha, ".pt"))
            os.replace(tmp, dst)
            return store.put(dst, sha, ".pt", name=stem)  # type: ignore[no-any-return]
        dst = store_path(paths, stem, sha)
        os.replace(tmp, dst)
    finally:
        tmp.unlink(missing_ok=True)
    return make_ref(paths, dst, sha)


# ----------------------------------------------------------------------------- tasks
@task(name="prepare-data", tags=["io"])
def prepare_data(root: str, data_cfg: dict[str, Any], store_url: str = "") -> dict[str, Any]:
    """Decode the source once into uint8 tensors with fixed train/val/test splits."""
    from ice.data import load_dataset, save_prepared

    paths = _paths(root)
    cfg = dict(data_cfg)
    if cfg.get("root") and not Path(cfg["root"]).is_absolute():
        cfg["root"] = str(paths.root / cfg["root"])
    if not Path(cfg.get("cache_dir", "data/cache")).is_absolute():
        cfg["cache_dir"] = str(paths.root / cfg.get("cache_dir", "data/cache"))
    ds = load_dataset(cfg)
    return {
        "ref": _store(paths, "prepared", lambda tmp: save_prepared(ds, tmp), store_url),
        "train": len(ds.train),
        "val": len(ds.val),
        "test": len(ds.test),
        "classes": len(ds.classes),
        "shape": list(ds.input_shape()[1:]),
    }


@task(name="pretrain-epoch", tags=["gpu"], task_run_name="pretrain-epoch-{epoch}")
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

    paths = _paths(root)
    params = _params(cfg)
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
    )
    ref = save_model(
        paths, model, f"pretrain-epoch{epoch:03d}", {"stage": "pretrain", "fit": state}, store_of(data_ref)
    )
    return {"ref": ref, "record": rec}


@task(name="finish-pretrain", tags=["gpu"])
def finish_pretrain(
    root: str, data_ref: dict[str, str], state_ref: dict[str, str], cfg: dict[str, Any]
) -> dict[str, Any]:
    """The pretrained model alone (no optimizer state), with its validation and test accuracy."""
    from ice.checkpoint import load_checkpoint

    paths = _paths(root)
    params = _params(cfg)
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


def accuracies(model: Any, data: Any, batch_size: int = 512) -> dict[str, float]:
    from ice.train import evaluate

    return {
        "val_acc": evaluate(model, data, "val", batch_size=batch_size)["acc"],
        "test_acc": evaluate(model, data, "test", batch_size=batch_size)["acc"],
    }


@task(name="start-pruning", tags=["gpu"])
def start_pruning(
    root: str,
    data_ref: dict[str, str],
    model_ref: dict[str, str],
    method: str,
    hp: dict[str, float] | None,
    cfg: dict[str, Any],
) -> dict[str, Any]:
    """Plan the steps and measure the reference accuracy; ICE also runs its freeze trial."""
    from ice.methods.core import start_run

    paths = _paths(root)
    params = _params(cfg)
    model = load_model(paths, model_ref, task_device(cfg))
    state = start_run(model, load_data(paths, data_ref), method, params, hp=hp)
    return state


def run_view(state: dict[str, Any]) -> dict[str, Any]:
    """The part of a run's state that a step depends on (no timings, no running accuracy)."""
    return {k: state[k] for k in ("method", "plan", "frozen", "hp", "input_shape", "conv_params_original")}


def _step_run_name(kind: str) -> Any:
    """A task-run name with the step number and unit, e.g. ``prune-step-3-layer1.2.conv1``."""

    def name() -> str:
        from prefect.runtime import task_run

        params = task_run.parameters
        k = int(params["k"])
        return f"{kind}-{k + 1}-{params['run']['plan'][k]['unit']}"

    return name


@task(name="prune-step", tags=["gpu"], task_run_name=_step_run_name("prune-step"))
def prune_one_step(
    root: str, data_ref: dict[str, str], model_ref: dict[str, str], run: dict[str, Any], k: int, cfg: dict[str, Any]
) -> dict[str, Any]:
    """Apply planned step ``k`` to the checkpoint; return the new reference, sizes and the step's lr."""
    from ice.methods.core import apply_frozen, prune_and_lr

    paths = _paths(root)
    params = _params(cfg)
    model = load_model(paths, model_ref, task_device(cfg))
    apply_frozen(model, run, params)
    info = prune_and_lr(model, load_data(paths, data_ref), run, k, params)
    info["ref"] = save_model(
        paths, model, f"{run['method']}-step{k:03d}-pruned", {"method": run["method"], "step": k}, store_of(data_ref)
    )
    return info


@task(name="evaluate-step", tags=["gpu"])
def evaluate_checkpoint(
    root: str, data_ref: dict[str, str], model_ref: dict[str, str], cfg: dict[str, Any]
) -> dict[str, float]:
    """Accuracy of a checkpoint on the decision split (validation), with its seconds and work."""
    from ice.methods.core import evaluate_step

    paths = _paths(root)
    return evaluate_step(load_model(paths, model_ref, task_device(cfg)), load_data(paths, data_ref), _params(cfg))


@task(name="decide-finetune")
def decide_finetune(
    run: dict[str, Any],
    acc_original: float | None,
    acc_previous: float | None,
    acc_now: float | None,
    cfg: dict[str, Any],
) -> bool:
    """ICE's rule (or always, for the baseline): fine-tune when the drop reaches ``thre``."""
    from ice.methods.core import decide

    state = {**run, "acc_original": acc_original, "acc_previous": acc_previous}
    return decide(state, acc_now, _params(cfg))


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
    paths = _paths(root)
    params = _params(cfg)
    device = task_device(cfg)
    model = load_model(paths, model_ref, device)
    teacher = _teacher(paths, teacher_ref, device) if params.prune.kd else None
    stats = train(model, teacher, load_data(paths, data_ref), params)
    return {"ref": save_model(paths, model, stem, meta, store_of(data_ref)), **stats}


@task(name="finetune", tags=["gpu"], task_run_name=_step_run_name("finetune"))
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
        apply_frozen(model, run, params)
        return finetune_after(model, teacher, data, k, lr, params)

    meta = {"method": run["method"], "step": k}
    return _train_checkpoint(
        root, data_ref, model_ref, teacher_ref, cfg, train, f"{run['method']}-step{k:03d}-finetuned", meta
    )


def _chunk_run_name() -> str:
    from prefect.runtime import task_run

    return f"recover-chunk-{int(task_run.parameters['i']) + 1}"


@task(name="recover-chunk", tags=["gpu"], task_run_name=_chunk_run_name)
def recover_checkpoint(
    root: str,
    data_ref: dict[str, str],
    model_ref: dict[str, str],
    teacher_ref: dict[str, str],
    run: dict[str, Any],
    i: int,
    cfg: dict[str, Any],
) -> dict[str, Any]:
    """Recovery chunk ``i`` toward the target (CE + KD, fresh SGD, the recovery's lr)."""
    from ice.methods.core import recovery_freeze
    from ice.methods.recovery import recover_chunk

    def train(model: Any, teacher: Any, data: Any, params: Any) -> dict[str, Any]:
        recovery_freeze(model, run, params)
        return recover_chunk(model, teacher, data, i, params)

    meta = {"method": run["method"], "recover": i}
    return _train_checkpoint(
        root, data_ref, model_ref, teacher_ref, cfg, train, f"{run['method']}-recover{i:03d}", meta
    )


@task(name="check-target", tags=["gpu"])
def check_target(
    root: str, data_ref: dict[str, str], model_ref: dict[str, str], cfg: dict[str, Any]
) -> dict[str, float]:
    """Accuracy of a checkpoint on the target's split (the whole of it), with its seconds and work."""
    from ice.methods.recovery import target_check

    paths = _paths(root)
    return target_check(load_model(paths, model_ref, task_device(cfg)), load_data(paths, data_ref), _params(cfg))


@task(name="train-with-pruning", tags=["gpu"])
def train_with_schedule(
    root: str, data_ref: dict[str, str], model_ref: dict[str, str] | None, method: str, cfg: dict[str, Any]
) -> dict[str, Any]:
    """A training-time method (one_shot, iterative_schedule, agp, one_cycle, prune_while_training),
    epoch by epoch: from scratch (``model_ref`` None) or from the pre-trained checkpoint."""
    from ice.methods import Callbacks, run_pruning

    paths = _paths(root)
    params = _params(cfg)
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


@task(name="autotune-setup", tags=["gpu"])
def autotune_setup(
    root: str, data_ref: dict[str, str], model_ref: dict[str, str], cfg: dict[str, Any]
) -> dict[str, Any]:
    """The freeze trial every auto-tune trial shares (its scores do not depend on the hyperparameters)."""
    from ice.methods.autotune import search_setup

    paths = _paths(root)
    model = load_model(paths, model_ref, task_device(cfg))
    return search_setup(model, load_data(paths, data_ref), _params(cfg))


def _trial_run_name() -> str:
    from prefect.runtime import task_run

    return f"autotune-trial-{int(task_run.parameters['number']) + 1}"


@task(name="autotune-trial", tags=["gpu"], task_run_name=_trial_run_name)
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

    paths = _paths(root)
    params = _params(cfg)
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


@task(name="evaluate-model", tags=["gpu"])
def evaluate_model(
    root: str, data_ref: dict[str, str], model_ref: dict[str, str], cfg: dict[str, Any]
) -> dict[str, Any]:
    """Final figures of one model: validation and test accuracy, size, MACs, latency."""
    import torch

    from ice.metrics import count_macs, count_params, measure_latency, sparsity
    from ice.train import evaluate

    paths = _paths(root)
    params = _params(cfg)
    device = task_device(cfg)
    model = load_model(paths, model_ref, device)
    data = load_data(paths, data_ref)
    bs = params.evaluate.batch_size
    shape = data.input_shape()
    with torch.no_grad():
        lat = measure_latency(
            model, data.input_shape(params.evaluate.latency_batch), iters=params.evaluate.latency_iters
        )
    return {
        "val_acc": evaluate(model, data, "val", batch_size=bs)["acc"],
        "test_acc": evaluate(model, data, "test", batch_size=bs)["acc"],
        "params": count_params(model),
        "params_nonzero": count_params(model, nonzero=True),
        "macs": count_macs(model, shape),
        "weight_sparsity": sparsity(model),  # zeros among conv and linear weights (masks)
        "latency_ms": lat["median_ms"],
        "val_images": len(data.val),
        "test_images": len(data.test),
    }
