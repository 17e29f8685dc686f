"""Model registry: CIFAR ResNets, CIFAR VGG-BN, MobileNetV2 (CIFAR stem) and torchvision.

Every model built here carries ``model.ice_spec`` (architecture name and constructor
arguments). Together with :func:`layer_widths` this describes a pruned model
completely: :func:`rebuild` makes the unpruned architecture and shrinks each layer to
the recorded widths, so a checkpoint needs nothing but tensors.
"""

from __future__ import annotations

import inspect
import math
import os
import re
import sys
from collections.abc import Callable
from typing import Any, Protocol

import torch
import torch.nn.functional as F
from torch import nn

__all__ = [
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
]


# ----------------------------------------------------------------------------- CIFAR ResNet
class BasicBlock(nn.Module):
    """3x3-3x3 residual block. conv1's output channels are the block's prunable unit."""

    def __init__(self, in_planes: int, planes: int, stride: int = 1, mid: int | None = None):
        super().__init__()
        mid = planes if mid is None else mid
        self.conv1 = nn.Conv2d(in_planes, mid, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(mid)
        self.conv2 = nn.Conv2d(mid, planes, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.shortcut: nn.Module = nn.Identity()
        if stride != 1 or in_planes != planes:
            # option B (1x1 conv projection): keeps every tensor a parameter, so
            # checkpoints rebuild from widths alone
            self.shortcut = nn.Sequential(nn.Conv2d(in_planes, planes, 1, stride, bias=False), nn.BatchNorm2d(planes))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = torch.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return torch.relu(out + self.shortcut(x))


class CifarResNet(nn.Module):
    def __init__(self, depth: int, num_classes: int = 10, in_channels: int = 3, base: int = 16):
        super().__init__()
        if (depth - 2) % 6 != 0 or depth < 8:
            raise ValueError(f"CIFAR ResNet depth must be 6n+2 (20, 32, 44, 56, 110, 152), got {depth}")
        n = (depth - 2) // 6
        self.conv1 = nn.Conv2d(in_channels, base, 3, 1, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(base)
        layers: list[nn.Module] = []
        in_planes = base
        for i, planes in enumerate((base, base * 2, base * 4)):
            blocks = []
            for j in range(n):
                stride = 2 if (i > 0 and j == 0) else 1
                blocks.append(BasicBlock(in_planes, planes, stride))
                in_planes = planes
            layers.append(nn.Sequential(*blocks))
        self.layer1, self.layer2, self.layer3 = layers
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(in_planes, num_classes)
        _init(self)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = torch.relu(self.bn1(self.conv1(x)))
        x = self.layer3(self.layer2(self.layer1(x)))
        return self.fc(torch.flatten(self.pool(x), 1))


# ----------------------------------------------------------------------------- VGG (CIFAR, BN)
_VGG_CFG: dict[int, list[int | str]] = {
    11: [64, "M", 128, "M", 256, 256, "M", 512, 512, "M", 512, 512, "M"],
    13: [64, 64, "M", 128, 128, "M", 256, 256, "M", 512, 512, "M", 512, 512, "M"],
    16: [64, 64, "M", 128, 128, "M", 256, 256, 256, "M", 512, 512, 512, "M", 512, 512, 512, "M"],
    19: [64, 64, "M", 128, 128, "M", 256, 256, 256, 256, "M", 512, 512, 512, 512, "M", 512, 512, 512, 512, "M"],
}


class VGG(nn.Module):
    """VGG with BatchNorm in its CIFAR form: conv stack, global pool, one linear layer."""

    def __init__(self, depth: int, num_classes: int = 10, in_channels: int = 3):
        super().__init__()
        layers: list[nn.Module] = []
        c = in_channels
        for v in _VGG_CFG[depth]:
            if v == "M":
                layers.append(nn.MaxPool2d(2, ceil_mode=True))
            else:
                assert isinstance(v, int)
                layers += [nn.Conv2d(c, v, 3, padding=1, bias=False), nn.BatchNorm2d(v), nn.ReLU(inplace=True)]
                c = v
        self.features = nn.Sequential(*layers)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.classifier = nn.Linear(c, num_classes)
        _init(self)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(torch.flatten(self.pool(self.features(x)), 1))


# ----------------------------------------------------------------------------- MobileNetV2 (CIFAR stem)
class InvertedResidual(nn.Module):
    def __init__(self, inp: int, oup: int, stride: int, expand: int):
        super().__init__()
        hidden = inp * expand
        self.use_res = stride == 1 and inp == oup
        self.expand = expand != 1
        if self.expand:
            self.conv1 = nn.Conv2d(inp, hidden, 1, bias=False)
            self.bn1 = nn.BatchNorm2d(hidden)
        self.conv2 = nn.Conv2d(hidden, hidden, 3, stride, 1, groups=hidden, bias=False)
        self.bn2 = nn.BatchNorm2d(hidden)
        self.conv3 = nn.Conv2d(hidden, oup, 1, bias=False)
        self.bn3 = nn.BatchNorm2d(oup)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu6(self.bn1(self.conv1(x))) if self.expand else x
        out = F.relu6(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        return x + out if self.use_res else out


class MobileNetV2(nn.Module):
    # (expansion, channels, repeats, stride); strides of the first two stages set to 1
    # for 32x32 inputs, as in the usual CIFAR adaptation
    _CFG = [(1, 16, 1, 1), (6, 24, 2, 1), (6, 32, 3, 2), (6, 64, 4, 2), (6, 96, 3, 1), (6, 160, 3, 2), (6, 320, 1, 1)]

    def __init__(self, num_classes: int = 10, in_channels: int = 3, width_mult: float = 1.0):
        super().__init__()
        c = _round(32 * width_mult)
        self.conv1 = nn.Conv2d(in_channels, c, 3, 1, 1, bias=False)  # CIFAR stem: stride 1
        self.bn1 = nn.BatchNorm2d(c)
        blocks = []
        for t, ch, n, s in self._CFG:
            out = _round(ch * width_mult)
            for i in range(n):
                blocks.append(InvertedResidual(c, out, s if i == 0 else 1, t))
                c = out
        self.blocks = nn.Sequential(*blocks)
        last = _round(1280 * max(1.0, width_mult))
        self.conv2 = nn.Conv2d(c, last, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(last)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.classifier = nn.Linear(last, num_classes)
        _init(self)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.relu6(self.bn1(self.conv1(x)))
        x = self.blocks(x)
        x = F.relu6(self.bn2(self.conv2(x)))
        return self.classifier(torch.flatten(self.pool(x), 1))


def _round(v: float, divisor: int = 8) -> int:
    return max(divisor, int(v + divisor / 2) // divisor * divisor)


def _init(model: nn.Module) -> None:
    for m in model.modules():
        if isinstance(m, nn.Conv2d):
            nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
        elif isinstance(m, nn.BatchNorm2d):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)
        elif isinstance(m, nn.Linear):
            bound = 1 / math.sqrt(m.in_features)
            nn.init.uniform_(m.weight, -bound, bound)
            nn.init.zeros_(m.bias)


# ----------------------------------------------------------------------------- registry
_BUILDERS: dict[str, Callable[..., nn.Module]] = {}
for _d in (20, 32, 44, 56, 110, 152):
    _BUILDERS[f"cifar_resnet{_d}"] = lambda d=_d, **kw: CifarResNet(d, **kw)
for _d in (11, 13, 16, 19):
    _BUILDERS[f"vgg{_d}_bn"] = lambda d=_d, **kw: VGG(d, **kw)
_BUILDERS["mobilenetv2"] = lambda **kw: MobileNetV2(**kw)


def available_archs() -> list[str]:
    """Registered names; torchvision classifiers are reached as ``tv:<name>``."""
    return sorted(_BUILDERS)


def is_known_arch(arch: str) -> bool:
    if arch in _BUILDERS:
        return True
    if arch.startswith("tv:"):
        return arch[3:] in _torchvision_classifiers()
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
    names, anything = _declared(obj)
    if "num_classes" not in names and not anything:
        raise ValueError(f"model.arch {arch!r}: {obj.__name__} takes no num_classes argument")
    return obj


# ----------------------------------------------------------------------------- trust
# user architectures named by trusted configuration (params) in this process; a checkpoint
# (untrusted data) may name one of these, a registered name or a torchvision classifier
_TRUSTED: set[str] = set()
TRUSTED_ENV = "ICE_TRUSTED_ARCHS"


def trust_arch(arch: str) -> None:
    """Let checkpoints name the user architecture ``arch`` (from the user's params) in this
    process and in the processes it starts (through ``$ICE_TRUSTED_ARCHS``)."""
    if arch in _BUILDERS or arch.startswith("tv:") or arch in trusted_archs():
        return
    _TRUSTED.add(arch)
    os.environ[TRUSTED_ENV] = ",".join(sorted(trusted_archs()))


def trusted_archs() -> set[str]:
    """The user architectures checkpoints may name here: trusted by params, or by ``$ICE_TRUSTED_ARCHS``."""
    env = {a.strip() for a in os.environ.get(TRUSTED_ENV, "").split(",") if a.strip()}
    return _TRUSTED | env


def _declared(cls: Any) -> tuple[set[str], bool]:
    """The keyword arguments ``cls`` declares, and whether it takes any (``**kwargs``)."""
    try:
        ps = inspect.signature(cls).parameters.values()
    except (TypeError, ValueError):
        return set(), False
    return {p.name for p in ps if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)}, any(
        p.kind is p.VAR_KEYWORD for p in ps
    )


def _registry_class(arch: str) -> type[nn.Module]:
    if arch.startswith("cifar_resnet"):
        return CifarResNet
    if arch.startswith("vgg"):
        return VGG
    return MobileNetV2


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
    if arch in _BUILDERS:
        allowed, _ = _declared(_registry_class(arch))
        allowed -= {"depth", "num_classes", "in_channels"}
    elif arch.startswith("tv:"):
        if arch[3:] not in _torchvision_classifiers():
            raise UnsafeSpecError(f"arch {arch!r} is not a torchvision classifier")
        # torchvision's builders pass kwargs to the model class; never let a file ask for weights (a download)
        bad = {"weights", "weights_backbone", "progress"} & set(kwargs)
        if bad:
            raise UnsafeSpecError(f"kwargs.{sorted(bad)[0]} is not allowed in a checkpoint")
        return
    elif arch == trusted_arch or arch in trusted_archs():
        cls = import_arch(arch)
        allowed, anything = _declared(cls)
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


def _torchvision_classifiers() -> list[str]:
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
    if arch in _BUILDERS:
        model = _BUILDERS[arch](num_classes=num_classes, in_channels=in_channels, **kwargs)
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
    names = _torchvision_classifiers()
    if name not in names:
        raise ValueError(f"unknown torchvision classifier {name!r}; choose one of {', '.join(names)}")
    model = tv.models.get_model(name, weights=None, num_classes=num_classes, **kwargs)
    if in_channels != 3:
        # swap the first conv for one with the right number of input channels
        for mod_name, mod in model.named_modules():
            if isinstance(mod, nn.Conv2d) and mod.in_channels == 3:
                _set_module(model, mod_name, _resized_conv(mod, in_channels, mod.out_channels))
                break
    return model


# ----------------------------------------------------------------------------- widths
def layer_widths(model: nn.Module) -> dict[str, list[int]]:
    """Per-layer widths: conv/linear ``[in, out]`` and batchnorm ``[features]``."""
    widths: dict[str, list[int]] = {}
    for name, m in model.named_modules():
        if isinstance(m, nn.Conv2d):
            widths[name] = [m.in_channels, m.out_channels]
        elif isinstance(m, nn.Linear):
            widths[name] = [m.in_features, m.out_features]
        elif isinstance(m, nn.BatchNorm2d | nn.BatchNorm1d):
            widths[name] = [m.num_features]
    return widths


def apply_widths(model: nn.Module, widths: dict[str, list[int]]) -> nn.Module:
    """Replace each layer whose width differs from ``widths`` with a fresh one of that width."""
    modules = dict(model.named_modules())
    for name, w in widths.items():
        m = modules.get(name)
        if m is None:
            raise ValueError(f"layer {name!r} from the widths is not in the model")
        if isinstance(m, nn.Conv2d) and [m.in_channels, m.out_channels] != list(w):
            _set_module(model, name, _resized_conv(m, w[0], w[1]))
        elif isinstance(m, nn.Linear) and [m.in_features, m.out_features] != list(w):
            new = nn.Linear(w[0], w[1], bias=m.bias is not None)
            _set_module(model, name, new)
        elif isinstance(m, nn.BatchNorm2d | nn.BatchNorm1d) and m.num_features != w[0]:
            _set_module(model, name, type(m)(w[0], eps=m.eps, momentum=m.momentum, affine=m.affine))
    return model


def adopt_shapes(model: nn.Module, state: dict[str, torch.Tensor]) -> nn.Module:
    """Give every parameter and buffer the shape it has in ``state``, for layers the widths
    do not describe (layer norms, group norms, PReLU, bare parameters such as ConvNeXt's
    layer scale), so that ``load_state_dict`` fits a model pruned through any graph."""
    for key, value in state.items():
        mod_name, _, attr = key.rpartition(".")
        try:
            m = model.get_submodule(mod_name) if mod_name else model
        except AttributeError:
            continue  # load_state_dict reports the unexpected key
        if isinstance(m, nn.Conv2d | nn.Linear | nn.modules.batchnorm._BatchNorm):
            continue  # the recorded widths rebuild these; a mismatch there is a corrupt file
        cur = m._parameters.get(attr) if attr in m._parameters else m._buffers.get(attr)
        if cur is None or cur.shape == value.shape:
            continue
        if attr in m._parameters:
            m._parameters[attr] = nn.Parameter(torch.empty_like(value), requires_grad=cur.requires_grad)
        else:
            m._buffers[attr] = torch.empty_like(value)
        if isinstance(m, nn.LayerNorm) and attr == "weight":
            m.normalized_shape = tuple(value.shape)
        elif isinstance(m, nn.GroupNorm) and attr == "weight":
            m.num_channels = int(value.shape[0])
        elif isinstance(m, nn.PReLU) and attr == "weight":
            m.num_parameters = int(value.shape[0])
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


def _resized_conv(m: nn.Conv2d, cin: int, cout: int) -> nn.Conv2d:
    depthwise = m.groups == m.in_channels and m.groups > 1
    groups = cin if depthwise else m.groups
    return nn.Conv2d(
        cin,
        cout,
        m.kernel_size,  # type: ignore[arg-type]
        m.stride,  # type: ignore[arg-type]
        m.padding,  # type: ignore[arg-type]
        m.dilation,  # type: ignore[arg-type]
        groups,
        bias=m.bias is not None,
        padding_mode=m.padding_mode,
    )


def _set_module(model: nn.Module, name: str, new: nn.Module) -> None:
    parent_name, _, child = name.rpartition(".")
    parent = model.get_submodule(parent_name) if parent_name else model
    setattr(parent, child, new)
