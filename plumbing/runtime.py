"""What every flow does first, and the helpers flows share.

:func:`open_stage` resolves the project root, validates the params file (a bad value
fails here, before any compute, with the one-line ``ParamsError``), checks that the
MLflow store answers, and opens the flow's parent MLflow run, tagged with the Prefect
flow-run id, the method, the git commit and the DVC stage. The returned :class:`Stage`
carries the paths, params, tracker and store a flow needs.
"""

from __future__ import annotations

import contextlib
import getpass
import hashlib
import json
import logging
import os
import socket
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ice.config import Params, load_params
from ice.files import sha256_file
from ice.methods.registry import DEVICE_KEYS, spec
from plumbing.paths import Paths, make_ref, project_root
from plumbing.records import publish, verify_input
from plumbing.store import resolve, store_for
from plumbing.tracking import PIPELINE_TAG, Tracker, git_commit

__all__ = [
    "Stage",
    "store_url",
    "share",
    "task_runner",
    "materialize",
    "section",
    "require",
    "publish_artifact",
    "update_progress",
    "open_stage",
    "pipeline_key",
    "pipeline_run",
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
        out["train"] = {k: train[k] for k in DEVICE_KEYS}
        return out


def store_url(params: Params) -> str:
    return (os.environ.get("ICE_STORE_URL") or params.store.url).rstrip("/")


def share(paths: Paths, url: str, path: Path, sha256: str | None = None) -> dict[str, str]:
    """A reference to a project file that any worker can read: the file itself with the
    local store (``url`` empty), the same bytes in the bucket with an S3 store."""
    return store_for(paths, url).share(path, make_ref(paths, path, sha256))


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
    """Tags on the Prefect flow run, for the UI's filters: the project, stage, data, arch and,
    for a prune run, the method and what it prunes to (``ratio:`` of each unit's filters, or
    ``sparsity:`` of the weights masked for a weight-granularity schedule).

    A view only: a Prefect API that does not answer never fails the flow."""
    if not flow_run_id:
        return
    tags = [PROJECT_TAG, f"stage:{name}", f"data:{params.data.source}", f"arch:{params.model.arch}"]
    if method:
        tags += [f"method:{method}", prune_target_tag(method, params)]
    with contextlib.suppress(Exception):
        from prefect.client.orchestration import get_client

        run_id = uuid.UUID(flow_run_id)
        with get_client(sync_client=True) as client:
            current = client.read_flow_run(run_id).tags
            client.update_flow_run(run_id, tags=sorted({*current, *tags}))


PROJECT_TAG = "project:ice-pipeline"


def prefect_run_url(flow_run_id: str) -> str:
    """The flow run's page in the Prefect UI (its current UI, under ``/v2``; "" without an API)."""
    ui = os.environ.get("PREFECT_API_URL", "").removesuffix("/").removesuffix("/api")
    return f"{ui}/v2/runs/flow-run/{flow_run_id}" if ui and flow_run_id else ""


def prune_target_tag(method: str, params: Params) -> str:
    """What a method prunes to, as a tag: a ratio of filters, or a sparsity of masked weights."""
    sp = spec(method)
    if sp.stepwise or sp.filters or params.schedule.granularity == "filter":
        return f"ratio:{params.prune.ratio:g}"
    return f"sparsity:{params.schedule.target:g}"


def pipeline_key(pfile: Path, overrides: dict[str, Any] | None, commit: str, root: Path) -> str:
    """What names one pipeline run in MLflow: ``$ICE_PIPELINE_KEY`` (the pipeline flow hands
    its own to the workers it starts), else a hash of the params file's bytes, the overrides,
    the git commit and the project's directory. Every stage of one ``dvc repro`` or one
    ``python -m flows.pipeline`` computes the same key; a change of params or code starts a
    new pipeline run, and a rerun of the same ones joins the run it repeats."""
    if os.environ.get("ICE_PIPELINE_KEY"):
        return os.environ["ICE_PIPELINE_KEY"]
    h = hashlib.sha256(pfile.read_bytes())
    for part in (json.dumps(overrides or {}, sort_keys=True), commit, str(root.resolve())):
        h.update(b"\0" + part.encode())
    return h.hexdigest()[:16]


def _pipeline_name(params: Params) -> str:
    return f"pipeline-{params.model.arch}-{params.data.source}"


def _parent_tags(tags: dict[str, str]) -> dict[str, str]:
    keep = ("git.commit", "ice.host", "mlflow.user", "mlflow.source.type", "mlflow.source.git.commit")
    return {k: tags[k] for k in keep} | {"mlflow.source.name": "dvc repro / python -m flows.pipeline"}


@contextmanager
def pipeline_run(st: Stage, overrides: dict[str, Any] | None) -> Iterator[str]:
    """The pipeline flow's own MLflow run, the parent of every stage's run, held open (and
    tagged with this process) while the stages run; yields its key, which travels to the
    workers in ``$ICE_PIPELINE_KEY``."""
    tracker = Tracker(st.root, st.params.tracking.experiment, st.params.tracking.tracking_uri)
    commit = git_commit(st.root)
    key = pipeline_key(st.params_file, overrides, commit, st.root)
    tags = {
        "git.commit": commit,
        "ice.host": socket.gethostname(),
        "mlflow.user": _user(),
        "mlflow.source.type": "LOCAL",
        "mlflow.source.git.commit": commit,
        "prefect.flow_run_id": _flow_run_id(),
    }
    rid = tracker.pipeline_run(
        key, _pipeline_name(st.params), _parent_tags(tags), st.params.model_dump(mode="json"), own=True
    )
    tracker.set_tags(rid, {"mlflow.source.name": "python -m flows.pipeline", "prefect.flow_run_id": _flow_run_id()})
    before = os.environ.get("ICE_PIPELINE_KEY")
    os.environ["ICE_PIPELINE_KEY"] = key
    status = "FAILED"
    try:
        yield key
        status = "FINISHED"
    except (KeyboardInterrupt, SystemExit):
        status = "KILLED"
        raise
    finally:
        if before is None:
            os.environ.pop("ICE_PIPELINE_KEY", None)
        else:
            os.environ["ICE_PIPELINE_KEY"] = before
        with contextlib.suppress(Exception):
            tracker.release(rid, status)


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
    parent: str | None = None
    if track:
        stage.tracker = Tracker(r, params.tracking.experiment, params.tracking.tracking_uri)
        commit = git_commit(r)
        flow_run_id = _flow_run_id()
        key = pipeline_key(pfile, overrides, commit, r)
        tags = {
            "prefect.flow_run_id": flow_run_id,
            "git.commit": commit,
            "dvc.stage": os.environ.get("DVC_STAGE", ""),
            "ice.stage": name,
            "ice.host": socket.gethostname(),
            "ice.pid": str(os.getpid()),
            PIPELINE_TAG: key,
            # MLflow's own tags: the UI's User, Source and Version columns and the run's description
            "mlflow.user": _user(),
            "mlflow.source.name": f"python -m flows.{name}",
            "mlflow.source.type": "LOCAL",
            "mlflow.source.git.commit": commit,
            "mlflow.note.content": _note(name, method, params, pfile, r),
        }
        url = prefect_run_url(flow_run_id)
        if url:  # the tag for the API; the description's link for a person (MLflow truncates tags)
            tags["prefect.flow_run_url"] = url
            tags["mlflow.note.content"] += f"\n\nPrefect flow run: [{flow_run_id}]({url})"
        if method:
            tags["method"] = method
        run_name = f"{name}-{method}" if method else name
        stage.tracker.end_stale_runs(name, method)
        logged = params.model_dump(mode="json")
        parent = stage.tracker.pipeline_run(key, _pipeline_name(params), _parent_tags(tags), logged)
        stage.info["pipeline_run_id"] = parent
        logged |= {"method": method} if method else {}
        stage.run_id = stage.tracker.start_run(run_name, tags, logged, parent=parent)
    _tag_flow_run(_flow_run_id(), name, method, params)
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
                if parent is not None and not stage.tracker.owned_elsewhere(parent):
                    stage.tracker.end_run(parent, status)  # dvc repro: the pipeline run ends as its last stage did
            except Exception:
                if status == "FINISHED":
                    raise
