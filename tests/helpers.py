"""Small projects for the orchestration tests: a tiny params file, prepared digits, a pretrained net."""

from __future__ import annotations

import contextlib
import os
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import yaml

ROOT = Path(__file__).resolve().parents[1]

TINY = {
    "seed": 0,
    "data": {"source": "digits", "cache_dir": "data/cache"},
    "model": {"arch": "cifar_resnet20"},
    "train": {"epochs": 2, "batch_size": 64, "augment": False, "device": "cpu"},
    "prune": {
        "methods": ["ice", "iterative", "one_cycle"],
        "ratio": 0.5,
        "max_units": 3,
        "batch_size": 64,
        "augment": False,
    },
    "ice": {"thre": 0.5, "autotune": {"n_trials": 2, "subset": 0.2}},
    "schedule": {"epochs": 1},
    "tracking": {"experiment": "ice-test"},
    "evaluate": {"latency_iters": 2},
}


def write_params(root: Path, **sections) -> Path:
    cfg = {k: (dict(v) if isinstance(v, dict) else v) for k, v in TINY.items()}
    for k, v in sections.items():
        cfg[k] = {**cfg.get(k, {}), **v} if isinstance(v, dict) else v
    p = root / "params.yaml"
    p.write_text(yaml.safe_dump(cfg, sort_keys=False))
    return p


def run_stages(root: Path, env: dict[str, str], *stages: str) -> None:
    """Run the real stages (``python -m flows.<stage>``) in ``root``, as a user would; each must succeed."""
    for stage in stages:
        r = subprocess.run(
            [sys.executable, "-m", f"flows.{stage}", "--root", str(root), "--quiet"],
            env=env,
            cwd=root,
            capture_output=True,
            text=True,
            timeout=600,
        )
        assert r.returncode == 0, f"{stage}:\n{r.stderr[-3000:]}"


def sub_env(**extra: str) -> dict[str, str]:
    """Environment for a flow subprocess: this venv first, project code importable, quiet telemetry."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PREFECT_", "MLFLOW_"))}
    env.update(
        PATH=f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}",
        PYTHONPATH=str(ROOT),
        DO_NOT_TRACK="true",
        PREFECT_SERVER_ANALYTICS_ENABLED="false",
    )
    env.update(extra)
    return env


def api(url: str, path: str, body: dict | None = None) -> Any:
    """A JSON call to a server's REST API (Prefect's, in the tests): GET, or POST with ``body``."""
    import json

    req = urllib.request.Request(
        url + path,
        data=None if body is None else json.dumps(body).encode(),
        headers={"Content-Type": "application/json"},
        method="GET" if body is None else "POST",
    )
    with urllib.request.urlopen(req, timeout=20) as r:
        return json.load(r)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def postgres_missing() -> str | None:
    """Why PostgreSQL cannot run here (`infra/pg.py check`: not installed, or root without the
    package's `postgres` user), or None when it can."""
    r = subprocess.run(
        [sys.executable, str(ROOT / "infra" / "pg.py"), "check"], capture_output=True, text=True, timeout=60
    )
    return r.stderr.strip().removeprefix("error: ") if r.returncode != 0 else None


def postgres_or_skip() -> None:
    """Skip, saying why, where PostgreSQL cannot run."""
    import pytest

    why = postgres_missing()
    if why:
        pytest.skip(f"the team stack needs PostgreSQL, which cannot run here: {why}")


@contextlib.contextmanager
def reachable_dir(prefix: str) -> Iterator[Path]:
    """A fresh directory under the system temp dir that every user can search (mode 755), removed
    after: pytest's own temporary directories are private to their owner, and PostgreSQL, run as
    root, runs as `postgres`."""
    import tempfile

    path = Path(tempfile.mkdtemp(prefix=f"ice-{prefix}-"))
    path.chmod(0o755)
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


def start_group(
    cmd: list[str], log: Path, env: dict[str, str], cwd: Path | None = None
) -> tuple[subprocess.Popen, Any]:
    """Start ``cmd`` in its own session (so :func:`stop_group` stops it and its children),
    its output to ``log``; returns the process and the open log file, to close after."""
    out = open(log, "w")  # noqa: SIM115
    proc = subprocess.Popen(cmd, cwd=cwd, env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
    return proc, out


def stop_group(proc: subprocess.Popen) -> None:
    """Stop a process started with ``start_new_session=True``, and its children, by its PID."""
    if proc.poll() is None:
        os.killpg(proc.pid, 15)
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, 9)
            proc.wait()


class PrefectServer:
    """A real Prefect server on loopback, stopped by its own PID."""

    def __init__(self, home: Path, services: bool = False, database: str | None = None) -> None:
        """``services``: run the server's services too (the task-run recorder among them:
        without it the API shows no task runs, only flow runs). ``database``: its database URL
        (PostgreSQL, from :meth:`PostgresServer.database`); default SQLite in ``home``."""
        self.home, self.services = home, services
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}/api"
        self.log = open(home / "server.log", "w")  # noqa: SIM115
        self.env = sub_env(PREFECT_HOME=str(home), PREFECT_API_URL=self.url, PREFECT_SERVER_API_HOST="127.0.0.1")
        if database:
            self.env["PREFECT_API_DATABASE_CONNECTION_URL"] = database.replace("postgresql://", "postgresql+asyncpg://")
        self.start()

    def start(self) -> None:
        """Start the server (again, after :meth:`stop`: same port, same database) and wait for /health."""
        if self.log.closed:
            self.log = open(self.home / "server.log", "a")  # noqa: SIM115
        self.proc = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "prefect",
                "server",
                "start",
                "--host",
                "127.0.0.1",
                "--port",
                str(self.port),
                *([] if self.services else ["--no-services"]),
            ],
            env=self.env,
            stdout=self.log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        deadline = time.time() + 120
        while time.time() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"prefect server exited; see {self.home / 'server.log'}")
            try:
                with urllib.request.urlopen(self.url + "/health", timeout=2) as r:
                    if r.status == 200:
                        return
            except OSError:
                time.sleep(0.5)
        self.stop()
        raise RuntimeError("prefect server did not answer /health within 120 s")

    def stop(self) -> None:
        stop_group(self.proc)
        self.log.close()


