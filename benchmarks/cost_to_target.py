"""Cost to reach the target: each recipe prunes the reference ResNet-56 to the same architecture,
then recovers until it is within a point of the unpruned model on the whole validation split.

    .venv/bin/python benchmarks/cost_to_target.py                  # every cell not yet in the results
    .venv/bin/python benchmarks/cost_to_target.py --cells prune_once ice-0.2
    .venv/bin/python benchmarks/cost_to_target.py --report         # table + plot from the results alone

Each cell is one run of the real pipeline (``python -m flows.pipeline`` in a scratch project
``bench/ctt-<cell>``, with ``prune.methods`` set to the cell's method). When a cell
finishes, one object is appended to ``benchmarks/results/cost_to_target.json`` (with
``--commit``, the file is committed at once), so the benchmark resumes after any stop: a
cell already in the file is skipped, and a cell killed midway reuses its finished
steps and recovery chunks from the scratch project's task cache.

Run it from a ``git worktree`` outside the work tree, in the background:

    git worktree add ../bench-wt HEAD
    cd ../bench-wt && nohup nice .venv/bin/python benchmarks/cost_to_target.py \\
        --results /path/to/main/benchmarks/results/cost_to_target.json --commit > ctt.log 2>&1 &
"""

from __future__ import annotations

import argparse
import csv
import json
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from benchmarks.common import REPO as ROOT
from benchmarks.common import bench_env, scratch_params

RESULTS = ROOT / "benchmarks" / "results" / "cost_to_target.json"
PRESET = "params/cifar10-resnet56-cpu.yaml"

# what every cell shares on top of the preset: the target and the recovery (issue 32)
COMMON: dict[str, Any] = {
    "prune.target.tolerance": 1.0,
    "prune.target.max_epochs": 10.0,
    "prune.target.check_every": 0.25,
    "prune.bn_recal_batches": 10,
    "prune.target.policy": "decay",
}
# the six cells of the first map (policy sgdr, no batch-norm re-estimation), kept in the results
SGDR: dict[str, Any] = {"prune.target.policy": "sgdr", "prune.bn_recal_batches": 0}

# recipe -> method, fine-tune epochs per step (None: no per-step fine-tune), overrides
RECIPES: dict[str, tuple[str, float | None, dict[str, Any]]] = {
    "prune_once": ("prune_once", None, {}),
    "ice-prev-thre2-fr0-0.2": (
        "ice",
        0.2,
        {"ice.reference": "previous", "ice.thre": 2.0, "ice.fr": 0.0},
    ),
    "iterative-0.2": ("iterative", 0.2, {}),
    "ice-0.2": ("ice", 0.2, {}),
    "iterative-0.1": ("iterative", 0.1, {}),
    "ice-0.1": ("ice", 0.1, {}),
}
GRID = (1.0, 2.0, 4.0, 6.0)  # the hindsight limit's fixed budgets, run in this order


def cell_name(recipe: str, ratio: float, policy: str, budget: float | None = None) -> str:
    """``prune_once@0.6-online``, ``ice-...@0.8-budget2``; the sgdr cells keep their first names."""
    if policy == "sgdr":
        return recipe
    return f"{recipe}@{ratio:g}-{policy}{'' if budget is None else format(budget, 'g')}"


def _grid(recipe: str, ratio: float) -> list[tuple[str, float, str, float | None]]:
    return [(recipe, ratio, "budget", b) for b in GRID]


# every cell, in the order that answers most first: online at 0.6, then 0.8, then the grids
PLAN: list[tuple[str, float, str, float | None]] = [
    ("prune_once", 0.6, "online", None),
    ("ice-prev-thre2-fr0-0.2", 0.6, "online", None),
    ("prune_once", 0.8, "online", None),
    ("ice-prev-thre2-fr0-0.2", 0.8, "online", None),
    ("iterative-0.1", 0.6, "online", None),
    ("iterative-0.1", 0.8, "online", None),
    *_grid("prune_once", 0.6),
    *_grid("ice-prev-thre2-fr0-0.2", 0.6),
    *_grid("prune_once", 0.8),
    *_grid("ice-prev-thre2-fr0-0.2", 0.8),
]
# the budget rule's fit (benchmarks/README.md): prune_once at a ratio no reported cell uses
FIT: list[tuple[str, float, str, float | None]] = _grid("prune_once", 0.7)
CELLS = {cell_name(*c): c for c in PLAN + FIT}


