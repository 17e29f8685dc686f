"""Where things are: the project root, each stage's files, and checkpoint references.

Every path is relative to the project root: the ``root`` argument, else
``$ICE_PROJECT_DIR``, else the working directory. A worker that runs a deployed flow
from another directory therefore still reads and writes the project's files.

Tasks pass checkpoints and data by reference, ``{"uri": ..., "sha256": <hex>}``, never as
tensors; where a reference's bytes live is :mod:`plumbing.store`'s business.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from ice.files import sha256_file

__all__ = ["CACHE_DIR", "project_root", "Paths", "make_ref"]

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
