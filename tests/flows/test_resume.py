"""A prune flow killed with SIGKILL after step k picks up where it stopped, with the same result."""

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

pytestmark = [pytest.mark.slow, pytest.mark.integration]

STEPS = 4


def _project(root: Path, env: dict[str, str]) -> None:
    """Prepared digits and a ResNet-20 trained one epoch, made by the real prepare and pretrain stages
    (so the prune flow finds the sha256 records it verifies its inputs against)."""
    write_params(
        root,
        train={"epochs": 1},
        prune={"methods": ["iterative"], "max_units": STEPS},
        tracking={"register_models": False},
    )
    run_stages(root, env, "prepare", "pretrain")


def _cmd(root: Path) -> list[str]:
    return [sys.executable, "-m", "flows.prune", "--method", "iterative", "--root", str(root)]


def _flow_runs(api: str, tag: str) -> list[dict]:
    """The Prefect server's flow runs carrying ``tag`` (its REST API, as the UI reads it)."""
    import urllib.request

    body = json.dumps({"flow_runs": {"tags": {"all_": [tag]}}}).encode()
    req = urllib.request.Request(f"{api}/flow_runs/filter", body, {"Content-Type": "application/json"})
    with urllib.request.urlopen(req, timeout=30) as r:
        return json.loads(r.read())


def _states(log: str, task: str) -> list[str]:
    return re.findall(rf"Task run '{task}-[^']*' - Finished in state (\w+)", log)


