"""Architectures by name: one table of the registered networks, torchvision classifiers as
``tv:<name>``, and a user's own ``package.module:Class``.

Every model built here carries ``model.ice_spec`` (architecture name and constructor
arguments). Together with :func:`ice.models.widths.layer_widths` this describes a pruned
model completely: :func:`rebuild` makes the unpruned architecture and shrinks each layer to
the recorded widths, so a checkpoint needs nothing but tensors.
"""

from __future__ import annotations

import inspect
import re
import sys
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Protocol

import torch
from torch import nn

from ice.models.nets import VGG, CifarResNet, MobileNetV2
from ice.models.widths import apply_widths, resized_conv, set_module

__all__ = [
    "Arch",
    "ARCHS",
    "available_archs",
    "is_known_arch",
    "import_arch",
    "declared_kwargs",
    "torchvision_classifiers",
    "build_model",
    "seeded_model",
    "rebuild",
    "DataShape",
]


@dataclass(frozen=True)
class Arch:
    """A registered architecture: its class, and the constructor arguments its name fixes."""

    cls: type[nn.Module]
    fixed: Mapping[str, Any] = field(default_factory=dict)

    def build(self, **kwargs: Any) -> nn.Module:
        return self.cls(**self.fixed, **kwargs)


# The one table: a name is registered here or nowhere (nothing is picked by a prefix).
ARCHS: dict[str, Arch] = {
    **{f"cifar_resnet{d}": Arch(CifarResNet, {"depth": d}) for d in (20, 32, 44, 56, 110, 152)},
    **{f"vgg{d}_bn": Arch(VGG, {"depth": d}) for d in (11, 13, 16, 19)},
    "mobilenetv2": Arch(MobileNetV2),
}


def available_archs() -> list[str]:
    """Registered names; torchvision classifiers are reached as ``tv:<name>``."""
    return sorted(ARCHS)


def is_known_arch(arch: str) -> bool:
    """Whether ``arch`` names something :func:`build_model` can build (a user class is imported, not called)."""
    if arch in ARCHS:
        return True
    if arch.startswith("tv:"):
        return arch[3:] in torchvision_classifiers()
    if ":" in arch:
        try:
            import_arch(arch)
        except ValueError:
            return False
        return True
    return False


_IMPORT_PATH = re.compile(r"^[A-Za-z_]\w*(\.[A-Za-z_]\w*)*:[A-Za-z_]\w*(\.[A-Za-z_]\w*)*$")


def import_arch(arch: str) -> type[nn.Module]:
    """The ``nn.Module`` class behind a user architecture ``"package.module:Name"``.

    Nothing is called here. The path must be well formed, must not point into the standard
    library (which holds no network, and whose modules can act on import: ``this`` prints),
    and must resolve to a subclass of ``torch.nn.Module``: a function (``logging:basicConfig``,
    ``os:system``) is refused before anything could call it."""
    import importlib

    if not _IMPORT_PATH.match(arch):
        raise ValueError(f"model.arch {arch!r}: not an import path of the form package.module:Class")
    mod_name, _, attr = arch.partition(":")
    top = mod_name.split(".")[0]
    if top in sys.stdlib_module_names or top in sys.builtin_module_names:
        raise ValueError(f"model.arch {arch!r}: {top} is a standard-library module, which holds no network")
    try:
        obj: Any = importlib.import_module(mod_name)
        for part in attr.split("."):
            obj = getattr(obj, part)
    except (ImportError, AttributeError) as err:
        raise ValueError(f"model.arch {arch!r}: cannot import it ({type(err).__name__}: {err})") from None
    if not (isinstance(obj, type) and issubclass(obj, nn.Module)):
        name = getattr(obj, "__name__", None)
        what = (
            obj.__name__
            if isinstance(obj, type)
            else f"{name} (a {type(obj).__name__})"
            if name
            else type(obj).__name__
        )
        raise ValueError(f"model.arch {arch!r}: {what} is not a torch.nn.Module subclass")
    names, anything = declared_kwargs(obj)
    if "num_classes" not in names and not anything:
        raise ValueError(f"model.arch {arch!r}: {obj.__name__} takes no num_classes argument")
    return obj


def declared_kwargs(cls: Any) -> tuple[set[str], bool]:
    """The keyword arguments ``cls`` declares, and whether it takes any (``**kwargs``)."""
    try:
        ps = inspect.signature(cls).parameters.values()
    except (TypeError, ValueError):
        return set(), False
    return {p.name for p in ps if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)}, any(
        p.kind is p.VAR_KEYWORD for p in ps
    )


