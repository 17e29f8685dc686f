"""prune: one method from the pretrained checkpoint, one Prefect task per step.

    python -m flows.prune --method ice --params params.yaml
        ->  models/pruned-ice.pt, reports/steps/ice.csv, reports/prune/ice.json

For ``ice`` and ``iterative`` each step is a chain of cached tasks: prune-step,
evaluate-step, decide-finetune, then finetune and evaluate-step when the decision says
so. Every task is keyed by its input checkpoint's sha256 and its own config, so a run
killed at step k and started again reuses steps 0..k-1 from the cache and ends with a
byte-identical checkpoint. The training-time methods (one_shot, agp, one_cycle,
prune_while_training) are one task each, reporting every epoch.

A method's total seconds are compute seconds: the steps' prune, evaluation and
fine-tune time, ICE's freeze trial and, for ICE, the auto-tuner's search.
"""

from __future__ import annotations

import time
from typing import Any

from prefect import flow

from flows._runtime import Stage, cli, open_stage, publish_artifact, require, update_progress
from ice.config import SEARCHED_ICE_KEYS
from tasks.common import progress, publish, read_json, resolve, write_csv, write_json
from tasks.steps import (
    bind,
    decide_finetune,
    evaluate_checkpoint,
    finetune_checkpoint,
    prune_one_step,
    run_view,
    start_pruning,
    train_with_schedule,
)
from tasks.tracking import registered_name

STEP_METRICS = ("acc_pruned", "acc_finetuned", "params", "macs", "lr", "frozen", "finetuned", "t_prune", "t_eval", "t_finetune",
                "work_eval", "work_finetune")


def _stepwise(st: Stage, method: str, data_ref: dict[str, str], pre_ref: dict[str, str]) -> dict[str, Any]:
    from ice.methods.core import (
        add_search,
        eval_after_finetune,
        needs_decision_eval,
        record_step,
        run_cost,
        step_line,
    )

    root = str(st.root)
    # the baseline reads no ICE key: leaving the section out of its tasks' config keeps its
    # cache valid when only ICE's settings change
    cfg = st.device_cfg("seed", "prune", *(["ice"] if method == "ice" else []))
    hp = None
    search = {"seconds": 0.0, "work": 0.0}
    if method == "ice":
        require(st.paths, st.paths.autotune, "autotune")
        tuned = read_json(st.paths.autotune)
        hp, search = tuned["hp"], {"seconds": float(tuned["search_seconds"]), "work": float(tuned.get("search_work", 0.0))}
        cfg["ice"].pop("autotune")  # its result comes in as hp
        if tuned.get("enabled"):  # the search chose these; params' own values would only spoil the cache keys
            for key in SEARCHED_ICE_KEYS:
                cfg["ice"].pop(key, None)
    state = bind(start_pruning, st.root)(root, data_ref, pre_ref, method, hp, cfg)
    run = run_view(state)
    prune_t, eval_t, decide_t, ft_t = (bind(t, st.root) for t in (prune_one_step, evaluate_checkpoint, decide_finetune, finetune_checkpoint))
    n = len(state["plan"])
    if state["frozen"]:
        progress(f"[{method}] freeze trial: {len(state['frozen'])} convs frozen")
    ref_acc = f", reference accuracy {state['acc_original']:.2f}%" if state["acc_original"] is not None else ""
    progress(f"[{method}] {n} steps at ratio {st.params.prune.ratio}{ref_acc}")
    ref = pre_ref
    steps: list[dict[str, Any]] = []
    bar = publish_artifact("progress", f"prune-{method.replace('_', '-')}-progress", 0.0, f"{method}: steps done")
    t0 = time.perf_counter()
    for k in range(n):
        pruned = prune_t(root, data_ref, ref, run, k, cfg)
        ref = pruned["ref"]
        pruned.update(acc_pruned=None, t_eval=0.0, work_eval=0.0)
        if needs_decision_eval(state):
            ev = eval_t(root, data_ref, ref, cfg)
            pruned.update(acc_pruned=ev["acc"], t_eval=ev["seconds"], work_eval=ev["work"])
        ft = None
        if decide_t(run, state["acc_original"], state["acc_previous"], pruned["acc_pruned"], cfg):
            tuned_ckpt = ft_t(root, data_ref, ref, pre_ref, run, k, pruned["lr"], cfg)
            ref = tuned_ckpt["ref"]
            ft = {"acc": None, "seconds": tuned_ckpt["seconds"], "work": tuned_ckpt["work"], "t_eval": 0.0, "work_eval": 0.0}
            if eval_after_finetune(state, st.params):
                ev2 = eval_t(root, data_ref, ref, cfg)
                ft.update(acc=ev2["acc"], t_eval=ev2["seconds"], work_eval=ev2["work"])
        rec = record_step(state, pruned, ft, pruned["lr"], pruned["frozen"])
        steps.append(rec)
        if st.tracker is not None and st.run_id is not None:
            st.tracker.log_metrics(st.run_id, {m: rec[m] for m in STEP_METRICS}, step=k)
        elapsed = time.perf_counter() - t0
        eta = f", about {elapsed / (k + 1) * (n - k - 1) / 60:.0f} min left" if k + 1 < n and elapsed > 60 else ""
        progress(step_line(method, k, n, rec) + f"  [{elapsed / 60:.1f} min{eta}]")
        update_progress(bar, 100.0 * (k + 1) / n)
    cost = add_search(run_cost(state, steps), search["seconds"], search["work"])
    return {"ref": ref, "steps": steps, "seconds": cost["seconds"], "work_gmacs": cost["work_gmacs"], "cost": cost,
            "search_seconds": search["seconds"], "finetunes": sum(1 for r in steps if r["finetuned"]), "hp": state["hp"],
            "frozen": state["frozen"], "acc_original": state["acc_original"]}


