"""The evaluate stage's parts, one concern each: a method's row from its measurement and prune
report, its accuracy points from its step table, the speedups against the baseline, compare.md
rendered from the rows, and the results published to MLflow, the registry and Prefect.

``flows/evaluate.py`` reads as the recipe over these: measure, rows, speedups, files, figures,
page, publish. All but ``publish`` are pure functions of their arguments."""

from __future__ import annotations

import csv
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ice.config import Params
from ice.methods import STEPWISE
from ice.methods.registry import BASELINE
from ice.metrics import bootstrap_interval
from plumbing.compare import (
    STRUCTURED,
    UNSTRUCTURED,
    budget_check,
    budget_table,
    comparison_metrics,
    final_metrics,
    group_of,
    target_row,
    target_table,
    verdict,
)
from plumbing.compare_page import TARGET_INTRO, compare_header
from plumbing.prefect_views import prune_target_tag, publish_artifact
from plumbing.registry import registered_name
from plumbing.runtime import Stage

__all__ = [
    "Page",
    "pretrain_cost",
    "method_row",
    "step_points",
    "add_speedups",
    "render",
    "publish",
]

Cost = tuple[float, float]  # (seconds, GMACs)


def pretrain_cost(pre_report: dict[str, Any]) -> Cost | None:
    """What pre-training cost, part of every method that starts from the pre-trained model;
    None where the pretrain report predates work counting."""
    if pre_report.get("work_gmacs") is None:
        return None
    return float(pre_report["seconds"]), float(pre_report["work_gmacs"])


def method_row(
    method: str, m: dict[str, Any], report: dict[str, Any], pre: dict[str, Any], pre_cost: Cost | None
) -> dict[str, Any]:
    """One method's row: its measured model ``m``, what its prune report says it cost, and the
    training cost from the start (pre-training included where it starts from the pre-trained model)."""
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
    return row


def step_points(method: str, steps_csv: Path) -> tuple[list[dict[str, Any]], int]:
    """A method's (step, accuracy, non-zero params) points, from the steps where it measured the
    accuracy, and its last step (0 for a table without rows)."""
    points: list[dict[str, Any]] = []
    last = 0
    with open(steps_csv) as f:
        for r in csv.DictReader(f):
            last = max(last, int(r["step"]))
            if r.get("acc_finetuned") in (None, ""):  # not measured at this step
                continue
            points.append(
                {
                    "method": method,
                    "step": int(r["step"]),
                    "acc": float(r["acc_finetuned"]),
                    "params": int(float(r["params"])),  # non-zero params, for every method
                }
            )
    return points, last


def add_speedups(rows: list[dict[str, Any]]) -> None:
    """Each row's pruning cost against the baseline's, in seconds and in work, for the methods
    that prune the pre-trained model; None for the others, or without a baseline row."""
    base = next((r for r in rows if r["method"] == BASELINE), None)
    for r in rows:
        r["speedup_vs_iterative"] = r["work_speedup_vs_iterative"] = None
        if base is None or r["init"] != "pretrained":
            continue
        if r["total_seconds"] > 0:
            r["speedup_vs_iterative"] = base["total_seconds"] / r["total_seconds"]
        if base.get("work_gmacs") and r.get("work_gmacs"):
            r["work_speedup_vs_iterative"] = base["work_gmacs"] / r["work_gmacs"]


@dataclass(frozen=True)
class Page:
    """compare.md, in the parts that its readers reuse."""

    winner: str  # the one-paragraph verdict
    tables: list[str]  # the ranked tables' lines
    images: list[str]  # markdown image links, relative to compare.md
    lines: list[str]  # the whole page, line by line

    @property
    def text(self) -> str:
        return "\n".join(self.lines)

    @property
    def without_images(self) -> list[str]:
        """The page's lines before its images: for viewers that serve the figures elsewhere."""
        return self.lines[: -len(self.images) - 1]


