"""evaluate: every pruned model side by side with the pretrained one.

    python -m flows.evaluate --params params.yaml
        ->  reports/metrics.json, reports/compare.md, reports/plots/steps.csv, reports/figures/*.png

``metrics.json`` holds, per method, the final validation and test accuracy, params,
MACs, total seconds, fine-tunes and the speedup against ``iterative``. Accuracy,
params, MACs and fine-tunes are the same on every CPU run with the same params; the
seconds are measured.
"""

from __future__ import annotations

from typing import Any

from prefect import flow

from ice.files import atomic_write_bytes as _write
from plumbing.caching import bind
from plumbing.cli import cli
from plumbing.compare import round_floats
from plumbing.compare_page import figures, scatter
from plumbing.evaluation import add_speedups, method_row, pretrain_cost, publish, render, step_points
from plumbing.log import progress
from plumbing.records import read_json, write_csv, write_json
from plumbing.runtime import open_stage
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
        measure = bind(measure_model, st.root, st.store_url)
        pre = measure.named("measure-model-pretrained")(str(st.root), data_ref, pre_ref, cfg)
        pre_report = read_json(st.paths.pretrain_report)
        pre_cost = pretrain_cost(pre_report)
        rows: list[dict[str, Any]] = []
        reports: dict[str, dict[str, Any]] = {}  # each method's prune report, read once
        steps: list[dict[str, Any]] = []
        last_step: dict[str, int] = {}
        for method in st.params.prune.methods:
            ref = st.require(st.paths.pruned(method), f"prune --method {method}")
            report = reports[method] = read_json(st.paths.prune_report(method))
            m = measure.named(f"measure-model-{method}")(str(st.root), data_ref, ref, cfg)
            rows.append(method_row(method, m, report, pre, pre_cost))
            points, last_step[method] = step_points(method, st.paths.steps_csv(method))
            steps += points
            progress(
                f"[evaluate] {method}: test {m['test_acc']:.2f}%, {m['params_nonzero']:,} non-zero params, "
                f"{report['seconds']:.1f}s"
            )
        add_speedups(rows)
        metrics = round_floats(
            {"pretrained": pre, "methods": {r["method"]: {k: v for k, v in r.items() if k != "method"} for r in rows}}
        )
        write_json(st.paths.metrics, metrics)
        write_csv(st.paths.plots_steps, steps)
        figs = [scatter(st.paths.figures, rows, pre), *figures(st.paths.figures, steps, pre)]
        page = render(st.params, rows, pre, pre_report, pre_cost, figs)
        _write(st.paths.compare, page.text.encode())
        view = publish(st, rows, reports, last_step, page, figs)
        progress(f"[evaluate] {st.paths.rel(st.paths.compare)}:\n{page.winner}\n\n" + "\n".join(page.tables))
        if view:
            progress(f"[evaluate] the results, one column per method and figure: {view}")
        return metrics


if __name__ == "__main__":
    cli("evaluate", "Compare the pruned models.", lambda a, o: evaluate(a.params, a.root, o))
