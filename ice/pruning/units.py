"""Prunable units: a producer conv's output channels and the layers that follow them.

A unit is an output-channel dimension that can shrink without touching a residual
sum: conv1 inside a residual block, each conv of a plain net, the expansion channels
of an inverted residual, the bottleneck of a dense layer. Each unit lists its members
and which dimension of each one follows the channels.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from torch import nn

__all__ = ["Member", "Unit", "prunable_units"]


@dataclass(frozen=True)
class Member:
    name: str  # module path inside the model
    role: str  # "out" (conv/linear rows), "in" (conv/linear columns), "bn", "dw" (depthwise conv)


@dataclass(frozen=True)
class Unit:
    name: str  # the producer conv's module path; stable across pruning
    members: tuple[Member, ...] = field(default_factory=tuple)

    @property
    def conv(self) -> str:
        return self.members[0].name

    def width(self, model: nn.Module) -> int:
        m = model.get_submodule(self.conv)
        assert isinstance(m, nn.Conv2d)
        return m.out_channels


def _u(*members: tuple[str, str]) -> Unit:
    ms = tuple(Member(n, r) for n, r in members)
    return Unit(ms[0].name, ms)


def _join(prefix: str, name: str) -> str:
    return f"{prefix}.{name}" if prefix else name


def _block_units(prefix: str, m: nn.Module) -> list[Unit] | None:
    """Units of a known residual/dense block type, or None if ``m`` is not one."""
    kind = type(m).__name__
    has = lambda *names: all(hasattr(m, n) for n in names)  # noqa: E731
    p = lambda n: _join(prefix, n)  # noqa: E731
    if kind == "InvertedResidual":
        if hasattr(m, "conv1") and has("bn1", "conv2", "bn2", "conv3"):  # ours
            if not getattr(m, "expand", True):
                return []
            return [_u((p("conv1"), "out"), (p("bn1"), "bn"), (p("conv2"), "dw"), (p("bn2"), "bn"), (p("conv3"), "in"))]
        seq = getattr(m, "conv", None)  # torchvision: conv = [ConvBNAct(expand)?, ConvBNAct(dw), Conv, BN]
        if isinstance(seq, nn.Sequential) and len(seq) == 4:
            return [
                _u(
                    (p("conv.0.0"), "out"),
                    (p("conv.0.1"), "bn"),
                    (p("conv.1.0"), "dw"),
                    (p("conv.1.1"), "bn"),
                    (p("conv.2"), "in"),
                )
            ]
        return []
    if has("conv1", "bn1", "conv2", "bn2", "conv3", "bn3"):  # bottleneck
        return [
            _u((p("conv1"), "out"), (p("bn1"), "bn"), (p("conv2"), "in")),
            _u((p("conv2"), "out"), (p("bn2"), "bn"), (p("conv3"), "in")),
        ]
    if has("conv1", "bn1", "conv2", "bn2"):  # basic residual block
        return [_u((p("conv1"), "out"), (p("bn1"), "bn"), (p("conv2"), "in"))]
    if kind == "_DenseLayer" and has("conv1", "norm2", "conv2"):
        return [_u((p("conv1"), "out"), (p("norm2"), "bn"), (p("conv2"), "in"))]
    return None


def _plain_units(model: nn.Module) -> list[Unit] | None:
    """Each conv of a plain chain (VGG-like): conv -> bn -> ... -> next conv or the classifier."""
    seq: list[tuple[str, nn.Module]] = [
        (n, m) for n, m in model.named_modules() if isinstance(m, nn.Conv2d | nn.BatchNorm2d | nn.Linear)
    ]
    convs = [n for n, m in seq if isinstance(m, nn.Conv2d)]
    if any(model.get_submodule(n).groups != 1 for n in convs):  # type: ignore[union-attr]
        return None
    units = []
    for i, (name, m) in enumerate(seq):
        if not isinstance(m, nn.Conv2d):
            continue
        members = [(name, "out")]
        j = i + 1
        if j < len(seq) and isinstance(seq[j][1], nn.BatchNorm2d):
            members.append((seq[j][0], "bn"))
            j += 1
        if j >= len(seq):
            return None
        nxt_name, nxt = seq[j]
        if (
            isinstance(nxt, nn.Conv2d)
            and nxt.in_channels == m.out_channels
            or isinstance(nxt, nn.Linear)
            and nxt.in_features == m.out_channels
        ):
            members.append((nxt_name, "in"))
        else:
            return None
        units.append(_u(*members))
    return units


def _is_plain(model: nn.Module) -> bool:
    from ice.models import VGG

    if isinstance(model, VGG):
        return True
    return type(model).__name__ == "VGG" and hasattr(model, "features")


def prunable_units(model: nn.Module) -> list[Unit]:
    """The ordered units that ICE steps over.

    Residual blocks give their internal channels, plain nets each conv, MobileNetV2
    each block's expansion channels and DenseNet each bottleneck. Anything else falls
    back to Torch-Pruning's dependency groups (one unit per conv whose output group
    touches no residual sum).
    """
    if _is_plain(model):
        units = _plain_units(model)
        if units is not None:
            return units
    units = []
    found_block = False
    for name, m in model.named_modules():
        got = _block_units(name, m)
        if got is not None and name:
            found_block = True
            units.extend(got)
    if found_block:
        return units
    units = _plain_units(model)
    if units is not None:
        return units
    return _dependency_units(model)


def _dependency_units(model: nn.Module) -> list[Unit]:
    import torch
    import torch_pruning as tp

    spec = getattr(model, "ice_spec", {})
    cin = spec.get("in_channels", 3)
    size = spec.get("image_size") or (224 if str(spec.get("arch", "")).startswith("tv:") else 32)
    h, w = (size, size) if isinstance(size, int) else size
    example = torch.zeros(1, cin, h, w)
    dg = tp.DependencyGraph().build_dependency(model, example_inputs=example)
    names = {m: n for n, m in model.named_modules()}
    units = []
    for name, m in model.named_modules():
        if not isinstance(m, nn.Conv2d) or m.groups != 1:
            continue
        group = dg.get_pruning_group(m, tp.prune_conv_out_channels, idxs=[0])
        members: list[tuple[str, str]] = [(name, "out")]
        ok = True
        for dep, _ in group:
            mod = dep.target.module
            fn = dep.handler
            if mod is m:
                continue
            if isinstance(mod, nn.BatchNorm2d):
                members.append((names[mod], "bn"))
            elif isinstance(mod, nn.Conv2d) and mod.groups > 1 and mod.groups == mod.in_channels == mod.out_channels:
                members.append((names[mod], "dw"))
            elif isinstance(mod, nn.Conv2d | nn.Linear) and fn in (
                tp.prune_conv_in_channels,
                tp.prune_linear_in_channels,
            ):
                members.append((names[mod], "in"))
            elif isinstance(mod, nn.Conv2d | nn.Linear):
                ok = False  # another producer shares these channels (a residual sum)
                break
        if ok and len(members) > 1:
            units.append(_u(*members))
    return units
