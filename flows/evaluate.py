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
from plumbing.log import progress
from plumbing.records import read_json, write_csv, write_json
from plumbing.runtime import Stage, open_stage, prune_target_tag, publish_artifact
from plumbing.tracking import registered_name
from tasks.evaluate import evaluate_model

__all__ = ["compare_header", "evaluate"]


def _budget(st: Stage) -> str:
    """The budget both step-wise methods share, in one line."""
    pr = st.params.prune
    tune = st.params.ice.autotune
    search = (
        f"{tune.n_trials} trials on {tune.subset:.0%} of the data"
        if tune.enabled
        else "off (hyperparameters from params)"
    )
    evals = f"{pr.eval_images} validation images" if pr.eval_images else "the whole validation split"
    t = pr.target
    recovery = (
        f" Then every step-wise method (prune_once too) recovers: CE + KD at batch {pr.batch_size}, a fresh SGD each "
        f"{t.check_every:g}-epoch chunk, lr a cosine with warm restarts peaking at {t.lr:g} (first cycle "
        f"{t.cycle_epochs:g} epoch, each next x{t.cycle_mult:g}), the whole validation split checked after each "
        f"chunk, until within {t.tolerance:g} point(s) of the unpruned model or {t.max_epochs:g} epochs."
        if t.tolerance is not None
        else ""
    )
    return (
        f"ICE and iterative: each fine-tune {pr.finetune_epochs:g} epoch(s) of the training split at batch "
        f"{pr.batch_size}{', with KD (T=' + format(pr.kd_temperature, 'g') + ')' if pr.kd else ''}; per-step "
        f"evaluations on {evals}; ICE's search {search}.{recovery}"
    )


def _schedule_line(st: Stage) -> str:
    sc = st.params.schedule
    policy = sc.lr_policy.replace("_", "-")
    if sc.init == "scratch":
        return (
            f"Training-time methods: from scratch (a fresh model, seeded as pre-training's), {sc.epochs:g} epochs "
            f"at peak lr {sc.lr:g} ({policy} policy), batch {st.params.train.batch_size}; no pre-training and no "
            "fine-tuning, so their training cost is their whole training."
        )
    return (
        f"Training-time methods: from the pre-trained model, {sc.epochs:g} epochs at lr {sc.lr:g} ({policy} "
        "policy); their training cost includes pre-training."
    )


def _figures(st: Stage, steps: list[dict[str, Any]], pre: dict[str, Any]) -> list[Path]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    st.paths.figures.mkdir(parents=True, exist_ok=True)
    out = []
    for key, label, fname in (
        ("acc", "validation accuracy (%)", "accuracy.png"),
        ("params", "parameters", "params.png"),
    ):
        fig, ax = plt.subplots(figsize=(6, 4), dpi=100)
        for method in dict.fromkeys(r["method"] for r in steps):
            pts = [(r["step"], r[key]) for r in steps if r["method"] == method]
            ax.plot([p[0] for p in pts], [p[1] for p in pts], marker="o", ms=3, label=method)
        ax.axhline(pre["val_acc"] if key == "acc" else pre["params"], color="grey", ls=":", lw=1, label="pretrained")
        ax.set_xlabel("step (epoch for training-time methods)")
        ax.set_ylabel(label)
        ax.legend(fontsize=8)
        ax.grid(alpha=0.3)
        fig.tight_layout()
        out.append(_save(fig, st.paths.figures / fname))
    return out


def _save(fig: Any, path: Path) -> Path:
    import matplotlib.pyplot as plt

    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp.png")
    fig.savefig(tmp, metadata={"Software": None})
    plt.close(fig)
    tmp.replace(path)
    return path


