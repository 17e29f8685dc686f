"""The command line every flow shares (``python -m flows.<name>``): parse, validate before
Prefect starts (params, inputs, servers), run, and turn any failure into one ``error:`` line.
"""

from __future__ import annotations

import argparse
import errno
import functools
import json
import logging
import os
import signal
import sys
import types
from collections.abc import Callable
from pathlib import Path
from typing import Any

from ice.checkpoint import CheckpointError
from ice.config import Params, ParamsError, load_params, parse_sets
from plumbing.log import prog, progress
from plumbing.outage import PREFECT_OUTAGE, prefect_outage_line
from plumbing.paths import Paths, project_root
from plumbing.records import IntegrityError, verify_input
from plumbing.runtime import (
    store_url,
)
from plumbing.s3 import StoreError, check_url
from plumbing.stages import recorded_inputs
from plumbing.tracking import TrackingUnavailable, check_prefect_api, check_reachable, outage_line, tracking_uri
from plumbing.weights import WeightsError

__all__ = ["one_line", "cli"]


class _OneLineFailures(logging.Filter):
    """Without ``--debug``, a failure is reported once, by the CLI's ``error:`` line.

    Prefect's (and MLflow's) own ERROR records, their tracebacks, the "Finished in state
    Failed" lines and urllib3's retry warnings are dropped from the console; Prefect's outage
    records become :class:`plumbing.outage.PrefectOutage`'s lines.
    """

    def filter(self, record: logging.LogRecord) -> bool:
        if PREFECT_OUTAGE.catch(record):
            return False
        if str(record.msg).startswith("Still processing items:"):
            return False  # Prefect's services draining at exit (its events for a server that is gone)
        if record.name.startswith(("prefect", "mlflow", "urllib3")):
            if record.levelno >= logging.ERROR or record.name.startswith("urllib3"):
                return False
            msg = record.getMessage()
            if "Finished in state Failed" in msg or "Finished in state Crashed" in msg:
                return False
        record.exc_info, record.exc_text = None, None
        return True


def _quiet_failures() -> None:
    """The one-line filter on every console handler: the root's, and Prefect's internal one (its
    `prefect._internal` records, the services' "failed to process item" among them, do not reach
    the root). Prefect's log shipper prints "--- Error logging to API ---" and the exception
    straight to stderr when the server is down, unless ``logging.raiseExceptions`` is off, as the
    standard library advises for production: the outage line says it instead."""
    logging.raiseExceptions = False
    for name in ("", "prefect._internal"):
        for handler in logging.getLogger(name).handlers:
            if not any(isinstance(f, _OneLineFailures) for f in handler.filters):
                handler.addFilter(_OneLineFailures())


def _quiet_prefect() -> None:
    """Prefect's per-task INFO chatter off the console (it stays in the Prefect UI): a flow
    prints its own progress lines. An explicit PREFECT_LOGGING_LEVEL keeps Prefect's say."""
    for name in ("distributed", "distributed.scheduler", "distributed.nanny", "distributed.worker"):
        logging.getLogger(name).setLevel(logging.WARNING)  # Dask's cluster start/stop chatter
    if "PREFECT_LOGGING_LEVEL" in os.environ:
        return
    for handler in logging.getLogger().handlers:
        handler.setLevel(max(handler.level, logging.WARNING))


def one_line(err: BaseException, stage: str | None = None) -> str:
    """An exception as one line: ours already are; others get their type and first line. A
    full disk names the file, the bytes it needed where known, and the stage to rerun."""
    if isinstance(err, OSError) and err.errno == errno.ENOSPC:
        where = err.filename or "a file"
        rerun = f", then rerun the {stage} stage" if stage else ", then rerun"
        return f"{where}: {err.strerror or 'no space left on the device'}; free space there{rerun}"
    known = (
        ParamsError,
        TrackingUnavailable,
        FileNotFoundError,
        WeightsError,
        IntegrityError,
        CheckpointError,
        StoreError,
    )
    if type(err).__name__ == "MlflowException" and (outage := outage_line(err)) is not None:
        return outage
    if (outage := prefect_outage_line(err)) is not None:
        return outage
    text = str(err).strip().splitlines()[0] if str(err).strip() else ""
    if isinstance(err, known):
        return text or type(err).__name__
    return f"{type(err).__name__}: {text}" if text else type(err).__name__


