"""Small networks written the way users write them, reached as ``model.arch: "user_nets:<Name>"``.

Each takes ``num_classes`` (and ``in_channels``), as ``ice.models.build_model`` expects.
"""

from __future__ import annotations

import torch
from torch import nn


def _cbr(cin: int, cout: int, k: int = 3, stride: int = 1, groups: int = 1) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(cin, cout, k, stride, k // 2, groups=groups, bias=False), nn.BatchNorm2d(cout), nn.ReLU()
    )


class GroupedConcatNet(nn.Module):
    """A grouped 3x3 conv whose output is concatenated with a 1x1 branch."""

    def __init__(self, num_classes: int = 10, in_channels: int = 3):
        super().__init__()
        self.stem = _cbr(in_channels, 32)
        self.grouped = _cbr(32, 32, 3, groups=4)
        self.branch = _cbr(32, 16, 1)
        self.mix = _cbr(48, 64, 3, stride=2)
        self.head = nn.Linear(64, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.stem(x)
        x = torch.cat([self.grouped(x), self.branch(x)], dim=1)
        x = self.mix(x)
        return self.head(x.mean((2, 3)))


class DepthwiseSeparableNet(nn.Module):
    """Depthwise-separable blocks (depthwise 3x3, then pointwise 1x1)."""

    def __init__(self, num_classes: int = 10, in_channels: int = 3):
        super().__init__()
        layers: list[nn.Module] = [_cbr(in_channels, 24)]
        for cin, cout, stride in ((24, 48, 1), (48, 64, 2), (64, 96, 1)):
            layers += [_cbr(cin, cin, 3, stride, groups=cin), _cbr(cin, cout, 1)]
        self.features = nn.Sequential(*layers)
        self.classifier = nn.Linear(96, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.features(x).mean((2, 3)))


class SE(nn.Module):
    def __init__(self, c: int, r: int = 4):
        super().__init__()
        self.fc1 = nn.Conv2d(c, c // r, 1)
        self.fc2 = nn.Conv2d(c // r, c, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        s = torch.relu(self.fc1(x.mean((2, 3), keepdim=True)))
        return x * torch.sigmoid(self.fc2(s))


class SENet(nn.Module):
    """Convs with squeeze-and-excitation, and a residual sum."""

    def __init__(self, num_classes: int = 10, in_channels: int = 3):
        super().__init__()
        self.stem = _cbr(in_channels, 32)
        self.conv1 = _cbr(32, 64)
        self.se1 = SE(64)
        self.conv2 = _cbr(64, 32)
        self.se2 = SE(32)
        self.out = _cbr(32, 64, stride=2)
        self.fc = nn.Linear(64, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.stem(x)
        x = x + self.se2(self.conv2(self.se1(self.conv1(x))))
        return self.fc(self.out(x).mean((2, 3)))


class TwoHeadNet(nn.Module):
    """A shared trunk with two classifiers; both heads' outputs are the model's."""

    def __init__(self, num_classes: int = 10, in_channels: int = 3):
        super().__init__()
        self.trunk = nn.Sequential(_cbr(in_channels, 32), _cbr(32, 64, stride=2), _cbr(64, 64))
        self.head_a = nn.Linear(64, num_classes)
        self.head_b = nn.Sequential(nn.Linear(64, 32), nn.ReLU(), nn.Linear(32, 3))

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        f = self.trunk(x).mean((2, 3))
        return self.head_a(f), self.head_b(f)


class LSTMNet(nn.Module):
    """Not a CNN the graph can prune: refused up front."""

    def __init__(self, num_classes: int = 10, in_channels: int = 3):
        super().__init__()
        self.conv = _cbr(in_channels, 16)
        self.rnn = nn.LSTM(16, 16, batch_first=True)
        self.fc = nn.Linear(16, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        f = self.conv(x).flatten(2).transpose(1, 2)
        return self.fc(self.rnn(f)[0][:, -1])


class SplitStemNet(nn.Module):
    """A stem whose output is split into fixed 16-channel halves (``torch.split(x, 16)``): that
    one unit cannot be pruned (fewer channels leave one chunk); every other unit can."""

    def __init__(self, num_classes: int = 10, in_channels: int = 3) -> None:
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(in_channels, 32, 3, padding=1, bias=False), nn.BatchNorm2d(32), nn.ReLU())
        self.a = _cbr(16, 16)
        self.b = _cbr(16, 16)
        self.c = _cbr(32, 32)
        self.fc = nn.Linear(32, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        p, q = torch.split(self.stem(x), 16, dim=1)
        x = self.c(torch.cat([self.a(p), self.b(q)], 1))
        return self.fc(x.mean((2, 3)))
