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
    """Decode the source once into uint8 tensors with fixed train/val/test splits."""
    from ice.data import load_dataset, save_prepared

    paths = project_paths(root)
    cfg = dict(data_cfg)
    if cfg.get("root") and not Path(cfg["root"]).is_absolute():
        cfg["root"] = str(paths.root / cfg["root"])
    if not Path(cfg.get("cache_dir", "data/cache")).is_absolute():
        cfg["cache_dir"] = str(paths.root / cfg.get("cache_dir", "data/cache"))
    ds = load_dataset(cfg)
    return {
        "ref": store_file(paths, "prepared", lambda tmp: save_prepared(ds, tmp), store_url),
        "train": len(ds.train),
        "val": len(ds.val),
        "test": len(ds.test),
        "classes": len(ds.classes),
        "shape": list(ds.input_shape()[1:]),
    }
