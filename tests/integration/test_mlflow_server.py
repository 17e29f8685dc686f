"""The documented `make up` path: flows track to a real `mlflow server`, register their
models there, and another directory loads them back through the server."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from helpers import MlflowServer, sub_env, write_params

pytestmark = [pytest.mark.slow, pytest.mark.integration]

NAME = "cifar_resnet20-digits"


@pytest.fixture(scope="module")
def mlflow_server(tmp_path_factory):
    server = MlflowServer(tmp_path_factory.mktemp("mlflow-home"))
    yield server
    server.stop()


def _flow(name: str, root: Path, env: dict[str, str], *extra: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", f"flows.{name}", "--root", str(root), *extra],
        env=env,
        cwd=root,
        capture_output=True,
        text=True,
        timeout=900,
    )


def test_pretrain_prune_register_and_load_back_through_the_server(mlflow_server, prefect_server, tmp_path):
    root, elsewhere = tmp_path / "project", tmp_path / "elsewhere"
    root.mkdir()
    elsewhere.mkdir()
    write_params(root, prune={"methods": ["iterative"], "max_units": 2}, ice={"autotune": {"enabled": False}})
    env = sub_env(
        MLFLOW_TRACKING_URI=mlflow_server.url, PREFECT_API_URL=prefect_server.url, PREFECT_HOME=str(prefect_server.home)
    )
    for stage, extra in (("prepare", ()), ("pretrain", ()), ("autotune", ()), ("prune", ("--method", "iterative"))):
        done = _flow(stage, root, env, *extra)
        assert done.returncode == 0, f"{stage}:\n{done.stderr[-3000:]}"
    assert not (root / "mlflow.db").exists() and not (root / "mlartifacts").exists()  # all of it went to the server

    # a third directory, knowing only the server, loads both versions and gets the project's outputs
    probe = """
import json, sys, numpy as np, mlflow, torch
from ice.checkpoint import load_checkpoint
out = {}
for alias, path in (("pretrained", "models/pretrained.pt"), ("iterative", "models/pruned/iterative.pt")):
    model = mlflow.pyfunc.load_model(f"models:/{sys.argv[2]}@{alias}")
    ref, _ = load_checkpoint(sys.argv[1] + "/" + path)
    x = np.random.default_rng(0).standard_normal((3, 1, 8, 8)).astype(np.float32)
    with torch.no_grad():
        out[alias] = bool(np.array_equal(model.predict(x), ref.eval()(torch.from_numpy(x)).numpy()))
print(json.dumps(out))
"""
    got = subprocess.run(
        [sys.executable, "-c", probe, str(root), NAME],
        env=env,
        cwd=elsewhere,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert got.returncode == 0, got.stderr[-3000:]
    assert json.loads(got.stdout.strip().splitlines()[-1]) == {"pretrained": True, "iterative": True}

    # model.weights through the server: the registered pretrained version is imported byte for byte
    report = json.loads((root / "reports" / "pretrain.json").read_text())
    again = _flow(
        "pretrain",
        root,
        env,
        "--set",
        f"model.weights=models:/{NAME}@pretrained",
        "--set",
        "tracking.register_models=false",
    )
    assert again.returncode == 0, again.stderr[-3000:]
    imported = json.loads((root / "reports" / "pretrain.json").read_text())
    assert imported["sha256"] == report["sha256"] and imported["source"] == f"imported from models:/{NAME}@pretrained"

    from mlflow import MlflowClient

    client = MlflowClient(mlflow_server.url)
    versions = client.search_model_versions(f"name='{NAME}'")
    assert {v.tags.get("alias") for v in versions} >= {"pretrained", "iterative"}
    runs = client.search_runs([client.get_experiment_by_name("ice-test").experiment_id])
    assert runs and all(r.info.status == "FINISHED" for r in runs)
