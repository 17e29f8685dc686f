"""autotune: pick ICE's hyperparameters on small subsets, one task per trial.

    python -m flows.autotune --params params.yaml     ->  models/autotune.json

Trials are submitted to the task runner that ``scale`` names, ``ice.autotune.workers`` at
a time: Prefect's thread pool, or Dask (a local cluster, or an existing scheduler), where
each trial reads its inputs from the content store and writes nothing a later trial needs
to a local disk. Each trial gets its own MLflow child
run under the flow's parent run. The search's cost is the sum of the trials' compute
seconds (cached with each trial), so a rerun served from the cache reports the same
cost; the search's wall time is reported separately (the MLflow
metric ``search_wall_seconds`` and the last progress line), and kept out of the DVC out, which
stays the same bytes for the same params. When ``ice`` is not among the methods,
or auto-tuning is off, the file records the hyperparameters from params.yaml instead.
"""

from __future__ import annotations

import time
from typing import TYPE_CHECKING, Any

from prefect import flow

from ice.config import SEARCHED_ICE_KEYS
from ice.methods.registry import method_inputs, without
from plumbing.caching import bind
from plumbing.cli import cli
from plumbing.log import progress
from plumbing.prefect_views import publish_artifact
from plumbing.records import write_csv, write_json
from plumbing.runtime import open_stage, task_runner
from tasks.autotune import autotune_setup, autotune_trial

if TYPE_CHECKING:
    from ice.methods.autotune import TrialResult


def _result(future: Any) -> Any:
    """A trial's result, waited for in half-second slices, so that SIGTERM or Ctrl-C reach the
    main thread at once, and then tell the running trials to stop after their current step
    (the task runner waits for its threads before the flow can end)."""
    from plumbing.log import STOP

    try:
        while not future.wrapped_future.done():
            future.wait(0.5)
    except BaseException:  # SIGTERM (Prefect's own handler), Ctrl-C: running trials end after their step
        STOP.set()
        raise
    return future.result()


class _TrialTasks:
    """Trials as cached tasks, a batch in flight at once, each with its child MLflow run."""

    def __init__(self, st: Any, trial: Any, inputs: tuple[Any, ...], names: list[str], runner: Any) -> None:
        self.st, self.trial, self.inputs, self.names, self.runner = st, trial, inputs, names, runner
        self.children: dict[int, str] = {}

    def run_batch(self, batch: list[tuple[int, dict[str, float]]], bound: float | None) -> list[TrialResult]:
        from ice.methods.autotune import trial_of

        tracker = self.st.tracker
        root, data_ref, model_ref, task_cfg, freeze_scores = self.inputs
        for i, hp in batch:  # a trial's child run opens when the trial starts, so its duration is real
            self.children[i] = tracker.start_run(
                f"trial-{i + 1}", {"ice.stage": "autotune-trial"}, hp, parent=self.st.run_id
            )
        futures = [
            self.trial.submit(root, data_ref, model_ref, hp, i, task_cfg, freeze_scores, bound, runner=self.runner)
            for i, hp in batch
        ]
        out: list[TrialResult] = []
        for f in futures:
            row = _result(f)
            child = self.children[row["trial"]]
            tracker.log_metrics(child, {k: v for k, v in row.items() if k not in self.names and k != "trial"})
            tracker.end_run(child)
            out.append(trial_of(row, self.names))
        return out


def _off(st: Any) -> dict[str, Any]:
    """No search: the file records the hyperparameters from params.yaml."""
    from ice.methods.ice import ice_hparams

    out = {"enabled": False, "hp": ice_hparams(st.params), "search_seconds": 0.0, "search_work": 0.0, "trials": []}
    write_json(st.paths.autotune, out)
    progress("[autotune] off (disabled, or ice is not among prune.methods): hyperparameters from params")
    return out


