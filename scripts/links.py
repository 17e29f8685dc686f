"""Where to look: the MLflow runs table of this project's experiment, and the Prefect UI.

    python -m scripts.links [--params params.yaml] [--root DIR]

The link opens MLflow 3's runs table (``#/experiments/<id>/runs?workflowType=machine_learning``);
the bare experiment link opens its GenAI overview, which is empty for this project.
"""

from __future__ import annotations

import argparse
import sys

from ice.config import ParamsError
from plumbing.log import prog
from plumbing.tracking import project_links


def main() -> None:
    ap = argparse.ArgumentParser(prog=prog("python -m scripts.links"), description=__doc__.split("\n\n")[0])
    ap.add_argument("--params", default="params.yaml")
    ap.add_argument("--root", default=None)
    args = ap.parse_args()
    try:
        found = project_links(args.params, args.root)
    except ParamsError as err:
        print(f"error: {err}", file=sys.stderr)
        sys.exit(2)
    runs = found.get("mlflow_runs")
    local = not found["mlflow_store"].startswith("http")
    print(
        f"MLflow runs table: {runs or '(no runs yet)'}"
        + ("   (start the UI with `make mlflow-ui`)" if local and runs else "")
    )
    if found.get("mlflow_comparison"):
        print(
            f"Which recipe won:  {found['mlflow_comparison']}   (every pipeline run, one column per method and figure)"
        )
    print(
        f"Prefect UI:        {found['prefect_ui'] or '`make up`, then http://127.0.0.1:4200 (flows report there once PREFECT_API_URL is exported)'}"
    )


if __name__ == "__main__":
    main()
