"""MLflow tracking: one parent run per flow run, per-step metrics, model versions.

The store is ``params.tracking.tracking_uri``, else ``$MLFLOW_TRACKING_URI``, else
``sqlite:///<root>/mlflow.db`` with artifacts under ``<root>/mlartifacts``: no server
needed. A remote server is checked before any compute and fails within seconds with
a one-line :class:`TrackingUnavailable` instead of MLflow's long retry loop.

Everything goes through :class:`mlflow.MlflowClient` with explicit run ids, so tasks
that run in worker threads (auto-tune trials) log to the right run. Only
:meth:`Tracker.log_model` (:mod:`plumbing.registry`) needs MLflow's fluent API, and it runs in the flow's thread.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import socket
import subprocess
import time
import urllib.error
import urllib.request
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

from plumbing.metric_names import flatten, metric_name, readable
from plumbing.outage import OUTAGE_SECONDS, restart_hint
from plumbing.registry import ModelRegistry

__all__ = [
    "Tracker",
    "TrackingUnavailable",
    "outage_line",
    "OUTAGE_SECONDS",
    "tracking_uri",
    "check_health",
    "check_reachable",
    "check_prefect_api",
    "git_commit",
    "project_links",
]

EXPERIMENT_KIND, TRAINING_KIND = "mlflow.experimentKind", "custom_model_development"
PIPELINE_TAG = "ice.pipeline"  # the key every run of one pipeline run carries (see Tracker.pipeline_run)
SHARED_VIEW = "mlflow.sharedViewState."  # an experiment tag holding a runs-table view the UI opens by key
COMPARISON_VIEW = "ice.comparison_view"  # the key of the newest comparison view


class TrackingUnavailable(RuntimeError):
    """The MLflow tracking server cannot be reached."""


_RETRIES = 6
# 62: the wait a call rides through, urllib3's backoff (factor 1) over the retries after the first;
# the same bound as every server client's (plumbing/outage.py)
assert sum(2 ** (k - 1) for k in range(2, _RETRIES + 1)) == OUTAGE_SECONDS


class _RetryLine:
    """urllib3's retry warnings, one per outage, as one line naming the server and the bound."""

    def __init__(self, uri: str) -> None:
        self.uri, self.last = uri, 0.0

    def filter(self, record: Any) -> bool:
        if "Retrying (" not in str(record.msg):
            return True
        now = time.monotonic()
        if now - self.last > OUTAGE_SECONDS + 30:
            from plumbing.log import progress

            progress(f"MLflow server at {self.uri} is not answering; retrying for up to {OUTAGE_SECONDS} s")
        self.last = now
        return False


def _announce_retries(uri: str) -> None:
    import logging

    log = logging.getLogger("urllib3.connectionpool")
    if not any(isinstance(f, _RetryLine) for f in log.filters):
        log.addFilter(_RetryLine(uri))


def outage_line(err: BaseException) -> str | None:
    """MLflow's "API request to <url> failed ... Max retries exceeded" as the project's one line:
    the server, how long it was waited for, and what to do; None for any other error."""
    import re

    text = str(err)
    if "Max retries exceeded" not in text and "failed with exception" not in text:
        return None
    m = re.search(r"(https?://[^/\s]+)", text)
    where = m.group(1) if m else "the tracking URI"
    return f"MLflow server at {where} did not answer for {OUTAGE_SECONDS} s; {restart_hint()}"


def tracking_uri(root: Path, configured: str | None = None) -> str:
    return configured or os.environ.get("MLFLOW_TRACKING_URI") or f"sqlite:///{root / 'mlflow.db'}"


def check_health(base: str, server: str, unset_hint: str, timeout: float = 5.0) -> None:
    """Fail fast, with one line, when a server does not answer ``<base>/health`` with 200:
    ``server`` names it, ``unset_hint`` says how to run without it."""
    try:
        with urllib.request.urlopen(base.rstrip("/") + "/health", timeout=timeout) as r:
            if r.status != 200:
                raise TrackingUnavailable(f"{server} at {base} answered {r.status} to /health")
    except (urllib.error.URLError, OSError) as err:
        reason = getattr(err, "reason", err)
        raise TrackingUnavailable(
            f"{server} at {base} cannot be reached ({reason}); start it (make up) or {unset_hint}"
        ) from None


