"""Scale-out on real components, all on 127.0.0.1 (issue 10): SeaweedFS S3, a Prefect server,
an MLflow server with its artifacts in S3, Dask (a local cluster of 2 workers) and two process
workers, each in its own clone of the project with its own Prefect home: no shared disk.

Worker A runs the pipeline deployment; then A and its clone are deleted, and worker B runs
the same deployment from nothing but the bucket and the servers: every compute task is a
cache hit, and its outputs are the same bytes. A third directory loads the registered model
through the MLflow server. Then B's flow-run process is SIGKILLed mid-prune: the run is
marked crashed, and a re-trigger completes it, reusing every step that had finished.
The data is prepared as shards (``data.format: shards``): the Dask workers read them from
the bucket through their bounded shard caches, and worker B publishes them from there.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from helpers import ROOT, MlflowServer, PrefectServer, start_group, stop_group, sub_env, write_params
from helpers import api as _api

pytestmark = [pytest.mark.slow, pytest.mark.integration]

NAME = "cifar_resnet20-digits"
SETTINGS = {
    "data": {"format": "shards"},  # the images travel as shards through the bucket, as a large dataset's do
    "store": {"url": "s3://ice/scale"},
    "scale": {"runner": "dask", "workers": 2},
    "prune": {"methods": ["ice", "iterative"], "max_units": 2},
    "ice": {"thre": 0.5, "autotune": {"n_trials": 2, "subset": 0.2, "workers": 2}},
    "train": {"epochs": 1},
}


def _prefect(args: list[str], cwd: Path, env: dict[str, str], check: bool = True) -> str:
    r = subprocess.run(
        [sys.executable, "-m", "prefect", *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=300
    )
    assert not check or r.returncode == 0, f"prefect {' '.join(args)}:\n{r.stdout[-3000:]}\n{r.stderr[-3000:]}"
    return r.stdout + r.stderr


def _trigger(cwd: Path, env: dict[str, str], *params: str) -> str:
    out = _prefect(["deployment", "run", "pipeline/pipeline", *params], cwd, env)
    return re.search(r"UUID:\s*([0-9a-f-]{36})", out).group(1)


def _state(url: str, run_id: str) -> str:
    fr = _api(url, f"/flow_runs/{run_id}")
    return fr["state"]["type"] if fr["state"] else "PENDING"


def _wait(url: str, run_id: str, log: Path, timeout: float = 600) -> str:
    deadline = time.time() + timeout
    while time.time() < deadline:
        state = _state(url, run_id)
        if state in ("COMPLETED", "FAILED", "CRASHED", "CANCELLED"):
            return state
        time.sleep(2)
    raise AssertionError(f"flow run {run_id} still {state} after {timeout} s; worker log:\n{log.read_text()[-4000:]}")


def _task_runs(url: str, run_id: str) -> list[dict]:
    """Every task run under the flow run, its subflows (and the subflows that tasks ran) included."""
    runs, frontier = [run_id], [run_id]
    while frontier:
        kids = _api(url, "/flow_runs/filter", {"flow_runs": {"parent_flow_run_id": {"any_": frontier}}, "limit": 200})
        frontier = [k["id"] for k in kids]
        runs += frontier
    out: list[dict] = []
    offset = 0
    while True:
        page = _api(url, "/task_runs/filter", {"flow_runs": {"id": {"any_": runs}}, "limit": 200, "offset": offset})
        out += page
        if len(page) < 200:
            return out
        offset += 200


def _compute(tasks: list[dict]) -> list[dict]:
    return [t for t in tasks if "compute" in t["tags"]]


def _clone(dst: Path) -> None:
    r = subprocess.run(["git", "clone", "-q", str(ROOT), str(dst)], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    write_params(dst, **SETTINGS)


def _descendants(pid: int) -> list[int]:
    """Child processes of ``pid``, recursively, from /proc (by PID, never by name)."""
    kids: dict[int, list[int]] = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        kids.setdefault(int(fields[1]), []).append(int(stat.parent.name))
    out, todo = [], [pid]
    while todo:
        for k in kids.get(todo.pop(), []):
            out.append(k)
            todo.append(k)
    return out


@pytest.fixture(scope="module")
def prefect_server(tmp_path_factory):
    """A Prefect server with its services: the task-run recorder is what shows "Cached" task runs."""
    server = PrefectServer(tmp_path_factory.mktemp("prefect-services"), services=True)
    yield server
    server.stop()


def test_workers_with_no_shared_disk_share_one_store(prefect_server, s3_server, tmp_path):
    mlhome = tmp_path / "mlflow"
    mlhome.mkdir()
    mlflow = MlflowServer(mlhome, artifacts="s3://ice/mlartifacts", env=s3_server.env)
    a, b, third = tmp_path / "clone-a", tmp_path / "clone-b", tmp_path / "third"
    _clone(a)
    _clone(b)
    third.mkdir()

    def env_for(clone: Path) -> dict[str, str]:
        home = tmp_path / f"{clone.name}-prefect-home"
        home.mkdir(exist_ok=True)
        return sub_env(
            **s3_server.env,
            PREFECT_API_URL=prefect_server.url,
            PREFECT_HOME=str(home),
            MLFLOW_TRACKING_URI=mlflow.url,
            ICE_PROJECT_DIR=str(clone),
            PYTHONPATH=str(clone),  # the clone's own code
        )

    env_a, env_b = env_for(a), env_for(b)
    _prefect(["work-pool", "create", "ice-pool", "--type", "process"], a, env_a, check=False)  # may exist already
    _prefect(["--no-prompt", "deploy", "--all", "--prefect-file", "infra/prefect.yaml"], a, env_a)
    workers: list = []

    def start_worker(name: str, env: dict[str, str]):
        cwd = tmp_path / f"{name}-cwd"
        cwd.mkdir(exist_ok=True)
        w = start_group(
            [sys.executable, "-m", "prefect", "worker", "start", "--pool", "ice-pool", "--type", "process"],
            tmp_path / f"{name}.log",
            env,
            cwd=cwd,
        )
        workers.append(w)
        return w

    try:
        # ---- worker A runs the pipeline
        wa = start_worker("worker-a", env_a)
        run_a = _trigger(a, env_a)
        assert _wait(prefect_server.url, run_a, tmp_path / "worker-a.log") == "COMPLETED", (
            tmp_path / "worker-a.log"
        ).read_text()[-4000:]
        report_a = json.loads((a / "reports" / "prune" / "ice.json").read_text())
        keys = s3_server.keys("scale/")
        assert f"scale/objects/{report_a['sha256']}.pt" in keys  # the final checkpoint is in the bucket
        assert any(k.startswith("scale/objects/") for k in keys) and any(k.startswith("scale/results/") for k in keys)
        shards_a = sorted(p.name for p in (a / "data" / "prepared" / "shards").glob("*.shard"))
        assert shards_a and all(f"scale/objects/{name}" in keys for name in shards_a)  # the shards too
        assert s3_server.keys("mlartifacts/")  # MLflow's artifacts (registered models) too
        assert not (a / "mlartifacts").exists() and not (a / "mlflow.db").exists()
        tasks_a = _task_runs(prefect_server.url, run_a)
        assert len(_compute(tasks_a)) > 10, sorted({(t["name"], tuple(t["tags"]), t["state_name"]) for t in tasks_a})
        stop_group(wa[0])
        wa[1].close()
        shutil.rmtree(a)  # worker A and its disk are gone

        # ---- worker B, from its own clone, gets everything from the store: no compute runs again
        wb = start_worker("worker-b", env_b)
        run_b = _trigger(b, env_b)
        assert _wait(prefect_server.url, run_b, tmp_path / "worker-b.log") == "COMPLETED", (
            tmp_path / "worker-b.log"
        ).read_text()[-4000:]
        computed = _compute(_task_runs(prefect_server.url, run_b))
        assert computed and all(t["state_name"] == "Cached" for t in computed), sorted(
            {(t["name"], t["state_name"]) for t in computed if t["state_name"] != "Cached"}
        )
        report_b = json.loads((b / "reports" / "prune" / "ice.json").read_text())
        assert report_b["sha256"] == report_a["sha256"]
        # B's published data came from the bucket: the same shards, each verified on download
        assert sorted(p.name for p in (b / "data" / "prepared" / "shards").glob("*.shard")) == shards_a
        assert (b / "reports" / "compare.md").exists()

        # ---- a third directory, knowing only the MLflow server, loads the registered model
        probe = (
            f"import numpy as np, mlflow; m = mlflow.pyfunc.load_model('models:/{NAME}@ice'); "
            "x = np.zeros((2, 1, 8, 8), dtype=np.float32); print(np.asarray(m.predict(x)).shape)"
        )
        env3 = sub_env(MLFLOW_TRACKING_URI=mlflow.url, PYTHONPATH=str(b))  # no S3 credentials: through the server
        r = subprocess.run(
            [sys.executable, "-c", probe], cwd=third, env=env3, capture_output=True, text=True, timeout=300
        )
        assert r.returncode == 0, r.stderr[-3000:]
        assert r.stdout.strip().splitlines()[-1] == "(2, 10)"

        # ---- kill B's flow-run process mid-prune; the run is crashed; a re-trigger reuses finished steps
        params = ["--param", 'overrides={"prune.ratio": 0.3}']
        run_k = _trigger(b, env_b, *params)
        deadline, done = time.time() + 600, []
        while time.time() < deadline and not done:
            done = [
                t
                for t in _task_runs(prefect_server.url, run_k)
                if t["name"].startswith("prune-step") and t["state_type"] == "COMPLETED"
            ]
            assert _state(prefect_server.url, run_k) not in ("COMPLETED", "FAILED", "CRASHED"), "ended before the kill"
            time.sleep(0.5)
        assert done, "no prune step finished in time"
        victims = _descendants(wb[0].pid)  # the flow-run process and its Dask cluster; not the worker
        assert victims
        for pid in victims:
            os.kill(pid, signal.SIGKILL)
        assert _wait(prefect_server.url, run_k, tmp_path / "worker-b.log", timeout=120) == "CRASHED"
        finished = {
            t["cache_key"] for t in _compute(_task_runs(prefect_server.url, run_k)) if t["state_type"] == "COMPLETED"
        }

        run_r = _trigger(b, env_b, *params)
        assert _wait(prefect_server.url, run_r, tmp_path / "worker-b.log") == "COMPLETED", (
            tmp_path / "worker-b.log"
        ).read_text()[-4000:]
        retry = _compute(_task_runs(prefect_server.url, run_r))
        cached = {t["cache_key"] for t in retry if t["state_name"] == "Cached"}
        assert finished and finished <= cached, f"recomputed after the crash: {len(finished - cached)} steps"
        assert any(t["state_name"] == "Completed" for t in retry)  # and the rest did run
    finally:
        for proc, log in workers:
            stop_group(proc)
            log.close()
        mlflow.stop()
