"""compare.md's cost-to-target table: ranking, 'not reached', noise ranges and ties."""

from __future__ import annotations

from plumbing.compare import target_row, target_table, ties


def _checks(accs, gmacs_per_check=100.0, images=360):
    return [
        {"acc": a, "images": images, "cum_gmacs": gmacs_per_check * (i + 1), "cum_seconds": i + 1.0, "epochs": i * 0.25}
        for i, a in enumerate(accs)
    ]


def _row(method, accs, goal, reached, **extra):
    checks = _checks(accs)
    target = {
        "goal": goal,
        "reached": reached,
        "cost_gmacs": checks[-1]["cum_gmacs"] if reached else None,
        "cost_seconds": checks[-1]["cum_seconds"] if reached else None,
        "recovery_epochs": checks[-1]["epochs"],
        "val_acc": accs[-1],
        "work_gmacs": checks[-1]["cum_gmacs"],
        "seconds": checks[-1]["cum_seconds"],
    }
    row = {"method": method, "finetunes": 0, "test_acc": 95.0, "test_acc_ci95": [93.0, 97.0], "params": 1, "macs": 1}
    return row | target_row(target, checks) | extra


def test_the_table_ranks_by_cost_and_puts_misses_last():
    goal = 95.0
    rows = [
        _row("slow", [80, 90, 93, 94, 95.5], goal, True),
        _row("never", [50, 60, 70], goal, False),
        _row("fast", [90, 95.2], goal, True),
    ]
    table = target_table(rows, 1.0)
    lines = [ln for ln in table.splitlines() if ln.startswith("| ") and "rank" not in ln]
    assert [ln.split("|")[2].strip() for ln in lines] == ["fast", "slow", "never"]
    assert "not reached (max budget: 300 spent)" in lines[2]


def test_noise_ranges_and_ties():
    goal = 95.0
    # on 360 images a check at 93.9 may truly be at 95: that check opens the range
    a = _row("a", [80, 93.9, 95.3], goal, True)
    assert a["cost_to_target_range_gmacs"] == [200.0, 300.0]
    b = _row("b", [80, 85, 90, 93.5, 95.1], goal, True)  # measured at 500, plausibly at 400
    c = _row("c", [70, 80, 85, 88, 90, 95.1], goal, True)  # only at 600
    t = ties([a, b, c])
    assert t["a"] == [] and t["b"] == [] and t["c"] == []
    b2 = _row("b2", [80, 85, 93.8, 95.1], goal, True)  # plausibly at 300: within a's range
    assert ties([a, b2])["a"] == ["b2"]
    # a big split makes the interval tight: 93.9 on 5,000 images cannot be 95
    tight = [
        {"acc": a, "images": 5000, "cum_gmacs": g, "cum_seconds": g, "epochs": 0.25 * g}
        for a, g in ((93.9, 1.0), (95.1, 2.0))
    ]
    target = {"goal": goal, "reached": True, "cost_gmacs": 2.0, "cost_seconds": 1.0, "recovery_epochs": 0.25}
    target |= {"val_acc": 95.1, "work_gmacs": 2.0, "seconds": 1.0}
    assert target_row(target, tight)["cost_to_target_range_gmacs"] == [2.0, 2.0]
