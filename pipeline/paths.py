"""Where things are: the project root, each stage's files, and checkpoint references.

Every path is relative to the project root: the ``root`` argument, else
``$ICE_PROJECT_DIR``, else the working directory. A worker that runs a deployed flow
from another directory therefore still reads and writes the project's files.

Tasks pass checkpoints and data by reference, ``{"uri": ..., "sha256": <hex>}``, never as
tensors. Task outputs go to the content store (:mod:`pipeline.store`): by default
``.ice-cache/store`` under the project (the uri is then the path relative to the root),
or ``s3://bucket/prefix`` when ``store.url`` says so. Neither DVC nor git tracks the
store, so a cached result stays valid after ``dvc repro`` has removed a stage's outs;
the flows copy the final files to their DVC outs.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ice.files import sha256_file

__all__ = ["CACHE_DIR", "project_root", "Paths", "make_ref", "s3_store", "store_of", "resolve", "store_path"]

CACHE_DIR = ".ice-cache"


def project_root(root: str | Path | None = None) -> Path:
    """The directory every relative path is resolved against."""
    if root is None:
        root = os.environ.get("ICE_PROJECT_DIR") or os.getcwd()
    return Path(root).expanduser().resolve()


@dataclass(frozen=True)
class Paths:
    """Where each stage reads and writes, under one project root."""

    root: Path

    @property
    def prepared(self) -> Path:
        return self.root / "data" / "prepared" / "dataset.pt"

    @property
    def prepared_record(self) -> Path:
        """What prepare recorded about its output: the sha256 and the split sizes."""
        return self.root / "data" / "prepared" / "dataset.json"

    @property
    def pretrained(self) -> Path:
        return self.root / "models" / "pretrained.pt"

    @property
    def pretrain_report(self) -> Path:
        return self.root / "reports" / "pretrain.json"

    @property
    def autotune(self) -> Path:
        return self.root / "models" / "autotune.json"

    def pruned(self, method: str) -> Path:
        return self.root / "models" / "pruned" / f"{method}.pt"

    def steps_csv(self, method: str) -> Path:
        return self.root / "reports" / "steps" / f"{method}.csv"

    def prune_report(self, method: str) -> Path:
        return self.root / "reports" / "prune" / f"{method}.json"

    @property
    def metrics(self) -> Path:
        return self.root / "reports" / "metrics.json"

    @property
    def compare(self) -> Path:
        return self.root / "reports" / "compare.md"

    @property
    def figures(self) -> Path:
        return self.root / "reports" / "figures"

    @property
    def plots_steps(self) -> Path:
        """Every method's steps in one CSV, for ``dvc plots``."""
        return self.root / "reports" / "plots" / "steps.csv"

    def method_config(self, method: str) -> Path:
        """What ``method`` reads (``scripts.method_config``): DVC's change detector for prune@method."""
        return self.root / "models" / "config" / f"{method}.json"

    def export(self, name: str, suffix: str) -> Path:
        return self.root / "models" / "export" / f"{name}{suffix}"

    @property
    def store(self) -> Path:
        return self.root / CACHE_DIR / "store"

    @property
    def results(self) -> Path:
        return self.root / CACHE_DIR / "results"

    def rel(self, path: Path) -> str:
        """``path`` as recorded: relative to the root when it lies in the project (through a
        symlinked ``.ice-cache``, ``data/`` or store too), else absolute (a cache on another disk)."""
        p = Path(os.path.abspath(path))  # normalised, symlinks kept: .ice-cache -> /big/disk stays .ice-cache/...
        for candidate in (p, p.resolve()):
            try:
                return candidate.relative_to(self.root).as_posix()
            except ValueError:
                continue
        return p.resolve().as_posix()


def make_ref(paths: Paths, path: Path, sha256: str | None = None) -> dict[str, str]:
    """A reference to a file under the project: its path relative to the root, plus sha256."""
    return {"uri": paths.rel(path), "sha256": sha256 or sha256_file(path)}


def s3_store(paths: Paths, where: str) -> Any:
    """The S3 store that ``where`` (a store url, or an object's uri in it) belongs to, cached under ``paths``."""
    from pipeline.store import S3Store, StoreUrl, parse_store_url

    loc = parse_store_url(where)
    head, sep, _ = loc.prefix.rpartition("objects/") if "/objects/" in f"/{loc.prefix}" else ("", "", "")
    if sep:  # an object's uri: the store is what comes before objects/
        loc = StoreUrl(loc.bucket, head.rstrip("/"))
    return S3Store(loc, paths.store)


def store_of(ref: dict[str, str] | None) -> str:
    """The store url a reference lives in ("" for the local store), where a task's outputs go too."""
    from pipeline.store import is_s3

    uri = (ref or {}).get("uri", "")
    return s3_store(Paths(Path(".")), uri).url if is_s3(uri) else ""


def resolve(paths: Paths, ref: dict[str, str]) -> Path:
    """A local, verified-on-read path for ``ref``; a clear one-line error when it has gone."""
    from pipeline.store import is_s3

    uri = ref["uri"]
    if is_s3(uri):
        return s3_store(paths, uri).get({"uri": uri, "sha256": ref["sha256"]})  # type: ignore[no-any-return]
    p = paths.root / uri
    if not p.exists():
        raise FileNotFoundError(
            f"{uri} (sha256 {ref['sha256'][:12]}…) is missing; a cached result points at it. "
            f"Rerun with --refresh-cache, or remove {CACHE_DIR}/ to start clean."
        )
    return p


def store_path(paths: Paths, stem: str, sha256: str, suffix: str = ".pt") -> Path:
    return paths.store / f"{stem}-{sha256[:16]}{suffix}"
