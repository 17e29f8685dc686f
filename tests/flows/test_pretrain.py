"""Pre-training resumes after a kill with the same bytes; ``model.weights`` imports a model instead."""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from helpers import run_stages, sub_env, write_params

pytestmark = pytest.mark.slow

EPOCHS = 6


def _cmd(root: Path, *extra: str) -> list[str]:
    return [sys.executable, "-m", "flows.pretrain", "--root", str(root), *extra]


def _epoch_states(log: str) -> list[tuple[int, str]]:
    return [(int(e), s) for e, s in re.findall(r"Task run 'pretrain-epoch-(\d+)' - Finished in state (\w+)", log)]


@pytest.mark.integration
def test_killed_pretraining_resumes_from_its_last_epoch_with_identical_bytes(prefect_server, tmp_path):
    from ice.files import sha256_file

    env = sub_env(
        PREFECT_API_URL=prefect_server.url, PREFECT_HOME=str(prefect_server.home), PREFECT_LOGGING_LEVEL="INFO"
    )
    whole, killed = tmp_path / "whole", tmp_path / "killed"
    whole.mkdir()
    write_params(
        whole,
        train={"epochs": EPOCHS, "batch_size": 16, "lr_schedule": "one_cycle"},
        tracking={"register_models": False},
    )
    run_stages(whole, env, "prepare")
    shutil.copytree(whole, killed)  # the same prepared data (and its sha256 record) in both

    done = subprocess.run(_cmd(whole), env=env, cwd=tmp_path, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    reference = sha256_file(whole / "models" / "pretrained.pt")

    proc = subprocess.Popen(
        _cmd(killed),
        env=env,
        cwd=tmp_path,
        stderr=subprocess.PIPE,
        stdout=subprocess.DEVNULL,
        text=True,
        start_new_session=True,
    )
    assert proc.stderr is not None
    for line in proc.stderr:
        if f"[pretrain] epoch 2/{EPOCHS}" in line:
            os.killpg(proc.pid, signal.SIGKILL)
            break
    proc.wait(timeout=60)
    assert proc.returncode == -signal.SIGKILL
    assert not (killed / "models" / "pretrained.pt").exists()

    again = subprocess.run(_cmd(killed), env=env, cwd=tmp_path, capture_output=True, text=True, timeout=600)
    assert again.returncode == 0, again.stderr[-3000:]
    states = _epoch_states(again.stderr)
    assert [e for e, _ in states] == list(range(1, EPOCHS + 1)), again.stderr[-3000:]
    cached = [s for _, s in states].count("Cached")
    assert cached >= 2  # the finished epochs were not trained again
    assert [s for _, s in states] == ["Cached"] * cached + ["Completed"] * (EPOCHS - cached)
    assert sha256_file(killed / "models" / "pretrained.pt") == reference
    report = json.loads((killed / "reports" / "pretrain.json").read_text())
    assert report["epochs"] == EPOCHS and report["sha256"] == reference


@pytest.fixture(scope="module")
def trained(harness, tmp_path_factory):
    """A digits project with a pretrained (and registered) ResNet-20."""
    mp = pytest.MonkeyPatch()
    mp.delenv("MLFLOW_TRACKING_URI", raising=False)
    mp.setenv("ICE_QUIET", "1")
    root = tmp_path_factory.mktemp("weights")
    write_params(root)
    from flows.prepare import prepare
    from flows.pretrain import pretrain

    prepare("params.yaml", str(root))
    report = pretrain("params.yaml", str(root))
    (root / "weights").mkdir()
    (root / "weights" / "r20.pt").write_bytes((root / "models" / "pretrained.pt").read_bytes())
    yield root, report
    mp.undo()


@pytest.mark.parametrize(
    "uri", ["weights/r20.pt", "models:/cifar_resnet20-digits@pretrained", "models:/cifar_resnet20-digits/1"]
)
def test_weights_import_a_path_or_a_registered_version(trained, uri):
    from flows.pretrain import pretrain
    from ice.files import sha256_file

    root, first = trained
    report = pretrain(
        "params.yaml",
        str(root),
        {"model.weights": uri, "model.weights_sha256": first["sha256"], "tracking.register_models": False},
    )
    assert report["source"] == f"imported from {uri}" and report["epochs"] == 0
    # the same bytes, evaluated again: the same accuracies
    assert sha256_file(root / "models" / "pretrained.pt") == first["sha256"] == report["sha256"]
    assert (report["val_acc"], report["test_acc"]) == (first["val_acc"], first["test_acc"])


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"model.weights": "weights/missing.pt"}, r"model\.weights: .*weights/missing\.pt does not exist"),
        (
            {"model.weights": "weights/r20.pt", "model.arch": "cifar_resnet32"},
            r"weights/r20\.pt has arch 'cifar_resnet20', model\.arch: 'cifar_resnet32'",
        ),
        (
            {"model.weights": "weights/r20.pt", "model.weights_sha256": "ab" * 32},
            r"weights/r20\.pt has sha256 [0-9a-f]{64}, model\.weights_sha256 is (ab){32}",
        ),
        (
            {"model.weights": "models:/cifar_resnet20-digits@nosuch"},
            r"model 'cifar_resnet20-digits' has no alias 'nosuch' \(aliases: .*pretrained",
        ),
        ({"model.weights": "models:/cifar_resnet20-digits/99"}, r"has no version 99 \(versions: 1"),
        ({"model.weights": "models:/nosuch@pretrained"}, r"no registered model 'nosuch'"),
        ({"model.weights": "models:/just-a-name"}, r"is not allowed; allowed: <path>, models:/<name>@<alias>"),
        ({"model.weights": "ftp://host/r20.pt"}, r"scheme 'ftp' is not supported"),
    ],
)
def test_bad_weights_are_one_line_refusals(trained, overrides, message):
    from flows.pretrain import pretrain
    from ice.files import sha256_file
    from plumbing.weights import WeightsError

    root, first = trained
    with pytest.raises(WeightsError, match=message) as err:
        pretrain("params.yaml", str(root), {**overrides, "tracking.register_models": False})
    assert "\n" not in str(err.value)
    assert sha256_file(root / "models" / "pretrained.pt") == first["sha256"]  # nothing was replaced


