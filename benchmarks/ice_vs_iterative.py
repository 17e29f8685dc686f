"""ICE against the every-step baseline, through the real pipeline, in a scratch project.

    .venv/bin/python benchmarks/ice_vs_iterative.py --params params/cifar10-resnet56-cpu.yaml --ratio 0.6
    .venv/bin/python benchmarks/ice_vs_iterative.py --params params/cifar10-resnet56-cpu.yaml --ratio 0.7

It writes the params (relative paths made absolute) into ``--out`` (default
``bench/<preset>-r<ratio>``), runs ``python -m flows.pipeline`` there (prepare, pretrain,
which imports ``model.weights``, autotune, prune with ice and iterative, evaluate), and
prints compare.md's table, where the time and work went, and the issue's targets:
ICE at least 4x cheaper than ``iterative`` in seconds and in work, test accuracy at most
1 point below, search at most 15% of ICE's total. The project's own outputs are not touched.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

from benchmarks.common import REPO as ROOT
from benchmarks.common import bench_env, parse_sets, scratch_params
from ice.config import load_params


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--params", default="params/cifar10-resnet56-cpu.yaml")
    ap.add_argument("--ratio", type=float, default=None, help="override prune.ratio")
    ap.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="any other params override")
    ap.add_argument("--out", default=None, help="the scratch project (default bench/<preset>-r<ratio>)")
    args = ap.parse_args()

    overrides = parse_sets(args.set) | ({"prune.ratio": args.ratio} if args.ratio is not None else {})
    ratio = args.ratio if args.ratio is not None else load_params(ROOT / args.params, overrides).prune.ratio
    out = Path(args.out or ROOT / "bench" / f"{Path(args.params).stem}-r{ratio}")
    scratch_params(args.params, overrides, out)

    env = bench_env()
    t0 = time.perf_counter()
    run = subprocess.run(
        [sys.executable, "-m", "flows.pipeline", "--params", "params.yaml", "--root", str(out)], cwd=ROOT, env=env
    )
    wall = time.perf_counter() - t0
    if run.returncode != 0:
        sys.exit(run.returncode)

    metrics = json.loads((out / "reports" / "metrics.json").read_text())["methods"]
    ice, it = metrics["ice"], metrics["iterative"]
    cost = {m: json.loads((out / "reports" / "prune" / f"{m}.json").read_text())["cost"] for m in ("ice", "iterative")}
    print((out / "reports" / "compare.md").read_text())
    for m, c in cost.items():
        print(
            f"{m}: {c['seconds']:.0f}s = search {c['search_seconds']:.0f}s + setup {c['setup_seconds']:.0f}s "
            f"+ fine-tunes {c['finetune_seconds']:.0f}s + evaluations {c['eval_seconds']:.0f}s + pruning {c['prune_seconds']:.0f}s; "
            f"{c['work_gmacs']:,.0f} GMACs = search {c['search_work']:,.0f} + setup {c['setup_work']:,.0f} "
            f"+ fine-tunes {c['finetune_work']:,.0f} + evaluations {c['eval_work']:,.0f}"
        )
    share = cost["ice"]["search_seconds"] / cost["ice"]["seconds"]
    checks = [
        (
            "ICE at least 4x faster in seconds",
            f"{it['total_seconds'] / ice['total_seconds']:.2f}x",
            it["total_seconds"] >= 4 * ice["total_seconds"],
        ),
        (
            "ICE at least 4x cheaper in work",
            f"{it['work_gmacs'] / ice['work_gmacs']:.2f}x",
            it["work_gmacs"] >= 4 * ice["work_gmacs"],
        ),
        (
            "test accuracy at least iterative's - 1",
            f"{ice['test_acc'] - it['test_acc']:+.2f} pts",
            ice["test_acc"] >= it["test_acc"] - 1.0,
        ),
        ("search at most 15% of ICE's total", f"{share:.1%}", share <= 0.15),
        (
            "same final params and MACs",
            f"{ice['params_nonzero']:,} / {ice['macs']:,}",
            (ice["params_nonzero"], ice["macs"]) == (it["params_nonzero"], it["macs"]),
        ),
    ]
    print()
    for name, value, ok in checks:
        print(f"{'met   ' if ok else 'MISSED'}  {name}: {value}")
    print(
        f"wall time of the whole pipeline (imports, orchestration, evaluation included): {wall / 60:.1f} min; outputs in {out}"
    )


if __name__ == "__main__":
    main()