def check_reachable(uri: str, timeout: float = 5.0) -> None:
    """An http(s) tracking server that does not answer fails in one line (a local store passes)."""
    if uri.startswith(("http://", "https://")):
        check_health(uri, "MLflow server", "unset MLFLOW_TRACKING_URI to use the local sqlite store", timeout)


def check_prefect_api(timeout: float = 5.0) -> None:
    """A Prefect API at ``$PREFECT_API_URL`` that does not answer fails in one line (without one,
    the flow starts its own temporary server)."""
    if url := os.environ.get("PREFECT_API_URL"):
        check_health(url, "Prefect API", "unset PREFECT_API_URL to run without a server", timeout)


def git_commit(root: Path) -> str:
    try:
        r = subprocess.run(["git", "rev-parse", "HEAD"], cwd=root, capture_output=True, text=True, timeout=10)
        return r.stdout.strip() if r.returncode == 0 else "unknown"
    except (OSError, subprocess.SubprocessError):
        return "unknown"


def pid_alive(pid: int) -> bool:
    """Whether a process with this pid lives on this host (one owned by another user counts)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


class Tracker(ModelRegistry):
    """A thin, explicit-run-id wrapper over :class:`mlflow.MlflowClient`."""

    def __init__(self, root: Path, experiment: str, uri: str | None = None) -> None:
        import mlflow
        from mlflow import MlflowClient

        self.root = root
        self.uri = tracking_uri(root, uri)
        check_reachable(self.uri)
        # the flows print their own links (the runs table, in its model-training view); MLflow's
        # "View experiment at" line opens the GenAI overview, which is empty for this project
        os.environ.setdefault("MLFLOW_SUPPRESS_PRINTING_URL_TO_STDOUT", "true")
        if self.uri.startswith("http"):
            # an outage of up to OUTAGE_SECONDS (a server restarted) costs a wait, not the run:
            # urllib3 sleeps 0, 2, 4, 8, 16, 32 s between the retries; longer fails in one line
            os.environ.setdefault("MLFLOW_HTTP_REQUEST_MAX_RETRIES", str(_RETRIES))
            os.environ.setdefault("MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR", "1")
            os.environ.setdefault("MLFLOW_HTTP_REQUEST_TIMEOUT", "30")
            _announce_retries(self.uri)
        mlflow.set_tracking_uri(self.uri)
        self.client = MlflowClient(self.uri)
        exp = self.client.get_experiment_by_name(experiment)
        if exp is None:
            location = None
            if not self.uri.startswith(("http://", "https://")):
                location = (root / "mlartifacts").as_uri()
            try:
                self.experiment_id = self.client.create_experiment(experiment, artifact_location=location)
            except Exception:  # created meanwhile by a parallel flow
                exp = self.client.get_experiment_by_name(experiment)
                if exp is None:
                    raise
                self.experiment_id = exp.experiment_id
        else:
            self.experiment_id = exp.experiment_id
        if exp is None or exp.tags.get(EXPERIMENT_KIND) != TRAINING_KIND:
            # MLflow 3 opens an experiment of unknown kind in its GenAI view (an empty
            # overview, runs shown as "evaluation runs"); this project trains models
            with contextlib.suppress(Exception):
                self.client.set_experiment_tag(self.experiment_id, EXPERIMENT_KIND, TRAINING_KIND)

    def ui_url(self) -> str:
        """The MLflow UI for this store: the server itself, or `make mlflow-ui`'s address for a local store."""
        return self.uri.rstrip("/") if self.uri.startswith(("http://", "https://")) else "http://127.0.0.1:5000"

    def runs_url(self) -> str:
        """The experiment's runs table (MLflow 3 opens the GenAI overview without the query)."""
        return f"{self.ui_url()}/#/experiments/{self.experiment_id}/runs?workflowType=machine_learning"

    def run_url(self, run_id: str) -> str:
        """A run's page, in the UI's "Model training" view (without the query MLflow 3 shows its GenAI sidebar)."""
        return f"{self.ui_url()}/#/experiments/{self.experiment_id}/runs/{run_id}?workflowType=machine_learning"

    def comparison_url(self, columns: Iterable[str]) -> str:
        """The runs table of this experiment's pipeline runs, one row per pipeline run, with
        ``columns`` (metric names) shown: a view the UI opens by key from an experiment tag
        (what its "Share" button writes), so the link shows the results without a click."""
        state = {
            "searchFilter": "tags.`ice.stage` = 'pipeline'",
            "orderByKey": "attributes.start_time",
            "orderByAsc": False,
            "selectedColumns": [f"metrics.`{c}`" for c in columns],
            "columnOrder": [f"metrics.`{c}`" for c in columns],
            "columnWidths": {f"metrics.`{c}`": 12 + 8 * len(c) for c in columns},  # the whole name shows
            "runsExpanded": {},
        }
        text = json.dumps(state, sort_keys=True)
        key = hashlib.sha256(text.encode()).hexdigest()
        self.client.set_experiment_tag(self.experiment_id, SHARED_VIEW + key, text)
        self.client.set_experiment_tag(self.experiment_id, COMPARISON_VIEW, key)  # the newest, for project_links
        return self.view_url(key)

    def view_url(self, key: str) -> str:
        return f"{self.ui_url()}/#/experiments/{self.experiment_id}/runs?viewStateShareKey={key}&workflowType=machine_learning"

    # ------------------------------------------------------------------ runs
    def pipeline_run(
        self,
        key: str,
        name: str,
        tags: Mapping[str, str],
        params: Mapping[str, Any] | None = None,
        *,
        own: bool = False,
    ) -> str:
        """The parent run of one pipeline run: found by its key (``ice.pipeline``), else created.

        Every stage of the pipeline, whether ``python -m flows.pipeline`` runs them in one
        process or ``dvc repro`` one process each, computes the same key and nests its run
        under this one. ``own``: the caller (the pipeline flow) holds the run open and
        closes it; otherwise each stage marks it RUNNING while it runs and ends it with its
        own status, unless a live pipeline flow on this host owns it."""
        flt = f"tags.`ice.stage` = 'pipeline' and tags.`{PIPELINE_TAG}` = '{key}'"
        found = self.client.search_runs([self.experiment_id], flt, max_results=1)
        if found:
            rid = found[0].info.run_id
            if found[0].info.status != "RUNNING":
                self.client.update_run(rid, status="RUNNING")
        else:
            rid = self._oldest(flt, self.start_run(name, {**tags, "ice.stage": "pipeline", PIPELINE_TAG: key}, params))
        if own:
            self.set_tags(rid, {"ice.owner_pid": str(os.getpid()), "ice.host": socket.gethostname()})
        return rid

    def _oldest(self, flt: str, mine: str) -> str:
        """Stages that start at once (flows on the workers of one pool) may each have found no parent
        and made one: every one of them keeps the oldest (by start time, then id) and deletes its
        own if it is not that one, so one pipeline run stays one parent run."""
        runs = self.client.search_runs([self.experiment_id], flt, max_results=50)
        if len(runs) <= 1:
            return mine
        oldest = min(runs, key=lambda r: (r.info.start_time, r.info.run_id)).info.run_id
        if oldest != mine:
            self.client.delete_run(mine)
        return oldest

    def owned_elsewhere(self, run_id: str) -> bool:
        """Whether a live pipeline flow (another process on this host, or this one) holds ``run_id``."""
        tags = self.client.get_run(run_id).data.tags
        pid = int(tags.get("ice.owner_pid", "0") or 0)
        return bool(pid) and tags.get("ice.host") == socket.gethostname() and pid_alive(pid)

    def release(self, run_id: str, status: str) -> None:
        """End a pipeline run the caller owned."""
        self.set_tags(run_id, {"ice.owner_pid": "0"})
        self.end_run(run_id, status)

    def start_run(
        self, name: str, tags: Mapping[str, str], params: Mapping[str, Any] | None = None, parent: str | None = None
    ) -> str:
        from mlflow.entities import Param

        all_tags = dict(tags)
        if parent:
            all_tags["mlflow.parentRunId"] = parent
        run = self.client.create_run(self.experiment_id, run_name=name, tags=all_tags)
        rid = run.info.run_id
        if params:
            items = [Param(k, str(v)[:6000]) for k, v in flatten(params).items()]
            for i in range(0, len(items), 100):
                self.client.log_batch(rid, params=items[i : i + 100])
        return rid

    def end_run(self, run_id: str, status: str = "FINISHED") -> None:
        """End a run as FINISHED, FAILED or KILLED."""
        self.client.set_terminated(run_id, status)

    def end_stale_runs(self, stage: str, method: str | None = None) -> list[str]:
        """Mark as KILLED the RUNNING runs of this stage (and method) whose process is gone.

        A flow killed with SIGKILL cannot close its run; the next run of the same stage on
        the same host finds it by its tags (stage, method, host, pid) and closes it.
        """
        flt = f"attributes.status = 'RUNNING' and tags.`ice.stage` = '{stage}' and tags.`ice.host` = '{socket.gethostname()}'"
        if method:
            flt += f" and tags.method = '{method}'"
        stale = []
        for run in self.client.search_runs([self.experiment_id], flt, max_results=200):
            pid = int(run.data.tags.get("ice.pid", "0") or 0)
            if pid and not pid_alive(pid):
                self.client.set_terminated(run.info.run_id, "KILLED")
                stale.append(run.info.run_id)
        if stale:
            self._fail_pending_models(stale)
        return stale

    def _fail_pending_models(self, run_ids: list[str]) -> None:
        """A model that a killed run was logging stays PENDING for ever: finalise it as FAILED."""
        ids = ", ".join(f"'{r}'" for r in run_ids)
        try:
            models = self.client.search_logged_models(
                [self.experiment_id], filter_string=f"source_run_id IN ({ids})", max_results=100
            )
        except Exception:  # an older server without logged models: nothing to finalise
            return
        for m in models:
            if str(getattr(m.status, "name", m.status)) == "PENDING":
                self.client.finalize_logged_model(m.model_id, "FAILED")

    def log_metrics(self, run_id: str, metrics: Mapping[str, Any], step: int | None = None) -> None:
        """Log under each metric's name with its unit (:func:`metric_name`)."""
        from mlflow.entities import Metric

        ts = int(time.time() * 1000)
        items = []
        for k, v in metrics.items():
            if isinstance(v, int | float | bool):
                name, factor = metric_name(k)
                items.append(Metric(name, readable(v * factor if factor != 1.0 else v), ts, step or 0))
        if items:
            self.client.log_batch(run_id, metrics=items)

    def log_artifacts(self, run_id: str, files: Iterable[Path], subdir: str | None = None) -> None:
        for f in files:
            if Path(f).exists():
                self.client.log_artifact(run_id, str(f), subdir)

    def log_dict(self, run_id: str, content: Mapping[str, Any], artifact_file: str) -> None:
        self.client.log_dict(run_id, dict(content), artifact_file)

    def set_tags(self, run_id: str, tags: Mapping[str, str]) -> None:
        for k, v in tags.items():
            self.client.set_tag(run_id, k, v)


