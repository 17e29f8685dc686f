"""What every flow does first, and the command line they share.

:func:`open_stage` resolves the project root, validates the params file (a bad value
fails here, before any compute, with the one-line ``ParamsError``), checks that the
MLflow store answers, and opens the flow's parent MLflow run, tagged with the Prefect
flow-run id, the method, the git commit and the DVC stage.
"""

from __future__ import annotations

import argparse
import contextlib
import errno
import functools
import getpass
import json
import logging
import os
import signal
import socket
import sys
import urllib.error
import urllib.request
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ice.checkpoint import CheckpointError
from ice.config import Params, ParamsError, load_params, parse_yaml
from ice.files import sha256_file
from tasks.common import (
    IntegrityError,
    Paths,
    make_ref,
    progress,
    project_root,
    publish,
    resolve,
    s3_store,
    verify_input,
)
from tasks.store import StoreError, check_url
from tasks.tracking import Tracker, TrackingUnavailable, check_reachable, git_commit, tracking_uri
from tasks.weights import WeightsError

__all__ = [
    "Stage",
    "open_stage",
    "cli",
    "section",
    "require",
    "publish_artifact",
    "update_progress",
    "store_url",
    "share",
    "materialize",
    "task_runner",
]


@dataclass
class Stage:
    name: str
    root: Path
    paths: Paths
    params: Params
    params_file: Path
    tracker: Tracker | None = None
    run_id: str | None = None
    info: dict[str, Any] = field(default_factory=dict)
    inputs: dict[str, str] = field(default_factory=dict)  # upstream file -> the sha256 it was verified against

    @property
    def store_url(self) -> str:
        """The content store: ``$ICE_STORE_URL``, else ``store.url`` ("" is the local store)."""
        return store_url(self.params)

    def require(self, path: Path, stage: str) -> dict[str, str]:
        """:func:`require`, remembered: the run logs what it read (``config/inputs.json``).

        With an S3 store the reference is to the same bytes in the bucket (uploaded once,
        if no producer put them there already), so tasks on other machines can read it."""
        ref = require(self.paths, path, stage)
        self.inputs[self.paths.rel(path)] = ref["sha256"]
        return self.share(path, ref["sha256"])

    def share(self, path: Path, sha256: str | None = None) -> dict[str, str]:
        """A reference to a project file that any worker can read: the file itself with the
        local store, the same bytes in the bucket with an S3 store."""
        return share(self.paths, self.store_url, path, sha256)

    def cfg(self, *sections: str) -> dict[str, Any]:
        """The named sections of params, as plain data: a task's own config."""
        return section(self.params, *sections)

    def device_cfg(self, *sections: str) -> dict[str, Any]:
        """The named sections plus only the device keys of ``train``: the config of a task that
        computes on a given model but does not pre-train (so pre-training keys stay out of its cache key)."""
        out = section(self.params, *sections)
        if "prune" in out:  # which methods a project runs is no method's input
            out["prune"].pop("methods", None)
        train = self.params.train.model_dump(mode="json")
        out["train"] = {k: train[k] for k in ("device", "channels_last")}
        return out


def store_url(params: Params) -> str:
    return (os.environ.get("ICE_STORE_URL") or params.store.url).rstrip("/")


def share(paths: Paths, url: str, path: Path, sha256: str | None = None) -> dict[str, str]:
    """A reference to a project file that any worker can read: the file itself with the
    local store (``url`` empty), the same bytes in the bucket with an S3 store."""
    ref = make_ref(paths, path, sha256)
    if not url:
        return ref
    return s3_store(paths, url).put(path, ref["sha256"], path.suffix, name=ref["uri"])  # type: ignore[no-any-return]


