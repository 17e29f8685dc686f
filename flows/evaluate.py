"""evaluate: every pruned model side by side with the pretrained one.

    python -m flows.evaluate --params params.yaml
        ->  reports/metrics.json, reports/compare.md, reports/plots/steps.csv, reports/figures/*.png

``metrics.json`` holds, per method, the final validation and test accuracy, params,
MACs, total seconds, fine-tunes and the speedup against ``iterative``. Accuracy,
params, MACs and fine-tunes are the same on every CPU run with the same params; the
seconds are measured.
"""

from __future__ import annotations

import csv
from pathlib import Path
from typing import Any

from prefect import flow

from ice.files import atomic_write_bytes as _write
from ice.methods import STEPWISE
from ice.methods.registry import BASELINE
from ice.metrics import bootstrap_interval
from plumbing.caching import bind
from plumbing.cli import cli
from plumbing.compare import (
    STRUCTURED,
    UNSTRUCTURED,
    budget_check,
    budget_table,
    comparison_metrics,
    final_metrics,
    group_of,
    round_floats,
    target_row,
    target_table,
    verdict,
)
from plumbing.compare_page import TARGET_INTRO, compare_header, figures, scatter
from plumbing.log import progress
from plumbing.prefect_views import prune_target_tag, publish_artifact
from plumbing.records import read_json, write_csv, write_json
from plumbing.registry import registered_name
from plumbing.runtime import Stage, open_stage
from tasks.evaluate import measure_model

__all__ = ["evaluate"]


@flow(name="evaluate", flow_run_name="evaluate-{params_path}")
def evaluate(
    params_path: str = "params.yaml", root: str | None = None, overrides: dict[str, Any] | None = None
) -> dict[str, Any]:
    with open_stage("evaluate", params_path, root, overrides) as st:
        data_ref = st.require(st.paths.prepared, "prepare")
        pre_ref = st.require(st.paths.pretrained, "pretrain")
        cfg = st.device_cfg("seed", "evaluate")
        ev = bind(measure_model, st.root, st.store_url)
        pre = ev.named("measure-model-pretrained")(str(st.root), data_ref, pre_ref, cfg)
        pre_report = read_json(st.paths.pretrain_report)
        # what pre-training cost: part of every method that starts from the pre-trained model
        pre_cost = (
            (float(pre_report["seconds"]), float(pre_report["work_gmacs"]))
            if pre_report.get("work_gmacs") is not None
            else None
        )
        rows: list[dict[str, Any]] = []
        reports: dict[str, dict[str, Any]] = {}  # each method's prune report, read once
        steps: list[dict[str, Any]] = []
        last_step: dict[str, int] = {}
        for method in st.params.prune.methods:
            ref = st.require(st.paths.pruned(method), f"prune --method {method}")
            report = reports[method] = read_json(st.paths.prune_report(method))
            m = ev.named(f"measure-model-{method}")(str(st.root), data_ref, ref, cfg)
            info = report.get("info") or {}
            from_pretrained = method in STEPWISE or info.get("init") == "pretrained"
            row = {
                "method": method,
                **m,
                "group": group_of(method, report),
                "init": "pretrained" if from_pretrained else "scratch",
                # the share of the pre-trained (dense) model's parameters removed or zero: one meaning for all
                "sparsity": 1 - m["params_nonzero"] / pre["params"],
                "total_seconds": report["seconds"],
                "work_gmacs": report.get("work_gmacs"),
                "search_seconds": report.get("search_seconds", 0.0),
                "finetunes": report["finetunes"],
                "test_acc_ci95": list(bootstrap_interval(m["test_acc"], m["test_images"])),
                "val_acc_ci95": list(bootstrap_interval(m["val_acc"], m["val_images"])),
            }
            if report.get("target"):
                row.update(target_row(report["target"], report.get("recovery") or []))
            if not from_pretrained:
                row["training_seconds"], row["training_work_gmacs"] = row["total_seconds"], row["work_gmacs"]
            elif pre_cost is not None and row["work_gmacs"] is not None:
                row["training_seconds"] = pre_cost[0] + row["total_seconds"]
                row["training_work_gmacs"] = pre_cost[1] + row["work_gmacs"]
            rows.append(row)
            with open(st.paths.steps_csv(method)) as f:
                for r in csv.DictReader(f):
                    last_step[method] = max(last_step.get(method, 0), int(r["step"]))
                    if r.get("acc_finetuned") in (None, ""):  # not measured at this step
                        continue
                    steps.append(
                        {
                            "method": method,
                            "step": int(r["step"]),
                            "acc": float(r["acc_finetuned"]),
                            "params": int(float(r["params"])),  # non-zero params, for every method
                        }
                    )
            progress(
                f"[evaluate] {method}: test {m['test_acc']:.2f}%, {m['params_nonzero']:,} non-zero params, "
                f"{report['seconds']:.1f}s"
            )
        base = next((r for r in rows if r["method"] == BASELINE), None)
        for r in rows:  # pruning cost against the baseline's, for the methods that prune the pre-trained model
            r["speedup_vs_iterative"] = r["work_speedup_vs_iterative"] = None
            if base is None or r["init"] != "pretrained":
                continue
            if r["total_seconds"] > 0:
                r["speedup_vs_iterative"] = base["total_seconds"] / r["total_seconds"]
            if base.get("work_gmacs") and r.get("work_gmacs"):
                r["work_speedup_vs_iterative"] = base["work_gmacs"] / r["work_gmacs"]
        metrics = round_floats(
            {"pretrained": pre, "methods": {r["method"]: {k: v for k, v in r.items() if k != "method"} for r in rows}}
        )
        write_json(st.paths.metrics, metrics)
        write_csv(st.paths.plots_steps, steps)
        figs = [scatter(st.paths.figures, rows, pre), *figures(st.paths.figures, steps, pre)]
        groups = {g: [r for r in rows if r["group"] == g] for g in (STRUCTURED, UNSTRUCTURED)}
        header = compare_header(st.params, groups, pre, pre_report, pre_cost)
        tables: list[str] = []
        tol = st.params.prune.target.tolerance
        if tol is not None and any("target_reached" in r for r in rows):
            goal = next(r["target_goal"] for r in rows if "target_goal" in r)
            tables += [
                f"## Cost to target: within {tol:g} point(s) of the unpruned model on the whole validation split "
                f"({goal:.2f}%), ranked by cost",
                "",
                TARGET_INTRO,
                "",
                target_table(rows, tol),
                "",
            ]
        for g, title in (
            (STRUCTURED, f"Structured: {st.params.prune.ratio:.0%} of each unit's filters removed"),
            (UNSTRUCTURED, f"Unstructured: {st.params.schedule.target:.0%} of the weights masked"),
        ):
            if not groups[g]:
                continue
            tables += [f"## {title}, ranked by test accuracy", "", budget_check(groups[g], g == STRUCTURED), ""]
            tables += [budget_table(groups[g], g == STRUCTURED), ""]
        winner = verdict(rows, tol)
        images = [f"![{p.stem}](figures/{p.name})" for p in figs]  # relative: beside reports/compare.md
        md = [header[0], "", winner, *header[1:], "", *tables, *images, ""]
        _write(st.paths.compare, "\n".join(md).encode())
        assert st.tracker is not None and st.run_id is not None
        # each prune run carries its method's final figures under the same names, so the MLflow
        # UI's "compare runs" is the comparison; this run keeps the table as an artifact
        # (at the method's last step, so a name the steps also log, e.g. macs, keeps one value per step)
        registered = registered_name(st.params.model.arch, st.params.data.source)
        for r in rows:
            report = reports[r["method"]]
            if report.get("mlflow_run_id"):
                st.tracker.log_metrics(report["mlflow_run_id"], final_metrics(r), step=last_step.get(r["method"], 0))
            if st.params.tracking.register_models:  # the registry shows what each pruned version is worth
                st.tracker.tag_version(registered, report["sha256"], _version_tags(st, r))
        st.tracker.log_metrics(st.run_id, comparison_metrics(rows))
        st.tracker.log_artifacts(st.run_id, [st.paths.metrics, st.paths.compare])
        st.tracker.log_artifacts(st.run_id, figs, "figures")  # where compare.md's image links point
        view = _publish_comparison(st, rows, md, images, figs)
        publish_artifact(
            "markdown",
            "comparison",
            "\n".join([*md[: -len(images) - 1], _links(st, rows, reports, view)]),
            "every method against the pretrained model: compare.md's tables",
        )
        progress(f"[evaluate] {st.paths.rel(st.paths.compare)}:\n{winner}\n\n" + "\n".join(tables))
        if view:
            progress(f"[evaluate] the results, one column per method and figure: {view}")
        return metrics


