"""The content store under two processes writing the same key at once (issue 14 #4)."""

from __future__ import annotations

import subprocess
import sys
import time

from helpers import sub_env

WRITES = 300

# one writer: WRITES stores of the same stem as fast as it can; odd writes differ between the writers
WRITER = r"""
import hashlib, sys, time
from pathlib import Path
from plumbing.paths import Paths
from plumbing.artifacts import store_file

root, tag, go = Path(sys.argv[1]), sys.argv[2], Path(sys.argv[3])
while not go.exists():
    time.sleep(0.001)
paths, failed = Paths(root), 0
for i in range(int(sys.argv[4])):
    payload = f"{tag if i % 2 else 'both'}-{i}-".encode() * (2000 + i)  # even i: both write the same bytes

    def write(tmp, payload=payload):
        tmp.write_bytes(payload)
        return hashlib.sha256(tmp.read_bytes()).hexdigest()

    try:
        ref = store_file(paths, "step-0001-finetuned", write)
        if hashlib.sha256((root / ref["uri"]).read_bytes()).hexdigest() != ref["sha256"]:
            failed += 1
    except Exception as err:  # noqa: BLE001 - counted, and the count is what the test asserts
        failed += 1
        print(f"{type(err).__name__}: {err}", file=sys.stderr)
print(failed)
"""


def test_two_processes_storing_the_same_key_never_collide(tmp_path):
    from ice.files import sha256_file

    go = tmp_path / "go"
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", WRITER, str(tmp_path), tag, str(go), str(WRITES)],
            env=sub_env(),
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for tag in ("a", "b")
    ]
    time.sleep(1.0)  # both interpreters are up and polling
    go.touch()
    results = [p.communicate(timeout=300) for p in procs]
    assert all(p.returncode == 0 for p in procs), [err[-2000:] for _, err in results]
    failures = [int(out.strip()) for out, _ in results]
    assert failures == [0, 0], [err[-2000:] for _, err in results]

    stored = list((tmp_path / ".ice-cache" / "store").iterdir())
    assert not [p.name for p in stored if p.name.startswith(".")]  # no temporary file left behind
    assert len(stored) == WRITES // 2 + 2 * (WRITES // 2)  # every distinct payload kept, once, under its own name
    wrong = [p.name for p in stored if sha256_file(p)[:16] not in p.name]
    assert wrong == []  # every name is the hash of its content


def test_metrics_are_shown_readable_and_counts_stay_exact():
    from plumbing.metric_names import readable

    assert readable(97.22222222222223) == 97.2222
    assert readable(0.0101116540026851) == 0.0101117
    assert readable(2090624.0) == 2090624.0 and readable(855770) == 855770.0  # params and MACs are never rounded
