"""`infra/stack.sh` knows what it started: every server in a process group of its own, found and
stopped whole even after its parent was killed, and a port taken by something else refused."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from helpers import free_port, sub_env

pytestmark = [pytest.mark.slow, pytest.mark.integration]

ROOT = Path(__file__).resolve().parents[2]


def _stack(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["bash", "infra/stack.sh", *args], cwd=ROOT, env=env, capture_output=True, text=True, timeout=400
    )


def _group_alive(pgid: int) -> bool:
    """Whether a process of the group still runs (zombies, dead but not yet reaped, do not count)."""
    for entry in Path("/proc").iterdir():
        try:
            stat = (entry / "stat").read_text()
        except (OSError, ValueError):
            continue
        fields = stat.rsplit(")", 1)[-1].split()
        if fields and fields[0] != "Z" and int(fields[2]) == pgid:
            return True
    return False


def test_up_refuses_a_taken_port_and_down_stops_a_group_whose_parent_was_killed(tmp_path):
    home = tmp_path / "stack"
    env = sub_env(
        ICE_STACK_DIR=str(home),
        ICE_MLFLOW_DB=str(tmp_path / "mlflow.db"),
        PREFECT_PORT=str(free_port()),
        MLFLOW_PORT=str(free_port()),
        S3_PORT=str(free_port()),
        PYTHON=sys.executable,
    )
    squatter = socket.socket()
    squatter.bind(("127.0.0.1", int(env["MLFLOW_PORT"])))
    squatter.listen()
    try:
        taken = _stack(env, "up")
        assert taken.returncode != 0
        err = taken.stderr.strip().splitlines()
        assert err[-1] == (
            f"error: port {env['MLFLOW_PORT']} (mlflow) is taken by a process this stack did not start; "
            "stop it, or set MLFLOW_PORT"
        ), taken.stderr[-2000:]
        assert "mlflow: stopped, but port" in _stack(env, "status").stdout
    finally:
        squatter.close()
    groups: list[int] = []
    try:
        up = _stack(env, "up")
        assert up.returncode == 0, up.stdout[-2000:] + up.stderr[-2000:]
        groups = [int((home / f"{n}.pid").read_text()) for n in ("s3", "prefect", "mlflow")]
        mlflow = groups[2]
        os.kill(mlflow, signal.SIGKILL)  # the parent alone: its workers keep serving the port
        time.sleep(1)
        status = _stack(env, "status").stdout
        assert f"mlflow: running (process group {mlflow}" in status and "its leader gone" in status, status
        again = _stack(env, "up")  # what it started is still there: nothing new, no false "started"
        assert again.returncode == 0 and "mlflow already running" in again.stdout, again.stdout + again.stderr
    finally:
        down = _stack(env, "down")
    assert down.returncode == 0, down.stderr
    assert groups and not any(_group_alive(g) for g in groups), "a process of the stack outlived `down`"
    assert _stack(env, "status").stdout.count(": stopped") == 4
