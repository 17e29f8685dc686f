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
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parents[1]

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


def _env(**extra: str) -> dict[str, str]:
    env = dict(os.environ)
    env.update(PYTHONPATH=str(REPO), ICE_QUIET="1", DO_NOT_TRACK="true", PREFECT_SERVER_ANALYTICS_ENABLED="false")
    env.pop("MLFLOW_TRACKING_URI", None)
    env.update(extra)
    return env


def _timed(cmd: list[str], env: dict[str, str], cwd: Path) -> tuple[float, str]:
    t = time.perf_counter()
    r = subprocess.run(cmd, env=env, cwd=cwd, capture_output=True, text=True)
    wall = time.perf_counter() - t
    if r.returncode != 0:
        sys.exit(f"{' '.join(cmd)} failed:\n{r.stderr[-3000:]}")
    return wall, r.stdout + r.stderr


def _server(home: Path) -> tuple[subprocess.Popen, str]:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    url = f"http://127.0.0.1:{port}/api"
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "prefect",
            "server",
            "start",
            "--host",
            "127.0.0.1",
            "--port",
            str(port),
            "--no-services",
        ],
        env=_env(PREFECT_HOME=str(home)),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    for _ in range(240):
        try:
            urllib.request.urlopen(url + "/health", timeout=2)
            return proc, url
        except OSError:
            time.sleep(0.5)
    proc.kill()
    sys.exit("prefect server did not start")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--params", default=str(REPO / "params.yaml"))
    ap.add_argument(
        "--method",
        default="iterative",
        choices=["ice", "iterative", "one_shot", "agp", "one_cycle", "prune_while_training"],
    )
    ap.add_argument("--set", action="append", default=[], metavar="KEY=VALUE")
    ap.add_argument("--server", action="store_true", help="also run the flow against a Prefect server on loopback")
    ap.add_argument("--dvc", action="store_true", help="also time a no-op `dvc repro` in this repository")
    ap.add_argument("--keep", action="store_true", help="keep the temporary project")
    args = ap.parse_args()

    from ice.config import apply_overrides, parse_params

    raw = yaml.safe_load(Path(args.params).read_text())
    apply_overrides(raw, {k: yaml.safe_load(v) for k, v in (s.split("=", 1) for s in args.set)})
    raw.setdefault("prune", {})["methods"] = [args.method]
    raw.setdefault("tracking", {})["experiment"] = "overhead"
    params = parse_params(raw)
    if params.data.root and not Path(params.data.root).is_absolute():
        raw["data"]["root"] = str((REPO / params.data.root).resolve())
    raw["data"]["cache_dir"] = str((REPO / params.data.cache_dir).resolve())  # decode CIFAR once, across runs

    root = Path(tempfile.mkdtemp(prefix="ice-overhead-"))
    home = root / ".prefect-home"
    home.mkdir()
    (root / "params.yaml").write_text(yaml.safe_dump(raw, sort_keys=False))
    env = _env(PREFECT_HOME=str(home))
    py = sys.executable
    print(
        f"project {root}; data={params.data.source} subset={params.data.subset} arch={params.model.arch} "
        f"method={args.method} max_units={params.prune.max_units}",
        flush=True,
    )
    for stage in ("prepare", "pretrain"):
        wall, _ = _timed([py, "-m", f"flows.{stage}", "--root", str(root)], env, root)
        print(f"setup: {stage} {wall:.1f}s (not compared)", flush=True)

    direct, out = _timed([py, "-c", DIRECT, str(root), args.method], env, root)
    print(f"direct (ice only):          {direct:7.1f}s  [{out.strip().splitlines()[-1]}]", flush=True)
    flow_cmd = [py, "-m", "flows.prune", "--method", args.method, "--root", str(root)]
    shutil.rmtree(root / ".ice-cache", ignore_errors=True)
    flows, _ = _timed(flow_cmd, env, root)
    print(
        f"flow + tracking (ephemeral): {flows:7.1f}s  ratio {flows / direct:.3f} ({(flows / direct - 1) * 100:+.1f}%)",
        flush=True,
    )
    cached, _ = _timed(flow_cmd, env, root)
    imp, _ = _timed([py, "-c", "import flows.prune"], env, root)
    print(
        f"fixed cost, ephemeral API:  {cached:7.1f}s for a rerun with every task cached (imports alone {imp:.1f}s)",
        flush=True,
    )
    if args.server:
        proc, url = _server(home)
        try:
            senv = _env(PREFECT_HOME=str(home), PREFECT_API_URL=url)
            shutil.rmtree(root / ".ice-cache", ignore_errors=True)
            flows_s, _ = _timed(flow_cmd, senv, root)
            print(
                f"flow + tracking (server):   {flows_s:7.1f}s  ratio {flows_s / direct:.3f} ({(flows_s / direct - 1) * 100:+.1f}%)",
                flush=True,
            )
            cached_s, _ = _timed(flow_cmd, senv, root)
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
