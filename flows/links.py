"""Where to look: the MLflow runs table of this project's experiment, and the Prefect UI.

    python -m flows.links [--params params.yaml] [--root DIR]

The link opens MLflow 3's runs table (``#/experiments/<id>/runs?workflowType=machine_learning``);
the bare experiment link opens its GenAI overview, which is empty for this project.
"""

from __future__ import annotations

import argparse
import os
import sys

from ice.config import ParamsError, load_params
from tasks.common import project_root


def links(params_path: str = "params.yaml", root: str | None = None) -> dict[str, str]:
    from mlflow import MlflowClient

    from tasks.tracking import Tracker, tracking_uri

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
    api = os.environ.get("PREFECT_API_URL", "")
    out["prefect_ui"] = api.removesuffix("/").removesuffix("/api") if api else ""
    return out


def main() -> None:
    ap = argparse.ArgumentParser(prog="python -m flows.links", description=__doc__.split("\n\n")[0])
    ap.add_argument("--params", default="params.yaml")
    ap.add_argument("--root", default=None)
    args = ap.parse_args()
    try:
        found = links(args.params, args.root)
    except ParamsError as err:
        print(f"error: {err}", file=sys.stderr)
        sys.exit(2)
    runs = found.get("mlflow_runs")
    local = not found["mlflow_store"].startswith("http")
    print(
        f"MLflow runs table: {runs or '(no runs yet)'}"
        + ("   (start the UI with `make mlflow-ui`)" if local and runs else "")
    )
    print(
        f"Prefect UI:        {found['prefect_ui'] or '`make up`, then http://127.0.0.1:4200 (flows report there once PREFECT_API_URL is exported)'}"
    )


if __name__ == "__main__":
    main()
