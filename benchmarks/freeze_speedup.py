"""How much faster a fine-tune epoch gets when ICE freezes layers.

For each ``fr`` it runs ICE's freeze trial (which picks the convs), then times one
fine-tune epoch (CE + KD, as ICE does) with those layers frozen: frozen weights are
not in the optimizer and their weight gradients are never computed.

    python benchmarks/freeze_speedup.py [--arch cifar_resnet56] [--images 1024] [--fr 0 0.3 0.9]
"""

from __future__ import annotations

import argparse
import copy
import time

import torch

from benchmarks.throughput import synthetic_cifar
from ice.config import parse_params
from ice.methods.core import apply_frozen, finetune, start_run
from ice.models import build_model
from ice.train import frozen_names


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--arch", default="cifar_resnet56")
    ap.add_argument("--images", type=int, default=1024)
    ap.add_argument("--fr", type=float, nargs="+", default=[0.0, 0.3, 0.9])
    args = ap.parse_args()
    data = synthetic_cifar(args.images)
    torch.manual_seed(0)
    base = build_model(args.arch, 10)
    teacher = copy.deepcopy(base).eval()
    print(f"arch={args.arch} images={args.images} threads={torch.get_num_threads()}")
    print(f"{'fr':>5} {'frozen modules':>15} {'epoch s':>9} {'speedup':>8}")
    ref = None
    for fr in args.fr:
        p = parse_params({"ice": {"fr": fr, "autotune": {"enabled": False}}, "prune": {"batch_size": 128}})
        model = copy.deepcopy(base)
        if fr > 0:
            apply_frozen(model, start_run(model, data, "ice", p).plan, p)
        finetune(model, data, p, lr=0.001, teacher=teacher, seed=0, epochs=0.1)  # warm-up
        t = time.perf_counter()
        finetune(model, data, p, lr=0.001, teacher=teacher, seed=0, epochs=1.0)
        sec = time.perf_counter() - t
        ref = ref or sec
        print(f"{fr:>5} {len(frozen_names(model)):>15} {sec:>9.2f} {ref / sec:>7.2f}x")


if __name__ == "__main__":
    main()
