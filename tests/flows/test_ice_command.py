"""The `ice` console script that `make setup` installs: its help, each subcommand's, and one-line errors."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from helpers import sub_env
from scripts.cli import COMMANDS

ROOT = Path(__file__).resolve().parents[2]
ICE = Path(sys.executable).parent / "ice"


def _ice(*args: str, **env: str) -> subprocess.CompletedProcess[str]:
    assert ICE.exists(), f"{ICE} is missing: `make setup` installs the console script (pyproject [project.scripts])"
    return subprocess.run([str(ICE), *args], cwd=ROOT, env=sub_env(**env), capture_output=True, text=True, timeout=120)


def test_ice_help_lists_every_command():
    r = _ice("--help")
    assert r.returncode == 0, r.stderr
    assert r.stdout.startswith("usage: ice <command>")
    for name in COMMANDS:
        assert f"\n  {name} " in r.stdout, name


@pytest.mark.parametrize("name", list(COMMANDS))
def test_each_subcommand_has_its_help(name):
    r = _ice(name, "--help")
    assert r.returncode == 0, r.stderr[-2000:]
    assert r.stdout.startswith(f"usage: ice {name}"), r.stdout[:300]


def test_a_bad_command_or_value_is_one_line():
    r = _ice("prunee")
    assert r.returncode == 2 and r.stderr.count("\n") == 1
    assert "ice 'prunee' is not a command; allowed: run, prepare" in r.stderr
    r = _ice("prune", "--method", "ice", "--set", "prune.ratio=1.5")
    assert r.returncode == 2, r.stderr
    assert r.stderr.strip().splitlines()[-1].startswith("error: ") and "prune.ratio = 1.5 is not allowed" in r.stderr


def test_status_marks_the_runs_of_a_killed_pipeline_crashed(prefect_server, tmp_path):
    """A pipeline killed with SIGKILL leaves its flow run Running; `ice status` (like the next run)
    marks it Crashed once its process, named by its host: and pid: tags, is gone, and leaves a run
    whose process lives alone."""
    import socket

    from prefect import flow
    from prefect.client.orchestration import get_client
    from prefect.settings import PREFECT_API_URL, temporary_settings
    from prefect.states import Running

    from plumbing.prefect_views import PROJECT_TAG

    gone = subprocess.Popen(["true"])
    gone.wait()  # its pid names a process that no longer exists

    # The settings, not the environment: the session's Prefect test harness (tests/flows/conftest.py),
    # once an earlier test started it, overrides $PREFECT_API_URL in this process.
    def here():
        return temporary_settings(updates={PREFECT_API_URL: prefect_server.url})

    @flow(name="killed-pipeline")
    def killed() -> None: ...

    host = socket.gethostname()
    with here(), get_client(sync_client=True) as client:
        dead = client.create_flow_run(
            killed, name="killed-run", tags=[PROJECT_TAG, f"host:{host}", f"pid:{gone.pid}"], state=Running()
        )
        alive = client.create_flow_run(
            killed, name="live-run", tags=[PROJECT_TAG, f"host:{host}", "pid:1"], state=Running()
        )
    r = _ice("status", PREFECT_API_URL=prefect_server.url, ICE_STACK_DIR=str(tmp_path / "stack"))
    assert r.returncode == 0, r.stderr[-2000:]
    assert "left Running by a killed process marked Crashed: killed-run" in r.stdout + r.stderr, r.stderr[-2000:]
    with here(), get_client(sync_client=True) as client:
        assert client.read_flow_run(dead.id).state.type.value == "CRASHED"
        assert client.read_flow_run(alive.id).state.type.value == "RUNNING"
    again = _ice("status", PREFECT_API_URL=prefect_server.url, ICE_STACK_DIR=str(tmp_path / "stack"))
    assert "Prefect: no flow run of this project is left Running by a killed process" in again.stdout, again.stdout
