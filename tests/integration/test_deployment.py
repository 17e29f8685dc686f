"""Deploy with infra/prefect.yaml to a real server, run `prune` on a process worker started
from another directory, and check that it completes and writes into the project."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

from helpers import ROOT, run_stages, start_group, stop_group, sub_env, write_params

pytestmark = [pytest.mark.slow, pytest.mark.integration]


def _prefect(args: list[str], cwd: Path, env: dict[str, str]) -> str:
    r = subprocess.run(
        [sys.executable, "-m", "prefect", *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=300
    )
    assert r.returncode == 0, f"prefect {' '.join(args)}:\n{r.stdout[-3000:]}\n{r.stderr[-3000:]}"
    return r.stdout + r.stderr


def test_deployment_runs_on_a_process_worker(prefect_server, tmp_path):
    project, elsewhere = tmp_path / "project", tmp_path / "elsewhere"
    elsewhere.mkdir()
    for d in ("ice", "tasks", "flows", "infra"):
        shutil.copytree(ROOT / d, project / d, ignore=shutil.ignore_patterns("__pycache__", "plots"))
    write_params(project, train={"epochs": 1}, prune={"methods": ["iterative"], "max_units": 2})
    env = sub_env(
        PREFECT_API_URL=prefect_server.url, PREFECT_HOME=str(prefect_server.home), ICE_PROJECT_DIR=str(project)
    )
    run_stages(project, env, "prepare", "pretrain")  # the inputs, with the sha256 records the prune flow verifies
    _prefect(["work-pool", "create", "ice-pool", "--type", "process"], project, env)
    out = _prefect(["--no-prompt", "deploy", "--all", "--prefect-file", "infra/prefect.yaml"], project, env)
    assert "prune/prune" in out and "pipeline/pipeline" in out
    run = _prefect(["deployment", "run", "prune/prune", "--param", "method=iterative"], project, env)
    flow_run_id = re.search(r"UUID:\s*([0-9a-f-]{36})", run).group(1)

    # the deployment names no directory: the worker's ICE_PROJECT_DIR (its own clone) is where it runs
    worker, log = start_group(
        [sys.executable, "-m", "prefect", "worker", "start", "--pool", "ice-pool", "--type", "process"],
        tmp_path / "worker.log",
        env,
        cwd=elsewhere,
    )
    try:
        deadline = time.time() + 420
        fr: dict = {}
        while time.time() < deadline:
            with urllib.request.urlopen(f"{prefect_server.url}/flow_runs/{flow_run_id}", timeout=10) as r:
                fr = json.load(r)
            if fr["state"] and fr["state"]["type"] in ("COMPLETED", "FAILED", "CRASHED", "CANCELLED"):
                break
            time.sleep(2)
        assert fr["state"]["type"] == "COMPLETED", (
            f"{fr['state']}; worker log:\n{(tmp_path / 'worker.log').read_text()[-4000:]}"
        )
        assert fr["parameters"]["method"] == "iterative"
    finally:
        stop_group(worker)
        log.close()
    assert (project / "models" / "pruned" / "iterative.pt").exists()
    assert (project / "mlflow.db").exists()
    assert not any(p.name in ("models", "reports", "mlflow.db") for p in elsewhere.iterdir())
