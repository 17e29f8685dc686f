"""One call for a notebook or a training script: ``small, report = ice.prune(model, data, ...)``.

It is the pipeline's own code, not a second implementation: the params are validated by
:mod:`ice.config`, the data loaded by :mod:`ice.data`, and the recipe run by
:func:`ice.methods.run_pruning` with its recovery to the target, exactly as the prune flow
runs it (without Prefect, MLflow or DVC, which this library never imports).
"""

from __future__ import annotations

import copy
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from torch import nn

from ice.config import DataConfig, Params, parse_params
from ice.data import Dataset, Split, load_dataset
from ice.metrics import bootstrap_interval, count_macs, count_params
from ice.train import accuracy

if TYPE_CHECKING:
    from ice.methods.core import StepRecord

__all__ = ["prune", "PruneReport", "tensor_dataset"]


@dataclass
class PruneReport:
    """What :func:`prune` did and what it cost: the cost to target (GMACs and seconds, None
    when the target was not reached within ``prune.target.max_epochs``), the accuracies with
    95% intervals, and the size before and after."""

    recipe: str
    ratio: float
    tolerance: float
    reached: bool
    cost_gmacs: float | None
    cost_seconds: float | None
    spent_gmacs: float
    recovery_epochs: float
    val_acc_before: float
    val_acc_after: float
    val_acc_ci95: tuple[float, float]
    test_acc_before: float
    test_acc_after: float
    test_acc_ci95: tuple[float, float]
    params_before: int
    params_after: int
    macs_before: int
    macs_after: int
    steps: list[StepRecord] | list[dict[str, Any]] = field(default_factory=list)  # steps, or epochs

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)

    def __str__(self) -> str:
        cost = f"{self.cost_gmacs:,.1f} GMACs" if self.reached else f"not reached ({self.spent_gmacs:,.1f} GMACs spent)"
        lo, hi = self.test_acc_ci95
        return (
            f"{self.recipe} at ratio {self.ratio:g}: cost to target {cost}; params {self.params_before:,} -> "
            f"{self.params_after:,}, MACs {self.macs_before:,} -> {self.macs_after:,}; test acc "
            f"{self.test_acc_before:.2f} -> {self.test_acc_after:.2f} ({lo:.2f}-{hi:.2f})"
        )


def tensor_dataset(x_train: torch.Tensor, y_train: torch.Tensor, x_val: torch.Tensor, y_val: torch.Tensor) -> Dataset:
    """A :class:`~ice.data.Dataset` from tensors ``[N, C, H, W]``: uint8 images (normalised by
    their channel statistics, as prepared data is) or float inputs already as the model takes
    them (used unchanged). There is no test split: the validation tensors stand in for it."""
    if x_train.ndim != 4 or x_val.ndim != 4 or x_train.shape[1:] != x_val.shape[1:]:
        raise ValueError(f"data: expected images [N, C, H, W]; got {tuple(x_train.shape)} and {tuple(x_val.shape)}")
    if len(x_train) != len(y_train) or len(x_val) != len(y_val):
        raise ValueError("data: each image tensor needs one label per image")
    c = int(x_train.shape[1])
    if x_train.dtype == torch.uint8:
        flat = x_train.float().div(255).transpose(0, 1).reshape(c, -1)
        mean, std = tuple(flat.mean(1).tolist()), tuple(flat.std(1).clamp_min(1e-6).tolist())
    else:  # x / 255 undone by std 1/255: the inputs reach the model as given
        mean, std = (0.0,) * c, (1 / 255,) * c
    n = int(max(int(y_train.max()), int(y_val.max())) + 1)
    val = Split(x_val, y_val.long())
    return Dataset(
        name="tensors",
        train=Split(x_train, y_train.long()),
        val=val,
        test=val,
        classes=[str(i) for i in range(n)],
        mean=mean,
        std=std,
    )


def _dataset(data: Any) -> Dataset:
    if isinstance(data, Dataset):
        return data
    if isinstance(data, str | Path):
        return load_dataset(source="folder", root=str(data))
    if isinstance(data, DataConfig | dict):
        return load_dataset(data)
    if isinstance(data, tuple | list) and len(data) == 4 and all(isinstance(t, torch.Tensor) for t in data):
        return tensor_dataset(*data)
    raise TypeError(
        "data: give a folder path, the params' data section (dict or DataConfig), a Dataset, or tensors "
        "(x_train, y_train, x_val, y_val)"
    )


def prune(
    model: nn.Module,
    data: Any,
    *,
    ratio: float = 0.6,
    tolerance: float | None = 1.0,
    recipe: str = "prune_once",
    params: Params | dict[str, Any] | None = None,
    log: Any = None,
) -> tuple[nn.Module, PruneReport]:
    """Prune a copy of ``model`` (any ``nn.Module``) with ``recipe`` at ``ratio``, then recover
    it until its validation accuracy is within ``tolerance`` points of the original's.

    ``data``: a folder path (``train/<class>/``, ``test/<class>/``), the params' ``data``
    section, a :class:`~ice.data.Dataset`, or tensors ``(x_train, y_train, x_val, y_val)``.
    ``params``: any other settings, as params.yaml's sections (validated the same way).
    ``log``: a callable for progress lines (``print``). Returns the pruned model and a
    :class:`PruneReport`. ``model`` itself is left as it was.
    """
    from ice.methods import Callbacks, run_pruning

    raw = params.model_dump(mode="json") if isinstance(params, Params) else copy.deepcopy(params or {})
    prune_cfg = raw.setdefault("prune", {})
    prune_cfg.update(ratio=ratio, methods=[recipe])
    prune_cfg.setdefault("target", {})["tolerance"] = tolerance
    p = parse_params(raw)
    ds = _dataset(data)
    shape = ds.input_shape()
    before = copy.deepcopy(model).eval()
    if getattr(before, "ice_spec", None) is None:  # what the dependency graph probes the copy with
        cls = type(model)
        before.ice_spec = {  # type: ignore[assignment]
            "arch": f"{cls.__module__}:{cls.__qualname__}",
            "num_classes": ds.num_classes,
            "in_channels": ds.in_channels,
            "image_size": list(ds.image_size),
        }
    res = run_pruning(before, ds, recipe, p, Callbacks(on_log=log))
    small = res.model.eval()
    bs = p.prune.eval_batch_size
    acc = {
        (which, split): accuracy(m, ds, split, batch_size=bs)["acc"]
        for which, m in (("before", before), ("after", small))
        for split in ("val", "test")
    }
    target = res.info.get("target") or {}
    return small, PruneReport(
        recipe=recipe,
        ratio=ratio,
        tolerance=float(tolerance) if tolerance is not None else float("nan"),
        reached=bool(target.get("reached", False)),
        cost_gmacs=target.get("cost_gmacs"),
        cost_seconds=target.get("cost_seconds"),
        spent_gmacs=float(res.info.get("work_gmacs") or 0.0),
        recovery_epochs=float(target.get("recovery_epochs", 0.0)),
        val_acc_before=acc["before", "val"],
        val_acc_after=acc["after", "val"],
        val_acc_ci95=bootstrap_interval(acc["after", "val"], len(ds.val)),
        test_acc_before=acc["before", "test"],
        test_acc_after=acc["after", "test"],
        test_acc_ci95=bootstrap_interval(acc["after", "test"], len(ds.test)),
        params_before=count_params(before),
        params_after=count_params(small),
        macs_before=count_macs(before, shape),
        macs_after=count_macs(small, shape),
        steps=res.steps,
    )