def test_killed_prune_resumes_from_cache_with_identical_checkpoint(prefect_server, tmp_path):
    from ice.files import sha256_file

    env = sub_env(
        PREFECT_API_URL=prefect_server.url, PREFECT_HOME=str(prefect_server.home), PREFECT_LOGGING_LEVEL="INFO"
    )
    whole, killed = tmp_path / "whole", tmp_path / "killed"
    whole.mkdir()
    _project(whole, env)
    shutil.copytree(whole, killed)  # the same inputs, before anything is pruned

    done = subprocess.run(_cmd(whole), env=env, cwd=tmp_path, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    reference = sha256_file(whole / "models" / "pruned" / "iterative.pt")

    # run again, and kill it without warning once step 2 of 4 has finished
    proc = subprocess.Popen(
        _cmd(killed),
        env=env,
        cwd=tmp_path,
        stderr=subprocess.PIPE,
        stdout=subprocess.DEVNULL,
        text=True,
        start_new_session=True,
    )
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
    # the killed run does not stay Running in Prefect: the rerun marked it Crashed
    assert "left Running by a killed process marked Crashed: prune-iterative" in again.stderr, again.stderr[-2000:]
    assert [r["state_type"] for r in _flow_runs(prefect_server.url, f"pid:{proc.pid}")] == ["CRASHED"]


def test_sigterm_stops_a_running_trial_after_its_step_and_the_rerun_resumes_it(prefect_server, tmp_path):
    """SIGTERM reaches the main thread at once; the auto-tune trial running in a worker thread ends
    after its current step (saved), instead of running to the end, and the next run continues it."""
    env = sub_env(PREFECT_API_URL=prefect_server.url, PREFECT_HOME=str(prefect_server.home))
    write_params(
        tmp_path,
        train={"epochs": 1},
        prune={"methods": ["ice"], "max_units": None, "finetune_epochs": 1.0},  # 9 steps of about a second
        ice={"autotune": {"n_trials": 2, "subset": 1.0}},
        tracking={"register_models": False},
    )
    run_stages(tmp_path, env, "prepare", "pretrain")
    cmd = [sys.executable, "-m", "flows.autotune", "--root", str(tmp_path)]
    proc = subprocess.Popen(cmd, env=env, cwd=tmp_path, stderr=subprocess.PIPE, stdout=subprocess.DEVNULL, text=True)
    assert proc.stderr is not None
    lines = []
    for line in proc.stderr:
        lines.append(line)
        if "[autotune] trial 1, step 2/9" in line:
            proc.send_signal(signal.SIGTERM)
            break
    lines += proc.stderr.readlines()
    proc.wait(timeout=60)
    log = "".join(lines)
    assert proc.returncode != 0
    steps = [int(m) for m in re.findall(r"\[autotune\] trial 1, step (\d+)/9", log)]
    assert steps and max(steps) <= 5, log[-2000:]  # stopped within a step or two, not at 9
    assert "[autotune] trial 1/2:" not in log
    assert list((tmp_path / ".ice-cache" / "store").glob("trial-00-*-partial.pt"))  # the last step is saved

    again = subprocess.run(cmd, env=env, cwd=tmp_path, capture_output=True, text=True, timeout=600)
    assert again.returncode == 0, again.stderr[-3000:]
    assert f"[autotune] trial 1: resuming after step {max(steps)}" in again.stderr


def test_killed_recovery_resumes_from_cache_with_identical_checkpoint(prefect_server, tmp_path):
    """prune_once, then a decay recovery toward a target it cannot reach in 0.6 epoch (3 chunks):
    killed after its first chunk, the rerun reuses the finished chunks, continues with the momentum
    the first chunk's checkpoint carries, and ends with the same bytes. A hindsight budget run
    afterwards reuses the cached step and reruns only the recovery."""
    from ice.checkpoint import load_checkpoint
    from ice.files import sha256_file

    env = sub_env(
        PREFECT_API_URL=prefect_server.url, PREFECT_HOME=str(prefect_server.home), PREFECT_LOGGING_LEVEL="INFO"
    )
    whole, killed = tmp_path / "whole", tmp_path / "killed"
    whole.mkdir()
    write_params(
        whole,
        train={"epochs": 1},
        prune={
            "methods": ["prune_once"],
            "max_units": STEPS,
            # an lr too small to recover anything: the target stays out of reach
            "target": {"tolerance": 0.01, "max_epochs": 0.6, "check_every": 0.2, "lr": 1e-6, "policy": "decay"},
        },
        tracking={"register_models": False},
    )
    run_stages(whole, env, "prepare", "pretrain")
    shutil.copytree(whole, killed)
    cmd = [sys.executable, "-m", "flows.prune", "--method", "prune_once"]

    done = subprocess.run(
        [*cmd, "--root", str(whole)], env=env, cwd=tmp_path, capture_output=True, text=True, timeout=600
    )
    assert done.returncode == 0, done.stderr[-3000:]
    assert "[prune_once] target NOT reached (max budget) after 0.6 recovery epochs" in done.stderr
    reference = sha256_file(whole / "models" / "pruned" / "prune_once.pt")

    proc = subprocess.Popen(
        [*cmd, "--root", str(killed)],
        env=env,
        cwd=tmp_path,
        stderr=subprocess.PIPE,
        stdout=subprocess.DEVNULL,
        text=True,
        start_new_session=True,
    )
    assert proc.stderr is not None
    for line in proc.stderr:
        if "[prune_once] recovery 0.2 epochs" in line:
            os.killpg(proc.pid, signal.SIGKILL)
            break
    proc.wait(timeout=60)
    assert proc.returncode == -signal.SIGKILL
    assert not (killed / "models" / "pruned" / "prune_once.pt").exists()

    again = subprocess.run(
        [*cmd, "--root", str(killed)], env=env, cwd=tmp_path, capture_output=True, text=True, timeout=600
    )
    assert again.returncode == 0, again.stderr[-3000:]
    chunks = _states(again.stderr, "recover-chunk")
    assert len(chunks) == 3 and chunks[0] == "Cached" and chunks[-1] == "Completed", chunks
    assert sha256_file(killed / "models" / "pruned" / "prune_once.pt") == reference
    report = json.loads((killed / "reports" / "prune" / "prune_once.json").read_text())
    assert report["target"]["reached"] is False and report["target"]["recovery_epochs"] == pytest.approx(0.6)
    assert [c["epochs"] for c in report["recovery"]] == pytest.approx([0, 0.2, 0.4, 0.6])
    lrs = [c["lr"] for c in report["recovery"][1:]]
    assert lrs == sorted(lrs, reverse=True) and lrs[0] > lrs[-1], lrs  # one decay, never back up
    # the chunks hand the optimizer on: the first chunk's checkpoint holds its momentum
    first = next((killed / ".ice-cache" / "store").glob("prune_once-recover000*.pt"))
    _, meta = load_checkpoint(first)
    assert any("momentum_buffer" in st for st in meta["optimizer"]["state"].values())

    # the hindsight grid: the same project with a fixed budget reruns only the recovery
    grid = subprocess.run(
        [*cmd, "--root", str(killed), "--set", "prune.target.budget_epochs=0.4"],
        env=env,
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert grid.returncode == 0, grid.stderr[-3000:]
    assert _states(grid.stderr, "prune-step") == ["Cached"] and _states(grid.stderr, "start-pruning") == ["Cached"]
    assert _states(grid.stderr, "recover-chunk") == ["Completed"] * 3
    grid_report = json.loads((killed / "reports" / "prune" / "prune_once.json").read_text())
    assert grid_report["target"]["budget_epochs"] == pytest.approx(0.4)
