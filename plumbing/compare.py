"""compare.md's tables, as pure functions of the evaluated rows: cost to target first (ranked,
with noise ranges and ties), then each budget; and the summary metrics logged per method."""

from __future__ import annotations

from typing import Any

from ice.methods import STEPWISE
from ice.metrics import bootstrap_interval

__all__ = [
    "round_floats",
    "budget_table",
    "STRUCTURED",
    "UNSTRUCTURED",
    "group_of",
    "budget_check",
    "target_row",
    "ties",
    "target_table",
    "FINAL_METRICS",
    "final_metrics",
    "verdict",
    "comparison_metrics",
]


def round_floats(obj: Any, places: int = 4) -> Any:
    """Floats to ``places`` decimals (97.2222, not 97.22222222222223), recursively."""
    if isinstance(obj, float):
        return round(obj, places)
    if isinstance(obj, dict):
        return {k: round_floats(v, places) for k, v in obj.items()}
    if isinstance(obj, list):
        return [round_floats(v, places) for v in obj]
    return obj


def _fmt(v: Any, spec: str, suffix: str = "", none: str = "-") -> str:
    return none if v is None else format(v, spec) + suffix


STRUCTURED = "structured"


UNSTRUCTURED = "unstructured"


def group_of(method: str, report: dict[str, Any]) -> str:
    """A method's budget group: filters removed for real (structured) or weights masked (unstructured)."""
    if method in STEPWISE:
        return STRUCTURED
    return STRUCTURED if (report.get("info") or {}).get("granularity") == "filter" else UNSTRUCTURED


def budget_table(rows: list[dict[str, Any]], structured: bool) -> str:
    """One budget group, ranked by test accuracy."""
    head = (
        "| rank | method | test acc | pruning work (GMACs) | pruning seconds | training work (GMACs) "
        "| training seconds | fine-tunes | val acc | non-zero params | sparsity | MACs |"
    )
    if structured:
        head += " search share | pruning speedup vs iterative (seconds / work) |"
    cols = head.count("|") - 1
    lines = [head, "|" + "---|" * cols]
    for i, r in enumerate(sorted(rows, key=lambda r: -r["test_acc"]), 1):
        line = (
            f"| {i} | {r['method']} | {r['test_acc']:.2f} | {_fmt(r.get('work_gmacs'), ',.0f')} "
            f"| {r['total_seconds']:,.1f} | {_fmt(r.get('training_work_gmacs'), ',.0f')} "
            f"| {_fmt(r.get('training_seconds'), ',.1f')} | {r['finetunes']} | {r['val_acc']:.2f} "
            f"| {r['params_nonzero']:,} | {r['sparsity']:.1%} | {r['macs']:,} |"
        )
        if structured:
            share = r["search_seconds"] / r["total_seconds"] if r.get("search_seconds") and r["total_seconds"] else None
            sp = (
                f"{_fmt(r.get('speedup_vs_iterative'), '.2f', 'x')} / "
                f"{_fmt(r.get('work_speedup_vs_iterative'), '.2f', 'x')}"
                if r.get("speedup_vs_iterative") is not None
                else "-"
            )
            line += f" {_fmt(share, '.1%')} | {sp} |"
        lines.append(line)
    return "\n".join(lines)


def budget_check(rows: list[dict[str, Any]], structured: bool) -> str:
    """Whether a group really shares one budget: the same non-zero params within 1% (structured),
    or the same weight sparsity within half a point (unstructured)."""
    if len(rows) < 2:
        return ""
    if structured:
        vals = [r["params_nonzero"] for r in rows]
        spread = (max(vals) - min(vals)) / max(vals)
        ok = spread <= 0.01
        what = f"non-zero params {min(vals):,} to {max(vals):,} (spread {spread:.1%})"
    else:
        svals = [r["weight_sparsity"] for r in rows]
        ok = max(svals) - min(svals) <= 0.005
        what = f"weight sparsity {min(svals):.1%} to {max(svals):.1%}"
    return f"Equal budget: {'yes' if ok else 'NO, this ranking compares unequal sizes'}: {what}."


