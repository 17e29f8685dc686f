"""Models by concern: the networks (:mod:`~ice.models.nets`), architectures by name in one
table (:mod:`~ice.models.archs`), the checkpoint trust policy (:mod:`~ice.models.trust`) and
width surgery (:mod:`~ice.models.widths`). The names below are the public surface."""

from __future__ import annotations

from ice.models.archs import (
    ARCHS,
    Arch,
    DataShape,
    available_archs,
    build_model,
    import_arch,
    is_known_arch,
    rebuild,
    seeded_model,
)
from ice.models.nets import VGG, BasicBlock, CifarResNet, InvertedResidual, MobileNetV2
from ice.models.trust import TRUSTED_ENV, UnsafeSpecError, check_spec, trust_arch, trusted_archs
from ice.models.widths import adopt_shapes, apply_widths, layer_widths

__all__ = [
    "ARCHS",
    "Arch",
    "build_model",
    "seeded_model",
    "available_archs",
    "is_known_arch",
    "import_arch",
    "DataShape",
    "layer_widths",
    "apply_widths",
    "rebuild",
    "CifarResNet",
    "BasicBlock",
    "VGG",
    "MobileNetV2",
    "InvertedResidual",
    "adopt_shapes",
    "TRUSTED_ENV",
    "UnsafeSpecError",
    "check_spec",
    "trust_arch",
    "trusted_archs",
]
