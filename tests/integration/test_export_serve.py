"""Ship the pruned model: ONNX, TorchScript and safetensors exports checked against PyTorch, and
`mlflow models serve` of a registered pruned model answering with PyTorch's predictions.

The served model is a torchvision MobileNetV3 pruned through Torch-Pruning's groups, so
the round trip covers a model outside the paper's own networks.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
import urllib.request

import numpy as np
import pytest
import torch

from helpers import free_port, start_group, stop_group, sub_env
from ice.checkpoint import save_checkpoint
from ice.models import build_model
from ice.pruning import prunable_units, prune_unit
from scripts.export import export_model, run_exported

CLASSES = [f"class-{i}" for i in range(10)]


@pytest.fixture(scope="module")
def pruned(tmp_path_factory):
    torch.manual_seed(0)
    m = build_model("tv:mobilenet_v3_small", 10, image_size=(32, 32))
    for u in prunable_units(m):
        prune_unit(m, u, 0.5)
    path = tmp_path_factory.mktemp("ckpt") / "pruned.pt"
    save_checkpoint(path, m, {"method": "ice"})
    return m.eval(), path


@pytest.mark.parametrize("fmt", ["onnx", "torchscript", "safetensors"])
def test_export_matches_pytorch(pruned, fmt, tmp_path):
    model, path = pruned
    x = torch.randn(16, 3, 32, 32)
    out = tmp_path / f"m.{fmt}"
    side = export_model(path, fmt, out, classes=CLASSES, mean=[0.5] * 3, std=[0.25] * 3, check_images=x)
    print(f"{fmt}: max abs diff {side['check']['max_abs_diff']:.2e}")
    assert side["check"]["max_abs_diff"] < 1e-3 and side["check"]["argmax_agreement"] == 1.0
    assert side["input"]["shape"] == ["batch", 3, 32, 32] and side["classes"] == CLASSES
    assert json.loads(out.with_name(out.name + ".json").read_text())["sha256"] == side["sha256"]
    # a batch size the export never saw
    y = torch.randn(5, 3, 32, 32)
    with torch.no_grad():
        assert torch.allclose(run_exported(out.read_bytes(), fmt, y, side), model(y), atol=1e-3)
    if fmt == "safetensors":  # tensors alone, read by the safetensors package; the sidecar rebuilds the shapes
        from safetensors.torch import load_file

        assert load_file(str(out)).keys() == model.state_dict().keys() and side["widths"]


def test_export_cli_rejects_a_bad_format_in_one_line(tmp_path):
    r = subprocess.run(
        [sys.executable, "-m", "scripts.export", "--method", "ice", "--format", "tflite"],
        capture_output=True,
        text=True,
        env=sub_env(),
    )
    assert r.returncode == 2
    err = r.stderr.strip().splitlines()
    assert len(err) == 1 and "--format 'tflite' is not allowed; allowed: onnx, torchscript" in err[0]


@pytest.mark.integration
@pytest.mark.slow
def test_mlflow_models_serve_answers_like_pytorch(pruned, tmp_path):
    from plumbing.tracking import Tracker

    model, path = pruned
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    tracker = Tracker(tmp_path, "serve-test", uri)
    run = tracker.start_run("prune-ice", {"method": "ice"})
    version = tracker.log_model(run, path, "ice-serve-test", "ice")
    tracker.end_run(run)
    mv = tracker.client.get_model_version("ice-serve-test", version)
    from mlflow.models import get_model_info

    info = get_model_info(f"models:/ice-serve-test/{version}")
    assert info.signature is not None and info.saved_input_example_info is not None
    assert mv.tags["sha256"]

    port = free_port()
    cmd = [sys.executable, "-m", "mlflow", "models", "serve", "-m", "models:/ice-serve-test@ice"]
    cmd += ["--env-manager", "local", "-h", "127.0.0.1", "-p", str(port)]
    proc, log = start_group(cmd, tmp_path / "serve.log", sub_env(MLFLOW_TRACKING_URI=uri), cwd=tmp_path)
    try:
        deadline = time.time() + 120
        while True:
            if proc.poll() is not None:
                pytest.fail(f"mlflow models serve exited: {(tmp_path / 'serve.log').read_text()[-2000:]}")
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/ping", timeout=2) as r:
                    if r.status == 200:
                        break
            except OSError:
                if time.time() > deadline:
                    pytest.fail("mlflow models serve did not answer /ping within 120 s")
                time.sleep(0.5)
        x = torch.randn(6, 3, 32, 32)
        body = json.dumps({"inputs": x.numpy().tolist()}).encode()
        req = urllib.request.Request(
            f"http://127.0.0.1:{port}/invocations", data=body, headers={"Content-Type": "application/json"}
        )
        with urllib.request.urlopen(req, timeout=60) as r:
            served = np.asarray(json.loads(r.read())["predictions"], dtype=np.float32)
        with torch.no_grad():
            expect = model(x).numpy()
        assert served.shape == (6, 10)
        assert np.allclose(served, expect, atol=1e-4)
        assert (served.argmax(1) == expect.argmax(1)).all()
    finally:
        stop_group(proc)
        log.close()
