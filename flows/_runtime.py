"""What every flow does first, and the command line they share.

:func:`open_stage` resolves the project root, validates the params file (a bad value
fails here, before any compute, with the one-line ``ParamsError``), checks that the
MLflow store answers, and opens the flow's parent MLflow run, tagged with the Prefect
flow-run id, the method, the git commit and the DVC stage.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from ice.config import Params, ParamsError, load_params
from tasks.common import Paths, make_ref, progress, project_root
from tasks.tracking import Tracker, TrackingUnavailable, git_commit
from tasks.weights import WeightsError

__all__ = ["Stage", "open_stage", "cli", "section", "require"]


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

    def cfg(self, *sections: str) -> dict[str, Any]:
        """The named sections of params, as plain data: a task's own config."""
        return section(self.params, *sections)


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
    """A reference to an upstream output, or a one-line error naming the stage to run."""
    if not path.exists():
        raise FileNotFoundError(f"{paths.rel(path)} is missing; run the {stage} stage first (python -m flows.{stage})")
    return make_ref(paths, path)


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
        tags = {
            "prefect.flow_run_id": _flow_run_id(),
            "git.commit": git_commit(r),
            "dvc.stage": os.environ.get("DVC_STAGE", ""),
            "ice.stage": name,
        }
        if method:
            tags["method"] = method
        run_name = f"{name}-{method}" if method else name
        stage.run_id = stage.tracker.start_run(run_name, tags, params.model_dump(mode="json"))
    ok = False
    try:
        yield stage
        ok = True
    finally:
        if stage.tracker is not None and stage.run_id is not None:
            try:
                stage.tracker.log_artifacts(stage.run_id, [pfile, r / "dvc.lock"], "config")
            finally:
                stage.tracker.end_run(stage.run_id, ok)


def cli(name: str, description: str, run: Callable[[argparse.Namespace, dict[str, Any]], Any], extra: Callable[[argparse.ArgumentParser], None] | None = None) -> None:
    """``python -m flows.<name>``: parse, validate params before Prefect starts, run, report."""
    ap = argparse.ArgumentParser(prog=f"python -m flows.{name}", description=description)
    ap.add_argument("--params", default="params.yaml", help="params file, relative to the project root")
    ap.add_argument("--root", default=None, help="project root (default: $ICE_PROJECT_DIR or the working directory)")
    ap.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="override a param, dotted (YAML value)")
    ap.add_argument("--refresh-cache", action="store_true", help="recompute every task instead of reusing cached results")
    ap.add_argument("--quiet", action="store_true", help="no progress lines")
    if extra is not None:
        extra(ap)
    args = ap.parse_args()
    overrides: dict[str, Any] = {}
    for item in args.set:
        key, sep, value = item.partition("=")
        if not sep:
            ap.error(f"--set {item!r}: expected KEY=VALUE")
        overrides[key] = yaml.safe_load(value)
    if args.quiet:
        os.environ["ICE_QUIET"] = "1"
    r = project_root(args.root)
    pfile = Path(args.params) if Path(args.params).is_absolute() else r / args.params
    try:
        load_params(pfile, overrides)  # fail before Prefect, torch or MLflow spend a second
    except ParamsError as err:
        print(f"error: {err}", file=sys.stderr)
        sys.exit(2)
    try:
        # prefect read its settings at import, so setting the environment variable here
        # would be too late: refresh through a settings context instead
        from prefect.settings import PREFECT_TASKS_REFRESH_CACHE, temporary_settings

        with temporary_settings(updates={PREFECT_TASKS_REFRESH_CACHE: True} if args.refresh_cache else None):
            run(args, overrides)
    except (ParamsError, TrackingUnavailable, FileNotFoundError, WeightsError) as err:
        print(f"error: {err}", file=sys.stderr)
        sys.exit(1)
    uri = os.environ.get("MLFLOW_TRACKING_URI") or f"sqlite:///{r / 'mlflow.db'}"
    prefect = os.environ.get("PREFECT_API_URL", "").removesuffix("/api") or "`make up` (http://127.0.0.1:4200)"
    progress(f"[{name}] done. Results under {r} (models/, reports/). MLflow UI: mlflow ui --backend-store-uri {uri} "
             f"(or `make mlflow-ui`); Prefect UI: {prefect}")
