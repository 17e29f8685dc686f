"""The other two papers' claims, checked at CPU scale, from scratch and at equal budgets.

    nohup nice .venv/bin/python benchmarks/seed_claims.py > seed_claims.log 2>&1 &
        ->  benchmarks/results/seed_claims.json (each run as it ends), benchmarks/results/seed_claims.md

- **One-Cycle Pruning (Hubens et al., 2021):** one_shot, iterative_schedule, agp and one_cycle
  at 80, 90 and 95% weight sparsity (local magnitude masks), each one training run of the
  same epochs from the same seeded initialisation, with the same one-cycle lr. Ranked by test
  accuracy. The paper's claim: One-Cycle beats the other three at every sparsity.
- **Pruning filters while training (Roy et al., 2020):** prune_while_training with L1,
  mean-activation and random criteria at 50% and 80% of the units' filters, the same epochs,
  from scratch; against train-then-prune-and-retrain (train dense for the same epochs, cut
  the same filters at once by L1, retrain a third of the epochs). The claims: L1 beats
  mean-activation and random; about 41% fewer training computations than
  train-then-retrain (and under 1% accuracy drop at 80% on VGG-16, at full scale).

The data is the real CIFAR-10 archive in ``../shared/datasets`` (a seeded train subset; the
whole 10,000-image test set). Work is GMACs as the pipeline counts it: each training image's
forward and backward at the model's size at that step, and every evaluation. The results
file is written after every run, and a rerun skips the runs it already holds (``--fresh``
starts over), so a stopped benchmark continues where it was.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any

import torch

from benchmarks.common import REPO as ROOT
from ice.config import parse_params
from ice.data import load_dataset
from ice.methods import run_pruning
from ice.metrics import count_params
from ice.models import build_model, seeded_model
from ice.train import accuracy, fit

SPARSITIES = (0.8, 0.9, 0.95)
SCHEDULES = ("one_shot", "iterative_schedule", "agp", "one_cycle")
FILTER_CUTS = (0.5, 0.8)
CRITERIA = ("l1", "mean_activation", "random")


def log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", flush=True)


def base_params(a: argparse.Namespace) -> dict[str, Any]:
    return {
        "seed": a.seed,
        "data": {"source": "folder", "root": str(a.data), "val_fraction": 0.1, "cache_dir": str(a.cache_dir)},
        "model": {"arch": a.arch},
        "train": {
            "epochs": a.epochs,
            "batch_size": 128,
            "lr": a.lr,
            "momentum": 0.9,
            "weight_decay": 5e-4,
            "augment": True,
            "lr_schedule": "one_cycle",
            "device": "cpu",
        },
        "prune": {"criterion": "l1", "batch_size": 128, "augment": True, "eval_batch_size": 1000},
        "schedule": {
            "init": "scratch",
            "epochs": a.epochs,
            "lr": a.lr,
            "lr_policy": "one_cycle",
            "scope": "local",
        },
    }


def merge(raw: dict[str, Any], **sections: dict[str, Any]) -> dict[str, Any]:
    out = json.loads(json.dumps(raw))
    for k, v in sections.items():
        out.setdefault(k, {}).update(v)
    return out


def _args() -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--data", type=Path, default=ROOT.parent / "shared" / "datasets" / "cifar10-jpeg.tar.gz")
    ap.add_argument("--cache-dir", type=Path, default=ROOT / "data" / "cache")
    ap.add_argument("--arch", default="cifar_resnet20")
    ap.add_argument("--train-images", type=int, default=10_000)
    ap.add_argument("--epochs", type=float, default=12)
    ap.add_argument("--lr", type=float, default=0.1)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "seed_claims.json")
    ap.add_argument("--fresh", action="store_true", help="ignore the runs already in --out")
    ap.add_argument("--only", choices=("one_cycle", "pwt"), help="run one of the two claims")
    return ap.parse_args()


class Claims:
    """The runs of both claims on one data subset, each saved to ``--out`` as it ends."""

    def __init__(self, a: argparse.Namespace) -> None:
        self.a = a
        self.raw = base_params(a)
        full = load_dataset(parse_params(self.raw).data)
        self.data = data = full.subset(a.train_images / len(full.train), seed=a.seed)
        log(
            f"data: {len(data.train):,} train, {len(data.val):,} val, {len(data.test):,} test images; "
            f"{a.arch}, {a.epochs:g} epochs each, one-cycle lr peak {a.lr}, threads {torch.get_num_threads()}"
        )
        self.results: dict[str, Any] = {}
        if a.out.exists() and not a.fresh:
            self.results = json.loads(a.out.read_text()).get("runs", {})
            log(f"{len(self.results)} runs already in {a.out}; they are kept")
        self.setup: dict[str, Any] = {
            "arch": a.arch,
            "train_images": len(data.train),
            "val_images": len(data.val),
            "test_images": len(data.test),
            "epochs": a.epochs,
            "lr": a.lr,
            "batch_size": 128,
            "seed": a.seed,
            "threads": torch.get_num_threads(),
        }
        self.t_all = time.perf_counter()

    def save(self) -> None:
        out = self.a.out
        out.parent.mkdir(parents=True, exist_ok=True)
        tmp = out.with_suffix(".tmp")
        tmp.write_text(json.dumps({"setup": self.setup, "runs": self.results}, indent=1, sort_keys=True) + "\n")
        tmp.replace(out)

    def record(self, key: str, model: torch.nn.Module, seconds: float, work: float, extra: dict[str, Any]) -> None:
        test = accuracy(model, self.data, "test", batch_size=1000)["acc"]
        self.results[key] = {
            "test_acc": test,
            "params_nonzero": count_params(model, nonzero=True),
            "seconds": seconds,
            "work_gmacs": work,
            **extra,
        }
        self.save()
        log(
            f"{key}: test {test:.2f}%, {self.results[key]['params_nonzero']:,} non-zero params, {seconds:.0f}s, "
            f"{work:,.0f} GMACs  [{(time.perf_counter() - self.t_all) / 60:.1f} min so far]"
        )

    def schedule_run(self, key: str, method: str, sections: dict[str, Any]) -> None:
        if key in self.results:
            return
        p = parse_params(merge(self.raw, **sections))
        log(f"{key}: start")
        res = run_pruning(None, self.data, method, p)
        info = res.info
        extra = {
            "method": method,
            "weight_sparsity": info["weight_sparsity"],
            "filters_removed": info["filters_removed"],
            "val_acc": res.steps[-1]["acc_finetuned"],
        }
        self.record(key, res.model, res.seconds, info["work_gmacs"], extra)

    def one_cycle(self) -> None:
        for s in SPARSITIES:
            for method in SCHEDULES:
                self.schedule_run(
                    f"weight-{s:g}-{method}", method, {"schedule": {"granularity": "weight", "target": s}}
                )

    def pwt(self) -> None:
        for cut in FILTER_CUTS:
            for crit in CRITERIA:
                self.schedule_run(
                    f"filter-{cut:g}-pwt-{crit}",
                    "prune_while_training",
                    {"prune": {"ratio": cut}, "schedule": {"pwt_criterion": crit}},
                )
        dense = self.dense()
        for cut in FILTER_CUTS:
            self.retrain(dense, cut)

    def dense(self) -> torch.nn.Module:
        """train-then-prune-and-retrain's first half: the dense model, trained once and kept."""
        a, data = self.a, self.data
        dense_path = ROOT / "bench" / "seed_claims-dense.pt"  # bench/ is git-ignored
        dense_path.parent.mkdir(parents=True, exist_ok=True)
        if "dense" not in self.results or not dense_path.exists():
            log("dense: start")
            model = seeded_model(a.arch, data, a.seed)
            t0 = time.perf_counter()
            hist = fit(
                model,
                data,
                epochs=a.epochs,
                lr=a.lr,
                momentum=0.9,
                weight_decay=5e-4,
                batch_size=128,
                augment=True,
                seed=a.seed,
                schedule="one_cycle",
                device=torch.device("cpu"),
            )
            self.record("dense", model, time.perf_counter() - t0, sum(r["work"] for r in hist), {"method": "dense"})
            torch.save(model.state_dict(), dense_path)
        dense = build_model(a.arch, data.num_classes, data.in_channels, image_size=data.image_size)
        dense.load_state_dict(torch.load(dense_path, weights_only=True))
        return dense

    def retrain(self, dense: torch.nn.Module, cut: float) -> None:
        """The second half: each cut at once from the dense model, then a retrain of a third of the epochs."""
        key = f"filter-{cut:g}-retrain"
        if key in self.results:
            return
        retrain = max(1.0, round(self.a.epochs / 3))
        # one_shot at progress 0 at filter granularity from the trained model: cut, then retrain
        schedule = {
            "init": "pretrained",
            "granularity": "filter",
            "one_shot_at": 0.0,
            "epochs": retrain,
            "lr": 0.01,
            "lr_policy": "cosine",
        }
        p = parse_params(merge(self.raw, prune={"ratio": cut}, schedule=schedule))
        log(f"{key}: start ({retrain:g} epochs)")
        res = run_pruning(dense, self.data, "one_shot", p)
        extra = {"method": "retrain", "filters_removed": res.info["filters_removed"], "epochs": retrain}
        self.record(key, res.model, res.seconds, res.info["work_gmacs"], extra)