def project_links(params_path: str = "params.yaml", root: str | None = None) -> dict[str, str]:
    """Where to look: the MLflow runs table of this project's experiment (MLflow 3's
    ``#/experiments/<id>/runs?workflowType=machine_learning``; the bare experiment link opens
    its GenAI overview, which is empty for this project), and the Prefect UI."""
    from mlflow import MlflowClient

    from ice.config import load_params
    from plumbing.paths import project_root

    r = project_root(root)
    params = load_params(r / params_path if not os.path.isabs(params_path) else params_path)
    uri = tracking_uri(r, params.tracking.tracking_uri)
    out = {"mlflow_store": uri}
    if uri.startswith("sqlite:///") and not os.path.exists(uri.removeprefix("sqlite:///")):
        return out  # nothing has run yet
    exp = MlflowClient(uri).get_experiment_by_name(params.tracking.experiment)
    if exp is not None:
        tracker = Tracker.__new__(Tracker)
        tracker.uri, tracker.experiment_id = uri, exp.experiment_id
        out["mlflow_runs"] = tracker.runs_url()
        if exp.tags.get(COMPARISON_VIEW):  # the pipeline runs, one column per method and figure
            out["mlflow_comparison"] = tracker.view_url(exp.tags[COMPARISON_VIEW])
    api = os.environ.get("PREFECT_API_URL", "")
    out["prefect_ui"] = api.removesuffix("/").removesuffix("/api") if api else ""
    return out
