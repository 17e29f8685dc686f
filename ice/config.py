"""Typed parameters: one pydantic model per section of ``params.yaml``.

``load_params(path)`` validates the whole file before any compute happens. Every
problem surfaces as :class:`ParamsError`, with a one-line message that names the
dotted key, the offending value and what is allowed. Unknown keys are errors, so
a typo such as ``prune.ratoi`` never passes silently.
"""

from __future__ import annotations

import hashlib
import json
import reprlib
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from ice.names import DEFAULT_CRITERION, Criterion, Method, WhileTrainingCriterion

__all__ = [
    "ParamsError",
    "Params",
    "DataConfig",
    "ModelConfig",
    "TrainConfig",
    "PruneConfig",
    "TargetConfig",
    "IceConfig",
    "LrConfig",
    "AutotuneConfig",
    "ScheduleConfig",
    "TrackingConfig",
    "EvaluateConfig",
    "load_params",
    "apply_overrides",
    "parse_sets",
    "parse_params",
    "parse_yaml",
]


class ParamsError(ValueError):
    """A params file or value is invalid. The message is one line."""


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True, frozen=False)


class DataConfig(_Section):
    source: Literal["digits", "cifar10", "cifar100", "folder"] = "digits"
    root: str | None = None  # cifar root, or ImageFolder directory / tar archive for `folder`
    download: bool = False  # cifar only: allow torchvision to download into `root`
    val_fraction: float = Field(0.1, gt=0.0, lt=1.0)
    test_fraction: float = Field(0.2, gt=0.0, lt=1.0)  # only for sources without a test split
    subset: float = Field(1.0, gt=0.0, le=1.0)  # fraction of train and val kept
    cache_dir: str = "data/cache"
    seed: int = 0
    # folder data: every image resized (shorter side) and center-cropped to this square at
    # prepare; null keeps the first image's size (others resized to it)
    image_size: int | None = Field(None, ge=8)
    # the kind of training augmentation (train.augment and prune.augment switch it on):
    # pad_crop (random crop with padding, flip: CIFAR-style), resized_crop (random-resized
    # crop, flip: ImageNet-style), or auto (resized_crop from 96 px on, pad_crop below)
    augmentation: Literal["auto", "pad_crop", "resized_crop"] = "auto"
    # how prepare stores the images: memory (one tensor file, read whole), shards (files of
    # ~64 MiB read per batch with bounded memory: decoded up to 64 px, JPEG above), or auto
    # (shards for a folder whose decoded images would pass 1 GiB)
    format: Literal["auto", "memory", "shards"] = "auto"

    @model_validator(mode="after")
    def _root_needed(self) -> DataConfig:
        if self.source == "folder" and not self.root:
            raise ValueError("root: None is not allowed when source is 'folder'; give a directory or a .tar(.gz) path")
        if self.image_size is not None and self.source != "folder":
            raise ValueError(
                f"image_size: {self.image_size} is not allowed when source is {self.source!r}; "
                "it resizes folder data only (null: keep the source's size)"
            )
        return self


class ModelConfig(_Section):
    arch: str = "cifar_resnet20"
    # checked against the registry in load_params so the message can list the choices
    # start from an existing model instead of pre-training: a checkpoint path written by
    # ice.checkpoint.save_checkpoint, or an MLflow registry URI models:/<name>@<alias> or
    # models:/<name>/<version>
    weights: str | None = None
    weights_sha256: str | None = Field(None, pattern=r"^[0-9a-f]{64}$")

    @model_validator(mode="after")
    def _sha_needs_weights(self) -> ModelConfig:
        if self.weights_sha256 and not self.weights:
            raise ValueError("weights_sha256: is set but weights is null; give model.weights too")
        return self


