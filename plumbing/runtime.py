"""What every flow does first, and the helpers flows share.

:func:`open_stage` resolves the project root, validates the params file (a bad value
fails here, before any compute, with the one-line ``ParamsError``), checks that the
MLflow store answers, and opens the flow's parent MLflow run, tagged with the Prefect
flow-run id, the method, the git commit and the DVC stage. The returned :class:`Stage`
carries the paths, params, tracker and store a flow needs.
"""

from __future__ import annotations

import contextlib
import logging
import os
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ice.config import Params, load_params
from ice.files import sha256_file
from ice.methods.registry import DEVICE_KEYS
from plumbing.paths import Paths, make_ref, project_root
from plumbing.pipeline_run import parent_tags, pipeline_key, pipeline_name, source_tags
from plumbing.prefect_views import crash_dead_runs, flow_run_id, prefect_run_url, tag_flow_run
from plumbing.records import publish, verify_input
from plumbing.shard_store import share_prepared
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
    "open_stage",
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
        if path == self.paths.prepared:  # a sharded dataset's shards travel with its manifest
            share_prepared(self.paths, self.store_url)
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


def require(paths: Paths, path: Path, stage: str) -> dict[str, str]:
    """A reference to an upstream output, verified against the sha256 its stage recorded,
    or a one-line error naming the stage to run."""
    if not path.exists():
        raise FileNotFoundError(f"{paths.rel(path)} is missing; run the {stage} stage first (python -m flows.{stage})")
    return verify_input(paths, path, stage)


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
        key = pipeline_key(pfile, overrides, commit, r)
        tags = source_tags(commit) | {
            "dvc.stage": os.environ.get("DVC_STAGE", ""),
            "ice.stage": name,
            "ice.pid": str(os.getpid()),
            PIPELINE_TAG: key,
            # MLflow's Source column and the run's description
            "mlflow.source.name": f"python -m flows.{name}",
            "mlflow.note.content": _note(name, method, params, pfile, r),
        }
        run_id_prefect = tags["prefect.flow_run_id"]
        url = prefect_run_url(run_id_prefect)
        if url:  # the tag for the API; the description's link for a person (MLflow truncates tags)
            tags["prefect.flow_run_url"] = url
            tags["mlflow.note.content"] += f"\n\nPrefect flow run: [{run_id_prefect}]({url})"
        if method:
            tags["method"] = method
        run_name = f"{name}-{method}" if method else name
        stage.tracker.end_stale_runs(name, method)
        logged = params.model_dump(mode="json")
        parent = stage.tracker.pipeline_run(
            key, pipeline_name(params), parent_tags(tags, "dvc repro / python -m flows.pipeline"), logged
        )
        stage.info["pipeline_run_id"] = parent
        logged |= {"method": method} if method else {}
        stage.run_id = stage.tracker.start_run(run_name, tags, logged, parent=parent)
    crash_dead_runs()  # what a killed run left Running (MLflow's side: end_stale_runs above)
    tag_flow_run(flow_run_id(), name, method, params)
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
