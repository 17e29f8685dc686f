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


def _ice(*args: str) -> subprocess.CompletedProcess[str]:
    assert ICE.exists(), f"{ICE} is missing: `make setup` installs the console script (pyproject [project.scripts])"
    return subprocess.run([str(ICE), *args], cwd=ROOT, env=sub_env(), capture_output=True, text=True, timeout=120)


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
