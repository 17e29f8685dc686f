"""How much each pruning step costs a model before any fine-tune: when ICE can skip.

    .venv/bin/python benchmarks/step_drops.py --params params/cifar10-resnet56-cpu.yaml --ratio 0.6

Loads ``model.weights`` (or ``--checkpoint``), then on the decision split (validation,
``prune.eval_images`` of it) prints, for each unit in order: the accuracy after pruning
that unit alone, and after pruning it and every unit before it (no fine-tuning at all).
ICE skips a fine-tune while the drop from the reference stays below ``thre``, so these
drops say how many fine-tunes a method that decides can save.
"""

from __future__ import annotations

import argparse
import copy
from pathlib import Path

import torch

from benchmarks.common import REPO as ROOT
from benchmarks.common import parse_sets
from ice.checkpoint import load_checkpoint
from ice.config import load_params
from ice.data import load_dataset
from ice.methods.core import val_accuracy
from ice.pruning import prunable_units, prune_unit


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--params", default="params/cifar10-resnet56-cpu.yaml")
    ap.add_argument("--ratio", type=float)
    ap.add_argument("--checkpoint", help="default: model.weights of the params file")
    ap.add_argument("--set", action="append", default=[], metavar="KEY=VALUE")
    args = ap.parse_args()
    over = parse_sets(args.set)
    if args.ratio is not None:
        over["prune.ratio"] = args.ratio
    params = load_params(ROOT / args.params, over)
    cfg = params.data.model_copy(
        update={
            k: str(ROOT / v)
            for k, v in (("root", params.data.root), ("cache_dir", params.data.cache_dir))
            if v and not Path(v).is_absolute()
        }
    )
    data = load_dataset(cfg)
    ckpt = args.checkpoint or params.model.weights
    model, _ = load_checkpoint(ROOT / ckpt if not Path(ckpt).is_absolute() else ckpt)
    model.eval()
    ratio, rounding = params.prune.ratio, params.prune.rounding
    ref = val_accuracy(model, data, params)
    n_eval = params.prune.eval_images or len(data.val)
    print(f"reference {ref:.2f}% on {n_eval} validation images; ratio {ratio} ({rounding})")
    print(f"{'step':>4}  {'unit':<18} {'alone':>7} {'drop':>6}  {'cumulative':>10} {'drop':>6}")
    chain = copy.deepcopy(model)
    shape = data.input_shape()
    with torch.no_grad():
        for k, unit in enumerate(prunable_units(model)):
            alone = copy.deepcopy(model)
            prune_unit(alone, unit, ratio, params.prune.criterion, input_shape=shape, rounding=rounding)
            a = val_accuracy(alone, data, params)
            prune_unit(
                chain,
                next(u for u in prunable_units(chain) if u.name == unit.name),
                ratio,
                params.prune.criterion,
                input_shape=shape,
                rounding=rounding,
            )
            c = val_accuracy(chain, data, params)
            print(f"{k + 1:>4}  {unit.name:<18} {a:7.2f} {ref - a:6.2f}  {c:10.2f} {ref - c:6.2f}", flush=True)


if __name__ == "__main__":
    main()
