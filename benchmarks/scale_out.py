"""Scale-out figures: the S3 content store against the local one, and Dask with 1 against 2 workers.

    python benchmarks/scale_out.py store                     # digits: the whole pipeline, local vs S3
    python benchmarks/scale_out.py store --flow prune --set data.source=folder \\
        --set data.root=../shared/datasets/cifar10-jpeg.tar.gz --set data.subset=0.2 \\
        --set train.epochs=1 --set prune.max_units=9 --set prune.augment=true   # overhead.py's CIFAR-10 config
    python benchmarks/scale_out.py dask                      # autotune: Dask with 1 vs 2 workers

Both start their own servers on 127.0.0.1 (SeaweedFS through infra/s3.py, a Prefect server)
and stop them by PID. Every timed run is a fresh process with a fresh task cache (local
results and download cache removed, a new S3 prefix), timed from launch to exit.

- ``store``: prepare and pretrain once (not timed), then the timed flow (``pipeline``: autotune,
  every method and evaluate; ``prune``: one method) with ``store.url`` empty, then with
  ``s3://bench/<fresh prefix>``. Prints both wall times and the added share.
- ``dask``: the autotune flow with ``scale.runner: dask`` on a local cluster of 1, then 2
  workers (``ice.autotune.workers`` trials in flight), S3 store. Prints the wall time and the
  summed compute of the trials (the search's reported cost) for each.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile
import uuid
from pathlib import Path

from benchmarks.common import REPO, bench_env, infra, parse_sets, prefect_server, scratch_params, timed


def _env(**extra: str) -> dict[str, str]:
    """Nothing of this shell's servers, stores or project: each run names its own."""
    return bench_env(quiet=True, drop=("PREFECT_", "MLFLOW_", "AWS_", "ICE_"), **extra)


def _fresh_cache(root: Path) -> None:
    shutil.rmtree(root / ".ice-cache", ignore_errors=True)


def _project(params: str, sets: list[str], **sections: dict) -> Path:
    overrides = parse_sets(sets) | {"tracking.experiment": "scale-out-bench"}
    overrides |= {f"{k}.{key}": v for k, sec in sections.items() for key, v in sec.items()}
    root = Path(tempfile.mkdtemp(prefix="ice-scale-"))
    scratch_params(params, overrides, root, shared_cache=True)  # CIFAR decoded once, across runs
    return root


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("what", choices=["store", "dask"])
    ap.add_argument("--params", default=str(REPO / "params.yaml"))
    ap.add_argument("--flow", default="pipeline", choices=["pipeline", "prune"], help="store: the timed flow")
    ap.add_argument("--method", default="iterative", help="store --flow prune: the method")
    ap.add_argument("--set", action="append", default=[], metavar="KEY=VALUE")
    ap.add_argument("--trials", type=int, default=4, help="dask: auto-tune trials")
    args = ap.parse_args()

    s3 = infra("s3")

    home = Path(tempfile.mkdtemp(prefix="ice-scale-servers-"))
    port = s3.free_base()
    weed = s3.start(home / "s3", port, "bench", env_file=home / "s3.env")
    creds = s3.identity(home / "s3.env")
    (home / "prefect").mkdir()
    server, url = prefect_server(home / "prefect")
    s3env = {**creds, "AWS_ENDPOINT_URL_S3": f"http://127.0.0.1:{port}", "AWS_DEFAULT_REGION": "us-east-1"}
    py = sys.executable
    try:
        if args.what == "store":
            extra = {"prune": {"methods": [args.method]}} if args.flow == "prune" else {}
            root = _project(args.params, args.set, **extra)
            env = _env(PREFECT_API_URL=url, PREFECT_HOME=str(home / "prefect"), **s3env)
            for stage in ("prepare", "pretrain"):
                wall, _ = timed([py, "-m", f"flows.{stage}", "--root", str(root)], env, root)
                print(f"setup: {stage} {wall:.1f}s (not timed)", flush=True)
            cmd = [py, "-m", f"flows.{args.flow}", "--root", str(root)]
            if args.flow == "prune":
                cmd += ["--method", args.method]
            _fresh_cache(root)
            local, _ = timed(cmd, env, root)
            print(f"{args.flow}, local store:  {local:7.1f}s", flush=True)
            _fresh_cache(root)
            s3url = f"s3://bench/{uuid.uuid4().hex[:8]}"
            remote, _ = timed(cmd, {**env, "ICE_STORE_URL": s3url}, root)
            print(
                f"{args.flow}, S3 store:     {remote:7.1f}s  added {remote - local:+.1f}s ({(remote / local - 1) * 100:+.1f}%)",
                flush=True,
            )
            objs = s3.count(f"http://127.0.0.1:{port}", "bench", creds, s3url.removeprefix("s3://bench/"))
            print(f"objects written to {s3url}: {objs['count']} ({objs['bytes'] / 1e6:.1f} MB)", flush=True)
        else:
            rows = []
            for n in (1, 2):
                root = _project(
                    args.params,
                    args.set,
                    scale={"runner": "dask", "workers": n},
                    ice={"autotune": {"enabled": True, "n_trials": args.trials, "workers": n}},
                )
                env = _env(PREFECT_API_URL=url, PREFECT_HOME=str(home / "prefect"), **s3env)
                env["ICE_STORE_URL"] = f"s3://bench/{uuid.uuid4().hex[:8]}"
                for stage in ("prepare", "pretrain"):
                    timed([py, "-m", f"flows.{stage}", "--root", str(root)], env, root)
                _fresh_cache(root)
                wall, _ = timed([py, "-m", "flows.autotune", "--root", str(root)], env, root)
                out = json.loads((root / "models" / "autotune.json").read_text())
                compute = sum(r["seconds"] for r in out["trials"])
                rows.append((n, wall, compute, out["best_trial"]))
                print(
                    f"autotune, Dask {n} worker(s): wall {wall:6.1f}s (process, cluster start included), "
                    f"trials' summed compute {compute:6.1f}s, best trial {out['best_trial'] + 1}",
                    flush=True,
                )
                shutil.rmtree(root, ignore_errors=True)
            (_, w1, c1, b1), (_, w2, c2, b2) = rows
            print(
                f"2 vs 1 workers: wall x{w1 / w2:.2f}, summed compute x{c2 / c1:.2f} "
                f"(same best trial: {'yes' if b1 == b2 else 'no'})",
                flush=True,
            )
    finally:
        os.killpg(server.pid, 15)
        server.wait(timeout=30)
        weed.terminate()
        weed.wait(timeout=30)
        shutil.rmtree(home, ignore_errors=True)


if __name__ == "__main__":
    main()