def _record(st: Any, found: Any, wall: float, best_child: str) -> dict[str, Any]:
    """The DVC out, the trials table, the MLflow metrics and the Prefect artifact of one search."""
    from ice.methods.ice import ice_hparams

    best, rows = found.best, found.table
    st.tracker.set_tags(best_child, {"best": "true"})
    out = {
        "enabled": True,
        "hp": ice_hparams(st.params, best.hp),
        "search_seconds": found.seconds,
        "search_work": found.work,
        "objective": st.params.ice.autotune.objective,
        "best_trial": best.number,
        "trials": rows,
    }
    write_json(st.paths.autotune, out)
    table = st.paths.root / ".ice-cache" / "autotune-trials.csv"
    write_csv(table, rows)
    st.tracker.log_artifacts(st.run_id, [table])
    st.tracker.log_metrics(
        st.run_id,
        # trials are numbered from 1 wherever a person reads them (child runs, task runs, lines)
        {
            "search_seconds": found.seconds,
            "search_wall_seconds": wall,
            "search_work_gmacs": found.work,
            "best_trial": best.number + 1,
        },
    )
    publish_artifact(
        "table",
        "autotune-trials",
        [{k: round(v, 4) if isinstance(v, float) else v for k, v in r.items()} for r in rows],
        f"ICE's search: one row per trial, the best marked; MLflow run: {st.tracker.run_url(st.run_id)}",
    )
    # numbered from 1, as the trial lines
    progress(
        f"[autotune] best: trial {best.number + 1}/{len(rows)}, {best.hp} "
        f"(search {found.seconds:.1f}s of compute in {wall:.1f}s wall, {found.work:,.0f} GMACs)"
    )
    return out


@flow(name="autotune", flow_run_name="autotune-{params_path}")
def autotune(
    params_path: str = "params.yaml", root: str | None = None, overrides: dict[str, Any] | None = None
) -> dict[str, Any]:
    from ice.config import parse_params
    from ice.methods.autotune import run_search, sample_trials, trial_line
    from ice.methods.ice import ice_hparams

    with open_stage("autotune", params_path, root, overrides) as st:
        cfg = st.params.ice.autotune
        if not cfg.enabled or "ice" not in st.params.prune.methods:
            return _off(st)
        data_ref = st.require(st.paths.prepared, "prepare")
        model_ref = st.require(st.paths.pretrained, "pretrain")
        if ice_hparams(st.params) != ice_hparams(parse_params({})):
            progress(
                "[autotune] note: the search chooses thre, fr and lr; ice.thre, ice.fr and ice.lr.* in params "
                "are used only with ice.autotune.enabled: false"
            )
        points = sample_trials(st.params)
        task_cfg = without(method_inputs(st.params, "ice"), "ice", *SEARCHED_ICE_KEYS)  # each trial has its own
        setup = bind(autotune_setup, st.root, st.store_url)(str(st.root), data_ref, model_ref, task_cfg)
        progress(f"[autotune] shared freeze trial: {setup['seconds']:.1f}s, {setup['work']:.0f} GMACs")
        assert st.tracker is not None and st.run_id is not None
        trial = bind(autotune_trial, st.root, st.store_url)
        inputs = (str(st.root), data_ref, model_ref, task_cfg, setup["freeze_scores"])
        t0 = time.perf_counter()
        with task_runner(st.params, threads=cfg.workers) as runner:  # threads, or Dask (scale.runner)
            tasks = _TrialTasks(st, trial, inputs, list(points[0]), runner)
            found = run_search(
                tasks,
                st.params,
                points,
                setup,
                workers=cfg.workers,
                on_trial=lambda r, row: progress(trial_line(row, len(points))),
            )
        wall = setup["seconds"] + time.perf_counter() - t0  # the shared freeze trial ran before, alone
        return _record(st, found, wall, tasks.children[found.best.number])


if __name__ == "__main__":
    cli("autotune", "Auto-tune ICE's hyperparameters.", lambda a, o: autotune(a.params, a.root, o))