def load(path: Path) -> list[dict[str, Any]]:
    """The results; the first map's cells, written before these dimensions, read as sgdr at 0.6."""
    rows = json.loads(path.read_text()) if path.exists() else []
    for r in rows:
        r.setdefault("ratio", 0.6)
        r.setdefault("policy", "sgdr")
        r.setdefault("budget_epochs", None)
        r.setdefault("bn_recal_batches", 0)
        r.setdefault("recipe", r["cell"])
    return rows


def save(path: Path, rows: list[dict[str, Any]], commit: bool, msg: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(rows, indent=1) + "\n")
    tmp.replace(path)
    if commit:  # only this file: whatever else is staged in that work tree stays as it is
        repo = path.parent
        for _ in range(10):
            add = subprocess.run(["git", "-C", str(repo), "add", path.name], capture_output=True, text=True)
            run = subprocess.run(
                ["git", "-C", str(repo), "commit", "-q", "-m", msg, "--", path.name], capture_output=True, text=True
            )
            if add.returncode == 0 and run.returncode == 0:
                print(f"[ctt] committed {path.name}: {msg}", flush=True)
                return
            time.sleep(3)  # another git command holds the index
        print(f"[ctt] warning: could not commit {path}: {run.stderr.strip()}", flush=True)


def run_cell(name: str, preset: str) -> dict[str, Any]:
    recipe, ratio, policy, budget = CELLS[name]
    method, eps, extra = RECIPES[recipe]
    overrides = {**COMMON, "prune.ratio": ratio, "prune.methods": [method], **extra}
    if policy == "budget":  # a fixed decay over B epochs, and no more
        overrides.update({"prune.target.budget_epochs": budget, "prune.target.max_epochs": budget})
    if eps is not None:
        overrides["prune.finetune_epochs"] = eps
    # one project per recipe and ratio: its budget cells reuse the online cell's cached steps
    out = ROOT / "bench" / f"ctt-{recipe}-r{ratio:g}"
    scratch_params(preset, overrides, out)
    env = bench_env()
    t0 = time.perf_counter()
    print(f"[ctt] {name}: {method} with {overrides} in {out}", flush=True)
    r = subprocess.run(
        [sys.executable, "-m", "flows.pipeline", "--params", "params.yaml", "--root", str(out)], cwd=ROOT, env=env
    )
    if r.returncode != 0:
        raise SystemExit(f"[ctt] {name}: the pipeline failed ({r.returncode}); rerun to resume")
    wall = time.perf_counter() - t0
    m = json.loads((out / "reports" / "metrics.json").read_text())
    row, pre = m["methods"][method], m["pretrained"]
    rep = json.loads((out / "reports" / "prune" / f"{method}.json").read_text())
    target = rep["target"]
    with open(out / "reports" / "steps" / f"{method}.csv") as f:
        steps = [r for r in csv.DictReader(f) if r.get("phase", "step") == "step"]
    return {
        "cell": name,
        "recipe": recipe,
        "method": method,
        "ratio": ratio,
        "policy": policy,
        "budget_epochs": budget if policy == "budget" else target.get("budget_epochs"),
        "bn_recal_batches": COMMON["prune.bn_recal_batches"],
        "epochs_per_step": eps,
        "config": {k: v for k, v in extra.items()},
        "reached": target["reached"],
        "cost_gmacs": target["cost_gmacs"],
        "cost_seconds": target["cost_seconds"],
        "spent_gmacs": target["work_gmacs"],
        "spent_seconds": target["seconds"],
        "cost_range_gmacs": row["cost_to_target_range_gmacs"],
        "fine_tunes": rep["finetunes"],
        "recovery_epochs": target["recovery_epochs"],
        "goal": target["goal"],
        "val_acc": row["val_acc"],
        "val_acc_ci95": row["val_acc_ci95"],
        "test_acc": row["test_acc"],
        "test_acc_ci95": row["test_acc_ci95"],
        "params": row["params"],
        "macs": row["macs"],
        "pretrained": {k: pre[k] for k in ("val_acc", "test_acc", "params", "macs")},
        "cost_parts": rep["cost"],
        "steps_curve": [
            [float(s["cum_gmacs"]), float(s["cum_seconds"]), float(s["acc_finetuned"]) if s["acc_finetuned"] else None]
            for s in steps
        ],
        "recovery_curve": [[c["cum_gmacs"], c["cum_seconds"], c["epochs"], c["acc"]] for c in rep["recovery"]],
        "wall_seconds": wall,
        "finished": time.strftime("%Y-%m-%d %H:%M:%S"),
    }