def _die_with(parent: int) -> Callable[[], None]:
    """A ``preexec_fn``: the child gets SIGKILL when ``parent`` dies, even by SIGKILL (Linux)."""

    def arm() -> None:
        import ctypes

        try:
            libc = ctypes.CDLL(None, use_errno=True)
            libc.prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
        except (OSError, AttributeError):  # not Linux: the atexit stop is all there is
            return
        if os.getppid() != parent:  # the parent died before the line above
            os._exit(1)

    return arm


def _bind_ephemeral_server() -> None:
    """Without ``PREFECT_API_URL`` Prefect starts a temporary server (uvicorn) as a child. A
    SIGKILLed flow cannot stop it, and it would run on, re-parented to init. Start it here,
    from the main thread (the death signal follows the thread that made the child), with a
    death signal bound to this process, so it dies with the flow however the flow ends."""
    if os.environ.get("PREFECT_API_URL"):
        return
    import subprocess

    from prefect.server.api import server as srv

    instance = srv.SubprocessASGIServer()
    if instance.running:
        return
    # Prefect's server module alone sees a subprocess whose Popen arms the death signal; every
    # other caller of subprocess (another thread's included) keeps the real one
    scoped = types.ModuleType("subprocess")
    scoped.__dict__.update(vars(subprocess))
    scoped.Popen = functools.partial(subprocess.Popen, preexec_fn=_die_with(os.getpid()))  # type: ignore[attr-defined]
    srv.subprocess = scoped  # type: ignore[attr-defined]
    try:
        instance.start()
    finally:
        srv.subprocess = subprocess  # type: ignore[attr-defined]


class _Parser(argparse.ArgumentParser):
    """argparse with a one-line error (no usage block): `error: argument --method: invalid choice ...`."""

    def error(self, message: str) -> Any:
        self.exit(2, f"error: {message} (see {self.prog} --help)\n")


def _on_stop_signal(signum: int, frame: Any) -> None:
    from plumbing.log import STOP

    STOP.set()  # worker threads stop after their current step
    raise KeyboardInterrupt("terminated" if signum == signal.SIGTERM else "interrupted")


def _preflight_inputs(name: str, paths: Paths, params: Params) -> None:
    """Verify the stage's inputs against their producers' records before Prefect starts."""
    inputs = recorded_inputs(name, paths, params.prune.methods)
    if (paths.prepared, "prepare") in inputs and paths.prepared_record.exists():
        sizes = json.loads(paths.prepared_record.read_text())
        for key, value in (
            ("train.batch_size", params.train.batch_size),
            ("prune.batch_size", params.prune.batch_size),
        ):
            if value > sizes.get("train", value):
                raise ParamsError(
                    f"{key} = {value} is not allowed: the prepared training split has {sizes['train']} images"
                )
    weights = params.model.weights
    if name in ("pretrain", "pipeline") and weights and "://" not in weights:
        # a checkpoint is untrusted data: refuse one that names code before any server starts
        # (models:/ weights are checked the same way once downloaded)
        from ice.checkpoint import check_checkpoint

        local = Path(weights).expanduser()
        local = local if local.is_absolute() else paths.root / local
        if local.is_file():
            try:
                check_checkpoint(local, params.model.arch)
            except CheckpointError as err:
                raise WeightsError(f"model.weights: {err}") from None
    for path, producer in inputs:
        if path.exists():  # a missing input is the flow's own one-line error, naming its producer
            verify_input(paths, path, producer)


def cli(
    name: str,
    description: str,
    run: Callable[[argparse.Namespace, dict[str, Any]], Any],
    extra: Callable[[argparse.ArgumentParser], None] | None = None,
) -> None:
    """``python -m flows.<name>``: parse, validate before Prefect starts, run, report.

    Every failure ends with one ``error:`` line and a non-zero exit (2 for bad params or
    arguments, 1 otherwise), and nothing is created before params, the project root and
    the servers have been checked. ``--debug`` (or ``ICE_DEBUG=1``) shows full tracebacks.
    """
    ap = _parser(name, description, extra)
    args = ap.parse_args()
    overrides = _overrides(ap, args.set)
    if args.quiet:
        os.environ["ICE_QUIET"] = "1"
    r, pfile = _checked(name, args.root, args.params, overrides)
    _run(name, args, overrides, run)
    _done(name, pfile, r)