class MlflowServer:
    """A real `mlflow server` on loopback, as `make up` starts it, stopped by its own PID."""

    def __init__(
        self, home: Path, artifacts: str | None = None, env: dict[str, str] | None = None, backend: str | None = None
    ) -> None:
        """``backend``: its backend store URI (PostgreSQL, from :meth:`PostgresServer.database`);
        default SQLite in ``home``."""
        self.home, self.artifacts, self.env, self.backend = home, artifacts, env, backend
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log = open(home / "mlflow.log", "w")  # noqa: SIM115
        self.start()

    def start(self) -> None:
        """Start the server (again, after :meth:`stop`: same port, same store) and wait for /health."""
        if self.log.closed:
            self.log = open(self.home / "mlflow.log", "a")  # noqa: SIM115
        self.proc = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "mlflow",
                "server",
                "--host",
                "127.0.0.1",
                "--port",
                str(self.port),
                "--artifacts-destination",
                self.artifacts or str(self.home / "mlartifacts"),
                "--workers",
                "1",
            ],
            # the backend URI through the environment, as infra/stack.sh does: it holds a password
            env=sub_env(
                **(self.env or {}), MLFLOW_BACKEND_STORE_URI=self.backend or f"sqlite:///{self.home / 'mlflow.db'}"
            ),
            stdout=self.log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        deadline = time.time() + 120
        while time.time() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"mlflow server exited; see {self.home / 'mlflow.log'}")
            try:
                with urllib.request.urlopen(self.url + "/health", timeout=2) as r:
                    if r.status == 200:
                        return
            except OSError:
                time.sleep(0.5)
        self.stop()
        raise RuntimeError("mlflow server did not answer /health within 120 s")

    def stop(self) -> None:
        stop_group(self.proc)
        self.log.close()


class PostgresServer:
    """A real PostgreSQL on loopback (infra/pg.py, as `make up` starts it), in a directory its
    own user can reach; :meth:`database` makes a fresh database for one server."""

    def __init__(self, home: Path) -> None:
        sys.path.insert(0, str(ROOT / "infra"))
        import pg  # infra/pg.py

        self.home = home
        self.port = free_port()
        self.proc = pg.start(home, self.port, home / "pg.env")
        self.password = pg.identity(home / "pg.env", self.port)["ICE_PG_PASSWORD"]
        self.count = 0

    def database(self, prefix: str = "db") -> str:
        """A new, empty database: its URL (``postgresql://``; Prefect's driver is asyncpg)."""
        import psycopg

        self.count += 1
        name = f"{prefix}_{self.count}"
        base = f"postgresql://ice:{self.password}@127.0.0.1:{self.port}"
        with psycopg.connect(f"{base}/postgres", autocommit=True) as conn:
            conn.execute(f'CREATE DATABASE "{name}"')
        return f"{base}/{name}"

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(2)  # PostgreSQL's fast shutdown
            try:
                self.proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


class S3Server:
    """A real S3 server on loopback: SeaweedFS through infra/s3.py, as `make up` starts it."""

    def __init__(self, home: Path, bucket: str = "ice") -> None:
        sys.path.insert(0, str(ROOT / "infra"))
        import s3  # infra/s3.py

        self.home, self.bucket = home, bucket
        self.port = s3.free_base()
        self.start()
        self.endpoint = f"http://127.0.0.1:{self.port}"
        creds = s3.identity(home / "s3.env")
        self.env = {
            **creds,
            "AWS_ENDPOINT_URL_S3": self.endpoint,
            "AWS_DEFAULT_REGION": "us-east-1",
            "MLFLOW_S3_ENDPOINT_URL": self.endpoint,
        }

    def start(self) -> None:
        """Start the server (again, after :meth:`stop`: same ports, data and identity) and wait for its bucket."""
        import s3  # infra/s3.py

        self.proc = s3.start(self.home / "data", self.port, self.bucket, env_file=self.home / "s3.env")

    def keys(self, prefix: str = "") -> list[str]:
        import boto3

        c = boto3.client(
            "s3",
            endpoint_url=self.endpoint,
            aws_access_key_id=self.env["AWS_ACCESS_KEY_ID"],
            aws_secret_access_key=self.env["AWS_SECRET_ACCESS_KEY"],
            region_name="us-east-1",
        )
        out: list[str] = []
        for page in c.get_paginator("list_objects_v2").paginate(Bucket=self.bucket, Prefix=prefix):
            out += [o["Key"] for o in page.get("Contents", [])]
        return out

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()  # weed stops on SIGTERM to its PID
            try:
                self.proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