class TrainConfig(_Section):
    """Pre-training (and the defaults that other training loops borrow)."""

    epochs: float = Field(10, gt=0)
    batch_size: int = Field(128, ge=1)
    lr: float = Field(0.1, gt=0)
    momentum: float = Field(0.9, ge=0, lt=1)
    weight_decay: float = Field(5e-4, ge=0)
    lr_schedule: Literal["cosine", "one_cycle"] = "cosine"  # one_cycle: linear warm-up (15%), then cosine
    augment: bool = True
    device: Literal["auto", "cpu", "cuda"] = "auto"
    channels_last: bool | Literal["auto"] = "auto"
    # mixed precision for every training loop (pre-training, fine-tunes, recovery, schedules):
    # autocast to bfloat16 or float16 (with a gradient scaler); evaluation stays float32
    amp: Literal["off", "bf16", "fp16"] = "off"

    @field_validator("amp", mode="before")
    @classmethod
    def _yaml_off(cls, v: Any) -> Any:
        # YAML 1.1 reads a bare `off` as false, and `dvc exp run -S` writes params.yaml back bare
        return "off" if v is False else v


class TargetConfig(_Section):
    """Cost to a target: after its last pruning step a step-wise method (ice, iterative,
    prune_once) recovers in chunks of ``check_every`` epochs, checking the whole ``split``
    after each, until it is within ``tolerance`` points of the unpruned model or has spent
    ``max_epochs``. ``tolerance: null`` turns the recovery off (a fixed budget, as before).

    The recovery's lr is the same for every method. ``policy: decay`` (the default): one
    SGD optimizer for the whole recovery (momentum kept across chunks), and one linear decay
    of the lr from ``lr`` to ``lr * final_lr_frac`` over a budget of B epochs that never
    rises: past B the lr stays at its last value. B is ``budget_epochs`` when given (the
    hindsight grid), else the rule ``epochs_per_point`` times the points the pruned model
    misses the target by at the first check, at least ``min_budget_epochs`` and at most
    ``max_epochs``, rounded up to a whole number of checks. ``policy: sgdr`` is the earlier
    recovery: a fresh optimizer each chunk and a cosine with warm restarts (SGDR) peaking at
    ``lr``, the first cycle ``cycle_epochs`` long and each next one ``cycle_mult`` times
    longer. Either way a check that meets the target ends the recovery there."""

    tolerance: float | None = Field(None, gt=0)  # points below the unpruned model's accuracy on `split`
    split: Literal["val"] = "val"  # the whole validation split; never test
    max_epochs: float = Field(10.0, gt=0)  # the most a recovery may spend
    check_every: float = Field(0.1, gt=0)  # epochs of training between checks
    lr: float = Field(0.01, gt=0)  # the peak: where the decay (or each SGDR cycle) starts
    policy: Literal["decay", "sgdr"] = "decay"
    budget_epochs: float | None = Field(None, gt=0)  # decay: a fixed budget B (null: B by the rule)
    epochs_per_point: float = Field(0.25, gt=0)  # decay's rule: B = this x points missing at the first check
    min_budget_epochs: float = Field(1.0, gt=0)  # decay's rule: the shortest B
    final_lr_frac: float = Field(0.02, ge=0, lt=1)  # decay: the lr at the end of B (and past it), x lr
    cycle_epochs: float = Field(1.0, gt=0)  # sgdr: the first cosine cycle
    cycle_mult: float = Field(2.0, ge=1.0)  # sgdr: each next cycle this many times longer

    @model_validator(mode="after")
    def _chunks(self) -> TargetConfig:
        if self.check_every > self.max_epochs:
            raise ValueError(
                f"check_every: {self.check_every} is not allowed; it must be at most max_epochs ({self.max_epochs})"
            )
        return self


