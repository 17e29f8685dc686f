"""The evaluate stage's pure parts (plumbing/evaluation.py), on hand-made measurements and reports:
a row's costs and intervals, the step points, the speedups and the page's layout."""

from __future__ import annotations

from pathlib import Path

import pytest

from ice.config import parse_params
from plumbing.evaluation import add_speedups, method_row, pretrain_cost, render, step_points

PRE = {"params": 1000, "macs": 5000, "test_acc": 98.0, "val_acc": 97.0, "test_images": 400, "val_images": 400}


def _measured(acc: float, nonzero: int) -> dict:
    return {"test_acc": acc, "val_acc": acc, "test_images": 400, "val_images": 400,
            "params": nonzero, "params_nonzero": nonzero, "macs": 2000, "latency_ms": 1.0}  # fmt: skip


def _report(seconds: float, gmacs: float | None, **info) -> dict:
    return {"seconds": seconds, "work_gmacs": gmacs, "finetunes": 2, "info": info, "sha256": "x"}


def test_pretrain_cost_is_seconds_and_work_or_none_for_an_old_report():
    assert pretrain_cost({"seconds": 12.5, "work_gmacs": 300}) == (12.5, 300.0)
    assert pretrain_cost({"seconds": 12.5}) is None


def test_a_row_adds_pretraining_only_to_the_methods_that_start_from_it():
    stepwise = method_row("iterative", _measured(96.0, 400), _report(10.0, 100.0), PRE, (5.0, 50.0))
    assert stepwise["init"] == "pretrained" and stepwise["group"] == "structured"
    assert (stepwise["training_seconds"], stepwise["training_work_gmacs"]) == (15.0, 150.0)
    assert stepwise["sparsity"] == pytest.approx(0.6)  # of the pre-trained model's params
    lo, hi = stepwise["test_acc_ci95"]
    assert lo < 96.0 < hi
    scratch = method_row("agp", _measured(95.0, 200), _report(30.0, 400.0, granularity="weight"), PRE, (5.0, 50.0))
    assert scratch["init"] == "scratch" and scratch["group"] == "unstructured"
    assert (scratch["training_seconds"], scratch["training_work_gmacs"]) == (30.0, 400.0)
    # an old pretrain report without work counting: no training cost claimed for a stepwise method
    assert "training_seconds" not in method_row("iterative", _measured(96.0, 400), _report(10.0, 100.0), PRE, None)


def test_step_points_skip_unmeasured_steps_but_count_them_as_the_last(tmp_path: Path):
    csv = tmp_path / "steps.csv"
    csv.write_text("step,acc_finetuned,params\n1,96.5,900.0\n2,,800\n3,95.25,700\n4,,600\n")
    points, last = step_points("ice", csv)
    assert last == 4
    assert points == [
        {"method": "ice", "step": 1, "acc": 96.5, "params": 900},
        {"method": "ice", "step": 3, "acc": 95.25, "params": 700},
    ]
    (tmp_path / "empty.csv").write_text("step,acc_finetuned,params\n")
    assert step_points("ice", tmp_path / "empty.csv") == ([], 0)


def test_speedups_are_against_the_baseline_and_only_for_pretrained_methods():
    rows = [
        {"method": "iterative", "init": "pretrained", "total_seconds": 40.0, "work_gmacs": 800.0},
        {"method": "ice", "init": "pretrained", "total_seconds": 10.0, "work_gmacs": 200.0},
        {"method": "agp", "init": "scratch", "total_seconds": 5.0, "work_gmacs": 100.0},
    ]
    add_speedups(rows)
    assert [(r["speedup_vs_iterative"], r["work_speedup_vs_iterative"]) for r in rows] == [
        (1.0, 1.0),
        (4.0, 4.0),
        (None, None),
    ]
    alone = [{"method": "ice", "init": "pretrained", "total_seconds": 10.0, "work_gmacs": 200.0}]
    add_speedups(alone)
    assert alone[0]["speedup_vs_iterative"] is None and alone[0]["work_speedup_vs_iterative"] is None


def test_the_page_leads_with_the_verdict_and_ends_with_its_figures(tmp_path: Path):
    params = parse_params({})
    rows = [
        method_row("iterative", _measured(96.0, 400), _report(40.0, 800.0), PRE, (5.0, 50.0)),
        method_row("ice", _measured(96.5, 400), _report(10.0, 200.0), PRE, (5.0, 50.0)),
        method_row("agp", _measured(95.0, 200), _report(30.0, 400.0, granularity="weight"), PRE, (5.0, 50.0)),
    ]
    add_speedups(rows)
    figs = [tmp_path / "scatter.png", tmp_path / "steps.png"]
    page = render(params, rows, PRE, {"seconds": 5.0, "work_gmacs": 50.0}, (5.0, 50.0), figs)
    assert page.lines[2] == page.winner
    assert page.images == ["![scatter](figures/scatter.png)", "![steps](figures/steps.png)"]
    assert page.lines[-3:] == [*page.images, ""]
    assert page.without_images == page.lines[:-3]
    text = page.text
    assert text.index("## Structured") < text.index("## Unstructured")
    assert "\n".join(page.tables) in text
    assert "## Cost to target" not in text  # no row carries a target
