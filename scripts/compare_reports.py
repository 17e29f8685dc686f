"""Did a change alter what the pipeline computes? Compare two runs' reports, measured time aside.

    python -m scripts.compare_reports BEFORE/reports AFTER/reports

Compares ``metrics.json`` and every ``steps/<method>.csv`` value by value, skipping what is
measured rather than computed (keys and columns naming seconds, latency, wall time,
seconds-based speedups, timestamps, and the seconds of each recovery-curve point). Exits 1
and lists the differences when there are any. Used to show that a refactor changed nothing:
the same params and seed give the same accuracies, sizes, GMACs and decisions on one machine.
"""

from __future__ import annotations

import argparse
import csv
import json
import sys
from pathlib import Path
from typing import Any

TIMED = (
    "second",
    "latency",
    "wall",
    "time",
    "timestamp",
    "t_prune",
    "t_eval",
    "t_finetune",
    "t_recover",
    "t_check",
    "t_train",
    "speedup_vs_iterative",
    "search_share",
)


def timed(key: str) -> bool:
    return any(t in key for t in TIMED) and "work_speedup" not in key


def _walk(x: Any, y: Any, where: str, out: list[str]) -> None:
    if isinstance(x, dict) and isinstance(y, dict):
        for k in sorted(set(x) | set(y)):
            if timed(k):
                continue
            if k not in x or k not in y:
                out.append(f"{where}.{k}: only in {'after' if k not in x else 'before'}")
            else:
                _walk(x[k], y[k], f"{where}.{k}", out)
    elif isinstance(x, list) and isinstance(y, list):
        if len(x) != len(y):
            out.append(f"{where}: {len(x)} vs {len(y)} items")
            return
        for i, (u, v) in enumerate(zip(x, y, strict=True)):
            if ".recovery_curve[" in where and i == 1:  # a point is [gmacs, seconds, epochs, acc]: the seconds
                continue
            _walk(u, v, f"{where}[{i}]", out)
    elif x != y:
        out.append(f"{where}: {x!r} vs {y!r}")


def compare(before: Path, after: Path) -> tuple[list[str], int]:
    out: list[str] = []
    _walk(
        json.loads((before / "metrics.json").read_text()),
        json.loads((after / "metrics.json").read_text()),
        "metrics",
        out,
    )
    rows = 0
    for f in sorted((before / "steps").glob("*.csv")):
        other = after / "steps" / f.name
        if not other.exists():
            out.append(f"steps/{f.name}: only in before")
            continue
        with open(f) as fa, open(other) as fb:
            ra, rb = list(csv.DictReader(fa)), list(csv.DictReader(fb))
        if len(ra) != len(rb):
            out.append(f"steps/{f.name}: {len(ra)} vs {len(rb)} rows")
            continue
        for i, (x, y) in enumerate(zip(ra, rb, strict=True)):
            rows += 1
            out += [
                f"steps/{f.name} row {i} {k}: {x.get(k)} vs {y.get(k)}"
                for k in sorted(set(x) | set(y))
                if not timed(k) and x.get(k) != y.get(k)
            ]
    return out, rows


def main() -> None:
    ap = argparse.ArgumentParser(prog="python -m scripts.compare_reports", description=__doc__.split("\n\n")[0])
    ap.add_argument("before", type=Path)
    ap.add_argument("after", type=Path)
    args = ap.parse_args()
    diffs, rows = compare(args.before, args.after)
    n = len(list((args.before / "steps").glob("*.csv")))
    print(f"compared metrics.json and {n} steps CSVs ({rows} rows), measured time left out")
    print("\n".join(diffs[:100]) if diffs else "identical")
    sys.exit(1 if diffs else 0)


if __name__ == "__main__":
    main()