class PruneConfig(_Section):
    """What is pruned and how a fine-tune looks; shared by ICE and the iterative baseline."""

    methods: list[Method] = ["ice", "iterative"]
    ratio: float = Field(0.6, gt=0.0, lt=1.0)
    # channels removed per step: ceil(ratio * width), as the reference code, or round()
    rounding: Literal["ceil", "round"] = "ceil"
    # keep each unit's width a multiple of this (8 lets CPU and GPU conv kernels run at full
    # speed: see benchmarks/latency.py); 1 keeps the exact ratio
    round_to: int = Field(1, ge=1)
    criterion: Criterion = DEFAULT_CRITERION
    max_units: int | None = Field(None, ge=1)  # prune only the first N units (quick runs)
    finetune_epochs: float = Field(1.0, gt=0)
    finetune_lr: float = Field(0.001, gt=0)  # the baseline's fixed lr
    momentum: float = Field(0.9, ge=0, lt=1)
    weight_decay: float = Field(1e-4, ge=0)
    batch_size: int = Field(128, ge=1)
    augment: bool = True
    kd: bool = True
    kd_temperature: float = Field(2.0, gt=0)
    # Hinton's T^2 factor on the KL term (the reference code has none: KL(sum)/batch)
    kd_t2: bool = True
    eval_batch_size: int = Field(512, ge=1)
    # images of the validation split that every per-step evaluation uses (null: all of it);
    # a seeded draw, the same for every method
    eval_images: int | None = Field(None, ge=1)
    # evaluate after each fine-tune (the per-step accuracy curve; every method pays for it)
    eval_after_finetune: bool = True
    # batch-norm statistics re-estimated after every pruning step, from this many training
    # batches of `batch_size` (forward only, counted in the cost; 0: off)
    bn_recal_batches: int = Field(10, ge=0)
    # run every step-wise method until it is good enough, and count what that cost
    target: TargetConfig = Field(default_factory=TargetConfig)


class LrConfig(_Section):
    """Pruning-aware learning rate: lr = base - delta / (1 + (x / (2(1-p) - x))^beta)."""

    base: float = Field(0.001, gt=0)
    delta: float = Field(0.0008, ge=0)
    p: float = Field(0.15, gt=0, lt=1)
    beta: float = Field(50, gt=0)

    @model_validator(mode="after")
    def _positive(self) -> LrConfig:
        if self.delta >= self.base:
            raise ValueError(
                f"delta: {self.delta} is not allowed; it must be below base ({self.base}) so lr stays positive"
            )
        return self


PAPER_GRID: dict[str, list[float]] = {
    "thre": [0.5, 1.5],
    "fr": [0.3, 0.9],
    "base": [0.001, 0.005],
    "p": [0.1, 0.15, 0.2],
    "beta": [40.0, 50.0, 60.0],
    "delta": [0.0006, 0.0007, 0.0008],
}


class AutotuneConfig(_Section):
    enabled: bool = True
    n_trials: int = Field(6, ge=1)
    subset: float = Field(0.02, gt=0, le=1)
    objective: Literal["balanced", "paper"] = "balanced"
    acc_tolerance: float = Field(1.0, gt=0)  # balanced objective: points of accuracy worth doubling the time
    # a trial's cost: work (MACs, the same on every machine), seconds (measured, as the
    # reference), or auto (seconds for the paper objective, work otherwise)
    cost: Literal["auto", "work", "seconds"] = "auto"
    min_val_images: int = Field(
        100, ge=0
    )  # floor on the trials' validation subset (0: the plain fraction, as the paper)
    seed: int = 0
    workers: int = Field(1, ge=1)  # trials run at once by the autotune flow's task runner
    # stop a trial once its cost alone reaches the best finished trial's objective (balanced
    # objective only: it can no longer win, so the pick is the same)
    early_stop: bool = True
    grid: dict[str, list[float]] = Field(default_factory=lambda: {k: list(v) for k, v in PAPER_GRID.items()})

    @model_validator(mode="after")
    def _grid_keys(self) -> AutotuneConfig:
        allowed = {"thre", "fr", "base", "p", "beta", "delta"}
        size = 1
        for key, values in self.grid.items():
            if key not in allowed:
                raise ValueError(f"grid.{key}: unknown key; allowed: {', '.join(sorted(allowed))}")
            if not values:
                raise ValueError(f"grid.{key}: [] is not allowed; give at least one value")
            size *= len(set(values))
        if self.n_trials > size:
            raise ValueError(f"n_trials: {self.n_trials} is not allowed; the grid has {size} distinct points")
        return self


# the ice keys the search sets for each trial (and, when it is on, for the real run)
SEARCHED_ICE_KEYS = ("thre", "fr", "lr")