def test_a_file_that_is_not_a_checkpoint_is_refused(trained):
    from flows.pretrain import pretrain
    from plumbing.weights import WeightsError

    root, _ = trained
    (root / "weights" / "junk.pt").write_bytes(b"not a checkpoint")
    with pytest.raises(
        WeightsError, match=r"weights/junk\.pt: not a weights file .*allowed: ice checkpoint, state dict"
    ):
        pretrain("params.yaml", str(root), {"model.weights": "weights/junk.pt", "tracking.register_models": False})


def _trained_model(root: Path):
    from ice.checkpoint import load_checkpoint

    return load_checkpoint(root / "models" / "pretrained.pt")[0].eval()


def test_a_plain_state_dict_and_safetensors_import_with_the_checkpoints_accuracy(trained):
    """The most common way to save a model, and Hugging Face's safe format, for the same weights."""
    import torch

    from flows.pretrain import pretrain
    from ice.weights import save_safetensors

    root, first = trained
    model = _trained_model(root)
    torch.save(model.state_dict(), root / "weights" / "plain_state_dict.pt")
    save_safetensors(root / "weights" / "r20.safetensors", model)
    for uri, kind in (("weights/plain_state_dict.pt", "state dict"), ("weights/r20.safetensors", "safetensors")):
        report = pretrain("params.yaml", str(root), {"model.weights": uri, "tracking.register_models": False})
        assert report["source"] == f"imported from {uri} ({kind})"
        assert (report["val_acc"], report["test_acc"]) == (first["val_acc"], first["test_acc"])


_LOG_ELSEWHERE = """
import sys, mlflow, torch
from ice.checkpoint import load_checkpoint
model = load_checkpoint(sys.argv[1])[0].eval()
x = torch.zeros(1, 1, 8, 8).numpy()
mlflow.set_experiment("someone-else")
with mlflow.start_run() as run:
    mlflow.pytorch.log_state_dict(model.state_dict(), "weights")
    mlflow.pytorch.log_model(model, name="exported", input_example=x, registered_model_name="their-model")
    mlflow.pytorch.log_model(model, name="pickled", serialization_format="pickle",
                             registered_model_name="their-pickled-model")
print(run.info.run_id)
"""


def test_models_another_project_logged_with_mlflow_import_weights_only(trained):
    """Another project's MLflow (a process of its own): log_state_dict (runs:/) and log_model in its
    default pt2 form (runs:/ and models:/) give the checkpoint's accuracy; log_model's pickled form
    is refused in one line, without unpickling it."""
    from flows.pretrain import pretrain
    from plumbing.weights import WeightsError

    root, first = trained
    env = sub_env(MLFLOW_TRACKING_URI=f"sqlite:///{root / 'mlflow.db'}")
    out = subprocess.run(
        [sys.executable, "-c", _LOG_ELSEWHERE, str(root / "models" / "pretrained.pt")],
        env=env,
        cwd=root,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert out.returncode == 0, out.stderr[-3000:]
    run_id = out.stdout.split()[-1]
    for weights in (f"runs:/{run_id}/weights", f"runs:/{run_id}/exported", "models:/their-model/1"):
        report = pretrain("params.yaml", str(root), {"model.weights": weights, "tracking.register_models": False})
        assert report["source"].startswith(f"imported from {weights} (")
        assert (report["val_acc"], report["test_acc"]) == (first["val_acc"], first["test_acc"]), weights
    for weights in (f"runs:/{run_id}/pickled", "models:/their-pickled-model/1"):
        with pytest.raises(WeightsError, match="pickled whole model") as err:
            pretrain("params.yaml", str(root), {"model.weights": weights, "tracking.register_models": False})
        assert "\n" not in str(err.value) and "model.state_dict()" in str(err.value)
