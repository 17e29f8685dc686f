"""A prune flow killed with SIGKILL after step k picks up where it stopped, with the same result."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from helpers import sub_env, write_params

pytestmark = [pytest.mark.slow, pytest.mark.integration]

STEPS = 4


def _project(root: Path) -> None:
    """Prepared digits and a briefly trained ResNet-20, written the way the stages write them."""
    from ice.checkpoint import save_checkpoint
    from ice.data import load_dataset, save_prepared
    from ice.models import build_model
    from ice.train import fit

    write_params(root, prune={"methods": ["iterative"], "max_units": STEPS})
    data = load_dataset(source="digits", cache_dir=str(root / "data" / "cache"))
    save_prepared(data, root / "data" / "prepared" / "dataset.pt")
    torch.manual_seed(0)
    model = build_model("cifar_resnet20", data.num_classes, data.in_channels)
    fit(model, data, epochs=1, lr=0.1, batch_size=64, augment=False, device=torch.device("cpu"))
    save_checkpoint(root / "models" / "pretrained.pt", model, {"stage": "pretrain"})


def _cmd(root: Path) -> list[str]:
    return [sys.executable, "-m", "flows.prune", "--method", "iterative", "--root", str(root)]


def _states(log: str, task: str) -> list[str]:
    return re.findall(rf"Task run '{task}-[^']*' - Finished in state (\w+)", log)


def test_killed_prune_resumes_from_cache_with_identical_checkpoint(prefect_server, tmp_path):
    from ice.checkpoint import sha256_file

    env = sub_env(PREFECT_API_URL=prefect_server.url, PREFECT_HOME=str(prefect_server.home), PREFECT_LOGGING_LEVEL="INFO")
    whole, killed = tmp_path / "whole", tmp_path / "killed"
    for root in (whole, killed):
        root.mkdir()
        _project(root)
    (killed / "models" / "pretrained.pt").write_bytes((whole / "models" / "pretrained.pt").read_bytes())

    done = subprocess.run(_cmd(whole), env=env, cwd=tmp_path, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    reference = sha256_file(whole / "models" / "pruned" / "iterative.pt")

    # run again, and kill it without warning once step 2 of 4 has finished
    proc = subprocess.Popen(_cmd(killed), env=env, cwd=tmp_path, stderr=subprocess.PIPE, stdout=subprocess.DEVNULL,
                            text=True, start_new_session=True)
    seen = 0
    assert proc.stderr is not None
    for line in proc.stderr:
        if re.search(r"\[iterative\] step \d+/4", line):
            seen += 1
            if seen == 2:
                os.killpg(proc.pid, signal.SIGKILL)
                break
    proc.wait(timeout=60)
    assert proc.returncode == -signal.SIGKILL
    assert not (killed / "models" / "pruned" / "iterative.pt").exists()  # no half-written out

    again = subprocess.run(_cmd(killed), env=env, cwd=tmp_path, capture_output=True, text=True, timeout=600)
    assert again.returncode == 0, again.stderr[-3000:]
    pruned = _states(again.stderr, "prune-step")
    finetuned = _states(again.stderr, "finetune")
    assert len(pruned) == STEPS and len(finetuned) == STEPS, again.stderr[-3000:]
    cached = pruned.count("Cached")
    assert cached >= 2, pruned  # the finished steps were not run again
    assert pruned == ["Cached"] * cached + ["Completed"] * (STEPS - cached)
    assert finetuned.count("Cached") >= 2
    assert _states(again.stderr, "start-pruning") == ["Cached"]
    assert sha256_file(killed / "models" / "pruned" / "iterative.pt") == reference
