"""pipeline: prepare -> pretrain -> autotune -> prune (each method) -> evaluate, as subflows.

    python -m flows.pipeline --params params.yaml

This is what the work-pool deployments run (infra/prefect.yaml). Every step is cached,
so a second run with the same params only re-reads results. ``dvc repro`` runs the
same flows one stage at a time.

With ``scale.runner: dask`` the ``prune@method`` runs are independent tasks on Dask (a
local cluster, or the scheduler at ``scale.address``), and so are the auto-tune trials,
on the same cluster. A method's task needs no shared disk: it gets the prepared data,
the pretrained model and the auto-tune result from the content store, puts them into
its worker's project, runs the prune flow there, and hands its outputs back through the
store; this flow then collects them before it evaluates. On one machine the methods then
share its cores, so their compute seconds are inflated: compare methods from runs where
each task has a machine (or a GPU) to itself.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from prefect import flow, task

from flows.autotune import autotune
from flows.evaluate import evaluate
from flows.prepare import prepare
from flows.pretrain import pretrain
from flows.prune import prune
from ice.methods.registry import Method
from plumbing.cli import cli
from plumbing.log import progress
from plumbing.paths import Paths, project_root
from plumbing.pipeline_run import pipeline_run
from plumbing.runtime import Stage, materialize, open_stage, share, store_url, task_runner
from plumbing.stages import outputs


def _outputs(paths: Paths, method: str) -> list[Path]:
    """What a method's task hands back: prune@method's outputs."""
    return outputs("prune", paths, method)


def _inputs(paths: Paths) -> list[Path]:
    """What a method's task needs: the outputs of the stages prune@method reads, before it."""
    return [p for s in ("prepare", "pretrain", "autotune") for p in outputs(s, paths)]


@task(name="prune-method", task_run_name="prune@{method}")
def prune_method(
    method: str,
    params_path: str,
    root: str,
    overrides: dict[str, Any] | None,
    inputs: dict[str, dict[str, str]],
    pipeline_key: str = "",
) -> dict[str, Any]:
    """``prune@method`` on whichever worker runs it: inputs from the store, outputs back to it,
    its MLflow run nested under the pipeline's (``pipeline_key``)."""
    from flows.prune import prune as prune_flow
    from ice.config import load_params

    if pipeline_key:
        os.environ["ICE_PIPELINE_KEY"] = pipeline_key
    here = project_root(root if Path(root).is_dir() else None)  # this worker's own project
    paths = Paths(here)
    materialize(paths, inputs)
    report = prune_flow(method, params_path, str(here), overrides)  # type: ignore[call-overload]
    pfile = Path(params_path) if Path(params_path).is_absolute() else here / params_path
    url = store_url(load_params(pfile, overrides))
    return {"report": report, "files": {paths.rel(p): share(paths, url, p) for p in _outputs(paths, method)}}


@flow(name="pipeline", flow_run_name="pipeline-{params_path}")
def pipeline(
    params_path: str = "params.yaml", root: str | None = None, overrides: dict[str, Any] | None = None
) -> dict[str, Any]:
    with open_stage("pipeline", params_path, root, overrides, track=False) as st:  # validates before any compute
        methods = list(st.params.prune.methods)
        r = str(st.root)
    with pipeline_run(
        st.root, st.params, st.params_file, overrides
    ) as key:  # the MLflow run every stage's run nests under
        metrics = _stages(st, methods, params_path, r, overrides, key)
    progress(f"[pipeline] {len(methods)} methods compared -> {st.paths.rel(st.paths.compare)}")
    return metrics


def _stages(
    st: Stage, methods: list[Method], params_path: str, r: str, overrides: dict[str, Any] | None, key: str
) -> dict[str, Any]:
    prepare(params_path, r, overrides)
    pretrain(params_path, r, overrides)
    if st.params.scale.runner == "dask":
        with task_runner(st.params) as runner:  # one cluster: the trials and then the methods
            autotune(params_path, r, overrides)  # its runner finds this cluster's client and reuses it
            inputs = {st.paths.rel(p): st.share(p) for p in _inputs(st.paths) if p.exists()}
            futures = [
                runner.submit(
                    prune_method,
                    {
                        "method": m,
                        "params_path": params_path,
                        "root": r,
                        "overrides": overrides,
                        "inputs": inputs,
                        "pipeline_key": key,
                    },
                )
                for m in methods
            ]
            for f in futures:
                materialize(st.paths, f.result()["files"])  # the collecting flow reads them from the store
    else:
        autotune(params_path, r, overrides)
        for m in methods:
            prune(m, params_path, r, overrides)
    return evaluate(params_path, r, overrides)  # type: ignore[no-any-return]


if __name__ == "__main__":
    # the module's own copy, not __main__'s: Dask workers import prune_method by its name
    from flows import pipeline as _module

    cli("pipeline", "Run every stage in order.", lambda a, o: _module.pipeline(a.params, a.root, o))