def grid_done(rows: list[dict[str, Any]], recipe: str, ratio: float) -> bool:
    """A hindsight grid stops at its first budget that reached the target."""
    return any(r["recipe"] == recipe and r["ratio"] == ratio and r["policy"] == "budget" and r["reached"] for r in rows)


def cost_at(row: dict[str, Any], tolerance: float) -> tuple[float, float] | None:
    """(GMACs, seconds) at the first recovery check within ``tolerance`` points of the unpruned
    model's validation accuracy, read off the recovery curve (None: no check got there). For a
    tolerance looser than the run's own, the curve holds every check up to that one."""
    goal = row["pretrained"]["val_acc"] - tolerance
    for gmacs, seconds, _epochs, acc in row["recovery_curve"]:
        if acc >= goal - 1e-9:
            return gmacs, seconds
    return None


def loose_table(rows: list[dict[str, Any]], tolerance: float = 2.0) -> str:
    """Cost at a looser tolerance, from the same runs' curves."""
    lines = [
        f"| cell | cost within {tolerance:g} points (GMACs) | seconds |",
        "|---|---|---|",
    ]
    for r in sorted(rows, key=lambda r: (cost_at(r, tolerance) or (float("inf"),))[0]):
        c = cost_at(r, tolerance)
        lines.append(f"| {r['cell']} | {f'{c[0]:,.0f}' if c else 'not reached'} | {f'{c[1]:,.0f}' if c else '-'} |")
    return "\n".join(lines)


_POLICY_ORDER = {"online": 0, "budget": 1, "sgdr": 2}


def _policy(r: dict[str, Any]) -> str:
    return f"budget {r['budget_epochs']:g}" if r["policy"] == "budget" else r["policy"]


def table(rows: list[dict[str, Any]]) -> str:
    """Every cell, by ratio and policy, ranked by cost to target (those that did not reach it
    last), with the cells of the same ratio whose noise ranges overlap (a tie)."""
    ranked = sorted(
        rows, key=lambda r: (r["ratio"], _POLICY_ORDER[r["policy"]], not r["reached"], r["cost_gmacs"] or 0.0)
    )
    head = (
        "| ratio | policy | recipe | reached | cost to target (GMACs) | noise range (GMACs) | cost to target (s) "
        "| fine-tunes | B (epochs) | recovery epochs | val at stop | test at stop (95% CI) | within noise of |"
    )
    lines = [head, "|" + "---|" * (head.count("|") - 1)]
    for r in ranked:
        lo, hi = r["cost_range_gmacs"]
        tie = [
            o["cell"]
            for o in rows
            if o is not r
            and o["ratio"] == r["ratio"]
            and r["reached"]
            and o["reached"]
            and _overlap((lo, hi), tuple(o["cost_range_gmacs"]))
        ]
        cost = f"{r['cost_gmacs']:,.0f}" if r["reached"] else f"not reached ({r['spent_gmacs']:,.0f} spent)"
        secs = f"{r['cost_seconds']:,.0f}" if r["reached"] else f"({r['spent_seconds']:,.0f} spent)"
        rng = f"{lo:,.0f} to {hi:,.0f}" if lo is not None and hi is not None else "-"
        ci = r["test_acc_ci95"]
        budget = f"{r['budget_epochs']:g}" if r.get("budget_epochs") is not None else "-"
        lines.append(
            f"| {r['ratio']:g} | {_policy(r)} | {r['recipe']} | {'yes' if r['reached'] else 'no'} | {cost} | {rng} "
            f"| {secs} | {r['fine_tunes']} | {budget} | {r['recovery_epochs']:g} | {r['val_acc']:.2f} "
            f"| {r['test_acc']:.2f} ({ci[0]:.2f}-{ci[1]:.2f}) | {', '.join(tie) or '-'} |"
        )
    return "\n".join(lines)


def limits(rows: list[dict[str, Any]]) -> dict[tuple[str, float], dict[str, Any]]:
    """Each (recipe, ratio)'s hindsight limit: its cheapest reached budget cell."""
    out: dict[tuple[str, float], dict[str, Any]] = {}
    for r in rows:
        key = (r["recipe"], r["ratio"])
        if r["policy"] == "budget" and r["reached"] and (key not in out or r["cost_gmacs"] < out[key]["cost_gmacs"]):
            out[key] = r
    return out


