"""The checkpoint trust policy: a checkpoint never chooses code to run.

A checkpoint (untrusted data) may name a registered architecture, a torchvision classifier,
or a user architecture that trusted configuration named: the params of this process
(:func:`trust_arch`, called by whoever runs with them, never by validation) or
``$ICE_TRUSTED_ARCHS``. :func:`check_spec` refuses anything else before it is imported.
"""

from __future__ import annotations

import os
from typing import Any

from ice.models.archs import ARCHS, declared_kwargs, import_arch, torchvision_classifiers

__all__ = ["TRUSTED_ENV", "trust_arch", "trusted_archs", "UnsafeSpecError", "check_spec"]

# user architectures named by trusted configuration (params) in this process; a checkpoint
# (untrusted data) may name one of these, a registered name or a torchvision classifier
_TRUSTED: set[str] = set()
TRUSTED_ENV = "ICE_TRUSTED_ARCHS"


def trust_arch(arch: str) -> None:
    """Let checkpoints name the user architecture ``arch`` (from the user's params) in this
    process and in the processes it starts (through ``$ICE_TRUSTED_ARCHS``)."""
    if arch in ARCHS or arch.startswith("tv:") or arch in trusted_archs():
        return
    _TRUSTED.add(arch)
    os.environ[TRUSTED_ENV] = ",".join(sorted(trusted_archs()))


def trusted_archs() -> set[str]:
    """The user architectures checkpoints may name here: trusted by params, or by ``$ICE_TRUSTED_ARCHS``."""
    env = {a.strip() for a in os.environ.get(TRUSTED_ENV, "").split(",") if a.strip()}
    return _TRUSTED | env


class UnsafeSpecError(ValueError):
    """A checkpoint's architecture spec names code that its reader did not choose to run."""


def check_spec(spec: Any, trusted_arch: str | None = None) -> None:
    """Refuse a checkpoint spec that would make :func:`rebuild` run code its reader did not choose.

    The arch must be a registered name, a torchvision classifier (``tv:<name>``), or a user
    architecture that trusted configuration named (``trusted_arch``, :func:`trust_arch` or
    ``$ICE_TRUSTED_ARCHS``). Its kwargs must be ones the builder's class declares, with plain
    values. Nothing is imported or called before this passes."""
    if not isinstance(spec, dict):
        raise UnsafeSpecError(f"spec is {type(spec).__name__}, not a mapping")
    arch = spec.get("arch")
    if not isinstance(arch, str) or len(arch) > 200:
        raise UnsafeSpecError(f"arch {str(arch)[:80]!r} is not an architecture name")
    for key in ("num_classes", "in_channels"):
        v = spec.get(key, 3)
        if not isinstance(v, int) or isinstance(v, bool) or not 1 <= v <= 1_000_000:
            raise UnsafeSpecError(f"{key} {str(v)[:80]!r} is not a positive integer of sane size")
    kwargs = spec.get("kwargs", {})
    if not isinstance(kwargs, dict) or any(not isinstance(k, str) for k in kwargs):
        raise UnsafeSpecError("kwargs is not a mapping of names")
    for k, v in kwargs.items():
        if not isinstance(v, str | int | float | bool | type(None) | list | tuple):
            raise UnsafeSpecError(f"kwargs.{k} is {type(v).__name__}, not a plain value")
    if arch in ARCHS:
        allowed, _ = declared_kwargs(ARCHS[arch].cls)
        allowed -= {*ARCHS[arch].fixed, "num_classes", "in_channels"}
    elif arch.startswith("tv:"):
        if arch[3:] not in torchvision_classifiers():
            raise UnsafeSpecError(f"arch {arch!r} is not a torchvision classifier")
        # torchvision's builders pass kwargs to the model class; never let a file ask for weights (a download)
        bad = {"weights", "weights_backbone", "progress"} & set(kwargs)
        if bad:
            raise UnsafeSpecError(f"kwargs.{sorted(bad)[0]} is not allowed in a checkpoint")
        return
    elif arch == trusted_arch or arch in trusted_archs():
        cls = import_arch(arch)
        allowed, anything = declared_kwargs(cls)
        if anything:
            return
    else:
        raise UnsafeSpecError(
            f"arch {arch[:80]!r} is neither a registered architecture nor the model.arch of your params "
            "(a checkpoint never chooses code to run)"
        )
    extra = sorted(set(kwargs) - allowed)
    if extra:
        raise UnsafeSpecError(f"kwargs.{extra[0]} is not an argument of {arch!r}")
