"""Fit the decay recovery's budget rule on digits, with prune_once only, before any CIFAR cell runs.

    .venv/bin/python benchmarks/recovery_rule.py            # -> benchmarks/results/recovery_rule.json

The online recovery (``prune.target.policy: decay``) sets its budget B from the points the
pruned model misses the target by at the first check: ``B = epochs_per_point x gap``. This
script measures, for prune_once on the digits default (the ResNet-56 that ``make run``
pre-trains, the same params), the pruned model's gap at three ratios and the cost to
target of every fixed budget in a grid, then prints each ratio's cheapest budget and the
slope that fits them. The peak lr is compared at ratio 0.6 too. ICE is never run here:
the rule is tuned on prune_once alone, and never on the CIFAR cells it is reported on.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path
from typing import Any

import torch

from ice.config import load_params
from ice.data import load_dataset
from ice.methods import run_pruning
from ice.models import build_model
from ice.train import fit

ROOT = Path(__file__).resolve().parents[1]
OUT = ROOT / "benchmarks" / "results" / "recovery_rule.json"
BUDGETS = (0.5, 1.0, 2.0, 3.0, 4.0, 6.0)


def pretrained(params: Any, data: Any) -> torch.nn.Module:
    """The default run's pre-training, in memory (same arch, epochs, lr and seed)."""
    tr = params.train
    torch.manual_seed(params.seed)
    m = build_model(params.model.arch, data.num_classes, data.in_channels)
    fit(
        m,
        data,
        epochs=tr.epochs,
        lr=tr.lr,
        batch_size=tr.batch_size,
        augment=tr.augment,
        seed=params.seed,
        momentum=tr.momentum,
        weight_decay=tr.weight_decay,
    )
    return m


def cell(model: torch.nn.Module, data: Any, ratio: float, budget: float, lr: float) -> dict[str, Any]:
    params = load_params(
        ROOT / "params.yaml",
        {
            "prune.ratio": ratio,
            "prune.target.policy": "decay",
            "prune.target.budget_epochs": budget,
            "prune.target.lr": lr,
            "prune.target.max_epochs": max(BUDGETS) + 2.0,
        },
    )
    t0 = time.perf_counter()
    res = run_pruning(model, data, "prune_once", params)
    target, checks = res.info["target"], res.info["recovery"]
    return {
        "ratio": ratio,
        "budget_epochs": budget,
        "lr": lr,
        "gap_points": target["goal"] - checks[0]["acc"],
        "acc_start": checks[0]["acc"],
        "reached": target["reached"],
        "cost_gmacs": target["cost_gmacs"],
        "recovery_epochs": target["recovery_epochs"],
        "val_acc": target["val_acc"],
        "seconds": time.perf_counter() - t0,
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--ratios", nargs="*", type=float, default=[0.4, 0.6, 0.8])
    ap.add_argument("--lrs", nargs="*", type=float, default=[0.005, 0.01, 0.02], help="peaks tried at ratio 0.6")
    ap.add_argument("--out", type=Path, default=OUT)
    args = ap.parse_args()
    base = load_params(ROOT / "params.yaml")
    data = load_dataset(base.data)
    t0 = time.perf_counter()
    model = pretrained(base, data)
    print(f"[rule] pre-trained {base.model.arch} on digits in {time.perf_counter() - t0:.0f} s", flush=True)
    rows = []
    for ratio in args.ratios:
        lrs = args.lrs if ratio == 0.6 else [base.prune.target.lr]
        for lr in lrs:
            for b in BUDGETS:
                r = cell(model, data, ratio, b, lr)
                rows.append(r)
                cost = f"{r['cost_gmacs']:,.1f}" if r["reached"] else "not reached"
                print(
                    f"[rule] ratio {ratio} lr {lr:g} budget {b:g}: start {r['acc_start']:.2f} "
                    f"(gap {r['gap_points']:.2f}), {cost} GMACs at {r['recovery_epochs']:g} epochs",
                    flush=True,
                )
    # each ratio's hindsight limit at the default peak, and the slope epochs/point it implies
    best: dict[float, dict[str, Any]] = {}
    for r in rows:
        if r["lr"] != base.prune.target.lr or not r["reached"]:
            continue
        if r["ratio"] not in best or r["cost_gmacs"] < best[r["ratio"]]["cost_gmacs"]:
            best[r["ratio"]] = r
    slopes = {
        ratio: r["budget_epochs"] / r["gap_points"] for ratio, r in best.items() if r["gap_points"] > 0
    }
    fit_slope = statistics.median(slopes.values()) if slopes else None
    summary = {"rows": rows, "limit_per_ratio": best, "slopes": slopes, "epochs_per_point": fit_slope}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(summary, indent=1) + "\n")
    print(f"[rule] slopes (epochs per point) by ratio: {slopes}; median {fit_slope}", flush=True)
    print(f"[rule] wrote {args.out}")


if __name__ == "__main__":
    main()
