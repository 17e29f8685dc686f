"""The team stack under load (issue 35): `infra/stack.sh up` on PostgreSQL, a process work pool
with 2 workers, 4 prune flows with different methods submitted at once to the `prune`
deployment. Every flow run completes; MLflow holds exactly one FINISHED run per flow under one
pipeline parent, and one READY model version per method; and the models are the bytes that the
same flows give one at a time, without any server.

``ICE_LOAD_DBS=sqlite,postgres`` runs it on both databases (the figures in docs/scale-out.md);
CI runs PostgreSQL, the team stack's database.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

from helpers import ROOT, free_port, postgres_or_skip, reachable_dir, run_stages, start_group, stop_group, sub_env
from helpers import api as _api
from helpers import write_params as write_tiny

pytestmark = [pytest.mark.slow, pytest.mark.integration]

METHODS = ["prune_once", "iterative", "one_shot", "agp"]
SETTINGS = {
    "store": {"url": "s3://ice/load"},
    "prune": {"methods": METHODS, "max_units": 2, "ratio": 0.5},
    "ice": {"autotune": {"enabled": False}},
    "train": {"epochs": 1},
    "tracking": {"experiment": "ice-load"},
}
DBS = [d for d in os.environ.get("ICE_LOAD_DBS", "postgres").split(",") if d]


def _stack(env: dict[str, str], *args: str, timeout: int = 400) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["bash", "infra/stack.sh", *args], cwd=ROOT, env=env, capture_output=True, text=True, timeout=timeout
    )


def _clone(dst: Path) -> None:
    r = subprocess.run(["git", "clone", "-q", str(ROOT), str(dst)], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    write_tiny(dst, **SETTINGS)


def _pruned_sha(project: Path, method: str) -> str:
    return json.loads((project / "reports" / "prune" / f"{method}.json").read_text())["sha256"]


@pytest.mark.parametrize("db", DBS)
def test_four_flows_at_once_on_two_workers(db, tmp_path):
    if db == "postgres":
        postgres_or_skip()
    with reachable_dir(f"load-{db}") as where:
        home = where / "stack"
        env = sub_env(
            ICE_STACK_DIR=str(home),
            ICE_STACK_DB=db,
            ICE_MLFLOW_DB=str(home / "mlflow.db"),
            PREFECT_PORT=str(free_port()),
            MLFLOW_PORT=str(free_port()),
            S3_PORT=str(free_port()),
            PG_PORT=str(free_port()),
            PYTHON=sys.executable,
        )
        workers: list = []
        try:
            up = _stack(env, "up")
            assert up.returncode == 0, up.stdout[-2000:] + up.stderr[-3000:]
            flow_env = dict(env)
            for line in (home / "env").read_text().splitlines():  # what `source .stack/env` exports
                for k, v in re.findall(r"(\w+)=(\S+)", line.removeprefix("export ")):
                    flow_env[k] = v
            project = tmp_path / "project"
            _clone(project)
            flow_env.update(ICE_PROJECT_DIR=str(project), PYTHONPATH=str(project), PREFECT_HOME=str(home / "client"))
            run_stages(project, flow_env, "prepare", "pretrain")
            for args in (("pool",), ("deploy",)):
                done = subprocess.run(
                    ["bash", "infra/stack.sh", *args], cwd=project, env=flow_env, capture_output=True, text=True,
                    timeout=300,
                )  # fmt: skip
                assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
            api = flow_env["PREFECT_API_URL"]
            for i in range(2):
                cwd = tmp_path / f"worker-{i}"
                cwd.mkdir()
                workers.append(
                    start_group(
                        # at most 2 flow runs each: the 4 at once need both workers
                        [
                            sys.executable,
                            "-m",
                            "prefect",
                            "worker",
                            "start",
                            "--pool",
                            "ice-pool",
                            "--type",
                            "process",
                            "--limit",
                            "2",
                            "--name",
                            f"load-{i}",
                        ],
                        tmp_path / f"worker-{i}.log",
                        {**flow_env, "PREFECT_HOME": str(cwd / "home")},
                        cwd=cwd,
                    )  # fmt: skip
                )
            t0 = time.monotonic()
            ids = {}
            for method in METHODS:  # submitted at once: none waits for another to start
                out = subprocess.run(
                    [sys.executable, "-m", "prefect", "deployment", "run", "prune/prune", "--param", f"method={method}"],
                    cwd=project, env=flow_env, capture_output=True, text=True, timeout=120,
                )  # fmt: skip
                assert out.returncode == 0, out.stderr[-2000:]
                ids[method] = re.search(r"UUID:\s*([0-9a-f-]{36})", out.stdout + out.stderr).group(1)
            states: dict[str, str] = {}
            deadline = time.time() + 900
            while time.time() < deadline and len(states) < len(ids):
                for method, rid in ids.items():
                    fr = _api(api, f"/flow_runs/{rid}")
                    st = fr["state"]["type"] if fr["state"] else "PENDING"
                    if st in ("COMPLETED", "FAILED", "CRASHED", "CANCELLED"):
                        states[method] = st
                time.sleep(2)
            wall = time.monotonic() - t0
            logs = "\n".join((tmp_path / f"worker-{i}.log").read_text()[-3000:] for i in range(2))
            assert states == {m: "COMPLETED" for m in METHODS}, f"{states}\n{logs}"
            print(f"\n[load] {db}: {len(METHODS)} prune flows on 2 workers in {wall:.1f} s", flush=True)
            from mlflow.tracking import MlflowClient

            client = MlflowClient(tracking_uri=flow_env["MLFLOW_TRACKING_URI"])
            exp = client.get_experiment_by_name("ice-load")
            runs = client.search_runs([exp.experiment_id], "tags.`ice.stage` = 'prune'", max_results=100)
            assert sorted(r.data.tags["method"] for r in runs) == sorted(METHODS), [r.info.run_name for r in runs]
            assert all(r.info.status == "FINISHED" for r in runs), [(r.info.run_name, r.info.status) for r in runs]
            parents = client.search_runs([exp.experiment_id], "tags.`ice.stage` = 'pipeline'", max_results=100)
            prune_parents = {r.data.tags.get("mlflow.parentRunId") for r in runs}
            assert len(prune_parents) == 1 and prune_parents <= {p.info.run_id for p in parents}, (
                "the four flows of one pipeline run made more than one parent run"
            )
            versions = client.search_model_versions("name = 'cifar_resnet20-digits'")  # pretrained + one per flow
            assert len({v.version for v in versions}) == len(versions) == 1 + len(METHODS)
            assert {v.status for v in versions} == {"READY"}
            assert sorted(v.run_id for v in versions if v.run_id in {r.info.run_id for r in runs}) == sorted(
                r.info.run_id for r in runs
            )
            for r in runs:  # every metric of every step reached the store
                assert r.data.metrics, r.info.run_name
            concurrent = {m: _pruned_sha(project, m) for m in METHODS}
        finally:
            for proc, log in workers:
                stop_group(proc)
                log.close()
            _stack(env, "down", timeout=120)

    # the same flows, one at a time, on nothing but this machine's embedded defaults
    alone = tmp_path / "alone"
    _clone(alone)
    write_tiny(alone, **{**SETTINGS, "store": {"url": ""}})
    solo_env = sub_env(PYTHONPATH=str(alone))
    run_stages(alone, solo_env, "prepare", "pretrain")
    for method in METHODS:
        r = subprocess.run(
            [sys.executable, "-m", "flows.prune", "--method", method, "--root", str(alone), "--quiet"],
            cwd=alone, env=solo_env, capture_output=True, text=True, timeout=600,
        )  # fmt: skip
        assert r.returncode == 0, r.stderr[-3000:]
    assert {m: _pruned_sha(alone, m) for m in METHODS} == concurrent
    shutil.rmtree(alone, ignore_errors=True)
