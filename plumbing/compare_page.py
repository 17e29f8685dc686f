"""compare.md's header (what is compared, at which budget, how cost is counted) and its figures."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from ice.config import Params
from plumbing.compare import STRUCTURED, UNSTRUCTURED

__all__ = ["compare_header", "figures", "scatter", "TARGET_INTRO"]

TARGET_INTRO = (
    "Cost to target: everything each recipe spent until its first check at or above the target "
    "(search, freeze trial, steps, fine-tunes, evaluations, the recovery and its checks). Each check's "
    "accuracy has a 95% bootstrap interval over the images checked; the noise range runs from the first "
    "check whose interval reaches the target (the earliest the recipe may truly have been there) to the "
    "check that met it. Two recipes whose ranges overlap are a tie."
)


def _budget(p: Params) -> str:
    """The budget both step-wise methods share, in one line."""
    pr = p.prune
    tune = p.ice.autotune
    search = (
        f"{tune.n_trials} trials on {tune.subset:.0%} of the data"
        if tune.enabled
        else "off (hyperparameters from params)"
    )
    evals = f"{pr.eval_images} validation images" if pr.eval_images else "the whole validation split"
    t = pr.target
    if t.policy == "sgdr":
        how = (
            f"a fresh SGD each {t.check_every:g}-epoch chunk, lr a cosine with warm restarts (SGDR) peaking at "
            f"{t.lr:g} (first cycle {t.cycle_epochs:g} epoch, each next x{t.cycle_mult:g})"
        )
    else:
        budget = (
            f"{t.budget_epochs:g} epochs"
            if t.budget_epochs is not None
            else f"{t.epochs_per_point:g} epoch per point missing at the first check (at least {t.min_budget_epochs:g})"
        )
        how = (
            f"one SGD for the whole recovery (momentum kept), lr one linear decay from {t.lr:g} to "
            f"{t.lr * t.final_lr_frac:g} over a budget of {budget}, never rising"
        )
    bn = (
        f"batch norm re-estimated from {pr.bn_recal_batches} batches after every pruning step; "
        if pr.bn_recal_batches
        else ""
    )
    recovery = (
        f" Then every step-wise method (prune_once too) recovers: {bn}CE + KD at batch {pr.batch_size}, {how}, "
        f"the whole validation split checked every {t.check_every:g} epoch, until within {t.tolerance:g} "
        f"point(s) of the unpruned model or {t.max_epochs:g} epochs."
        if t.tolerance is not None
        else ""
    )
    return (
        f"ICE and iterative: each fine-tune {pr.finetune_epochs:g} epoch(s) of the training split at batch "
        f"{pr.batch_size}{', with KD (T=' + format(pr.kd_temperature, 'g') + ')' if pr.kd else ''}; per-step "
        f"evaluations on {evals}; ICE's search {search}.{recovery}"
    )


def _schedule_line(p: Params) -> str:
    sc = p.schedule
    policy = sc.lr_policy.replace("_", "-")
    if sc.init == "scratch":
        return (
            f"Training-time methods: from scratch (a fresh model, seeded as pre-training's), {sc.epochs:g} epochs "
            f"at peak lr {sc.lr:g} ({policy} policy), batch {p.train.batch_size}; no pre-training and no "
            "fine-tuning, so their training cost is their whole training."
        )
    return (
        f"Training-time methods: from the pre-trained model, {sc.epochs:g} epochs at lr {sc.lr:g} ({policy} "
        "policy); their training cost includes pre-training."
    )


def figures(where: Path, steps: list[dict[str, Any]], pre: dict[str, Any]) -> list[Path]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    where.mkdir(parents=True, exist_ok=True)
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
        out.append(_save(fig, where / fname))
    return out


def _save(fig: Any, path: Path) -> Path:
    import matplotlib.pyplot as plt

    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp.png")
    fig.savefig(tmp, metadata={"Software": None})
    plt.close(fig)
    tmp.replace(path)
    return path


def scatter(where: Path, rows: list[dict[str, Any]], pre: dict[str, Any]) -> Path:
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
    return _save(fig, where / "accuracy_vs_work.png")


def compare_header(
    p: Params,
    groups: dict[str, list[dict[str, Any]]],
    pre: dict[str, Any],
    pre_report: dict[str, Any],
    pre_cost: tuple[float, float] | None,
) -> list[str]:
    """The top of compare.md: what is compared, at which budget, and how cost is counted."""
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
        _budget(p),
        "",
        _schedule_line(p),
        "",
        f"Pre-trained model: test {pre['test_acc']:.2f}%, val {pre['val_acc']:.2f}%, {pre['params']:,} params, "
        f"{pre['macs']:,} MACs.",
    ]
    return lines