def main() -> None:
    a = _args()
    if not a.data.exists():
        sys.exit(f"error: {a.data} is missing; this benchmark needs the CIFAR-10 archive (../shared/datasets)")
    claims = Claims(a)
    if a.only in (None, "one_cycle"):
        claims.one_cycle()
    if a.only in (None, "pwt"):
        claims.pwt()
    claims.setup["minutes"] = (time.perf_counter() - claims.t_all) / 60
    claims.save()
    md = report(claims.setup, claims.results)
    a.out.with_suffix(".md").write_text(md)
    print(md)


def report(setup: dict[str, Any], runs: dict[str, Any]) -> str:
    """The two tables, with each claim marked as reproduced or not here."""
    lines = [
        f"# Seed claims at CPU scale: {setup['arch']}, CIFAR-10 ({setup['train_images']:,} train images, "
        f"{setup['test_images']:,} test), {setup['epochs']:g} epochs each from scratch, one-cycle lr",
        "",
        "## One-Cycle Pruning: weight sparsity, the same epochs each",
        "",
        "| sparsity | " + " | ".join(SCHEDULES) + " | best | One-Cycle best? |",
        "|---|" + "---|" * (len(SCHEDULES) + 2),
    ]
    wins = 0
    rows = 0
    for s in SPARSITIES:
        accs = {m: runs.get(f"weight-{s:g}-{m}", {}).get("test_acc") for m in SCHEDULES}
        if any(v is None for v in accs.values()):
            continue
        best = max(accs, key=lambda m: accs[m])
        rows += 1
        wins += best == "one_cycle"
        lines.append(
            f"| {s:.0%} | "
            + " | ".join(f"{accs[m]:.2f}" for m in SCHEDULES)
            + f" | {best} | {'yes' if best == 'one_cycle' else 'no'} |"
        )
    lines += ["", f"One-Cycle ranked first at {wins} of {rows} sparsities.", ""]
    lines += [
        "## Pruning filters while training: the units' filters, the same epochs",
        "",
        "| filters cut | L1 | mean activation | random | train-then-retrain | pwt L1 work (GMACs) "
        "| train-then-retrain work (GMACs) | work saved |",
        "|---|---|---|---|---|---|---|---|",
    ]
    dense = runs.get("dense")
    for cut in FILTER_CUTS:
        accs = {c: runs.get(f"filter-{cut:g}-pwt-{c}", {}).get("test_acc") for c in CRITERIA}
        rt = runs.get(f"filter-{cut:g}-retrain")
        if any(v is None for v in accs.values()) or rt is None or dense is None:
            continue
        l1_work = runs[f"filter-{cut:g}-pwt-l1"]["work_gmacs"]
        base_work = dense["work_gmacs"] + rt["work_gmacs"]
        lines.append(
            f"| {cut:.0%} | {accs['l1']:.2f} | {accs['mean_activation']:.2f} | {accs['random']:.2f} "
            f"| {rt['test_acc']:.2f} | {l1_work:,.0f} | {base_work:,.0f} | {1 - l1_work / base_work:.0%} |"
        )
    if dense is not None:
        lines += ["", f"Dense model, the same epochs: test {dense['test_acc']:.2f}%."]
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