def task_runner(params: Params, threads: int = 8) -> Any:
    """The task runner for independent work, from ``scale``: Prefect's thread pool, or Dask
    through prefect-dask: the scheduler at ``$ICE_DASK_ADDRESS`` or ``scale.address``, else a
    local cluster of ``scale.workers`` single-threaded processes on 127.0.0.1, each with its
    share of the cores for torch. Inside a flow that already runs on Dask, the cluster is reused."""
    if params.scale.runner == "threads":
        from prefect.task_runners import ThreadPoolTaskRunner

        return ThreadPoolTaskRunner(max_workers=threads)
    from prefect_dask import DaskTaskRunner

    address = os.environ.get("ICE_DASK_ADDRESS") or params.scale.address
    if address:
        return DaskTaskRunner(address=address)
    n = params.scale.workers
    cores = str(max(1, (os.cpu_count() or 1) // n))
    return DaskTaskRunner(
        cluster_kwargs={
            "n_workers": n,
            "threads_per_worker": 1,
            "processes": True,
            "host": "127.0.0.1",
            "dashboard_address": None,
            "env": {"OMP_NUM_THREADS": cores, "MKL_NUM_THREADS": cores},
        }
    )


def materialize(paths: Paths, files: dict[str, dict[str, str]]) -> None:
    """Put each ``{relative path: reference}`` into the project, read (and verified) from the
    store: how a worker with no shared disk gets its inputs, and the collecting flow the
    outputs that other workers produced. A file already there with the right bytes is kept."""
    for rel, ref in files.items():
        dst = paths.root / rel
        if dst.is_file() and sha256_file(dst) == ref["sha256"]:
            continue
        publish(resolve(paths, ref), dst, ref["sha256"])


def section(params: Params, *names: str) -> dict[str, Any]:
    dump = params.model_dump(mode="json")
    return {n: dump[n] for n in names}


def _configure_logging() -> None:
    logger = logging.getLogger("ice.progress")
    logger.setLevel(logging.INFO)
    logger.propagate = False  # stderr gets the line from progress(); this copy is for the UI


def _flow_run_id() -> str:
    try:
        from prefect.runtime import flow_run

        return str(flow_run.id or "")
    except Exception:
        return ""


def require(paths: Paths, path: Path, stage: str) -> dict[str, str]:
    """A reference to an upstream output, verified against the sha256 its stage recorded,
    or a one-line error naming the stage to run."""
    if not path.exists():
        raise FileNotFoundError(f"{paths.rel(path)} is missing; run the {stage} stage first (python -m flows.{stage})")
    return verify_input(paths, path, stage)


def publish_artifact(kind: str, key: str, content: Any, description: str = "") -> Any:
    """A Prefect artifact (``markdown``, ``table`` or ``progress``) on the current flow run.

    Artifacts are a view for the Prefect UI; failing to write one never fails a flow.
    """
    try:
        from prefect import artifacts

        makers: dict[str, Callable[..., Any]] = {
            "markdown": artifacts.create_markdown_artifact,
            "table": artifacts.create_table_artifact,
            "progress": artifacts.create_progress_artifact,
        }
        make = makers[kind]
        return make(content, key=key, description=description or None)
    except Exception as err:  # no API reachable, or the run context is gone
        logging.getLogger("ice.progress").debug("artifact %s not written: %s", key, err)
        return None


def update_progress(artifact_id: Any, percent: float) -> None:
    if artifact_id is None:
        return
    with contextlib.suppress(Exception):
        from prefect.artifacts import update_progress_artifact

        update_progress_artifact(artifact_id, percent)


def _tag_flow_run(flow_run_id: str, name: str, method: str | None, params: Params) -> None:
    """Tags on the Prefect flow run, for the UI's filters: stage, method, data, arch, ratio.

    A view only: a Prefect API that does not answer never fails the flow."""
    if not flow_run_id:
        return
    tags = ["ice", f"stage:{name}", f"data:{params.data.source}", f"arch:{params.model.arch}"]
    if method:
        tags += [f"method:{method}", f"ratio:{params.prune.ratio:g}"]
    with contextlib.suppress(Exception):
        from prefect.client.orchestration import get_client

        run_id = uuid.UUID(flow_run_id)
        with get_client(sync_client=True) as client:
            current = client.read_flow_run(run_id).tags
            client.update_flow_run(run_id, tags=sorted({*current, *tags}))


def _user() -> str:
    try:
        return getpass.getuser()
    except (KeyError, OSError):
        return "unknown"


def _note(name: str, method: str | None, params: Params, pfile: Path, root: Path) -> str:
    what = f"prune with {method}, ratio {params.prune.ratio}" if method else name
    try:
        where = pfile.relative_to(root).as_posix()
    except ValueError:
        where = str(pfile)
    return f"{what}: {params.model.arch} on {params.data.source}, {where}"


@contextmanager
def open_stage(
    name: str,
    params_path: str,
    root: str | None,
    overrides: dict[str, Any] | None = None,
    *,
    method: str | None = None,
    track: bool = True,
) -> Iterator[Stage]:
    """Validate params, open the MLflow parent run; close it FINISHED or FAILED."""
    _configure_logging()
    r = project_root(root)
    pfile = Path(params_path)
    if not pfile.is_absolute():
        pfile = r / pfile
    params = load_params(pfile, overrides)
    stage = Stage(name, r, Paths(r), params, pfile)
    if track:
        stage.tracker = Tracker(r, params.tracking.experiment, params.tracking.tracking_uri)
        commit = git_commit(r)
        flow_run_id = _flow_run_id()
        tags = {
            "prefect.flow_run_id": flow_run_id,
            "git.commit": commit,
            "dvc.stage": os.environ.get("DVC_STAGE", ""),
            "ice.stage": name,
            "ice.host": socket.gethostname(),
            "ice.pid": str(os.getpid()),
            # MLflow's own tags: the UI's User, Source and Version columns and the run's description
            "mlflow.user": _user(),
            "mlflow.source.name": f"python -m flows.{name}",
            "mlflow.source.type": "LOCAL",
            "mlflow.source.git.commit": commit,
            "mlflow.note.content": _note(name, method, params, pfile, r),
        }
        ui = os.environ.get("PREFECT_API_URL", "").removesuffix("/").removesuffix("/api")
        if ui and flow_run_id:
            tags["prefect.flow_run_url"] = f"{ui}/runs/flow-run/{flow_run_id}"
        if method:
            tags["method"] = method
        run_name = f"{name}-{method}" if method else name
        stage.tracker.end_stale_runs(name, method)
        logged = params.model_dump(mode="json") | ({"method": method} if method else {})
        stage.run_id = stage.tracker.start_run(run_name, tags, logged)
        _tag_flow_run(flow_run_id, name, method, params)
    status = "FAILED"
    try:
        yield stage
        status = "FINISHED"
    except (KeyboardInterrupt, SystemExit):
        status = "KILLED"
        raise
    finally:
        if stage.tracker is not None and stage.run_id is not None:
            with contextlib.suppress(Exception):  # the server went away: still try to close the run
                # what this run read, by hash (not dvc.lock: DVC rewrites it only after the stage ends)
                stage.tracker.log_dict(
                    stage.run_id,
                    {
                        "stage": name,
                        "dvc_stage": os.environ.get("DVC_STAGE", ""),
                        "git_commit": git_commit(r),
                        "params_file": pfile.name,
                        "inputs": stage.inputs,
                    },
                    "config/inputs.json",
                )
                stage.tracker.log_artifacts(stage.run_id, [pfile], "config")
            try:
                stage.tracker.end_run(stage.run_id, status)
            except Exception:
                if status == "FINISHED":
                    raise


class _OneLineFailures(logging.Filter):
    """Without ``--debug``, a failure is reported once, by the CLI's ``error:`` line.

    Prefect's (and MLflow's) own ERROR records, their tracebacks, the "Finished in state
    Failed" lines and urllib3's retry warnings are dropped from the console.
    """

    def filter(self, record: logging.LogRecord) -> bool:
        if record.name.startswith(("prefect", "mlflow", "urllib3")):
            if record.levelno >= logging.ERROR or record.name.startswith("urllib3"):
                return False
            msg = record.getMessage()
            if "Finished in state Failed" in msg or "Finished in state Crashed" in msg:
                return False
        record.exc_info, record.exc_text = None, None
        return True


def _quiet_failures() -> None:
    for handler in logging.getLogger().handlers:
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
    text = str(err).strip().splitlines()[0] if str(err).strip() else ""
    if isinstance(err, known):
        return text or type(err).__name__
    return f"{type(err).__name__}: {text}" if text else type(err).__name__


def _check_prefect_api(timeout: float = 5.0) -> None:
    url = os.environ.get("PREFECT_API_URL")
    if not url:
        return
    try:
        with urllib.request.urlopen(url.rstrip("/") + "/health", timeout=timeout) as r:
            if r.status == 200:
                return
    except (urllib.error.URLError, OSError) as err:
        reason = getattr(err, "reason", err)
        raise TrackingUnavailable(
            f"Prefect API at {url} cannot be reached ({reason}); start it (make up) or unset "
            "PREFECT_API_URL to run without a server"
        ) from None


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
    real = subprocess.Popen
    subprocess.Popen = functools.partial(real, preexec_fn=_die_with(os.getpid()))  # type: ignore[misc, assignment]
    try:
        instance.start()
    finally:
        subprocess.Popen = real  # type: ignore[misc]


class _Parser(argparse.ArgumentParser):
    """argparse with a one-line error (no usage block): `error: argument --method: invalid choice ...`."""

    def error(self, message: str) -> Any:
        self.exit(2, f"error: {message} (see {self.prog} --help)\n")


def _on_stop_signal(signum: int, frame: Any) -> None:
    from tasks.common import STOP

    STOP.set()  # worker threads stop after their current step
    raise KeyboardInterrupt("terminated" if signum == signal.SIGTERM else "interrupted")


STAGE_INPUTS: dict[str, list[str]] = {
    "prepare": [],
    "pretrain": ["prepare"],
    "autotune": ["prepare", "pretrain"],
    "prune": ["prepare", "pretrain"],
    "evaluate": ["prepare", "pretrain"],
    "pipeline": [],
}


def _preflight_inputs(name: str, paths: Paths, params: Params) -> None:
    """Verify the stage's inputs against their producers' records before Prefect starts."""
    where = {"prepare": paths.prepared, "pretrain": paths.pretrained}
    if "prepare" in STAGE_INPUTS.get(name, []) and paths.prepared_record.exists():
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
    for stage in STAGE_INPUTS.get(name, []):
        if where[stage].exists():
            verify_input(paths, where[stage], stage)
    if name == "evaluate":
        for method in params.prune.methods:
            if paths.pruned(method).exists():
                verify_input(paths, paths.pruned(method), f"prune --method {method}")


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
    ap = _Parser(prog=f"python -m flows.{name}", description=description)
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
    args = ap.parse_args()
    overrides: dict[str, Any] = {}
    for item in args.set:
        key, sep, value = item.partition("=")
        if not sep:
            ap.error(f"--set {item!r}: expected KEY=VALUE")
        try:
            overrides[key] = parse_yaml(value, f"--set {key}")
        except ParamsError as err:
            print(f"error: {err}", file=sys.stderr)
            sys.exit(2)
    if args.quiet:
        os.environ["ICE_QUIET"] = "1"
    r = project_root(args.root)
    if not r.is_dir():
        print(f"error: project root {r} is not a directory (--root or $ICE_PROJECT_DIR)", file=sys.stderr)
        sys.exit(2)
    pfile = Path(args.params) if Path(args.params).is_absolute() else r / args.params
    try:
        params = load_params(pfile, overrides)  # fail before Prefect, torch or MLflow spend a second
        check_reachable(tracking_uri(r, params.tracking.tracking_uri))
        _check_prefect_api()
        check_url(store_url(params))
        _preflight_inputs(name, Paths(r), params)
    except (ParamsError, TrackingUnavailable, IntegrityError, StoreError, WeightsError) as err:
        print(f"error: {err}", file=sys.stderr)
        sys.exit(2 if isinstance(err, ParamsError) else 1)
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
            run(args, overrides)
    except KeyboardInterrupt:
        print(f"error: {name} interrupted", file=sys.stderr)
        sys.exit(130)
    except Exception as err:
        if args.debug:
            raise
        print(f"error: {one_line(err, name)}", file=sys.stderr)
        sys.exit(1)
    from tasks.tracking import project_links

    found = project_links(str(pfile), str(r))
    runs = found.get("mlflow_runs", "")
    prefect = found.get("prefect_ui") or "`make up` (http://127.0.0.1:4200)"
    local = "" if found["mlflow_store"].startswith("http") else " (start it with `make mlflow-ui`)"
    progress(f"[{name}] done. Results under {r} (models/, reports/). MLflow runs: {runs}{local}; Prefect UI: {prefect}")