class IceConfig(_Section):
    thre: float = Field(1.5, ge=0)  # accuracy drop (percentage points) that triggers a fine-tune
    reference: Literal["original", "previous"] = "original"
    fr: float = Field(0.3, ge=0, le=1)  # fraction of convs frozen
    trial_lr: float = Field(0.001, gt=0)
    freeze_bn: bool = True  # freeze the BatchNorm after each frozen conv (its affine parameters)
    # a frozen BatchNorm's running statistics: false keeps updating them, as the reference code
    freeze_bn_stats: bool = False
    # which convs may be frozen: the convs of the prunable units (a residual block's conv1
    # and conv2, as the reference code), or every conv (stem and shortcuts too)
    freeze_candidates: Literal["units", "all"] = "units"
    # keep the frozen convs frozen during the recovery to the target (the list holds for the whole run)
    recovery_frozen: bool = True
    lr: LrConfig = Field(default_factory=LrConfig)
    autotune: AutotuneConfig = Field(default_factory=AutotuneConfig)


class ScheduleConfig(_Section):
    """Training-time pruning: one_shot, iterative_schedule, agp, one_cycle and prune_while_training.

    From ``scratch`` (the default, as the One-Cycle and pruning-while-training papers train),
    a method is a whole training run: a fresh model seeded as pre-training's, the ``train``
    section's batch size, momentum, weight decay and augmentation, ``epochs`` epochs at peak
    ``lr`` under ``lr_policy``. From ``pretrained`` it sparsifies the pre-trained model with
    the ``prune`` section's batch size, momentum and weight decay.

    Budgets: ``weight`` granularity masks ``target`` of the conv and linear weights;
    ``filter`` granularity (and prune_while_training, always) removes ``prune.ratio`` of
    each unit's filters, the same cut as ICE's and iterative's steps, so the structured
    methods end at the same size.
    """

    init: Literal["scratch", "pretrained"] = "scratch"
    epochs: float = Field(10, gt=0)
    lr: float = Field(0.1, gt=0)  # the peak lr
    lr_policy: Literal["one_cycle", "cosine"] = "one_cycle"  # one_cycle: warm-up (15%), then cosine annealing
    target: float = Field(0.8, gt=0, lt=1)  # final weight sparsity (weight granularity)
    granularity: Literal["weight", "filter"] = "weight"
    scope: Literal["local", "global"] = "local"
    start: float = Field(0.2, ge=0, lt=1)  # training progress at which agp/iterative_schedule begin
    end: float = Field(1.0, gt=0, le=1)
    one_shot_at: float = Field(0.5, ge=0, le=1)  # fasterai's one_shot: at half the training
    n_steps: int = Field(3, ge=1)  # iterative_schedule: equal steps between start and end
    alpha: float = 14.0  # one_cycle's sparsity curve: fasterai's sched_onecycle defaults (alpha 14, beta 6)
    beta: float = 6.0
    interval: int = Field(10, ge=1)  # prune_while_training: optimizer steps between removals
    pwt_until: float = Field(0.5, gt=0, le=1)  # prune_while_training: progress by which the target is reached
    pwt_criterion: WhileTrainingCriterion = DEFAULT_CRITERION  # L1: the best in Roy et al.
    update_every: int = Field(1, ge=1)  # optimizer steps between sparsity updates


class TrackingConfig(_Section):
    experiment: str = "ice-pipeline"
    tracking_uri: str | None = None  # None: $MLFLOW_TRACKING_URI, else sqlite:///mlflow.db
    register_models: bool = True


class StoreConfig(_Section):
    # where task outputs live: "" a local directory (.ice-cache/store), or s3://bucket[/prefix];
    # $ICE_STORE_URL overrides it. Endpoint and credentials come from the AWS_* environment only.
    url: str = ""

    @model_validator(mode="after")
    def _url(self) -> StoreConfig:
        v = self.url.strip()
        if v and (not v.startswith("s3://") or len(v) <= 5 or v[5] == "/"):
            raise ValueError(f"url = {v!r} is not allowed; allowed: empty (a local store) or s3://bucket[/prefix]")
        return self


class ScaleConfig(_Section):
    # how independent work (auto-tune trials, prune@method in the pipeline flow) runs:
    # threads in this process, or Dask (prefect-dask): a local cluster of `workers`
    # processes, or the scheduler at `address` (tcp://host:8786; $ICE_DASK_ADDRESS overrides)
    runner: Literal["threads", "dask"] = "threads"
    address: str = ""
    workers: int = Field(2, ge=1)