def render(
    params: Params,
    rows: list[dict[str, Any]],
    pre: dict[str, Any],
    pre_report: dict[str, Any],
    pre_cost: Cost | None,
    figs: list[Path],
) -> Page:
    """compare.md: the verdict, the header, cost to target (where a tolerance is set), each budget
    group ranked by test accuracy, then the figures."""
    groups = {g: [r for r in rows if r["group"] == g] for g in (STRUCTURED, UNSTRUCTURED)}
    header = compare_header(params, groups, pre, pre_report, pre_cost)
    tables: list[str] = []
    tol = params.prune.target.tolerance
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
        (STRUCTURED, f"Structured: {params.prune.ratio:.0%} of each unit's filters removed"),
        (UNSTRUCTURED, f"Unstructured: {params.schedule.target:.0%} of the weights masked"),
    ):
        if not groups[g]:
            continue
        tables += [f"## {title}, ranked by test accuracy", "", budget_check(groups[g], g == STRUCTURED), ""]
        tables += [budget_table(groups[g], g == STRUCTURED), ""]
    winner = verdict(rows, tol)
    images = [f"![{p.stem}](figures/{p.name})" for p in figs]  # relative: beside reports/compare.md
    return Page(winner, tables, images, [header[0], "", winner, *header[1:], "", *tables, *images, ""])


def publish(
    st: Stage,
    rows: list[dict[str, Any]],
    reports: dict[str, dict[str, Any]],
    last_step: dict[str, int],
    page: Page,
    figs: list[Path],
) -> str:
    """The results where users look, in this order: each prune run's final figures (so MLflow's
    "compare runs" is the comparison), the registry's version tags, this run's metrics and
    artifacts, the pipeline run's columns and note, and Prefect's comparison artifact. Returns
    the link to MLflow's comparison view ("" without a pipeline run)."""
    assert st.tracker is not None and st.run_id is not None
    # at the method's last step, so a name the steps also log (e.g. macs) keeps one value per step
    registered = registered_name(st.params.model.arch, st.params.data.source)
    for r in rows:
        report = reports[r["method"]]
        if report.get("mlflow_run_id"):
            st.tracker.log_metrics(report["mlflow_run_id"], final_metrics(r), step=last_step.get(r["method"], 0))
        if st.params.tracking.register_models:  # the registry shows what each pruned version is worth
            st.tracker.tag_version(registered, report["sha256"], _version_tags(st.params, r))
    st.tracker.log_metrics(st.run_id, comparison_metrics(rows))
    st.tracker.log_artifacts(st.run_id, [st.paths.metrics, st.paths.compare])
    st.tracker.log_artifacts(st.run_id, figs, "figures")  # where compare.md's image links point
    view = _publish_on_pipeline_run(st, rows, page, figs)
    publish_artifact(
        "markdown",
        "comparison",
        "\n".join([*page.without_images, _links(st, rows, reports, view)]),
        "every method against the pretrained model: compare.md's tables",
    )
    return view


def _version_tags(params: Params, r: dict[str, Any]) -> dict[str, str]:
    tags = {
        "method": r["method"],
        "test_acc_pct": f"{r['test_acc']:.2f}",
        "val_acc_pct": f"{r['val_acc']:.2f}",
        "params": str(r["params_nonzero"]),
        "macs": str(r["macs"]),
        "sparsity_pct": f"{100 * r['sparsity']:.1f}",
    }
    what, value = prune_target_tag(r["method"], params).split(":")
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


def _publish_on_pipeline_run(st: Stage, rows: list[dict[str, Any]], page: Page, figs: list[Path]) -> str:
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
    note = "\n".join([*page.without_images, *served, ""])
    st.tracker.set_tags(parent, {"mlflow.note.content": note[:60000]})
    columns = [
        f"{r['method']}.{name}"
        for r in rows
        for name in (("cost_to_target_gmacs",) if r.get("target_reached") else ()) + ("test_acc_pct", "work_gmacs")
    ]
    return st.tracker.comparison_url(columns)
