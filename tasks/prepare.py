"""The prepare stage's task: decode the data source into the prepared dataset."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from prefect import task

from plumbing.artifacts import (
    project_paths,
    store_file,
)

__all__ = ["prepare_data"]


# ----------------------------------------------------------------------------- tasks
@task(name="prepare-data", tags=["io"])
def prepare_data(root: str, data_cfg: dict[str, Any], store_url: str = "") -> dict[str, Any]:
    """Decode the source once, with fixed train/val/test splits: into one tensor file (``memory``)
    or streamed into shards plus a manifest (``shards``); see ``data.format``."""
    from ice.config import DataConfig
    from ice.sharded import storage

    paths = project_paths(root)
    cfg = dict(data_cfg)
    if cfg.get("root") and not Path(cfg["root"]).is_absolute():
        cfg["root"] = str(paths.root / cfg["root"])
    if not Path(cfg.get("cache_dir", "data/cache")).is_absolute():
        cfg["cache_dir"] = str(paths.root / cfg.get("cache_dir", "data/cache"))
    spec = DataConfig(**cfg)
    if storage(spec) == "shards":
        return _prepare_shards(paths, spec, store_url)
    from ice.data import load_dataset, save_prepared

    ds = load_dataset(spec)
    return {
        "ref": store_file(paths, "prepared", lambda tmp: save_prepared(ds, tmp), store_url),
        "format": "memory",
        "shards": [],
        "train": len(ds.train),
        "val": len(ds.val),
        "test": len(ds.test),
        "classes": len(ds.classes),
        "shape": list(ds.input_shape()[1:]),
    }


def _prepare_shards(paths: Any, spec: Any, store_url: str) -> dict[str, Any]:
    from ice.sharded import write_sharded
    from ice.shards import shard_name
    from plumbing.log import progress
    from plumbing.shard_store import upload_shards

    summary: dict[str, Any] = {}
    shard_dir = paths.store / "shards"

    def write(tmp: Path) -> str:
        summary.update(write_sharded(spec, tmp, shard_dir, progress=progress))
        return str(summary["sha256"])

    ref = store_file(paths, "prepared", write, store_url)
    if store_url:
        upload_shards(paths, store_url, summary["shards"], lambda sha: shard_dir / shard_name(sha))
    return {
        "ref": ref,
        "format": "shards",
        **{k: summary[k] for k in ("shards", "train", "val", "test", "classes", "shape", "kind")},
    }
