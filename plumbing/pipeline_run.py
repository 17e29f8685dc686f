"""One MLflow run per pipeline run, the parent of every stage's run.

Every stage, whether ``python -m flows.pipeline`` runs them in one process or ``dvc repro``
one process each, computes the same :func:`pipeline_key` and nests its run under the run
that carries it (:meth:`plumbing.tracking.Tracker.pipeline_run`).
"""

from __future__ import annotations

import contextlib
import getpass
import hashlib
import json
import os
import socket
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from ice.config import Params
from plumbing.prefect_views import flow_run_id
from plumbing.tracking import Tracker, git_commit

__all__ = ["pipeline_key", "pipeline_name", "source_tags", "parent_tags", "pipeline_run"]


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


def pipeline_name(params: Params) -> str:
    return f"pipeline-{params.model.arch}-{params.data.source}"


def _user() -> str:
    try:
        return getpass.getuser()
    except (KeyError, OSError):
        return "unknown"


def source_tags(commit: str) -> dict[str, str]:
    """The tags every run of this project carries: the commit, the host, the Prefect flow
    run, and MLflow's own User, Source type and Version columns."""
    return {
        "git.commit": commit,
        "ice.host": socket.gethostname(),
        "prefect.flow_run_id": flow_run_id(),
        "mlflow.user": _user(),
        "mlflow.source.type": "LOCAL",
        "mlflow.source.git.commit": commit,
    }


def parent_tags(tags: dict[str, str], source: str) -> dict[str, str]:
    """A pipeline run's tags, from a run's :func:`source_tags` (the flow run it was created in
    is not the pipeline's, so it is left out)."""
    keep = ("git.commit", "ice.host", "mlflow.user", "mlflow.source.type", "mlflow.source.git.commit")
    return {k: tags[k] for k in keep} | {"mlflow.source.name": source}


@contextmanager
def pipeline_run(root: Path, params: Params, params_file: Path, overrides: dict[str, Any] | None) -> Iterator[str]:
    """The pipeline flow's own MLflow run, the parent of every stage's run, held open (and
    tagged with this process) while the stages run; yields its key, which travels to the
    workers in ``$ICE_PIPELINE_KEY``."""
    tracker = Tracker(root, params.tracking.experiment, params.tracking.tracking_uri)
    commit = git_commit(root)
    key = pipeline_key(params_file, overrides, commit, root)
    tags = source_tags(commit)
    rid = tracker.pipeline_run(
        key,
        pipeline_name(params),
        parent_tags(tags, "python -m flows.pipeline"),
        params.model_dump(mode="json"),
        own=True,
    )
    # a rerun joins the run it repeats: it is now this flow run's and this entry point's
    tracker.set_tags(
        rid, {"mlflow.source.name": "python -m flows.pipeline", "prefect.flow_run_id": tags["prefect.flow_run_id"]}
    )
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
