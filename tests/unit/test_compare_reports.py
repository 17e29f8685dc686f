"""scripts.compare_reports: measured time is left out, any computed difference is reported."""

import json

from scripts.compare_reports import compare


def _reports(root, acc, seconds, t_finetune):
    (root / "steps").mkdir(parents=True)
    metrics = {
        "methods": {"ice": {"test_acc": acc, "total_seconds": seconds, "recovery_curve": [[10.0, seconds, 0.25, acc]]}}
    }
    (root / "metrics.json").write_text(json.dumps(metrics))
    (root / "steps" / "ice.csv").write_text(f"step,acc_finetuned,t_finetune\n0,{acc},{t_finetune}\n")
    return root


def test_time_is_left_out_and_a_changed_accuracy_is_found(tmp_path):
    before = _reports(tmp_path / "a", 91.5, 12.0, 3.1)
    same = _reports(tmp_path / "b", 91.5, 99.0, 7.7)  # only measured time differs
    other = _reports(tmp_path / "c", 91.0, 12.0, 3.1)
    assert compare(before, same) == ([], 1)
    diffs, rows = compare(before, other)
    assert rows == 1
    assert diffs == [
        "metrics.methods.ice.recovery_curve[0][3]: 91.5 vs 91.0",
        "metrics.methods.ice.test_acc: 91.5 vs 91.0",
        "steps/ice.csv row 0 acc_finetuned: 91.5 vs 91.0",
    ]
