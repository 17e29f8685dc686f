"""The names metrics have in MLflow, with their units, and the values as the UI shows them."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

__all__ = ["metric_name", "readable", "flatten"]

# fractions that MLflow shows as percentages, as compare.md does
_FRACTIONS = {"sparsity", "weight_sparsity", "filters_removed", "target", "search_share"}
_RENAMED = {"frozen": "frozen_convs", "work": "work_gmacs"}


def metric_name(key: str) -> tuple[str, float]:
    """The name a metric has in MLflow, with its unit, and the factor its value takes:
    accuracies and fractions in percent (``test_acc_pct``, ``sparsity_pct``), times in
    seconds (``t_eval`` -> ``eval_seconds``), work in billions of MACs (``work_finetune`` ->
    ``finetune_gmacs``); counts (``params``, ``macs``, ``finetunes``) keep their names.
    A dotted prefix (``ice.test_acc``) is kept as it is."""
    if "." in key:
        prefix, tail = key.rsplit(".", 1)
        name, factor = metric_name(tail)
        return f"{prefix}.{name}", factor
    if key in _RENAMED:
        return _RENAMED[key], 1.0
    if key in _FRACTIONS:
        return f"{key}_pct", 100.0
    if key == "acc" or key.startswith("acc_") or key.endswith("_acc"):
        return f"{key}_pct", 1.0
    if key.startswith("t_"):
        return f"{key[2:]}_seconds", 1.0
    if key.startswith("work_") and not key.endswith("_gmacs"):
        return f"{key[5:]}_gmacs", 1.0
    if key.endswith("_work"):
        return f"{key[:-5]}_gmacs", 1.0
    return key, 1.0


def readable(v: float) -> float:
    """A metric as the UI should show it: 6 significant digits (97.2222, not 97.22222222222223);
    integers (params, MACs) stay exact."""
    if isinstance(v, bool | int) or float(v).is_integer():
        return float(v)
    return float(f"{v:.6g}")


def flatten(d: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for k, v in d.items():
        key = f"{prefix}{k}"
        if isinstance(v, Mapping):
            out.update(flatten(v, key + "."))
        else:
            out[key] = v
    return out
