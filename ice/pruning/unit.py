"""A prunable unit: the one type :mod:`ice.pruning.units` (the paper's hand-written units)
and :mod:`ice.pruning.graph` (Torch-Pruning's groups) both produce."""

from __future__ import annotations

from dataclasses import dataclass, field

from torch import nn

__all__ = ["Member", "Unit"]


@dataclass(frozen=True)
class Member:
    name: str  # module path inside the model
    role: str  # "out" (conv/linear rows), "in" (conv/linear columns), "bn", "dw" (depthwise conv)


@dataclass(frozen=True)
class Unit:
    name: str  # the producer conv's module path; stable across pruning
    members: tuple[Member, ...] = field(default_factory=tuple)
    engine: str = "paper"  # "paper": hand-written members; "graph": a Torch-Pruning group
    channel_groups: int = 1  # removal keeps the same count in each of these channel groups

    @property
    def conv(self) -> str:
        return self.members[0].name

    def width(self, model: nn.Module) -> int:
        m = model.get_submodule(self.conv)
        if isinstance(m, nn.Linear):
            return m.out_features
        assert isinstance(m, nn.Conv2d)
        return m.out_channels