class EvaluateConfig(_Section):
    batch_size: int = Field(512, ge=1)
    latency_batch: int = Field(1, ge=1)
    latency_iters: int = Field(20, ge=1)


class Params(_Section):
    seed: int = 0
    data: DataConfig = Field(default_factory=DataConfig)
    model: ModelConfig = Field(default_factory=ModelConfig)
    train: TrainConfig = Field(default_factory=TrainConfig)
    prune: PruneConfig = Field(default_factory=PruneConfig)
    ice: IceConfig = Field(default_factory=IceConfig)
    schedule: ScheduleConfig = Field(default_factory=ScheduleConfig)
    tracking: TrackingConfig = Field(default_factory=TrackingConfig)
    evaluate: EvaluateConfig = Field(default_factory=EvaluateConfig)
    store: StoreConfig = Field(default_factory=StoreConfig)
    scale: ScaleConfig = Field(default_factory=ScaleConfig)


MAX_PARAMS_BYTES = 1 << 20  # a params file is configuration: 1 MiB is far beyond any real one


def _short(value: Any, limit: int = 80) -> str:
    """``repr(value)``, built with bounded work and cut to about ``limit`` characters."""
    r = reprlib.Repr()
    r.maxstring, r.maxother, r.maxlist, r.maxdict, r.maxlevel = limit, limit, 8, 8, 3
    text = r.repr(value)
    return text if len(text) <= limit else text[: limit - 1] + "…"


class _ParamsLoader(yaml.SafeLoader):
    """YAML's safe loader without aliases: ``*name`` repeats a node, and nested repeats grow
    exponentially (a few hundred bytes can expand to gigabytes). Params never need them."""

    def compose_node(self, parent: Any, index: Any) -> Any:
        if self.check_event(yaml.AliasEvent):
            event = self.peek_event()
            mark = event.start_mark
            raise ParamsError(
                f"{self.name}: YAML alias *{str(event.anchor)[:40]} at line {mark.line + 1} is not allowed in params; "
                "write the value out"
            )
        return super().compose_node(parent, index)


def parse_yaml(text: str, source: str) -> Any:
    """Parse params YAML (a file, or a ``--set`` value) safely: no tags, no aliases, bounded size."""
    if len(text) > MAX_PARAMS_BYTES:
        raise ParamsError(f"{source}: {len(text):,} characters is too large for params (at most {MAX_PARAMS_BYTES:,})")
    loader = _ParamsLoader(text)
    loader.name = source
    try:
        return loader.get_single_data()
    except yaml.YAMLError as err:
        mark = getattr(err, "problem_mark", None)
        where = f" at line {mark.line + 1}" if mark is not None else ""
        raise ParamsError(f"{source}: is not valid YAML{where}") from None
    finally:
        loader.dispose()


def parse_sets(items: list[str]) -> dict[str, Any]:
    """``["prune.ratio=0.7", "ice.autotune.enabled=false"]`` as dotted overrides, each value
    parsed by :func:`parse_yaml`: the one parser of ``--set`` for the CLI and the benchmarks.
    A bad item raises :class:`ParamsError` in one line."""
    out: dict[str, Any] = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise ParamsError(f"--set {item!r}: expected KEY=VALUE")
        out[key] = parse_yaml(value, f"--set {key}")
    return out


def _one_line(err: ValidationError, source: str) -> str:
    first = err.errors()[0]
    loc = ".".join(str(p) for p in first["loc"])
    kind = first["type"]
    value = _Shown(first.get("input"))
    msg = first["msg"]
    if kind == "extra_forbidden":
        return f"{source}: unknown key '{loc}'; check the spelling against the documented params"
    if msg.startswith("Value error, "):
        # our own validators already name the key and the allowed values
        inner = msg.removeprefix("Value error, ")
        return f"{source}: {loc + '.' if loc else ''}{inner}"
    if kind == "literal_error":
        allowed = msg.split("Input should be ", 1)[-1]
        return f"{source}: {loc} = {value!r} is not allowed; allowed: {allowed}"
    return f"{source}: {loc} = {value!r} is not allowed: {msg}"


