"""A readable training loop: no framework, hooks are plain callables.

``train_epoch`` runs one pass (or a fraction of one) over the training split, with
optional knowledge distillation from a teacher. ``accuracy`` measures it.
Frozen layers (see :func:`freeze`) are left out of the optimizer, their weight
gradients are never computed, and frozen BatchNorm keeps its running statistics.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Iterable
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from ice.data import AnySplit, Dataset, batches, n_steps
from ice.metrics import G, count_macs, train_macs

__all__ = [
    "pick_device",
    "train_epoch",
    "accuracy",
    "kd_loss",
    "make_optimizer",
    "fit",
    "freeze",
    "unfreeze",
    "frozen_names",
    "frozen_convs",
    "remap_optimizer",
    "cosine_lr",
    "one_cycle_lr",
    "LR_SCHEDULES",
    "epoch_fractions",
    "fit_epoch",
    "StepHook",
    "AMP_DTYPES",
]

# after each optimizer step: (step, the step's loss as a 0-d tensor on the device; reading it
# is a device-to-host sync, so a hook that does not need it should leave it alone)
StepHook = Callable[[int, torch.Tensor], None]

AMP_DTYPES: dict[str, torch.dtype | None] = {"off": None, "bf16": torch.bfloat16, "fp16": torch.float16}


def pick_device(preference: str = "auto") -> torch.device:
    """``cuda`` if available (or asked for), else ``cpu``."""
    if preference == "cpu":
        return torch.device("cpu")
    if preference == "cuda" and not torch.cuda.is_available():
        raise RuntimeError("device 'cuda' was asked for but torch sees no CUDA device")
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True  # fixed input sizes: let cuDNN pick its fastest kernels
    return device


def use_channels_last(setting: bool | str, device: torch.device) -> bool:
    # measured on 2 CPU cores, ResNet-20 fwd+bwd at batch 128: 312 img/s contiguous,
    # 325 channels_last, within noise; cuDNN's NHWC kernels are the case for it, so
    # "auto" means "on cuda only"
    if setting == "auto":
        return device.type == "cuda"
    return bool(setting)


def kd_loss(student: torch.Tensor, teacher: torch.Tensor, temperature: float = 2.0, t2: bool = True) -> torch.Tensor:
    """KL(log_softmax(z/T) || softmax(z_teacher/T)) per image, times T^2 with ``t2`` (Hinton et al., 2015).

    Without ``t2`` it is the ICE reference code's ``kl_div(..., reduction="sum") / batch``.
    """
    t = temperature
    kl = F.kl_div(F.log_softmax(student / t, 1), F.softmax(teacher / t, 1), reduction="batchmean")
    return kl * (t * t) if t2 else kl


# ----------------------------------------------------------------------------- freezing
def freeze(model: nn.Module, names: Iterable[str], bn: bool = True, bn_stats: bool = False) -> list[str]:
    """Freeze the named modules: their weights stop training.

    ``names`` are conv (or any module) paths; with ``bn`` the BatchNorm that directly
    follows each named conv is frozen as well: its affine parameters stop training, and
    with ``bn_stats`` its running statistics stop updating too (it runs in eval mode
    while the rest trains). Returns the frozen module names.
    """
    modules = dict(model.named_modules())
    order = list(modules)
    done: list[str] = []
    for name in names:
        if name not in modules:
            raise KeyError(f"cannot freeze {name!r}: no such module")
        targets = [name]
        if bn:
            i = order.index(name)
            for nxt in order[i + 1 :]:
                if isinstance(modules[nxt], nn.BatchNorm2d):
                    targets.append(nxt)
                    break
                if isinstance(modules[nxt], nn.Conv2d | nn.Linear):
                    break
        for t in targets:
            mod = modules[t]
            for p in mod.parameters(recurse=False):
                p.requires_grad_(False)
            mod._ice_frozen = True  # type: ignore[assignment]
            mod._ice_frozen_stats = bn_stats  # type: ignore[assignment]
            if t not in done:
                done.append(t)
    return done


def unfreeze(model: nn.Module) -> None:
    for m in model.modules():
        if getattr(m, "_ice_frozen", False):
            m._ice_frozen = m._ice_frozen_stats = False  # type: ignore[assignment]
            for p in m.parameters(recurse=False):
                p.requires_grad_(True)


def frozen_names(model: nn.Module) -> list[str]:
    """Every frozen module: the convs, and their batch norms where ``freeze_bn`` froze them too."""
    return [n for n, m in model.named_modules() if getattr(m, "_ice_frozen", False)]


def frozen_convs(model: nn.Module) -> int:
    """How many layers the freeze trial froze (its convs; the batch norms frozen with them not counted)."""
    bn = nn.modules.batchnorm._BatchNorm
    return sum(1 for m in model.modules() if getattr(m, "_ice_frozen", False) and not isinstance(m, bn))


def _train_mode(model: nn.Module) -> None:
    model.train()
    for m in model.modules():
        if getattr(m, "_ice_frozen_stats", False) and isinstance(m, nn.modules.batchnorm._BatchNorm):
            m.eval()  # running statistics stay as they were


def make_optimizer(model: nn.Module, lr: float, momentum: float = 0.9, weight_decay: float = 1e-4) -> torch.optim.SGD:
    """SGD over the trainable parameters only: frozen layers are not in the optimizer."""
    params = [p for p in model.parameters() if p.requires_grad]
    return torch.optim.SGD(params, lr=lr, momentum=momentum, weight_decay=weight_decay)


def remap_optimizer(
    opt: torch.optim.Optimizer, changes: Iterable[tuple[torch.Tensor, nn.Parameter, int, torch.Tensor | None]]
) -> None:
    """Carry optimizer state across a structural change (from ``prune_channels``).

    Each replaced parameter takes its old one's place in the param groups, and its
    momentum buffer is sliced like the weight. Without this, pruned layers silently
    drop out of the optimizer and stop training.
    """
    for old, new, dim, keep in changes:
        for group in opt.param_groups:
            group["params"] = [new if p is old else p for p in group["params"]]
        state = opt.state.pop(old, None)
        if state and keep is not None:  # kept indices unknown (a bare parameter): the state starts afresh
            opt.state[new] = {
                k: v.index_select(dim, keep.to(v.device)).clone()
                if isinstance(v, torch.Tensor) and v.shape == old.shape
                else v
                for k, v in state.items()
            }


def _train_setup(
    model: nn.Module, teacher: nn.Module | None, device: torch.device | None, channels_last: bool | str, amp: str
) -> tuple[torch.device, bool, torch.dtype | None, torch.amp.GradScaler | None]:
    """The device, memory format, autocast dtype and gradient scaler of an epoch; modes set."""
    if amp not in AMP_DTYPES:
        raise ValueError(f"train.amp must be one of {', '.join(AMP_DTYPES)}, not {amp!r}")
    device = device or next(model.parameters()).device
    cl = use_channels_last(channels_last, device)
    if cl:
        model.to(memory_format=torch.channels_last)  # type: ignore[call-overload]
    _train_mode(model)
    if teacher is not None:
        teacher.eval()
    scaler = torch.amp.GradScaler(device.type) if amp == "fp16" else None
    return device, cl, AMP_DTYPES[amp], scaler


def _train_step(
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    x: torch.Tensor,
    y: torch.Tensor,
    dtype: torch.dtype | None,
    scaler: torch.amp.GradScaler | None,
    teacher: nn.Module | None,
    kd: tuple[float, float, bool],
) -> tuple[torch.Tensor, torch.Tensor]:
    """One forward, backward and optimizer step; the detached loss and logits."""
    device = x.device
    with torch.autocast(device.type, dtype=dtype, enabled=dtype is not None):
        out = model(x)
        loss = F.cross_entropy(out, y)
        if teacher is not None:
            kd_weight, temperature, kd_t2 = kd
            with torch.no_grad():
                t_out = teacher(x)
            loss = loss + kd_weight * kd_loss(out, t_out, temperature, kd_t2)
    optimizer.zero_grad(set_to_none=True)
    if scaler is not None:
        scaler.scale(loss).backward()
        scaler.step(optimizer)
        scaler.update()
    else:
        loss.backward()
        optimizer.step()
    return loss.detach(), out.detach()


# ----------------------------------------------------------------------------- loops
def train_epoch(
    model: nn.Module,
    data: Dataset,
    optimizer: torch.optim.Optimizer,
    *,
    batch_size: int = 128,
    fraction: float = 1.0,
    augment: bool = True,
    generator: torch.Generator | None = None,
    teacher: nn.Module | None = None,
    temperature: float = 2.0,
    kd_t2: bool = True,
    kd_weight: float = 1.0,
    device: torch.device | None = None,
    channels_last: bool | str = "auto",
    lr_at: Callable[[int, int], float] | None = None,
    on_step: StepHook | None = None,
    split: AnySplit | None = None,
    amp: str = "off",
    start: int = 0,
) -> dict[str, float]:
    """One pass (or ``fraction`` of one) over ``data.train``; returns loss, accuracy and timing.

    With a ``teacher`` the loss is ``CE + kd_weight * kd_loss``; the teacher runs
    under ``no_grad`` in eval mode. ``lr_at(step, n_steps)`` sets the lr before each
    step; ``on_step`` runs after each optimizer step (pruning schedules hook in here).

    ``amp``: ``off``, ``bf16`` or ``fp16`` autocast of the forward passes and the loss (fp16
    with a gradient scaler). The loss and correct counts are summed on the device and read
    once, after the last step: no device-to-host sync per step.

    ``start`` resumes an epoch that stopped after ``start`` steps: with the model and
    optimizer as they were then and a ``generator`` seeded as for the whole epoch, the steps
    from ``start`` on see the same batches and lrs as in an epoch that never stopped.
    """
    device, cl, dtype, scaler = _train_setup(model, teacher, device, channels_last, amp)
    split = split if split is not None else data.train
    n_total = n_steps(len(split), batch_size, fraction)
    t0 = time.perf_counter()
    # float64 sums of float32 losses: the same figures a Python float sum gave
    total_loss = torch.zeros((), dtype=torch.float64, device=device)
    correct = torch.zeros((), dtype=torch.long, device=device)
    seen = 0
    kd = (kd_weight, temperature, kd_t2)
    shuffled = batches(
        split,
        batch_size,
        data.mean,
        data.std,
        shuffle=True,
        augment=augment,
        generator=generator,
        device=device,
        fraction=fraction,
        channels_last=cl,
        augment_kind=data.augment,
        start=start,
    )
    for step, (x, y) in enumerate(shuffled, start=start):
        if lr_at is not None:
            for g in optimizer.param_groups:
                g["lr"] = lr_at(step, n_total)
        lv, out = _train_step(model, optimizer, x, y, dtype, scaler, teacher, kd)
        # log, on the device
        total_loss += lv.double() * len(y)
        correct += (out.argmax(1) == y).sum()
        seen += len(y)
        if on_step is not None:
            on_step(step, lv)
    return {
        "loss": float(total_loss) / max(seen, 1),
        "acc": 100.0 * int(correct) / max(seen, 1),
        "images": float(seen),
        "seconds": time.perf_counter() - t0,
    }


@torch.no_grad()
def accuracy(
    model: nn.Module,
    data: Dataset,
    split: str | AnySplit = "val",
    *,
    batch_size: int = 512,
    device: torch.device | None = None,
) -> dict[str, float]:
    """Top-1 accuracy (percent) and mean loss on a split (``"val"`` by default)."""
    device = device or next(model.parameters()).device
    s = getattr(data, split) if isinstance(split, str) else split
    was_training = model.training
    model.eval()
    correct, total_loss, seen = 0, 0.0, 0
    for x, y in batches(s, batch_size, data.mean, data.std, device=device):
        out = model(x)
        total_loss += float(F.cross_entropy(out, y, reduction="sum"))
        correct += int((out.argmax(1) == y).sum())
        seen += len(y)
    model.train(was_training)
    return {"acc": 100.0 * correct / max(seen, 1), "loss": total_loss / max(seen, 1)}


def epoch_fractions(epochs: float) -> list[float]:
    """Per-epoch fractions for a possibly fractional epoch count: 2.5 -> [1, 1, 0.5]."""
    return [min(1.0, epochs - e) for e in range(math.ceil(epochs))]


def cosine_lr(peak: float, offset: int, total: int) -> Callable[[int, int], float]:
    """An ``lr_at`` hook: cosine decay from ``peak`` over ``total`` steps, this epoch starting at ``offset``."""

    def lr_at(step: int, _n: int) -> float:
        return 0.5 * peak * (1 + math.cos(math.pi * min(1.0, (offset + step) / total)))

    return lr_at


def one_cycle_lr(
    peak: float, offset: int, total: int, warmup: float = 0.15, div: float = 10.0, final_div: float = 1e3
) -> Callable[[int, int], float]:
    """An ``lr_at`` hook: one cycle (Smith), as ``torch.optim.lr_scheduler.OneCycleLR`` with cosine annealing.

    Linear warm-up from ``peak/div`` to ``peak`` over the first ``warmup`` share of the
    ``total`` steps, then cosine annealing down to ``peak/div/final_div``.
    """
    up = max(1, round(warmup * total))

    def lr_at(step: int, _n: int) -> float:
        s = offset + step
        if s < up:
            return peak / div + (peak - peak / div) * s / up
        t = min(1.0, (s - up) / max(1, total - up))
        low = peak / div / final_div
        return low + 0.5 * (peak - low) * (1 + math.cos(math.pi * t))

    return lr_at


LR_SCHEDULES: dict[str, Callable[..., Callable[[int, int], float]]] = {"cosine": cosine_lr, "one_cycle": one_cycle_lr}


# ----------------------------------------------------------------------------- pre-training, one epoch at a time
def fit_epoch(
    model: nn.Module,
    data: Dataset,
    state: dict[str, Any] | None,
    *,
    epochs: float,
    lr: float,
    momentum: float = 0.9,
    weight_decay: float = 5e-4,
    batch_size: int = 128,
    augment: bool = True,
    seed: int = 0,
    schedule: str = "cosine",
    device: torch.device | None = None,
    amp: str = "off",
) -> tuple[dict[str, Any], dict[str, Any]]:
    """Run the next epoch of a pre-training from ``state`` (``None``: the first epoch).

    ``state`` is plain data (tensors, numbers, lists): the optimizer's state, the data
    generator's and torch's RNG states, the epoch count and the history so far. It is
    what :func:`fit_epoch` returns, so a caller can save it with the model after every
    epoch and continue later, in another process, with the same bytes as a run that
    never stopped. Returns ``(state, record)``.
    """
    device = device or next(model.parameters()).device
    model.to(device)
    opt = make_optimizer(model, lr, momentum, weight_decay)
    g = torch.Generator().manual_seed(seed)
    epoch, history = 0, []
    if state is not None:
        opt.load_state_dict(state["optimizer"])
        g.set_state(state["generator"])
        torch.set_rng_state(state["torch_rng"])
        epoch, history = int(state["epoch"]), list(state["history"])
    fractions = epoch_fractions(epochs)
    if epoch >= len(fractions):
        raise ValueError(f"the fit is complete: {epoch} of {len(fractions)} epochs done")
    steps = [n_steps(len(data.train), batch_size, f) for f in fractions]
    lr_at = LR_SCHEDULES[schedule](lr, sum(steps[:epoch]), sum(steps))
    stats = train_epoch(
        model,
        data,
        opt,
        batch_size=batch_size,
        fraction=fractions[epoch],
        augment=augment,
        generator=g,
        device=device,
        lr_at=lr_at,
        amp=amp,
    )
    val = accuracy(model, data, "val", device=device)
    shape = data.input_shape()
    work = (stats["images"] * train_macs(model, shape) + len(data.val) * count_macs(model, shape)) / G
    rec = {
        "epoch": epoch + 1,
        "train_loss": stats["loss"],
        "train_acc": stats["acc"],
        "val_acc": val["acc"],
        "lr": float(opt.param_groups[0]["lr"]),
        "seconds": stats["seconds"],
        "work": work,  # GMACs: every training image's forward and backward, and the validation pass
    }
    new_state = {
        "epoch": epoch + 1,
        "epochs": len(fractions),
        "optimizer": opt.state_dict(),
        "generator": g.get_state(),
        "torch_rng": torch.get_rng_state(),
        "history": [*history, rec],
    }
    return new_state, rec


def fit(
    model: nn.Module,
    data: Dataset,
    *,
    epochs: float,
    lr: float,
    momentum: float = 0.9,
    weight_decay: float = 5e-4,
    batch_size: int = 128,
    augment: bool = True,
    seed: int = 0,
    schedule: str = "cosine",
    device: torch.device | None = None,
    on_epoch: Callable[[int, dict[str, Any]], None] | None = None,
    amp: str = "off",
) -> list[dict[str, Any]]:
    """Train from scratch with SGD and a cosine (or one-cycle) lr schedule: pre-training in memory."""
    device = device or pick_device()
    state: dict[str, Any] | None = None
    for _ in epoch_fractions(epochs):
        state, rec = fit_epoch(
            model,
            data,
            state,
            epochs=epochs,
            lr=lr,
            momentum=momentum,
            weight_decay=weight_decay,
            batch_size=batch_size,
            augment=augment,
            seed=seed,
            schedule=schedule,
            device=device,
            amp=amp,
        )
        if on_epoch is not None:
            on_epoch(rec["epoch"], rec)
    return state["history"] if state is not None else []