def _parser(
    name: str, description: str, extra: Callable[[argparse.ArgumentParser], None] | None
) -> argparse.ArgumentParser:
    """The options every flow takes, and the flow's own (``extra``)."""
    ap = _Parser(prog=prog(f"python -m flows.{name}"), description=description)
    ap.add_argument("--params", default="params.yaml", help="params file, relative to the project root")
    ap.add_argument("--root", default=None, help="project root (default: $ICE_PROJECT_DIR or the working directory)")
    ap.add_argument(
        "--set", action="append", default=[], metavar="KEY=VALUE", help="override a param, dotted (YAML value)"
    )
    ap.add_argument(
        "--refresh-cache", action="store_true", help="recompute every task instead of reusing cached results"
    )
    ap.add_argument("--quiet", action="store_true", help="no progress lines")
    ap.add_argument(
        "--debug",
        action="store_true",
        default=os.environ.get("ICE_DEBUG") in ("1", "true", "yes"),
        help="full tracebacks on failure (also ICE_DEBUG=1)",
    )
    if extra is not None:
        extra(ap)
    return ap


def _overrides(ap: argparse.ArgumentParser, items: list[str]) -> dict[str, Any]:
    """``--set KEY=VALUE`` items as dotted overrides (:func:`ice.config.parse_sets`); exit 2 on a bad one."""
    for item in items:
        if "=" not in item:
            ap.error(f"--set {item!r}: expected KEY=VALUE")
    try:
        return parse_sets(items)
    except ParamsError as err:
        print(f"error: {err}", file=sys.stderr)
        sys.exit(2)


def _checked(name: str, root: str | None, params_file: str, overrides: dict[str, Any]) -> tuple[Path, Path]:
    """The project root and params file, once the root, the params, the servers and the stage's
    inputs have passed: before Prefect, torch or MLflow spend a second. Exit 2 (bad params or
    root) or 1 (a server or an input) with one line otherwise."""
    r = project_root(root)
    if not r.is_dir():
        print(f"error: project root {r} is not a directory (--root or $ICE_PROJECT_DIR)", file=sys.stderr)
        sys.exit(2)
    pfile = Path(params_file) if Path(params_file).is_absolute() else r / params_file
    try:
        params = load_params(pfile, overrides)
        check_reachable(tracking_uri(r, params.tracking.tracking_uri))
        check_prefect_api()
        check_url(store_url(params))
        _preflight_inputs(name, Paths(r), params)
    except (ParamsError, TrackingUnavailable, IntegrityError, StoreError, WeightsError) as err:
        print(f"error: {err}", file=sys.stderr)
        sys.exit(2 if isinstance(err, ParamsError) else 1)
    return r, pfile


def _run(
    name: str,
    args: argparse.Namespace,
    overrides: dict[str, Any],
    run: Callable[[argparse.Namespace, dict[str, Any]], Any],
) -> None:
    """The flow itself, with Prefect quieted and its temporary server bound to this process;
    any failure becomes one ``error:`` line (exit 1; 130 when interrupted)."""
    # SIGTERM (a worker stopping, `kill`) unwinds like Ctrl-C, so the MLflow run ends as KILLED;
    # both also tell worker threads to stop after their current step
    signal.signal(signal.SIGTERM, _on_stop_signal)
    signal.signal(signal.SIGINT, _on_stop_signal)
    try:
        # prefect read its settings at import, so setting the environment variable here
        # would be too late: refresh through a settings context instead
        from prefect.settings import PREFECT_TASKS_REFRESH_CACHE, temporary_settings

        _quiet_prefect()
        if not args.debug:
            _quiet_failures()
        _bind_ephemeral_server()
        with temporary_settings(updates={PREFECT_TASKS_REFRESH_CACHE: True} if args.refresh_cache else None):
            try:
                run(args, overrides)
            finally:
                PREFECT_OUTAGE.ended()
    except KeyboardInterrupt:
        print(f"error: {name} interrupted", file=sys.stderr)
        sys.exit(130)
    except Exception as err:
        if args.debug:
            raise
        print(f"error: {one_line(err, name)}", file=sys.stderr)
        sys.exit(1)


def _done(name: str, pfile: Path, r: Path) -> None:
    """The last line: where the results are, in files, MLflow and Prefect."""
    from plumbing.tracking import project_links

    found = project_links(str(pfile), str(r))
    runs = found.get("mlflow_comparison") or found.get("mlflow_runs", "")
    prefect = found.get("prefect_ui") or "`make up` (http://127.0.0.1:4200)"
    local = "" if found["mlflow_store"].startswith("http") else " (start it with `make mlflow-ui`)"
    progress(f"[{name}] done. Results under {r} (models/, reports/). MLflow runs: {runs}{local}; Prefect UI: {prefect}")