def limit_table(rows: list[dict[str, Any]]) -> str:
    """The online policy against the hindsight limit (target: at most 1.25x), where both exist."""
    lines = [
        "| recipe | ratio | online B (epochs) | online cost (GMACs) | limit (GMACs) | limit's B | online / limit |",
        "|---|---|---|---|---|---|---|",
    ]
    lim = limits(rows)
    for r in sorted((r for r in rows if r["policy"] == "online"), key=lambda r: (r["ratio"], r["recipe"])):
        best = lim.get((r["recipe"], r["ratio"]))
        online = f"{r['cost_gmacs']:,.0f}" if r["reached"] else f"not reached ({r['spent_gmacs']:,.0f})"
        if best is None:
            lines.append(f"| {r['recipe']} | {r['ratio']:g} | {r['budget_epochs']:g} | {online} | - | - | - |")
            continue
        frac = f"{r['cost_gmacs'] / best['cost_gmacs']:.2f}x" if r["reached"] else "-"
        lines.append(
            f"| {r['recipe']} | {r['ratio']:g} | {r['budget_epochs']:g} | {online} | {best['cost_gmacs']:,.0f} "
            f"| {best['budget_epochs']:g} | {frac} |"
        )
    return "\n".join(lines)


def plot_map(rows: list[dict[str, Any]], path: Path) -> None:
    """Cost to target against the pruning ratio: one line per recipe (online policy) with its
    noise range, and each recipe's hindsight limit dashed."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7.5, 4.8), dpi=100)
    lim = limits(rows)
    recipes = sorted({r["recipe"] for r in rows if r["policy"] == "online"})
    xs_all = [r["ratio"] for r in rows if r["policy"] == "online"]
    for i, recipe in enumerate(recipes):
        color = f"C{i}"
        cells = sorted((r for r in rows if r["policy"] == "online" and r["recipe"] == recipe), key=lambda r: r["ratio"])
        xs = [r["ratio"] for r in cells if r["reached"]]
        ys = [r["cost_gmacs"] / 1000 for r in cells if r["reached"]]
        ax.plot(xs, ys, "o-", color=color, label=f"{recipe} (online)")
        for r in cells:
            lo, hi = r["cost_range_gmacs"]
            if r["reached"] and lo is not None:
                ax.plot([r["ratio"]] * 2, [lo / 1000, hi / 1000], "-", color=color, lw=4, alpha=0.3)
            if not r["reached"]:  # what it spent, and how far it got
                ax.plot([r["ratio"]], [r["spent_gmacs"] / 1000], "x", color=color, ms=9)
                best = f"{r['val_acc']:.2f}% val of {r['goal']:.2f}" if r.get("goal") is not None else ""
                ax.annotate(
                    f" not reached: {best}, {r['spent_gmacs'] / 1000:,.0f}k spent",
                    (r["ratio"], r["spent_gmacs"] / 1000),
                    fontsize=7,
                    color=color,
                    ha="right" if r["ratio"] == max(xs_all) else "left",
                    xytext=(-6 if r["ratio"] == max(xs_all) else 6, 4),
                    textcoords="offset points",
                )
        lx = sorted(k[1] for k in lim if k[0] == recipe)
        if lx:
            ax.plot(
                lx,
                [lim[recipe, x]["cost_gmacs"] / 1000 for x in lx],
                "s--",
                color=color,
                ms=4,
                lw=1,
                label=f"{recipe} (hindsight limit)",
            )
    ax.set_xlabel("pruning ratio (share of each unit's filters removed)")
    ax.set_ylabel("cost to target (thousand GMACs)")
    ax.set_title("Where each recipe wins: cost to within 1 point (lower is better; band: noise range)", fontsize=10)
    ratios = sorted({r["ratio"] for r in rows if r["policy"] == "online"})
    ax.set_xticks(ratios)
    lo, hi = ratios[0], ratios[-1]
    ax.set_xlim(lo - 0.05, hi + 0.05)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
    _save(fig, path)


def _save(fig: Any, path: Path) -> None:
    """Write the figure atomically (temporary file, then rename), with no timestamped metadata."""
    import matplotlib.pyplot as plt

    fig.tight_layout()
    tmp = path.with_suffix(".tmp.png")
    fig.savefig(tmp, metadata={"Software": None})
    plt.close(fig)
    tmp.replace(path)


def _overlap(a: tuple[Any, Any], b: tuple[Any, Any]) -> bool:
    """Noise ranges [earliest plausible, measured] that overlap: a tie."""
    if None in (*a, *b):
        return False
    return bool(a[0] <= b[1] and b[0] <= a[1])


def plot(rows: list[dict[str, Any]], path: Path) -> None:
    """Left: cost to target per cell; right: each cell's validation accuracy against cumulative cost."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (a, b) = plt.subplots(1, 2, figsize=(13, 4.8), dpi=100)
    ranked = sorted(rows, key=lambda r: (not r["reached"], r["cost_gmacs"] or r["spent_gmacs"]))
    names = [r["cell"] for r in ranked]
    vals = [(r["cost_gmacs"] if r["reached"] else r["spent_gmacs"]) / 1000 for r in ranked]
    bars = a.barh(names, vals, color=["tab:blue" if r["reached"] else "lightgrey" for r in ranked])
    for bar, r in zip(bars, ranked, strict=True):
        lo, hi = r["cost_range_gmacs"]
        if r["reached"] and lo is not None:
            a.plot([lo / 1000, hi / 1000], [bar.get_y() + bar.get_height() / 2] * 2, "k-", lw=1)
        if not r["reached"]:
            a.text(bar.get_width(), bar.get_y() + bar.get_height() / 2, " not reached", va="center", fontsize=8)
    a.invert_yaxis()
    a.set_xlabel("cost to target (thousand GMACs; line: noise range)")
    a.set_title("Cost to reach the target (lower is better)")
    a.grid(axis="x", alpha=0.3)
    for r in ranked:
        xs = [p[0] / 1000 for p in r["steps_curve"] if p[2] is not None]
        ys = [p[2] for p in r["steps_curve"] if p[2] is not None]
        xs += [p[0] / 1000 for p in r["recovery_curve"]]
        ys += [p[3] for p in r["recovery_curve"]]
        b.plot(xs, ys, marker=".", ms=3, lw=1, label=r["cell"])
    if rows:
        b.axhline(rows[0]["goal"], color="k", ls="--", lw=1, label="target")
        b.axhline(rows[0]["pretrained"]["val_acc"], color="grey", ls=":", lw=1, label="unpruned")
    b.set_ylim(bottom=max(0, min(rows[0]["goal"] - 15, 70)) if rows else 0)
    b.set_xlabel("cumulative cost (thousand GMACs)")
    b.set_ylabel("validation accuracy (%)")
    b.set_title("Accuracy against cost (steps, then recovery)")
    b.legend(fontsize=7)
    b.grid(alpha=0.3)
    _save(fig, path)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--cells", nargs="*", default=[cell_name(*c) for c in PLAN], choices=list(CELLS))
    ap.add_argument("--preset", default=PRESET)
    ap.add_argument("--results", type=Path, default=RESULTS)
    ap.add_argument("--commit", action="store_true", help="git-commit the results file after each cell")
    ap.add_argument("--report", action="store_true", help="only print the table and draw the plot")
    args = ap.parse_args()
    rows = load(args.results)
    if not args.report:
        for name in args.cells:
            if any(r["cell"] == name for r in rows):
                print(f"[ctt] {name}: already in {args.results.name}, skipped", flush=True)
                continue
            recipe, ratio, policy, _ = CELLS[name]
            if policy == "budget" and grid_done(rows, recipe, ratio):
                print(f"[ctt] {name}: a smaller budget already reached the target, not run", flush=True)
                continue
            row = run_cell(name, args.preset)
            rows = load(args.results)
            rows.append(row)
            save(args.results, rows, args.commit, f"cost_to_target: cell {name}")
            print(f"[ctt] {name}: done in {row['wall_seconds'] / 60:.1f} min", flush=True)
    print(table(rows))
    if rows:
        print()
        print(limit_table(rows))
        print()
        print(loose_table([r for r in rows if r["ratio"] == 0.6 and r["policy"] != "budget"]))
        png = args.results.with_suffix(".png")
        plot([r for r in rows if r["ratio"] == 0.6 and r["policy"] != "budget"], png)
        plot_map(rows, args.results.with_name(args.results.stem + "_map.png"))
        print(f"plots: {png}, {args.results.stem}_map.png")


if __name__ == "__main__":
    main()
