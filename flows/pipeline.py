"""pipeline: prepare -> pretrain -> autotune -> prune (each method) -> evaluate, as subflows.

    python -m flows.pipeline --params params.yaml

This is what the work-pool deployments run (infra/prefect.yaml). Every step is cached,
so a second run with the same params only re-reads results. ``dvc repro`` runs the
same flows one stage at a time.
"""

from __future__ import annotations

from typing import Any

from prefect import flow

from flows._runtime import cli, open_stage
from flows.autotune import autotune
from flows.evaluate import evaluate
from flows.prepare import prepare
from flows.pretrain import pretrain
from flows.prune import prune
from tasks.common import progress


@flow(name="pipeline", flow_run_name="pipeline-{params_path}")
def pipeline(
    params_path: str = "params.yaml", root: str | None = None, overrides: dict[str, Any] | None = None
) -> dict[str, Any]:
    with open_stage("pipeline", params_path, root, overrides, track=False) as st:  # validates before any compute
        methods = list(st.params.prune.methods)
        r = str(st.root)
    prepare(params_path, r, overrides)
    pretrain(params_path, r, overrides)
    autotune(params_path, r, overrides)
    for m in methods:
        prune(m, params_path, r, overrides)
    metrics = evaluate(params_path, r, overrides)
    progress(f"[pipeline] {len(methods)} methods compared -> {st.paths.rel(st.paths.compare)}")
    return metrics


if __name__ == "__main__":
    cli("pipeline", "Run every stage in order.", lambda a, o: pipeline(a.params, a.root, o))
