"""What the Prefect UI shows of a flow run: artifacts, progress bars and tags.

A view only: a Prefect API that does not answer never fails a flow.
"""

from __future__ import annotations

import contextlib
import logging
import os
import socket
import uuid
from collections.abc import Callable
from typing import Any

from ice.config import Params
from ice.methods.registry import spec

__all__ = [
    "PROJECT_TAG",
    "flow_run_id",
    "publish_artifact",
    "update_progress",
    "tag_flow_run",
    "prefect_run_url",
    "prune_target_tag",
    "crash_dead_runs",
]

PROJECT_TAG = "project:ice-pipeline"


def flow_run_id() -> str:
    try:
        from prefect.runtime import flow_run

        return str(flow_run.id or "")
    except Exception:
        return ""


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


def tag_flow_run(flow_run_id: str, name: str, method: str | None, params: Params) -> None:
    """Tags on the Prefect flow run, for the UI's filters: the project, stage, data, arch and,
    for a prune run, the method and what it prunes to (``ratio:`` of each unit's filters, or
    ``sparsity:`` of the weights masked for a weight-granularity schedule).

    A view only: a Prefect API that does not answer never fails the flow."""
    if not flow_run_id:
        return
    tags = [PROJECT_TAG, f"stage:{name}", f"data:{params.data.source}", f"arch:{params.model.arch}"]
    tags += [f"host:{socket.gethostname()}", f"pid:{os.getpid()}"]  # what crash_dead_runs reads
    if method:
        tags += [f"method:{method}", prune_target_tag(method, params)]
    with contextlib.suppress(Exception):
        from prefect.client.orchestration import get_client

        run_id = uuid.UUID(flow_run_id)
        with get_client(sync_client=True) as client:
            current = client.read_flow_run(run_id).tags
            client.update_flow_run(run_id, tags=sorted({*current, *tags}))


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


def crash_dead_runs() -> list[str]:
    """Mark as Crashed the flow runs of this project left Running by a process on this host
    that is gone (a pipeline killed with SIGKILL cannot report its end), with their Running
    and Pending task runs; one progress line says how many. Returns the flow-run names.

    Each run carries ``host:`` and ``pid:`` tags (:func:`tag_flow_run`); a run whose process
    still lives, this one included, is left alone. A view only: an API that does not answer
    changes nothing and fails nothing."""
    if not os.environ.get("PREFECT_API_URL"):
        return []  # an ephemeral server of our own: no other process's runs live in it
    host = socket.gethostname()
    done: list[str] = []
    with contextlib.suppress(Exception):
        from prefect.client.orchestration import get_client
        from prefect.client.schemas.filters import (
            FlowRunFilter,
            FlowRunFilterState,
            FlowRunFilterStateType,
            FlowRunFilterTags,
            TaskRunFilter,
            TaskRunFilterFlowRunId,
            TaskRunFilterState,
            TaskRunFilterStateType,
        )
        from prefect.client.schemas.objects import StateType
        from prefect.states import Crashed

        from plumbing.tracking import pid_alive  # the one liveness check (MLflow's stale runs use it too)

        live = [StateType.RUNNING, StateType.PENDING]
        with get_client(sync_client=True) as client:
            runs = client.read_flow_runs(
                flow_run_filter=FlowRunFilter(
                    state=FlowRunFilterState(type=FlowRunFilterStateType(any_=[StateType.RUNNING])),
                    tags=FlowRunFilterTags(all_=[PROJECT_TAG, f"host:{host}"]),
                ),
                limit=200,
            )
            for run in runs:
                pids = [int(t[4:]) for t in run.tags if t.startswith("pid:") and t[4:].isdigit()]
                if not pids or any(pid_alive(p) for p in pids):
                    continue
                msg = f"its process (pid {pids[0]} on {host}) is gone; marked by the next run"
                client.set_flow_run_state(run.id, Crashed(message=msg), force=True)
                tasks = client.read_task_runs(
                    task_run_filter=TaskRunFilter(
                        flow_run_id=TaskRunFilterFlowRunId(any_=[run.id]),
                        state=TaskRunFilterState(type=TaskRunFilterStateType(any_=live)),
                    )
                )
                for t in tasks:
                    client.set_task_run_state(t.id, Crashed(message=msg), force=True)
                done.append(run.name)
    if done:
        from plumbing.log import progress

        progress(f"Prefect: {len(done)} flow run(s) left Running by a killed process marked Crashed: {', '.join(done)}")
    return done
