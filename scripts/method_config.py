"""What one pruning method reads, as a small JSON file: DVC's change detector for prune@<method>.

    python -m scripts.method_config --method iterative --params params.yaml   ->  models/config/iterative.json

DVC cannot give each ``prune@<method>`` stage of a ``foreach`` its own params list, so each
method's settings are written here first: the shared pruning settings, plus ICE's
hyperparameters and the search's cost (as the autotune stage chose and measured them) for ``ice``, or the schedule for a
training-time method (with the model and training settings when it trains from
scratch). The file only changes when something the method reads changes,
so ``dvc exp run -S ice.thre=2`` reruns this cheap stage for every method but
``prune@iterative`` sees the same bytes and stays as it is.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from ice.config import SEARCHED_ICE_KEYS, Params, ParamsError, load_params
from ice.files import atomic_write_bytes
from ice.methods.registry import method_inputs, spec, without
from plumbing.paths import Paths


def method_config(params: Params, method: str, autotune: dict[str, Any] | None) -> dict[str, Any]:
    """The settings ``method`` reads, and nothing else."""
    out: dict[str, Any] = {"method": method} | method_inputs(params, method)
    if spec(method).searches:  # the search's outcome stands in for the keys it chooses
        out = without(out, "ice", "autotune", *SEARCHED_ICE_KEYS)
        tuned = autotune or {}
        out["ice"] |= {
            "hp": tuned.get("hp"),
            "search": {k: tuned.get(k) for k in ("enabled", "search_seconds", "search_work")},
        }
    return out


def main() -> None:
    ap = argparse.ArgumentParser(prog="python -m scripts.method_config", description=__doc__.split("\n\n")[0])
    ap.add_argument("--method", required=True)
    ap.add_argument("--params", default="params.yaml")
    ap.add_argument("--root", default=".")
    args = ap.parse_args()
    root = Path(args.root).resolve()
    try:
        params = load_params(root / args.params)
    except ParamsError as err:
        print(f"error: {err}", file=sys.stderr)
        sys.exit(2)
    paths = Paths(root)
    tuned = paths.autotune
    autotune = json.loads(tuned.read_text()) if spec(args.method).searches and tuned.exists() else None
    atomic_write_bytes(
        paths.method_config(args.method),
        (json.dumps(method_config(params, args.method, autotune), indent=2, sort_keys=True) + "\n").encode(),
    )


if __name__ == "__main__":
    main()
