"""Does structured pruning buy real CPU latency? Pruned vs dense forward time, next to the MAC reduction.

    python benchmarks/latency.py [--iters 30] [--out benchmarks/results/latency]

Models: the paper's ResNet-56 on 32x32 CIFAR-sized input, every unit pruned at 0.6 (the
structure ICE and iterative reach at prune.ratio 0.6), and torchvision's ResNet-18 and
MobileNetV2 at 112x112, every Torch-Pruning group pruned at 0.5. Weights are random:
latency depends on shapes only. Batch 1 and 32, eval mode, median of ``--iters`` timed
forwards after warm-up, in one process, alternating dense and pruned per batch size.
The figure of merit is speedup / MAC reduction (1.0: time falls exactly with MACs).
``round_to`` 8 (``prune.round_to``) keeps every pruned width a multiple of 8.
"""

from __future__ import annotations

import argparse
import json
import platform
from pathlib import Path
from typing import Any

import torch

from ice.metrics import count_macs, count_params, measure_latency
from ice.models import build_model
from ice.pruning import prunable_units, prune_unit

CASES = [  # arch, ratio, input size, prune.round_to
    ("cifar_resnet56", 0.6, 32, 1),
    ("cifar_resnet56", 0.6, 32, 8),
    ("tv:resnet18", 0.5, 112, 1),
    ("tv:mobilenet_v2", 0.5, 112, 1),
    ("tv:mobilenet_v2", 0.5, 112, 8),
]


def pruned_pair(arch: str, ratio: float, size: int, round_to: int = 1) -> tuple[torch.nn.Module, torch.nn.Module]:
    torch.manual_seed(0)
    dense = build_model(arch, 10, image_size=(size, size)).eval()
    pruned = build_model(arch, 10, image_size=(size, size))
    pruned.load_state_dict(dense.state_dict())
    shape = (1, 3, size, size)
    for u in prunable_units(pruned):
        prune_unit(pruned, u, ratio, input_shape=shape, round_to=round_to)
    return dense, pruned.eval()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--iters", type=int, default=30)
    ap.add_argument("--out", default="benchmarks/results/latency")
    args = ap.parse_args()
    rows: list[dict[str, Any]] = []
    print(
        f"threads={torch.get_num_threads()} torch={torch.__version__} cpu={platform.processor() or platform.machine()}"
    )
    for arch, ratio, size, round_to in CASES:
        dense, pruned = pruned_pair(arch, ratio, size, round_to)
        shape1 = (1, 3, size, size)
        macs_d, macs_p = count_macs(dense, shape1), count_macs(pruned, shape1)
        for batch in (1, 32):
            iters = args.iters if batch == 1 or size <= 32 else max(8, args.iters // 3)
            t_d = measure_latency(dense, (batch, 3, size, size), iters=iters)["median_ms"]
            t_p = measure_latency(pruned, (batch, 3, size, size), iters=iters)["median_ms"]
            row = {
                "arch": arch,
                "ratio": ratio,
                "round_to": round_to,
                "input": size,
                "batch": batch,
                "params_dense": count_params(dense),
                "params_pruned": count_params(pruned),
                "macs_dense": macs_d,
                "macs_pruned": macs_p,
                "mac_reduction": macs_d / macs_p,
                "ms_dense": t_d,
                "ms_pruned": t_p,
                "speedup": t_d / t_p,
            }
            row["speedup_per_mac_reduction"] = row["speedup"] / row["mac_reduction"]
            rows.append(row)
            print(
                f"{arch:16s} r={ratio} round_to={round_to} {size}px batch {batch:2d}: dense {t_d:8.2f} ms  pruned {t_p:8.2f} ms  "
                f"speedup {row['speedup']:.2f}x  MACs /{row['mac_reduction']:.2f}  "
                f"ratio {row['speedup_per_mac_reduction']:.2f}",
                flush=True,
            )
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.with_suffix(".json").write_text(json.dumps({"threads": torch.get_num_threads(), "rows": rows}, indent=2) + "\n")
    lines = [
        "| model | pruned at | round_to | input | batch | params dense → pruned | MACs dense → pruned | MAC reduction "
        "| dense ms | pruned ms | speedup | speedup ÷ MAC reduction |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        lines.append(
            f"| {r['arch']} | {r['ratio']} | {r['round_to']} | {r['input']}px | {r['batch']} | "
            f"{r['params_dense'] / 1e6:.2f}M → {r['params_pruned'] / 1e6:.2f}M | "
            f"{r['macs_dense'] / 1e6:.1f}M → {r['macs_pruned'] / 1e6:.1f}M | {r['mac_reduction']:.2f}x | "
            f"{r['ms_dense']:.2f} | {r['ms_pruned']:.2f} | {r['speedup']:.2f}x | {r['speedup_per_mac_reduction']:.2f} |"
        )
    out.with_suffix(".md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
