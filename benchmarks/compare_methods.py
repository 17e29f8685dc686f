"""Every method from the same pretrained checkpoint, in one table.

    python benchmarks/compare_methods.py                       # the digits default (params.yaml)
    python benchmarks/compare_methods.py --params params.yaml --source folder \
        --root ../shared/datasets/cifar10-jpeg.tar.gz --arch cifar_resnet56 --ratio 0.6 \
        --train-subset 5000 --val-subset 1000 --pretrain-epochs 30 \
        --augment --set ice.autotune.subset=0.02 --methods ice iterative

Prints method, total seconds (ICE's search included), fine-tunes, validation and test
accuracy, params, MACs and the speedup against ``iterative``. ``--out`` also writes the
table as Markdown. The pretrained checkpoint is cached under ``--workdir`` so a rerun
with the same settings skips pre-training.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from torch import nn

from benchmarks.common import parse_sets
from ice.checkpoint import load_checkpoint, save_checkpoint
from ice.config import Params, load_params
from ice.data import Dataset, load_dataset
from ice.methods import METHODS, Callbacks, PruningResult, run_pruning, spec
from ice.methods.registry import BASELINE
from ice.metrics import count_macs, count_params
from ice.models import build_model
from ice.train import accuracy, fit, pick_device

Log = Callable[[str], None]


def _args() -> argparse.Namespace:
    ap = argparse.ArgumentParser(description="Compare pruning methods from one pretrained checkpoint.")
    ap.add_argument("--params", default="params.yaml")
    ap.add_argument("--source", help="override data.source")
    ap.add_argument("--root", help="override data.root")
    ap.add_argument("--arch", help="override model.arch")
    ap.add_argument("--ratio", type=float, help="override prune.ratio")
    ap.add_argument("--methods", nargs="+", choices=METHODS, help="default: prune.methods from the params file")
    ap.add_argument("--train-subset", type=int, help="keep this many training images (CPU budgets)")
    ap.add_argument("--val-subset", type=int, help="keep this many validation images")
    ap.add_argument("--test-subset", type=int, help="keep this many test images")
    ap.add_argument("--pretrain-epochs", type=float, help="override train.epochs")
    ap.add_argument("--batch-size", type=int, help="override prune.batch_size and train.batch_size")
    ap.add_argument("--augment", action=argparse.BooleanOptionalAction, default=None)
    ap.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="any params override, dotted, YAML value (e.g. --set ice.autotune.subset=0.02)",
    )
    ap.add_argument("--workdir", default="data/bench")
    ap.add_argument("--out", help="write the table as Markdown here")
    ap.add_argument("--quiet", action="store_true")
    return ap.parse_args()


def _overrides(args: argparse.Namespace) -> dict[str, object]:
    """The flags as dotted params overrides, then ``--set``."""
    over: dict[str, object] = {}
    for flag, key in (
        ("source", "data.source"),
        ("root", "data.root"),
        ("arch", "model.arch"),
        ("ratio", "prune.ratio"),
        ("pretrain_epochs", "train.epochs"),
    ):
        if getattr(args, flag) is not None:
            over[key] = getattr(args, flag)
    if args.batch_size:
        over["prune.batch_size"] = over["train.batch_size"] = args.batch_size
    if args.augment is not None:
        over["prune.augment"] = over["train.augment"] = args.augment
    return over | parse_sets(args.set)


def _subsets(data: Dataset, args: argparse.Namespace, seed: int) -> None:
    """Seeded draws of each split, where a subset is asked for (the test split is stored class
    by class, so a prefix would hold few classes)."""
    g = torch.Generator().manual_seed(seed)
    if args.train_subset and args.train_subset < len(data.train):
        data.train = data.train.sample(args.train_subset, g)
    if args.val_subset and args.val_subset < len(data.val):
        data.val = data.val.sample(args.val_subset, g)
    if args.test_subset and args.test_subset < len(data.test):
        data.test = data.test.sample(args.test_subset, g)


def _pretrained(params: Params, data: Dataset, args: argparse.Namespace, device: Any, log: Log) -> nn.Module:
    """The pretrained model: reused from ``--workdir`` when one was trained with the same data,
    model, training settings, subsets and seed; trained and saved there otherwise."""
    key = hashlib.sha256(
        json.dumps(
            [
                params.data.model_dump(),
                params.model.model_dump(),
                params.train.model_dump(),
                args.train_subset,
                args.val_subset,
                params.seed,
            ]
        ).encode()
    ).hexdigest()[:12]
    ckpt = Path(args.workdir) / f"pretrained-{params.model.arch}-{key}.pt"
    if ckpt.exists():
        model, meta = load_checkpoint(ckpt, map_location=device)
        log(f"pretrained checkpoint reused: {ckpt} (val {meta['val_acc']:.2f}%)")
        return model
    torch.manual_seed(params.seed)
    model = build_model(params.model.arch, data.num_classes, data.in_channels).to(device)
    t = time.perf_counter()
    fit(
        model,
        data,
        epochs=params.train.epochs,
        lr=params.train.lr,
        momentum=params.train.momentum,
        weight_decay=params.train.weight_decay,
        batch_size=params.train.batch_size,
        augment=params.train.augment,
        seed=params.seed,
        device=device,
        on_epoch=lambda e, r: log(f"pretrain epoch {e}: val {r['val_acc']:.2f}%"),
    )
    val = accuracy(model, data, "val")["acc"]
    save_checkpoint(ckpt, model, {"val_acc": val, "seconds": time.perf_counter() - t})
    log(f"pretrained in {time.perf_counter() - t:.0f}s: val {val:.2f}%")
    return model


def _row(method: str, model: nn.Module, data: Dataset, seconds: float, finetunes: int, nonzero: bool) -> dict[str, Any]:
    return {
        "method": method,
        "seconds": seconds,
        "finetunes": finetunes,
        "val": accuracy(model, data, "val")["acc"],
        "test": accuracy(model, data, "test")["acc"],
        "params": count_params(model, nonzero=nonzero),
        "macs": count_macs(model, data.input_shape()),
    }


def _note(method: str, res: PruningResult) -> str | None:
    """Where a step-wise method's seconds went (None for the others)."""
    how = spec(method)
    if not how.stepwise:
        return None
    fine = sum(r["t_finetune"] for r in res.steps)
    if not how.searches:
        return f"{method}: {res.seconds:.1f}s, fine-tunes {fine:.1f}s"
    return (
        f"{method}: {res.seconds:.1f}s = search {res.info.get('search_seconds', 0.0):.1f}s + freeze trial "
        f"and steps (fine-tunes {fine:.1f}s); hyperparameters {res.info['hp']}; "
        f"{len(res.info['frozen'])} convs frozen"
    )