def _version_tags(st: Stage, r: dict[str, Any]) -> dict[str, str]:
    tags = {
        "method": r["method"],
        "test_acc_pct": f"{r['test_acc']:.2f}",
        "val_acc_pct": f"{r['val_acc']:.2f}",
        "params": str(r["params_nonzero"]),
        "macs": str(r["macs"]),
        "sparsity_pct": f"{100 * r['sparsity']:.1f}",
    }
    what, value = prune_target_tag(r["method"], st.params).split(":")
    return tags | {what: value}


def _links(st: Stage, rows: list[dict[str, Any]], reports: dict[str, dict[str, Any]], view: str) -> str:
    """Where to look in MLflow: the comparison view, and each method's run."""
    assert st.tracker is not None
    lines = ["## In MLflow", ""]
    if view:
        lines.append(f"- [every pipeline run, one column per method and figure]({view})")
    for r in rows:
        run_id = reports[r["method"]].get("mlflow_run_id")
        if run_id:
            lines.append(f"- [{r['method']}: its steps, curves and model]({st.tracker.run_url(run_id)})")
    return "\n".join(lines) + "\n"


def _publish_comparison(
    st: Stage, rows: list[dict[str, Any]], md: list[str], images: list[str], figs: list[Path]
) -> str:
    """The comparison on the pipeline run (the parent of every stage's run): one metric per
    method and figure, logged once; compare.md and its figures as artifacts; and compare.md
    as the run's description, its images served by the MLflow server. Returns the link to
    the runs table showing those metrics as columns ("" without a pipeline run)."""
    assert st.tracker is not None
    parent = st.info.get("pipeline_run_id")
    if not parent:
        return ""
    st.tracker.log_metrics(parent, comparison_metrics(rows))
    st.tracker.log_artifacts(parent, [st.paths.metrics, st.paths.compare])
    st.tracker.log_artifacts(parent, figs, "figures")
    served = [
        f"![{p.stem}](get-artifact?path=figures%2F{p.name}&run_uuid={parent})" for p in figs
    ]  # relative to the UI's address, as the UI's own image previews are
    note = "\n".join([*md[: -len(images) - 1], *served, ""])
    st.tracker.set_tags(parent, {"mlflow.note.content": note[:60000]})
    columns = [
        f"{r['method']}.{name}"
        for r in rows
        for name in (("cost_to_target_gmacs",) if r.get("target_reached") else ()) + ("test_acc_pct", "work_gmacs")
    ]
    return st.tracker.comparison_url(columns)


if __name__ == "__main__":
    cli("evaluate", "Compare the pruned models.", lambda a, o: evaluate(a.params, a.root, o))