def target_row(target: dict[str, Any], checks: list[dict[str, Any]]) -> dict[str, Any]:
    """A method's cost to target, with the range its check noise allows.

    Each check's accuracy carries a 95% bootstrap interval over the images checked. The
    range runs from the first check whose interval reaches the goal (the earliest the
    method may truly have been there) to the check that met it (its cost to target);
    None when it never met it."""
    lo = None
    for r in checks:
        if lo is None and bootstrap_interval(r["acc"], int(r["images"]))[1] >= target["goal"]:
            lo = r["cum_gmacs"]
    hi = target["cost_gmacs"]
    return {
        "target_reached": target["reached"],
        "cost_to_target_gmacs": target["cost_gmacs"],
        "cost_to_target_seconds": target["cost_seconds"],
        "cost_to_target_range_gmacs": [lo, hi],
        "recovery_epochs": target["recovery_epochs"],
        "target_goal": target["goal"],
        "target_val_acc": target["val_acc"],
        "spent_gmacs": target["work_gmacs"],
        "spent_seconds": target["seconds"],
        # the recovery's accuracy against cumulative cost: [GMACs, seconds, epochs, val acc] per check
        "recovery_curve": [[r["cum_gmacs"], r["cum_seconds"], r["epochs"], r["acc"]] for r in checks],
    }


def ties(rows: list[dict[str, Any]]) -> dict[str, list[str]]:
    """For each method that reached the target, the others whose noise range overlaps its own:
    the dearer one may truly have been there as early as the cheaper one was measured to be."""
    out: dict[str, list[str]] = {}
    reached = [r for r in rows if r.get("target_reached")]
    for r in reached:
        lo, hi = r["cost_to_target_range_gmacs"]
        out[r["method"]] = [
            o["method"]
            for o in reached
            if o is not r and lo <= o["cost_to_target_range_gmacs"][1] and o["cost_to_target_range_gmacs"][0] <= hi
        ]
    return out


def target_table(rows: list[dict[str, Any]], tolerance: float) -> str:
    """The step-wise methods ranked by cost to target: those that reached it first, cheapest
    first; then those that did not, 'not reached (max budget)'."""
    rows = [r for r in rows if "target_reached" in r]
    tie = ties(rows)
    head = (
        "| rank | method | cost to target (GMACs) | noise range (GMACs) | cost to target (s) | fine-tunes "
        "| recovery epochs | val at stop | test at stop (95% CI) | params | MACs | within noise of |"
    )
    lines = [head, "|" + "---|" * (head.count("|") - 1)]
    ranked = sorted(
        rows,
        key=lambda r: (not r["target_reached"], r["cost_to_target_gmacs"] or 0.0, -r["target_val_acc"]),
    )
    for i, r in enumerate(ranked, 1):
        lo, hi = r["cost_to_target_range_gmacs"]
        if r["target_reached"]:
            cost = f"{r['cost_to_target_gmacs']:,.0f}"
            secs = f"{r['cost_to_target_seconds']:,.1f}"
            rng = f"{lo:,.0f} to {hi:,.0f}"
        else:
            cost = f"not reached (max budget: {r['spent_gmacs']:,.0f} spent)"
            secs = f"({r['spent_seconds']:,.1f} spent)"
            rng = "-"
        ci = r["test_acc_ci95"]
        lines.append(
            f"| {i} | {r['method']} | {cost} | {rng} | {secs} | {r['finetunes']} | {r['recovery_epochs']:g} "
            f"| {r['target_val_acc']:.2f} | {r['test_acc']:.2f} ({ci[0]:.2f}-{ci[1]:.2f}) | {r['params']:,} "
            f"| {r['macs']:,} | {', '.join(tie.get(r['method'], [])) or '-'} |"
        )
    return "\n".join(lines)


FINAL_METRICS = (
    "test_acc",
    "val_acc",
    "params_nonzero",
    "macs",
    "sparsity",
    "weight_sparsity",
    "seconds",
    "work_gmacs",
    "training_seconds",
    "training_work_gmacs",
    "finetunes",
    "speedup_vs_iterative",
    "work_speedup_vs_iterative",
    "cost_to_target_gmacs",
    "cost_to_target_seconds",
    "recovery_epochs",
)