class _Shown:
    """A value as an error message shows it: its repr, at most about 80 characters."""

    def __init__(self, value: Any) -> None:
        self.value = value

    def __repr__(self) -> str:
        return _short(self.value)


def parse_params(raw: Any, source: str = "params") -> Params:
    """Validate an already-parsed mapping (for example from YAML) into :class:`Params`."""
    if raw is None:
        raw = {}
    if not isinstance(raw, dict):
        raise ParamsError(f"{source}: the top level must be a mapping of sections, got {type(raw).__name__}")
    try:
        params = Params.model_validate(raw)
    except ValidationError as err:
        raise ParamsError(_one_line(err, source)) from None
    from ice.models import available_archs, is_known_arch

    if not is_known_arch(params.model.arch):
        why = ""
        if ":" in params.model.arch and not params.model.arch.startswith("tv:"):
            from ice.models import import_arch

            try:
                import_arch(params.model.arch)
            except ValueError as err:
                why = f" ({str(err).split(': ', 1)[-1]})"
        raise ParamsError(
            f"{source}: model.arch = {params.model.arch!r} is not allowed{why}; allowed: "
            f"{', '.join(available_archs())}, tv:<torchvision classifier> or package.module:Class"
        )
    return params


def apply_overrides(raw: dict[str, Any], overrides: dict[str, Any]) -> dict[str, Any]:
    """Set dotted keys (``{"prune.ratio": 0.7}``) in a raw params mapping, in place."""
    for dotted, value in overrides.items():
        node = raw
        parts = dotted.split(".")
        for part in parts[:-1]:
            nxt = node.setdefault(part, {})
            if not isinstance(nxt, dict):
                raise ParamsError(f"override {dotted}: {part} is not a section")
            node = nxt
        node[parts[-1]] = value
    return raw


def load_params(path: str | Path, overrides: dict[str, Any] | None = None) -> Params:
    """Read and validate a params file, with optional dotted-key ``overrides`` applied first.

    Raises :class:`ParamsError` on any problem."""
    p = Path(path)
    try:
        with open(p, "rb") as f:
            data = f.read(MAX_PARAMS_BYTES + 1)  # never more than the limit into memory
    except OSError as err:
        raise ParamsError(f"{p}: cannot be read ({err.strerror or err})") from None
    if len(data) > MAX_PARAMS_BYTES:
        raise ParamsError(f"{p}: is larger than {MAX_PARAMS_BYTES:,} bytes; a params file is a page of settings")
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError:
        raise ParamsError(f"{p}: is not UTF-8 text") from None
    key = (
        str(p.resolve()),
        hashlib.sha256(data).hexdigest(),
        json.dumps(overrides or {}, default=repr),
    )  # in order: later keys win
    validated = _LOADED.get(key)  # held here: another thread may replace the entry meanwhile
    if validated is None:
        validated = _validated(p, text, overrides)
        _LOADED.clear()  # a process reads one params file (a run), or a few in turn: keep the last
        _LOADED[key] = validated
    params = validated.model_copy(deep=True)  # callers may set fields on theirs
    from ice.models import trust_arch

    trust_arch(params.model.arch)  # a params file is trusted configuration: checkpoints of its arch may load
    return params


# the last params validated by load_params, by (path, content sha256, overrides): the CLI's check,
# the flow run's name and the stage itself read the same file in one process, and it is parsed once
_LOADED: dict[tuple[str, str, str], Params] = {}


def _validated(p: Path, text: str, overrides: dict[str, Any] | None) -> Params:
    raw = parse_yaml(text, str(p))
    if raw is None or raw == {}:
        # an empty file is far more likely a mistake (a truncated copy, the wrong path) than a wish for defaults
        raise ParamsError(f"{p}: is empty; give at least one section (params.yaml lists every key)")
    if overrides:
        if not isinstance(raw, dict):
            raise ParamsError(f"{p}: the top level must be a mapping of sections, got {type(raw).__name__}")
        apply_overrides(raw, overrides)
    return parse_params(raw, source=str(p))