def _scatter(st: Stage, rows: list[dict[str, Any]], pre: dict[str, Any]) -> Path:
    """Test accuracy against training work, one point per method: up and to the left wins."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4), dpi=100)
    for r in rows:
        x = r.get("training_work_gmacs") if r.get("training_work_gmacs") is not None else r.get("work_gmacs")
        if x is None:
            continue
        lo, hi = r["test_acc_ci95"]
        ax.errorbar([x], [r["test_acc"]], yerr=[[r["test_acc"] - lo], [hi - r["test_acc"]]], fmt="o", capsize=3)
        ax.annotate(r["method"], (x, r["test_acc"]), textcoords="offset points", xytext=(5, 5), fontsize=8)
    ax.axhline(pre["test_acc"], color="grey", ls=":", lw=1, label="pretrained")
    ax.set_xlabel("training work (GMACs: pre-training + pruning, or the whole training)")
    ax.set_ylabel("test accuracy (%), 95% interval")
    ax.legend(fontsize=8)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    return _save(fig, st.paths.figures / "accuracy_vs_work.png")


def compare_header(
    st: Stage,
    groups: dict[str, list[dict[str, Any]]],
    pre: dict[str, Any],
    pre_report: dict[str, Any],
    pre_cost: tuple[float, float] | None,
) -> list[str]:
    """The top of compare.md: what is compared, at which budget, and how cost is counted."""
    p = st.params
    names = {g: ", ".join(r["method"] for r in rs) for g, rs in groups.items()}
    pre_line = (
        f"pre-training ({pre_report.get('epochs')} epochs) cost {pre_cost[0]:,.1f} s and {pre_cost[1]:,.0f} GMACs"
        if pre_cost is not None
        else f"pre-training's cost is not known ({pre_report.get('source', 'imported')}), so the training cost of the "
        "methods that start from it is left out"
    )
    lines = [
        f"# Method comparison: {p.model.arch} on {p.data.source}",
        "",
        "Budgets (a ranking never mixes granularities):",
        "",
    ]
    if groups[STRUCTURED]:
        lines.append(
            f"- **Structured** ({names[STRUCTURED]}): {p.prune.ratio:.0%} of each prunable unit's filters removed, "
            "for real (the filter-granularity schedules and prune_while_training cut `prune.ratio`, as ICE's steps do)."
        )
    if groups[UNSTRUCTURED]:
        lines.append(
            f"- **Unstructured** ({names[UNSTRUCTURED]}): {p.schedule.target:.0%} of the conv and linear weights "
            f"masked to zero ({p.schedule.scope}); the masked weights are still multiplied, so MACs stay dense."
        )
    lines += [
        "",
        f"Cost: training seconds and training work (billions of multiply-accumulates: forward and backward of every "
        f"training image, every evaluation, ICE's freeze trial and search) of everything each model went through. For "
        f"ICE, iterative and any method started from the pre-trained model that is pre-training plus pruning; "
        f"{pre_line}. Pruning seconds and work are the pruning alone. Sparsity is the share of the dense model's "
        f"{pre['params']:,} parameters removed or zero.",
        "",
        _budget(st),
        "",
        _schedule_line(st),
        "",
        f"Pre-trained model: test {pre['test_acc']:.2f}%, val {pre['val_acc']:.2f}%, {pre['params']:,} params, "
        f"{pre['macs']:,} MACs.",
    ]
    return lines


@flow(name="evaluate", flow_run_name="evaluate-{params_path}")
def evaluate(
    params_path: str = "params.yaml", root: str | None = None, overrides: dict[str, Any] | None = None
) -> dict[str, Any]:
    with open_stage("evaluate", params_path, root, overrides) as st:
        data_ref = st.require(st.paths.prepared, "prepare")
        pre_ref = st.require(st.paths.pretrained, "pretrain")
        cfg = st.device_cfg("seed", "evaluate")
        ev = bind(evaluate_model, st.root, st.store_url)
        pre = ev.named("evaluate-model-pretrained")(str(st.root), data_ref, pre_ref, cfg)
        pre_report = read_json(st.paths.pretrain_report)
        # what pre-training cost: part of every method that starts from the pre-trained model
        pre_cost = (
            (float(pre_report["seconds"]), float(pre_report["work_gmacs"]))
            if pre_report.get("work_gmacs") is not None
            else None
        )
        rows: list[dict[str, Any]] = []
        steps: list[dict[str, Any]] = []
        last_step: dict[str, int] = {}
        for method in st.params.prune.methods:
            ref = st.require(st.paths.pruned(method), f"prune --method {method}")
            report = read_json(st.paths.prune_report(method))
            m = ev.named(f"evaluate-model-{method}")(str(st.root), data_ref, ref, cfg)
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
        figs = [_scatter(st, rows, pre), *_figures(st, steps, pre)]
        groups = {g: [r for r in rows if r["group"] == g] for g in (STRUCTURED, UNSTRUCTURED)}
        header = compare_header(st, groups, pre, pre_report, pre_cost)
        tables: list[str] = []
        tol = st.params.prune.target.tolerance
        if tol is not None and any("target_reached" in r for r in rows):
            goal = next(r["target_goal"] for r in rows if "target_goal" in r)
            tables += [
                f"## Cost to target: within {tol:g} point(s) of the unpruned model on the whole validation split "
                f"({goal:.2f}%), ranked by cost",
                "",
                "Cost to target: everything each recipe spent until its first check at or above the target "
                "(search, freeze trial, steps, fine-tunes, evaluations, the recovery and its checks). Each check's "
                "accuracy has a 95% bootstrap interval over the images checked; the noise range runs from the first "
                "check whose interval reaches the target (the earliest the recipe may truly have been there) to the "
                "check that met it. Two recipes whose ranges overlap are a tie.",
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
            report = read_json(st.paths.prune_report(r["method"]))
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
            "\n".join([*md[: -len(images) - 1], _links(st, rows, view)]),
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


def _links(st: Stage, rows: list[dict[str, Any]], view: str) -> str:
    """Where to look in MLflow: the comparison view, and each method's run."""
    assert st.tracker is not None
    lines = ["## In MLflow", ""]
    if view:
        lines.append(f"- [every pipeline run, one column per method and figure]({view})")
    for r in rows:
        run_id = read_json(st.paths.prune_report(r["method"])).get("mlflow_run_id")
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
