"""autotune: pick ICE's hyperparameters on small subsets, one task per trial.

    python -m flows.autotune --params params.yaml     ->  models/autotune.json

Trials are submitted to a thread-pool task runner with ``ice.autotune.workers``
workers, so independent trials run side by side. Each trial gets its own MLflow child
run under the flow's parent run. The search's cost is the sum of the trials' compute
seconds (cached with each trial), so a rerun served from the cache reports the same
cost; wall time with parallel workers is lower. When ``ice`` is not among the methods,
or auto-tuning is off, the file records the hyperparameters from params.yaml instead.
"""

from __future__ import annotations

from typing import Any

from prefect import flow
from prefect.task_runners import ThreadPoolTaskRunner

from flows._runtime import cli, open_stage, require
from tasks.common import progress, write_csv, write_json
from tasks.steps import autotune_trial, bind


@flow(name="autotune", task_runner=ThreadPoolTaskRunner(max_workers=8))  # type: ignore[arg-type]
def autotune(params_path: str = "params.yaml", root: str | None = None, overrides: dict[str, Any] | None = None) -> dict[str, Any]:
    from ice.methods.autotune import TrialResult, sample_trials, select_best
    from ice.methods.ice import ice_hparams

    with open_stage("autotune", params_path, root, overrides) as st:
        cfg = st.params.ice.autotune
        if not cfg.enabled or "ice" not in st.params.prune.methods:
            out = {"enabled": False, "hp": ice_hparams(st.params), "search_seconds": 0.0, "trials": []}
            write_json(st.paths.autotune, out)
            progress("[autotune] off (disabled, or ice is not among prune.methods): hyperparameters from params")
            return out
        data_ref = require(st.paths, st.paths.prepared, "prepare")
        model_ref = require(st.paths, st.paths.pretrained, "pretrain")
        points = sample_trials(st.params)
        trial = bind(autotune_trial, st.root)
        task_cfg = st.cfg("seed", "train", "prune", "ice")
        rows: list[dict[str, Any]] = []
        for start in range(0, len(points), cfg.workers):  # at most `workers` trials in flight
            futures = [trial.submit(str(st.root), data_ref, model_ref, hp, i, task_cfg)
                       for i, hp in enumerate(points[start : start + cfg.workers], start)]
            for f in futures:
                row = f.result()
                rows.append(row)
                progress(f"[autotune] trial {row['trial'] + 1}/{len(points)}: {row['seconds']:.1f}s, "
                         f"drop {row['drop']:.2f} pts, {row['finetunes']} fine-tunes, objective {row['objective']:.3g}")
        results = [TrialResult(r["trial"], {k: r[k] for k in points[0]}, r["seconds"], r["acc_original"], r["acc_final"],
                               r["finetunes"], r["work_gmacs"]) for r in rows]
        best = select_best(results, cfg.objective, cfg.acc_tolerance, cfg.cost)
        for r in rows:
            r["best"] = r["trial"] == best.number
        assert st.tracker is not None and st.run_id is not None
        for r in rows:
            child = st.tracker.start_run(f"trial-{r['trial']}", {"ice.stage": "autotune-trial"}, {k: r[k] for k in points[0]}, parent=st.run_id)
            st.tracker.log_metrics(child, {k: v for k, v in r.items() if k not in points[0] and k != "trial"})
            st.tracker.end_run(child)
        search_seconds = sum(r["seconds"] for r in rows)
        out = {"enabled": True, "hp": ice_hparams(st.params, best.hp), "search_seconds": search_seconds,
               "objective": cfg.objective, "best_trial": best.number, "trials": rows}
        write_json(st.paths.autotune, out)
        table = st.paths.root / ".ice-cache" / "autotune-trials.csv"
        write_csv(table, rows)
        st.tracker.log_artifacts(st.run_id, [table])
        st.tracker.log_metrics(st.run_id, {"search_seconds": search_seconds, "best_trial": best.number})
        progress(f"[autotune] best trial {best.number}: {best.hp} (search {search_seconds:.1f}s)")
        return out


if __name__ == "__main__":
    cli("autotune", "Auto-tune ICE's hyperparameters.", lambda a, o: autotune(a.params, a.root, o))
