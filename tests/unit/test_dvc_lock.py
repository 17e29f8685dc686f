import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent


def test_committed_dvc_lock_matches_the_code():
    """dvc.lock records the md5 of each stage's code and params; a commit that changes them without
    rerunning `make run` leaves a lock that no longer describes the outputs. `dvc status` names every
    changed dependency; those that git tracks (code, params) must be unchanged. Data that a clean
    clone lacks shows as deleted and is not this test's business."""
    out = subprocess.run(
        [str(BIN / "dvc"), "status", "--json"], cwd=ROOT, capture_output=True, text=True, timeout=120, check=True
    )
    tracked = set(
        subprocess.run(["git", "ls-files"], cwd=ROOT, capture_output=True, text=True, check=True).stdout.split()
    )
    stale = set()
    for stage, changes in json.loads(out.stdout or "{}").items():
        for change in changes:
            if not isinstance(change, dict):
                continue
            for dep, how in change.get("changed deps", {}).items():
                in_git = dep in tracked or any(p.startswith(dep.rstrip("/") + "/") for p in tracked)
                if in_git and (how == "modified" or isinstance(how, dict)):
                    stale.add(f"{stage}: {dep} {how if isinstance(how, str) else sorted(how)}")
    assert not stale, "dvc.lock is stale (rerun `make run` and commit dvc.lock): " + "; ".join(sorted(stale))
