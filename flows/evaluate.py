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

from flows._runtime import Stage, cli, open_stage, publish_artifact
from ice.checkpoint import atomic_write_bytes as _write
from tasks.common import progress, read_json, write_csv, write_json
from tasks.steps import bind, evaluate_model


def _round(obj: Any, places: int = 4) -> Any:
    """Floats to ``places`` decimals (97.2222, not 97.22222222222223), recursively."""
    if isinstance(obj, float):
        return round(obj, places)
    if isinstance(obj, dict):
        return {k: _round(v, places) for k, v in obj.items()}
    if isinstance(obj, list):
        return [_round(v, places) for v in obj]
    return obj


def _fmt(v: Any, spec: str, suffix: str = "", none: str = "-") -> str:
    return none if v is None else format(v, spec) + suffix


def _table(rows: list[dict[str, Any]]) -> str:
    head = (
        "| method | seconds | work (GMACs) | search share | fine-tunes | val acc | test acc | params | MACs "
        "| speedup (seconds) | speedup (work) |"
    )
    lines = [head, "|" + "---|" * 11]
    for r in rows:
        share = r["search_seconds"] / r["total_seconds"] if r.get("search_seconds") and r["total_seconds"] else None
        lines.append(
            f"| {r['method']} | {r['total_seconds']:.1f} | {_fmt(r.get('work_gmacs'), ',.0f')} | {_fmt(share, '.1%')} "
            f"| {r['finetunes']} | {r['val_acc']:.2f} | {r['test_acc']:.2f} | {r['params_nonzero']:,} | {r['macs']:,} "
            f"| {_fmt(r.get('speedup_vs_iterative'), '.2f', 'x')} | {_fmt(r.get('work_speedup_vs_iterative'), '.2f', 'x')} |"
        )
    return "\n".join(lines)


FINAL_METRICS = (
    "test_acc",
    "val_acc",
    "params_nonzero",
    "macs",
    "sparsity",
    "seconds",
    "work_gmacs",
    "finetunes",
    "speedup_vs_iterative",
    "work_speedup_vs_iterative",
)


def final_metrics(row: dict[str, Any]) -> dict[str, float]:
    """One method's final figures, under the names every method's run uses."""
    out = {k: row.get(k) for k in FINAL_METRICS} | {"seconds": row["total_seconds"]}
    return {k: float(v) for k, v in out.items() if isinstance(v, int | float)}


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
    return (
        f"Budget: each fine-tune {pr.finetune_epochs:g} epoch(s) of the training split at batch {pr.batch_size}"
        f"{', with KD (T=' + format(pr.kd_temperature, 'g') + ')' if pr.kd else ''}; per-step evaluations on {evals}; "
        f"ICE's search {search}."
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
        path = st.paths.figures / fname
        tmp = path.with_name(f".{fname}.tmp.png")
        fig.savefig(tmp, metadata={"Software": None})
        plt.close(fig)
        tmp.replace(path)
        out.append(path)
    return out


@flow(name="evaluate", flow_run_name="evaluate-{params_path}")
def evaluate(
    params_path: str = "params.yaml", root: str | None = None, overrides: dict[str, Any] | None = None
) -> dict[str, Any]:
    with open_stage("evaluate", params_path, root, overrides) as st:
        data_ref = st.require(st.paths.prepared, "prepare")
        pre_ref = st.require(st.paths.pretrained, "pretrain")
        cfg = st.device_cfg("seed", "evaluate")
        ev = bind(evaluate_model, st.root)
        pre = ev(str(st.root), data_ref, pre_ref, cfg)
        rows: list[dict[str, Any]] = []
        steps: list[dict[str, Any]] = []
        last_step: dict[str, int] = {}
        for method in st.params.prune.methods:
            ref = st.require(st.paths.pruned(method), f"prune --method {method}")
            report = read_json(st.paths.prune_report(method))
            m = ev(str(st.root), data_ref, ref, cfg)
            rows.append(
                {
                    "method": method,
                    **m,
                    "total_seconds": report["seconds"],
                    "work_gmacs": report.get("work_gmacs"),
                    "search_seconds": report.get("search_seconds", 0.0),
                    "finetunes": report["finetunes"],
                }
            )
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
                            "params": int(float(r["params"])),
                        }
                    )
            progress(
                f"[evaluate] {method}: test {m['test_acc']:.2f}%, {m['params_nonzero']:,} params, {report['seconds']:.1f}s"
            )
        base = next((r for r in rows if r["method"] == "iterative"), None)
        for r in rows:
            r["speedup_vs_iterative"] = r["work_speedup_vs_iterative"] = None
            if base is not None and r["total_seconds"] > 0:
                r["speedup_vs_iterative"] = base["total_seconds"] / r["total_seconds"]
            if base is not None and base.get("work_gmacs") and r.get("work_gmacs"):
                r["work_speedup_vs_iterative"] = base["work_gmacs"] / r["work_gmacs"]
        metrics = _round(
            {"pretrained": pre, "methods": {r["method"]: {k: v for k, v in r.items() if k != "method"} for r in rows}}
        )
        write_json(st.paths.metrics, metrics)
        write_csv(st.paths.root / "reports" / "plots" / "steps.csv", steps)
        figs = _figures(st, steps, pre)
        pre_row = {"method": "pretrained", **pre, "total_seconds": 0.0, "finetunes": 0}
        budget = _budget(st)
        md = [
            f"# Method comparison: {st.params.model.arch} on {st.params.data.source}, ratio {st.params.prune.ratio}",
            "",
            "Seconds are compute seconds and work is billions of multiply-accumulates (forward and backward of every "
            "fine-tune with its teacher, every evaluation, ICE's freeze trial and search), both with ICE's search "
            "included; params are non-zero parameters. Speedups are against `iterative`.",
            "",
            budget,
            "",
            _table([pre_row, *rows]),
            "",
            *[f"![{p.stem}](figures/{p.name})" for p in figs],
            "",
        ]
        _write(st.paths.compare, "\n".join(md).encode())
        assert st.tracker is not None and st.run_id is not None
        # each prune run carries its method's final figures under the same names, so the MLflow
        # UI's "compare runs" is the comparison; this run keeps the table as an artifact
        # (at the method's last step, so a name the steps also log, e.g. macs, keeps one value per step)
        for r in rows:
            run_id = read_json(st.paths.prune_report(r["method"])).get("mlflow_run_id")
            if run_id:
                st.tracker.log_metrics(run_id, final_metrics(r), step=last_step.get(r["method"], 0))
        st.tracker.log_artifacts(st.run_id, [st.paths.metrics, st.paths.compare])
        st.tracker.log_artifacts(st.run_id, figs, "figures")  # where compare.md's image links point
        publish_artifact(
            "markdown",
            "comparison",
            "\n".join(md[:7]) + f"\n\nMLflow: [the runs, side by side]({st.tracker.runs_url()})",
            "every method against the pretrained model",
        )
        progress(f"[evaluate] {st.paths.rel(st.paths.compare)}:\n" + _table([pre_row, *rows]))
        return metrics


if __name__ == "__main__":
    cli("evaluate", "Compare the pruned models.", lambda a, o: evaluate(a.params, a.root, o))