def _build_user(arch: str, num_classes: int, in_channels: int, **kwargs: Any) -> nn.Module:
    builder = import_arch(arch)
    try:
        accepted = dict(inspect.signature(builder).parameters)
    except (TypeError, ValueError):
        accepted = {}
    if "in_channels" in accepted or any(p.kind is p.VAR_KEYWORD for p in accepted.values()):
        kwargs = {"in_channels": in_channels, **kwargs}
    elif in_channels != 3:
        raise ValueError(f"model.arch {arch!r} takes no in_channels argument, but the data has {in_channels} channels")
    model = builder(num_classes=num_classes, **kwargs)
    if not isinstance(model, nn.Module):
        raise ValueError(f"model.arch {arch!r} returned {type(model).__name__}, not a torch.nn.Module")
    return model


def torchvision_classifiers() -> list[str]:
    from ice._compat import import_torchvision

    tv = import_torchvision()
    return sorted(tv.models.list_models(module=tv.models))


def build_model(
    arch: str, num_classes: int, in_channels: int = 3, *, image_size: tuple[int, int] | None = None, **kwargs: Any
) -> nn.Module:
    """Build an unpruned model by name. Unknown names raise ``ValueError`` listing the choices.

    ``image_size`` (H, W) is recorded in ``model.ice_spec`` for whoever needs an input
    shape later (MAC counts, serving signatures); it does not change the network.
    """
    if arch in ARCHS:
        model = ARCHS[arch].build(num_classes=num_classes, in_channels=in_channels, **kwargs)
    elif arch.startswith("tv:"):
        model = _build_torchvision(arch[3:], num_classes, in_channels, **kwargs)
    elif ":" in arch:
        model = _build_user(arch, num_classes, in_channels, **kwargs)
    else:
        raise ValueError(
            f"unknown arch {arch!r}; choose one of {', '.join(available_archs())}, tv:<torchvision classifier> "
            "or package.module:Class (a user network taking num_classes)"
        )
    spec: dict[str, Any] = {
        "arch": arch,
        "num_classes": num_classes,
        "in_channels": in_channels,
        "kwargs": dict(kwargs),
    }
    if image_size is not None:
        spec["image_size"] = [int(v) for v in image_size]
    model.ice_spec = spec  # type: ignore[assignment]
    return model


class DataShape(Protocol):
    """What a model is built for: any :class:`ice.data.Dataset` has these."""

    @property
    def num_classes(self) -> int: ...

    @property
    def in_channels(self) -> int: ...

    @property
    def image_size(self) -> tuple[int, int]: ...


def seeded_model(arch: str, data: DataShape, seed: int) -> nn.Module:
    """A fresh ``arch`` for ``data``'s classes, channels and image size, initialised under
    ``torch.manual_seed(seed)``: pre-training's first epoch and every from-scratch method start here."""
    torch.manual_seed(seed)
    return build_model(arch, data.num_classes, data.in_channels, image_size=data.image_size)


def _build_torchvision(name: str, num_classes: int, in_channels: int, **kwargs: Any) -> nn.Module:
    from ice._compat import import_torchvision

    tv = import_torchvision()
    names = torchvision_classifiers()
    if name not in names:
        raise ValueError(f"unknown torchvision classifier {name!r}; choose one of {', '.join(names)}")
    model = tv.models.get_model(name, weights=None, num_classes=num_classes, **kwargs)
    if in_channels != 3:
        # swap the first conv for one with the right number of input channels
        for mod_name, mod in model.named_modules():
            if isinstance(mod, nn.Conv2d) and mod.in_channels == 3:
                set_module(model, mod_name, resized_conv(mod, in_channels, mod.out_channels))
                break
    return model


def rebuild(spec: dict[str, Any], widths: dict[str, list[int]] | None = None) -> nn.Module:
    """Rebuild a (possibly pruned) model from its ``ice_spec`` and per-layer widths."""
    size = spec.get("image_size")
    model = build_model(
        spec["arch"],
        spec["num_classes"],
        spec.get("in_channels", 3),
        image_size=tuple(size) if isinstance(size, list | tuple) else None,
        **spec.get("kwargs", {}),
    )
    if widths:
        apply_widths(model, widths)
    return model
