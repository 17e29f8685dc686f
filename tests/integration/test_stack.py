"""`infra/stack.sh` knows what it started: every server in a process group of its own, found and
stopped whole even after its parent was killed, and a port taken by something else refused; the
team stack keeps MLflow's and Prefect's data in its own PostgreSQL, whose password reaches the
servers through their environment and appears on no command line and in no log."""

from __future__ import annotations

import os
import re
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from helpers import free_port, postgres_or_skip, reachable_dir, sub_env

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


def _listening(port: int) -> bool:
    with socket.socket() as s:
        return s.connect_ex(("127.0.0.1", port)) == 0


WRITE_BOTH = """
import mlflow
from prefect import flow

mlflow.set_experiment("stack-check")
with mlflow.start_run(run_name="on-postgres"):
    mlflow.log_metric("acc", 0.5)

@flow(name="stack-check")
def check():
    return 1

check()
"""


def _rows(url: str, sql: str) -> list[tuple]:
    import psycopg

    with psycopg.connect(url.replace("postgresql+asyncpg://", "postgresql://")) as conn:
        return conn.execute(sql).fetchall()


def _command_lines() -> str:
    out = []
    for entry in Path("/proc").iterdir():
        try:
            out.append((entry / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace"))
        except OSError:
            continue
    return "\n".join(out)


@pytest.fixture
def tmp():
    """PostgreSQL runs as its own user, which must reach its data directory under the stack's."""
    postgres_or_skip()
    with reachable_dir("stack") as path:
        yield path


def test_team_stack_on_postgres_and_down_stops_a_group_whose_parent_was_killed(tmp):
    home = tmp / "stack"
    env = sub_env(
        ICE_STACK_DIR=str(home),
        PREFECT_PORT=str(free_port()),
        MLFLOW_PORT=str(free_port()),
        S3_PORT=str(free_port()),
        PG_PORT=str(free_port()),
        PYTHON=sys.executable,
    )
    ports = {n: int(env[f"{n.upper()}_PORT"]) for n in ("prefect", "mlflow", "s3", "pg")}
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
        assert f"database: postgres on 127.0.0.1:{ports['pg']}" in up.stdout, up.stdout
        groups = [int((home / f"{n}.pid").read_text()) for n in ("postgres", "s3", "prefect", "mlflow")]
        mlflow = groups[3]

        # a client run and a flow run, through the servers, land in PostgreSQL
        flow_env = dict(env)
        for line in (home / "env").read_text().splitlines():  # what `source .stack/env` exports
            for k, v in re.findall(r"(\w+)=(\S+)", line.removeprefix("export ")):
                flow_env[k] = v
        wrote = subprocess.run(
            [sys.executable, "-c", WRITE_BOTH], cwd=tmp, env=flow_env, capture_output=True, text=True, timeout=300
        )
        assert wrote.returncode == 0, wrote.stderr[-3000:]
        pg = dict(line.removeprefix("export ").split("=", 1) for line in (home / "pg.env").read_text().splitlines())
        assert (home / "pg.env").stat().st_mode & 0o077 == 0, "pg.env holds the password: owner only"
        assert "ICE_PG_PASSWORD" not in (home / "env").read_text(), "flows need no database password"
        assert _rows(pg["MLFLOW_BACKEND_STORE_URI"], "SELECT name, status FROM runs") == [("on-postgres", "FINISHED")]
        assert ("stack-check", "COMPLETED") in _rows(
            pg["PREFECT_API_DATABASE_CONNECTION_URL"],
            "SELECT flow.name, flow_run.state_type FROM flow_run JOIN flow ON flow.id = flow_run.flow_id",
        )
        assert not list(home.rglob("*.db")), "the team stack writes no SQLite database"
        secret = pg["ICE_PG_PASSWORD"]
        assert secret not in _command_lines(), "the database password is on a command line"
        for f in home.rglob("*"):
            if f.is_file() and f.name != "pg.env" and "data" not in f.relative_to(home).parts:
                assert secret not in f.read_text(errors="replace"), f"the database password is in {f}"

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
    assert not [n for n, p in ports.items() if _listening(p)], "a port of the stack is still served after `down`"
    assert _stack(env, "status").stdout.count(": stopped") == 5