def _acc_ties(top: dict[str, Any], rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The rows whose test accuracy is within noise of ``top``'s: their 95% intervals overlap."""
    lo = top["test_acc_ci95"][0]
    return [r for r in rows if r is not top and r["test_acc_ci95"][1] >= lo]


def verdict(rows: list[dict[str, Any]], tolerance: float | None) -> str:
    """compare.md's first sentence: which recipe won, and what it cost.

    With a target, the cheapest method to reach it (ties by the noise ranges of
    :func:`ties`). Otherwise, in the structured group if there is one: the most accurate
    method, and among those within noise of it (overlapping 95% intervals on test), the one
    whose pruning did the least work."""
    reached = [r for r in rows if r.get("target_reached")]
    if reached:
        best = min(reached, key=lambda r: (r["cost_to_target_gmacs"], -r["target_val_acc"]))
        tied = ties(rows).get(best["method"], [])
        line = (
            f"**{best['method']} reached the target cheapest**: within {tolerance:g} point(s) of the unpruned model "
            f"for {best['cost_to_target_gmacs']:,.0f} GMACs ({best['cost_to_target_seconds']:,.1f} s), test "
            f"{best['test_acc']:.2f}%"
        )
        return line + (f"; a tie with {', '.join(tied)}, whose cost is within noise of it." if tied else ".")
    missed = (
        f"No method reached the target within {tolerance:g} point(s). "
        if tolerance is not None and any("target_reached" in r for r in rows)
        else ""
    )
    group = [r for r in rows if r.get("group") == STRUCTURED] or rows
    if not group:
        return missed + "No method was compared."
    top = max(group, key=lambda r: r["test_acc"])
    close = [top, *_acc_ties(top, group)]
    cheapest = min(close, key=lambda r: (r.get("work_gmacs") is None, r.get("work_gmacs") or 0.0, -r["test_acc"]))
    work = f"{cheapest['work_gmacs']:,.0f} GMACs" if cheapest.get("work_gmacs") is not None else "unknown work"
    others = [r["method"] for r in close if r is not cheapest]
    what = "structured" if group[0].get("group") == STRUCTURED else "compared"
    if others:
        return missed + (
            f"**{cheapest['method']} won** among the {what} methods: its test accuracy {cheapest['test_acc']:.2f}% is "
            f"within noise of the best ({', '.join(others)}), and its pruning cost the least of them ({work}, "
            f"{cheapest['total_seconds']:,.1f} s)."
        )
    return missed + (
        f"**{top['method']} won** among the {what} methods: the most accurate ({top['test_acc']:.2f}% on test, "
        f"above every other's 95% interval), for {work} ({top['total_seconds']:,.1f} s) of pruning."
    )


def comparison_metrics(rows: list[dict[str, Any]]) -> dict[str, float]:
    """The pipeline run's metrics: one per method and figure, named ``<method>.<figure>`` (the
    tracker adds the unit), so the runs table shows each method's result as a column."""
    out: dict[str, float] = {}
    for r in rows:
        for k in (
            "test_acc",
            "val_acc",
            "work_gmacs",
            "total_seconds",
            "training_work_gmacs",
            "params_nonzero",
            "macs",
            "finetunes",
            "cost_to_target_gmacs",
            "cost_to_target_seconds",
        ):
            v = r.get(k)
            if isinstance(v, int | float) and not isinstance(v, bool):
                out[f"{r['method']}.{k}"] = float(v)
        if "target_reached" in r:
            out[f"{r['method']}.target_reached"] = float(r["target_reached"])
    return out


def final_metrics(row: dict[str, Any]) -> dict[str, float]:
    """One method's final figures, under the names every method's run uses."""
    out = {k: row.get(k) for k in FINAL_METRICS} | {"seconds": row["total_seconds"]}
    return {k: float(v) for k, v in out.items() if isinstance(v, int | float)}
