"""Data and models as tasks see them: loaded from references (decoded once per process),
saved to the content store under their sha256, and the device and params a task's config names."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from ice.files import temp_beside
from plumbing.paths import Paths, project_root
from plumbing.store import resolve, store_for

__all__ = ["params_of", "Unread", "task_device", "load_data", "load_model", "save_model", "accuracies"]

_DATA: dict[str, Any] = {}


_MODELS: dict[str, Any] = {}


# ----------------------------------------------------------------------------- loading
class Unread:
    """A params section, or key of one, that a task's config leaves out: reading it is an
    error, where a default would silently stand in for a value the cache key does not hold."""

    def __init__(self, where: str, section: Any = None, keys: frozenset[str] = frozenset()) -> None:
        self._where, self._section, self._keys = where, section, keys

    def __getattr__(self, key: str) -> Any:  # only called for what the instance itself lacks
        if key.startswith("_"):
            raise AttributeError(key)
        if key in self._keys:
            return getattr(self._section, key)
        raise AttributeError(
            f"a task read params.{self._where}.{key}, which its config leaves out: add the section to the "
            "method's reads (ice.methods.registry) so that it is part of the task's cache key"
        )


def params_of(cfg: dict[str, Any]) -> Any:
    """The params a task's config holds, validated; every section or key the config leaves
    out (a method's config holds only what it reads, :func:`ice.methods.registry.method_inputs`)
    is :class:`Unread` instead of a default."""
    from ice.config import Params, parse_params
    from ice.models import trust_arch

    params = parse_params(cfg, source="task config")
    trust_arch(params.model.arch)  # a task's config comes from the run's params: trusted configuration
    absent: dict[str, Any] = {}
    for name in Params.model_fields:
        if name not in cfg:
            absent[name] = Unread(name)
        elif isinstance(cfg[name], dict) and set(cfg[name]) < set(type(getattr(params, name)).model_fields):
            absent[name] = Unread(name, getattr(params, name), frozenset(cfg[name]))
    return params.model_copy(update=absent)


def task_device(cfg: dict[str, Any]) -> Any:
    from ice.train import pick_device

    return pick_device(cfg.get("train", {}).get("device", "auto"))


def load_data(paths: Paths, ref: dict[str, str]) -> Any:
    """The prepared dataset, decoded once per process."""
    from ice.data import load_prepared
    from plumbing.shard_store import shard_locator

    key = ref["sha256"]
    if key not in _DATA:
        _DATA.clear()  # one dataset at a time
        _DATA[key] = load_prepared(resolve(paths, ref), sha256=key, locate=shard_locator(paths, ref))
    return _DATA[key]


def load_model(paths: Paths, ref: dict[str, str], device: Any) -> Any:
    from ice.checkpoint import load_checkpoint

    model, _ = load_checkpoint(resolve(paths, ref), sha256=ref["sha256"], map_location=device)
    return model


def load_teacher(paths: Paths, ref: dict[str, str], device: Any) -> Any:
    """The unpruned model, for distillation; kept in memory across steps."""
    key = ref["sha256"]
    if key not in _MODELS:
        _MODELS.clear()
        _MODELS[key] = load_model(paths, ref, device).eval()
    return _MODELS[key]


def save_model(paths: Paths, model: Any, stem: str, meta: dict[str, Any], to: str = "") -> dict[str, str]:
    """Save to the content store ``to`` ("" local, else an S3 store url); the name carries the sha256."""
    from ice.checkpoint import save_checkpoint

    return store_file(paths, stem, lambda tmp: save_checkpoint(tmp, model, meta), to)


def project_paths(root: str) -> Paths:
    """The project's paths on this machine: ``root`` where it exists here, else this worker's
    own project (``$ICE_PROJECT_DIR`` or the working directory), e.g. on a Dask worker on
    another machine, where only the local download cache is used."""
    return Paths(Path(root)) if Path(root).is_dir() else Paths(project_root(None))


def store_file(paths: Paths, stem: str, write: Any, to: str = "") -> dict[str, str]:
    """Write through ``write(tmp_path) -> sha256`` and move the file to its sha-named place;
    with an S3 store ``to``, upload it too (it stays in the local cache, already verified).

    The temporary name is unique to this write (two processes storing the same step at
    once never share it), and the rename happens only after the hash is known, so a
    sha-named file always holds the bytes its name says.
    """
    fd, tmp = temp_beside(paths.store / stem, ".pending")
    os.close(fd)
    try:
        return store_for(paths, to).save(stem, tmp, write(tmp))
    finally:
        tmp.unlink(missing_ok=True)


def accuracies(model: Any, data: Any, batch_size: int = 512) -> dict[str, float]:
    from ice.train import accuracy

    return {
        "val_acc": accuracy(model, data, "val", batch_size=batch_size)["acc"],
        "test_acc": accuracy(model, data, "test", batch_size=batch_size)["acc"],
    }
