"""Width surgery: read a model's per-layer widths, shrink layers to recorded widths, and give
other parameters the shapes a state dict has. Nothing here knows an architecture's name."""

from __future__ import annotations

import torch
from torch import nn

__all__ = ["layer_widths", "apply_widths", "adopt_shapes", "resized_conv", "set_module"]


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
            set_module(model, name, resized_conv(m, w[0], w[1]))
        elif isinstance(m, nn.Linear) and [m.in_features, m.out_features] != list(w):
            new = nn.Linear(w[0], w[1], bias=m.bias is not None)
            set_module(model, name, new)
        elif isinstance(m, nn.BatchNorm2d | nn.BatchNorm1d) and m.num_features != w[0]:
            set_module(model, name, type(m)(w[0], eps=m.eps, momentum=m.momentum, affine=m.affine))
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


def resized_conv(m: nn.Conv2d, cin: int, cout: int) -> nn.Conv2d:
    """A fresh conv like ``m`` with ``cin`` inputs and ``cout`` outputs (a depthwise conv stays depthwise)."""
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


def set_module(model: nn.Module, name: str, new: nn.Module) -> None:
    """Put ``new`` where the submodule called ``name`` (dotted) sits in ``model``."""
    parent_name, _, child = name.rpartition(".")
    parent = model.get_submodule(parent_name) if parent_name else model
    setattr(parent, child, new)