def _table(rows: list[dict[str, Any]]) -> list[str]:
    base = next((r["seconds"] for r in rows if r["method"] == BASELINE), None)
    header = "| method | seconds | fine-tunes | val acc | test acc | params (non-zero) | MACs | speedup vs iterative |"
    lines = [header, "|" + "---|" * 8]
    for r in rows:
        speed = f"{base / r['seconds']:.2f}x" if base and r["seconds"] > 0 else "-"
        lines.append(
            f"| {r['method']} | {r['seconds']:.1f} | {r['finetunes']} | {r['val']:.2f} | {r['test']:.2f} "
            f"| {r['params']:,} | {r['macs']:,} | {speed} |"
        )
    return lines


def main() -> None:
    args = _args()
    params = load_params(args.params, _overrides(args))
    methods = args.methods or list(params.prune.methods)
    log: Log = (lambda m: None) if args.quiet else (lambda m: print(m, file=sys.stderr, flush=True))
    data = load_dataset(params.data)
    _subsets(data, args, params.seed)
    device = pick_device(params.train.device)
    model = _pretrained(params, data, args, device, log)
    rows = [_row("pretrained", model, data, 0.0, 0, nonzero=False)]
    notes = []
    for method in methods:
        log(f"--- {method}")
        res = run_pruning(model, data, method, params, Callbacks(on_log=log))
        if (note := _note(method, res)) is not None:
            notes.append(note)
        rows.append(_row(method, res.model, data, res.seconds, res.finetunes, nonzero=True))
    lines = _table(rows)
    info = (
        f"data={params.data.source} arch={params.model.arch} ratio={params.prune.ratio} device={device} "
        f"threads={torch.get_num_threads()} train={len(data.train)} val={len(data.val)} test={len(data.test)}"
    )
    print(info)
    print("\n".join(lines))
    print("\n".join(notes))
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(info + "\n\n" + "\n".join(lines) + "\n\n" + "\n".join(notes) + "\n")


if __name__ == "__main__":
    main()
