"""What the benchmarks share, on the project's own parsers and without editing ``sys.path``:

- :data:`REPO`, the repository root;
- :func:`parse_sets`: ``--set KEY=VALUE`` items, parsed as the flows parse them (``ice.config.parse_sets``);
- :func:`scratch_params`: a scratch project's ``params.yaml``, overrides applied, relative paths made
  absolute, validated before anything runs;
- :func:`bench_env`: the environment a benchmarked subprocess gets;
- :func:`timed`: a command's wall time and output, one line on failure;
- :func:`prefect_server`: a Prefect server on a free loopback port, in its own process group;
- :func:`infra`: one of ``infra/``'s modules (the stack's servers), loaded by its path.
"""

from __future__ import annotations

import importlib.util
import os
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path
from types import ModuleType
from typing import Any

from ice.config import Params, ParamsError, apply_overrides, parse_params, parse_yaml
from ice.config import parse_sets as sets
from ice.files import atomic_write_bytes

__all__ = ["REPO", "parse_sets", "scratch_params", "bench_env", "timed", "prefect_server", "infra"]

REPO = Path(__file__).resolve().parents[1]

# the params that name files: made absolute so a scratch project elsewhere reads the same ones
PATH_KEYS = ("data.root", "data.cache_dir", "model.weights")


def parse_sets(items: list[str]) -> dict[str, Any]:
    """``--set KEY=VALUE`` items as :func:`ice.config.parse_sets` reads them; a bad item ends
    the benchmark with the flows' one-line error."""
    try:
        return sets(items)
    except ParamsError as err:
        sys.exit(f"error: {err}")


def _absolute(raw: dict[str, Any], dotted: str) -> None:
    section, key = dotted.split(".")
    value = (raw.get(section) or {}).get(key)
    if value and "://" not in str(value) and not Path(value).is_absolute():
        raw[section][key] = str((REPO / value).resolve())


def scratch_params(
    params_file: str | Path, overrides: dict[str, Any], out: Path, *, shared_cache: bool = False
) -> Params:
    """Write ``out/params.yaml``: ``params_file`` (relative to :data:`REPO` unless absolute) with
    ``overrides`` applied and its paths made absolute. ``shared_cache``: the repository's decode
    cache, so CIFAR is decoded once across scratch projects. Returns the validated params;
    invalid ones end the benchmark in one line before anything is written."""
    import yaml

    src = Path(params_file) if Path(params_file).is_absolute() else REPO / params_file
    try:
        raw = parse_yaml(src.read_text(), str(src)) or {}
        apply_overrides(raw, overrides)
        if shared_cache:
            cache = parse_params(raw, str(src)).data.cache_dir
            apply_overrides(raw, {"data.cache_dir": cache})
        for dotted in PATH_KEYS:
            _absolute(raw, dotted)
        params = parse_params(raw, str(src))
    except (ParamsError, OSError) as err:
        sys.exit(f"error: {err}")
    out.mkdir(parents=True, exist_ok=True)
    atomic_write_bytes(out / "params.yaml", yaml.safe_dump(raw, sort_keys=False).encode())
    return params


def bench_env(*, quiet: bool = False, drop: tuple[str, ...] = (), **extra: str) -> dict[str, str]:
    """This process's environment for a benchmarked subprocess: no telemetry, the repository
    importable, ``ICE_QUIET`` where its progress lines are not wanted, and without the variables
    whose names start with one of ``drop`` (e.g. a server the benchmark does not mean to use)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(drop)} if drop else dict(os.environ)
    env.update(PYTHONPATH=str(REPO), DO_NOT_TRACK="true", PREFECT_SERVER_ANALYTICS_ENABLED="false")
    if quiet:
        env["ICE_QUIET"] = "1"
    env.update(extra)
    return env


def timed(cmd: list[str], env: dict[str, str], cwd: Path) -> tuple[float, str]:
    """Run ``cmd``: its wall seconds and its output; a failure ends the benchmark with its stderr's tail."""
    t = time.perf_counter()
    r = subprocess.run(cmd, env=env, cwd=cwd, capture_output=True, text=True)
    wall = time.perf_counter() - t
    if r.returncode != 0:
        sys.exit(f"{' '.join(cmd)} failed:\n{r.stderr[-3000:]}")
    return wall, r.stdout + r.stderr


def prefect_server(home: Path) -> tuple[subprocess.Popen[bytes], str]:
    """A Prefect server (no services) on a free port of 127.0.0.1, with its own ``PREFECT_HOME``
    and process group; returns the process and its API URL once ``/health`` answers."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    url = f"http://127.0.0.1:{port}/api"
    proc = subprocess.Popen(
        [sys.executable, "-m", "prefect", "server", "start", "--host", "127.0.0.1", "--port", str(port)]
        + ["--no-services"],
        env=bench_env(quiet=True, drop=("MLFLOW_TRACKING_URI",), PREFECT_HOME=str(home)),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    for _ in range(240):
        try:
            urllib.request.urlopen(url + "/health", timeout=2)
            return proc, url
        except OSError:
            time.sleep(0.5)
    proc.kill()
    sys.exit("error: the Prefect server did not start in 120 s")


def infra(name: str) -> ModuleType:
    """``infra/<name>.py`` (``s3``: SeaweedFS as ``make up`` starts it), loaded by its path."""
    key = f"_infra_{name}"
    if key in sys.modules:
        return sys.modules[key]
    spec = importlib.util.spec_from_file_location(key, REPO / "infra" / f"{name}.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[key] = module
    spec.loader.exec_module(module)
    return module
