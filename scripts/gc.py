"""Shrink .ice-cache/: keep what the current outputs and the model registry reference.

    .venv/bin/python scripts/gc.py [--root DIR] [--dry-run]      (make gc)

The store keeps every intermediate checkpoint (each pruning step, each pre-training
epoch, auto-tune trials' partial states) so that reruns are cached. This removes every
stored file whose sha256 is not that of a current output (reports/pretrain.json,
reports/prune/*.json, data/prepared/dataset.json) or of a registered model version (its
``sha256`` tag), then every cached task result that points at a removed file. A later
run recomputes what it needs; nothing it reads is ever taken from a removed entry.
Shards (``store/shards/``) are kept only if the current prepared data lists them, and the
download cache of shards read from a bucket (``store/shard-cache/``) is emptied.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from plumbing.log import prog  # noqa: E402
from plumbing.paths import Paths, project_root  # noqa: E402


def _sha_in(path: Path) -> set[str]:
    try:
        value = json.loads(path.read_text()).get("sha256")
    except (OSError, ValueError, AttributeError):
        return set()
    return {value} if isinstance(value, str) else set()


def referenced(paths: Paths) -> set[str]:
    keep = _sha_in(paths.prepared_record) | _sha_in(paths.pretrain_report)
    for report in (paths.root / "reports" / "prune").glob("*.json"):
        keep |= _sha_in(report)
    db = paths.root / "mlflow.db"
    if db.exists():
        from mlflow import MlflowClient

        client = MlflowClient(f"sqlite:///{db}")
        for model in client.search_registered_models(max_results=1000):
            for v in client.search_model_versions(f"name = '{model.name}'", max_results=10000):
                if v.tags.get("sha256"):
                    keep.add(v.tags["sha256"])
    return keep


def current_shards(paths: Paths) -> set[str]:
    """The shard files the published prepared data lists (none for the in-memory format)."""
    from ice.shards import shard_name
    from plumbing.shard_store import published_shards

    try:
        return {shard_name(s["sha256"]) for s in published_shards(paths)}
    except (OSError, ValueError, RuntimeError):
        return set()


def _result_text(path: Path) -> str:
    """A cached result's content, decoded (Prefect stores the serialized value base64-encoded)."""
    import base64

    try:
        raw = path.read_text(errors="ignore")
        body = json.loads(raw).get("result", "")
        return raw + base64.b64decode(body).decode("latin-1") if isinstance(body, str) else raw
    except (OSError, ValueError):
        return ""


def main() -> None:
    ap = argparse.ArgumentParser(prog=prog("scripts/gc.py"), description=__doc__.split("\n\n")[0])
    ap.add_argument("--root", default=None)
    ap.add_argument("--dry-run", action="store_true")
    args = ap.parse_args()
    paths = Paths(project_root(args.root))
    if not paths.store.exists():
        print("nothing to collect: no .ice-cache/store")
        return
    keep = {sha[:16] for sha in referenced(paths)}
    freed, removed = 0, set()
    for f in paths.store.iterdir():
        sha16 = f.stem.rsplit("-", 1)[-1] if "-" in f.stem else ""
        if f.is_file() and sha16 not in keep:
            freed += f.stat().st_size
            removed.add(f.name)
            if not args.dry_run:
                f.unlink()
    shards = current_shards(paths)
    for sub in ("shards", "shard-cache"):
        for f in (paths.store / sub).glob("*") if (paths.store / sub).is_dir() else []:
            if f.is_file() and (sub == "shard-cache" or f.name not in shards):
                freed += f.stat().st_size
                removed.add(f.name)
                if not args.dry_run:
                    f.unlink()
    stale = 0
    for r in paths.results.glob("*") if paths.results.exists() else []:
        text = _result_text(r)
        if any(name in text for name in removed):
            stale += 1
            if not args.dry_run:
                r.unlink()
    verb = "would free" if args.dry_run else "freed"
    print(
        f"{verb} {freed / 1e6:.1f} MB: {len(removed)} stored files and {stale} cached results; kept {len(keep)} referenced outputs"
    )


if __name__ == "__main__":
    main()
