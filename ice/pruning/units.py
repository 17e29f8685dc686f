"""Prunable units: a producer conv's output channels and the layers that follow them.

A unit is an output-channel dimension that shrinks as one. In the paper's networks it
never touches a residual sum: conv1 inside a residual block, each conv of a plain net,
the expansion channels of an inverted residual. Each unit lists its members and which
dimension of each one follows the channels. Other models get Torch-Pruning's groups
(:mod:`ice.pruning.graph`).
"""

from __future__ import annotations

from torch import nn

from ice.pruning.graph import graph_units
from ice.pruning.unit import Member, Unit

__all__ = ["Member", "Unit", "prunable_units"]


def _u(*members: tuple[str, str]) -> Unit:
    ms = tuple(Member(n, r) for n, r in members)
    return Unit(ms[0].name, ms)


def _join(prefix: str, name: str) -> str:
    return f"{prefix}.{name}" if prefix else name


def _block_units(prefix: str, m: nn.Module) -> list[Unit] | None:
    """Units of one of ``ice.models``' blocks, or None if ``m`` is not one."""
    p = lambda n: _join(prefix, n)  # noqa: E731
    if type(m).__name__ == "InvertedResidual":
        if not getattr(m, "expand", True):
            return []
        return [_u((p("conv1"), "out"), (p("bn1"), "bn"), (p("conv2"), "dw"), (p("bn2"), "bn"), (p("conv3"), "in"))]
    if type(m).__name__ == "BasicBlock":
        return [_u((p("conv1"), "out"), (p("bn1"), "bn"), (p("conv2"), "in"))]
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


def _paper_model(model: nn.Module) -> bool:
    """The networks of :mod:`ice.models` (the paper's CIFAR ResNets, VGG, MobileNetV2)."""
    from ice.models import VGG, CifarResNet, MobileNetV2

    return isinstance(model, CifarResNet | VGG | MobileNetV2)


def prunable_units(model: nn.Module) -> list[Unit]:
    """The ordered units that ICE steps over.

    The paper's networks (:mod:`ice.models`) keep their hand-written units: a residual
    block's inner channels (27 for ResNet-56, 75 for ResNet-152), each conv of VGG, each
    expansion of MobileNetV2. Every other model (torchvision, a user's net) gets one unit
    per Torch-Pruning pruning group, in model order (:mod:`ice.pruning.graph`); a model
    the graph cannot handle is refused with :class:`ice.pruning.graph.GraphError`.
    """
    if _paper_model(model):
        if type(model).__name__ == "VGG":
            units = _plain_units(model)
            if units is not None:
                return units
        units = []
        for name, m in model.named_modules():
            got = _block_units(name, m)
            if got is not None and name:
                units.extend(got)
        return units
    return graph_units(model)
