"""Orchestration overhead: the same `prune` run through the flows (Prefect tasks, MLflow
tracking, checkpoints between steps) and by calling ``ice`` directly.

    python benchmarks/overhead.py                                   # digits default, iterative
    python benchmarks/overhead.py --server --dvc                    # also with a Prefect server, and no-op dvc repro
    python benchmarks/overhead.py --set data.source=folder \
        --set data.root=../shared/datasets/cifar10-jpeg.tar.gz --set data.subset=0.2 \
        --set train.epochs=1 --set prune.max_units=9 --set prune.augment=true

Each run is a fresh process with a fresh task cache, timed from launch to exit, so both
sides pay for imports. Prints both wall times and their ratio, the fixed cost of one
flow (a rerun whose every task is cached, with the ephemeral API and with a running
server), and optionally the time of a no-op ``dvc repro`` in this repository.
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from benchmarks.common import REPO, bench_env, parse_sets, prefect_server, scratch_params, timed
from ice.names import METHODS


def _env(**extra: str) -> dict[str, str]:
    return bench_env(quiet=True, drop=("MLFLOW_TRACKING_URI",), **extra)


DIRECT = """
import sys, time
from pathlib import Path
from ice.config import load_params
from ice.data import load_prepared
from ice.checkpoint import load_checkpoint, save_checkpoint
from ice.methods import run_pruning
from ice.train import pick_device
root = Path(sys.argv[1]); method = sys.argv[2]
params = load_params(root / "params.yaml")
data = load_prepared(root / "data/prepared/dataset.pt")
model, _ = load_checkpoint(root / "models/pretrained.pt", map_location=pick_device(params.train.device))
res = run_pruning(model, data, method, params)
save_checkpoint(root / "direct.pt", res.model, {"method": method})
print(f"compute {res.seconds:.1f}s finetunes {res.finetunes}")
"""


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--params", default=str(REPO / "params.yaml"))
    ap.add_argument(
        "--method",
        default="iterative",
        choices=METHODS,
    )
    ap.add_argument("--set", action="append", default=[], metavar="KEY=VALUE")
    ap.add_argument("--server", action="store_true", help="also run the flow against a Prefect server on loopback")
    ap.add_argument("--dvc", action="store_true", help="also time a no-op `dvc repro` in this repository")
    ap.add_argument("--keep", action="store_true", help="keep the temporary project")
    args = ap.parse_args()

    overrides = parse_sets(args.set) | {"prune.methods": [args.method], "tracking.experiment": "overhead"}
    root = Path(tempfile.mkdtemp(prefix="ice-overhead-"))
    home = root / ".prefect-home"
    home.mkdir()
    params = scratch_params(args.params, overrides, root, shared_cache=True)  # CIFAR decoded once, across runs
    env = _env(PREFECT_HOME=str(home))
    py = sys.executable
    print(
        f"project {root}; data={params.data.source} subset={params.data.subset} arch={params.model.arch} "
        f"method={args.method} max_units={params.prune.max_units}",
        flush=True,
    )
    for stage in ("prepare", "pretrain"):
        wall, _ = timed([py, "-m", f"flows.{stage}", "--root", str(root)], env, root)
        print(f"setup: {stage} {wall:.1f}s (not compared)", flush=True)

    direct, out = timed([py, "-c", DIRECT, str(root), args.method], env, root)
    print(f"direct (ice only):          {direct:7.1f}s  [{out.strip().splitlines()[-1]}]", flush=True)
    flow_cmd = [py, "-m", "flows.prune", "--method", args.method, "--root", str(root)]
    shutil.rmtree(root / ".ice-cache", ignore_errors=True)
    flows, _ = timed(flow_cmd, env, root)
    print(
        f"flow + tracking (ephemeral): {flows:7.1f}s  ratio {flows / direct:.3f} ({(flows / direct - 1) * 100:+.1f}%)",
        flush=True,
    )
    cached, _ = timed(flow_cmd, env, root)
    imp, _ = timed([py, "-c", "import flows.prune"], env, root)
    print(
        f"fixed cost, ephemeral API:  {cached:7.1f}s for a rerun with every task cached (imports alone {imp:.1f}s)",
        flush=True,
    )
    if args.server:
        proc, url = prefect_server(home)
        try:
            senv = _env(PREFECT_HOME=str(home), PREFECT_API_URL=url)
            shutil.rmtree(root / ".ice-cache", ignore_errors=True)
            flows_s, _ = timed(flow_cmd, senv, root)
            print(
                f"flow + tracking (server):   {flows_s:7.1f}s  ratio {flows_s / direct:.3f} ({(flows_s / direct - 1) * 100:+.1f}%)",
                flush=True,
            )
            cached_s, _ = timed(flow_cmd, senv, root)
            print(f"fixed cost, running server: {cached_s:7.1f}s for a rerun with every task cached", flush=True)
        finally:
            os.killpg(proc.pid, 15)
            proc.wait(timeout=30)
    if args.dvc:
        dvc = str(Path(py).parent / "dvc")
        t = time.perf_counter()
        r = subprocess.run(
            [dvc, "repro"],
            cwd=REPO,
            env=_env(PATH=f"{Path(py).parent}:{os.environ['PATH']}"),
            capture_output=True,
            text=True,
        )
        ran = "Running stage" in r.stdout
        print(
            f"dvc repro (no-op):          {time.perf_counter() - t:7.1f}s  ({'ran stages!' if ran else 'nothing to do'})"
        )
    if not args.keep:
        shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    main()
