"""A prune run's step table: the metrics MLflow gets per step, the cumulative cost on every
row of steps.csv, and the cost-to-target summary."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from ice.methods.core import StepRecord

__all__ = ["STEP_METRICS", "step_metrics", "cumulative_cost", "target_metrics", "rounded_rows"]

STEP_METRICS = (
    "acc_pruned",
    "acc_finetuned",
    "params",
    "sparsity",
    "macs",
    "frozen",
    "finetuned",
    "t_prune",
    "t_eval",
    "t_finetune",
    "work_eval",
    "work_finetune",
)


def step_metrics(rec: Mapping[str, Any]) -> dict[str, float]:
    """A step's MLflow metrics. The lr is logged as ``lr_x1000`` and only where a fine-tune used
    it: MLflow plots a constant series on a +-1 axis, where 0.001 reads as 0, and a step that
    did not fine-tune has no lr to show."""
    out = {m: rec[m] for m in STEP_METRICS}
    if rec["finetuned"]:
        out["lr_x1000"] = rec["lr"] * 1000
    return out


def cumulative_cost(rows: list[StepRecord], seconds: float, work: float) -> None:
    """Each step's cumulative cost (``cum_seconds``, ``cum_gmacs``) from ``seconds`` and ``work`` on:
    the accuracy-against-cost curve of the steps."""
    for r in rows:
        seconds += r["t_prune"] + r["t_eval"] + r["t_finetune"]
        work += r["work_eval"] + r["work_finetune"]
        r["cum_seconds"], r["cum_gmacs"] = seconds, work


def target_metrics(target: dict[str, Any] | None) -> dict[str, float]:
    """The cost to target as MLflow metrics (nothing when no target is set)."""
    if not target:
        return {}
    out = {"target_reached": float(target["reached"]), "recovery_epochs_total": target["recovery_epochs"]}
    if target["reached"]:
        out |= {"cost_to_target_gmacs": target["cost_gmacs"], "cost_to_target_seconds": target["cost_seconds"]}
    return out


def rounded_rows(rows: Sequence[Mapping[str, Any]]) -> list[dict[str, Any]]:
    return [{k: round(v, 4) if isinstance(v, float) else v for k, v in r.items()} for r in rows]