def _training(st: Stage, method: str, data_ref: dict[str, str], pre_ref: dict[str, str]) -> dict[str, Any]:
    out = bind(train_with_schedule, st.root)(str(st.root), data_ref, pre_ref, method, st.device_cfg("seed", "prune", "schedule"))
    if st.tracker is not None and st.run_id is not None:
        for rec in out["steps"]:
            st.tracker.log_metrics(st.run_id, {k: v for k, v in rec.items() if k != "step"}, step=rec["step"])
    return {"ref": out["ref"], "steps": out["steps"], "seconds": out["seconds"], "work_gmacs": out["info"].get("work_gmacs"),
            "search_seconds": 0.0, "finetunes": 0, "info": out["info"]}


def _rounded(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [{k: round(v, 4) if isinstance(v, float) else v for k, v in r.items()} for r in rows]


def _run_name() -> str:
    from prefect.runtime import flow_run

    return f"prune-{flow_run.parameters.get('method', 'method')}"


@flow(name="prune", flow_run_name=_run_name)
def prune(method: str, params_path: str = "params.yaml", root: str | None = None, overrides: dict[str, Any] | None = None) -> dict[str, Any]:
    from ice.methods import METHODS

    if method not in METHODS:
        raise ValueError(f"method = {method!r} is not allowed; allowed: {', '.join(METHODS)}")
    with open_stage("prune", params_path, root, overrides, method=method) as st:
        data_ref = require(st.paths, st.paths.prepared, "prepare")
        pre_ref = require(st.paths, st.paths.pretrained, "pretrain")
        out = _stepwise(st, method, data_ref, pre_ref) if method in ("ice", "iterative") else _training(st, method, data_ref, pre_ref)
        final = resolve(st.paths, out["ref"])
        publish(final, st.paths.pruned(method), out["ref"]["sha256"])
        write_csv(st.paths.steps_csv(method), [{"method": method, **r} for r in out["steps"]])
        report = {k: v for k, v in out.items() if k not in ("ref", "steps")} | {"method": method, "sha256": out["ref"]["sha256"],
                                                                                "mlflow_run_id": st.run_id}
        write_json(st.paths.prune_report(method), report)
        assert st.tracker is not None and st.run_id is not None
        st.tracker.log_metrics(st.run_id, {"total_seconds": out["seconds"], "work_gmacs": out.get("work_gmacs"),
                                           "finetunes": out["finetunes"], "search_seconds": out["search_seconds"]})
        st.tracker.log_artifacts(st.run_id, [st.paths.steps_csv(method), st.paths.prune_report(method)])
        if st.params.tracking.register_models:
            name = registered_name(st.params.model.arch, st.params.data.source)
            version = st.tracker.log_model(st.run_id, st.paths.pruned(method), name, method, f"pruned with {method}",
                                           {"method": method})
            report["registered"] = f"{name} v{version} (alias {method})"
        work = f", {out['work_gmacs']:,.0f} GMACs" if out.get("work_gmacs") is not None else ""
        link = st.tracker.run_url(st.run_id)
        publish_artifact("table", f"prune-{method.replace('_', '-')}-steps", _rounded(out["steps"]),
                         f"{method}: one row per step; MLflow run: {link}")
        progress(f"[{method}] done: {out['finetunes']} fine-tunes, {out['seconds']:.1f}s{work} -> {st.paths.rel(st.paths.pruned(method))}")
        return report


if __name__ == "__main__":
    def _extra(ap: Any) -> None:
        from ice.methods import METHODS

        ap.add_argument("--method", required=True, choices=METHODS, help="the pruning method")

    cli("prune", "Prune the pretrained model with one method.", lambda a, o: prune(a.method, a.params, a.root, o), _extra)
