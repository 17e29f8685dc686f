"""``ice``: one command for everything the project does, each subcommand what already exists.

    ice run                      dvc repro of params.yaml, then the comparison and its links
    ice prune --method ice       one method (python -m flows.prune); also prepare, pretrain,
                                 autotune, evaluate and pipeline, one per flow
    ice compare                  every method in one process, no orchestration
    ice export --method ice      ONNX, TorchScript or safetensors, checked against PyTorch
    ice links | gc               where to look; shrink the cache
    ice up | down | status       the local stack (PostgreSQL, S3, Prefect, MLflow) on 127.0.0.1;
                                 status also marks the flow runs of killed pipelines Crashed

Each subcommand runs the module it names in this process, with its own ``--help``, its own
``--set KEY=VALUE`` and its own one-line errors: ``ice prune ...`` is ``python -m flows.prune
...`` and nothing more, so the console script adds no start-up time (nothing heavy is
imported before the subcommand is known).
"""

from __future__ import annotations

import os
import runpy
import shutil
import subprocess
import sys
from pathlib import Path

__all__ = ["main", "COMMANDS"]

FLOWS = ("prepare", "pretrain", "autotune", "prune", "evaluate", "pipeline")
# subcommand -> (what runs it, one line of help)
COMMANDS: dict[str, tuple[str, str]] = {
    "run": ("run", "the main job: dvc repro of params.yaml, then reports/compare.md and the links"),
    **{f: (f"module:flows.{f}", f"the {f} stage as a Prefect flow (python -m flows.{f})") for f in FLOWS},
    "compare": ("path:benchmarks/compare_methods.py", "every method in one process, no orchestration"),
    "export": ("module:scripts.export", "export a model as ONNX, TorchScript or safetensors, checked"),
    "links": ("module:scripts.links", "the MLflow runs table and the Prefect UI of this project"),
    "gc": ("module:scripts.gc", "shrink .ice-cache/ to what outputs and the registry reference"),
    "up": ("stack:up", "start PostgreSQL, S3, Prefect and MLflow servers on 127.0.0.1 (infra/stack.sh up)"),
    "down": ("stack:down", "stop what `ice up` started, by its process groups"),
    "status": ("stack:status", "which stack processes run; flow runs of killed pipelines marked Crashed"),
}


def _usage() -> str:
    width = max(map(len, COMMANDS))
    lines = [f"  {name:<{width}}  {text}" for name, (_, text) in COMMANDS.items()]
    return (
        "usage: ice <command> [options]   (ice <command> --help for its options)\n\n"
        "ice-pipeline: prune a trained CNN for the least compute to a target, and record everything.\n\n"
        "commands:\n" + "\n".join(lines)
    )


def _run(argv: list[str]) -> int:
    """``dvc repro``, then compare.md and the links: what ``make run`` shows."""
    import argparse

    ap = argparse.ArgumentParser(prog="ice run", description=COMMANDS["run"][1])
    ap.add_argument("targets", nargs="*", help="dvc stages to reproduce (default: all)")
    args = ap.parse_args(argv)
    bindir = str(Path(sys.executable).parent)
    env = {**os.environ, "PATH": bindir + os.pathsep + os.environ.get("PATH", "")}
    dvc = shutil.which("dvc", path=env["PATH"])
    if dvc is None:
        print("error: dvc is not installed in this environment (make setup)", file=sys.stderr)
        return 1
    rc = subprocess.run([dvc, "repro", *args.targets], env=env).returncode
    if rc != 0:
        return rc
    compare = Path("reports/compare.md")
    if compare.is_file():
        print()
        print(compare.read_text())
    print("Results: reports/compare.md, reports/metrics.json, reports/figures/, models/ (DVC outs)")
    rc = subprocess.run([sys.executable, "-m", "scripts.links"], env=env).returncode
    print(f"Plots:             {dvc} plots show   (renders offline)")
    return rc


def _prefect_api() -> str | None:
    """The Prefect API this project reports to: $PREFECT_API_URL, else the stack's (.stack/env)."""
    if os.environ.get("PREFECT_API_URL"):
        return os.environ["PREFECT_API_URL"]
    env = Path(os.environ.get("ICE_STACK_DIR", ".stack")) / "env"
    if env.is_file():
        for line in env.read_text().splitlines():
            for pair in line.removeprefix("export ").split():
                key, _, value = pair.partition("=")
                if key == "PREFECT_API_URL":
                    return value
    return None


def _crash_dead_runs() -> None:
    """After the stack's status: the flow runs that a killed pipeline on this host left Running are
    marked Crashed, as the next run would (plumbing.prefect_views.crash_dead_runs), or a line says
    there were none. Silent where no Prefect server answers."""
    import urllib.request

    url = _prefect_api()
    if not url:
        return
    try:
        with urllib.request.urlopen(url.rstrip("/") + "/health", timeout=3):
            pass
    except OSError:
        return
    os.environ["PREFECT_API_URL"] = url
    from plumbing.prefect_views import crash_dead_runs

    if not crash_dead_runs():  # it says what it marked
        print("Prefect: no flow run of this project is left Running by a killed process")


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help", "help"):
        print(_usage())
        return 0 if argv else 2
    name, rest = argv[0], argv[1:]
    if name not in COMMANDS:
        print(f"error: ice {name!r} is not a command; allowed: {', '.join(COMMANDS)}", file=sys.stderr)
        return 2
    how, _ = COMMANDS[name]
    kind, _, target = how.partition(":")
    if kind == "run":
        return _run(rest)
    if kind == "stack":
        if any(a in ("-h", "--help") for a in rest):
            print(f"usage: ice {name}\n\n{COMMANDS[name][1]}; infra/stack.sh {target} (see docs/scale-out.md)")
            return 0
        stack = Path("infra/stack.sh")
        if not stack.is_file():
            print(f"error: {stack} not found: run ice {name} from the project root", file=sys.stderr)
            return 2
        rc = subprocess.run(["bash", str(stack), target, *rest]).returncode
        if target == "status":
            _crash_dead_runs()
        return rc
    sys.argv = [f"ice {name}", *rest]  # the module's parser names itself after this
    try:
        if kind == "path":
            if not Path(target).is_file():
                print(f"error: {target} not found: run ice {name} from the project root", file=sys.stderr)
                return 2
            path = Path(target).resolve()  # run as `python <path>` would, with sys.argv[0] kept
            exec(compile(path.read_text(), str(path), "exec"), {"__name__": "__main__", "__file__": str(path)})
        else:
            runpy.run_module(target, run_name="__main__")  # sys.argv stays as set above
    except SystemExit as done:
        code = done.code
        return code if isinstance(code, int) else (0 if code is None else 1)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
