"""Compatibility shim: make torchvision 0.28.0 importable on a CPU-only torch build.

PyPI's torchvision 0.28.0 is built against CUDA torch. On the CPU build its compiled
extension cannot load, and ``import torchvision`` then fails while registering fake
kernels for ``torchvision::nms`` and ``torchvision::qnms``, whose schemas only the
extension defines. When that happens we define the two schemas (no kernels) and
import again. Where the extension loads, the first import succeeds and nothing is
touched. Models and datasets work either way; detection ops (``torchvision.ops.nms``)
stay unavailable without the extension, and this project never uses them.
"""

from __future__ import annotations

import sys
from types import ModuleType

import torch

__all__ = ["import_torchvision", "shim_applied"]

_SCHEMAS = {
    "nms": "nms(Tensor dets, Tensor scores, float iou_threshold) -> Tensor",
    "qnms": "qnms(Tensor dets, Tensor scores, float iou_threshold) -> Tensor",
}
_lib: torch.library.Library | None = None  # kept alive: dropping it would undefine the ops


def shim_applied() -> bool:
    """Whether this process needed the schema definitions."""
    return _lib is not None


def _missing_schema(err: BaseException) -> bool:
    return isinstance(err, RuntimeError) and "operator torchvision::" in str(err) and "does not exist" in str(err)


def _define_schemas() -> None:
    global _lib
    lib = torch.library.Library("torchvision", "FRAGMENT")
    for name, schema in _SCHEMAS.items():
        try:
            torch._C._dispatch_find_schema_or_throw(f"torchvision::{name}", "")
        except RuntimeError:
            lib.define(schema)
    _lib = lib


def import_torchvision() -> ModuleType:
    """``import torchvision``, defining the missing op schemas first if the import needs them."""
    if "torchvision" in sys.modules and hasattr(sys.modules["torchvision"], "models"):
        return sys.modules["torchvision"]
    try:
        import torchvision

        return torchvision
    except RuntimeError as err:
        if not _missing_schema(err):
            raise
    for name in [m for m in sys.modules if m == "torchvision" or m.startswith("torchvision.")]:
        del sys.modules[name]
    _define_schemas()
    import torchvision

    return torchvision
