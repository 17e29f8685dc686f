"""Units for any CNN, from Torch-Pruning's dependency graph.

Outside the paper's own networks (``ice.models``), a unit is one Torch-Pruning
pruning group: a set of channels that must shrink together, through grouped and
depthwise convs, concatenations, channel shuffles, squeeze-and-excitation and
residual sums. The unit is named after the group's root layer (a conv or linear
whose output channels the group removes) and lists every layer the group touches.

Safety: a model the graph cannot handle is refused before anything changes (one line,
naming the layer), and every surgery is followed by a forward pass on a probe batch;
if that fails, the model is restored and the step refused, so a broken model is
never produced.
"""

from __future__ import annotations

import math
import weakref
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from ice.pruning.unit import Member, Unit

__all__ = ["GraphError", "graph_units", "graph_prune", "graph_group", "example_input", "check_supported"]


class GraphError(ValueError):
    """The model, or one of its layers, cannot be pruned through the dependency graph."""


# torchvision's minimum input sizes above 1 pixel; Inception's auxiliary head, traced in
# training mode, needs its full 299 pixels
_TRAIN_MIN_SIZE = {"inception_v3": 299}
_MIN_SIZE = {"inception_v3": 75, "alexnet": 63, "squeezenet1_0": 21, "squeezenet1_1": 17, "googlenet": 15}


def _arch(model: nn.Module) -> str:
    return str(getattr(model, "ice_spec", {}).get("arch", type(model).__name__))


def example_input(model: nn.Module, batch: int = 2, *, training: bool = False) -> torch.Tensor:
    """A probe batch the model accepts: its recorded channels and image size (at least the
    architecture's minimum, in ``training`` mode or in inference), batch 2 so that batch norm
    in training mode is defined."""
    spec = getattr(model, "ice_spec", {}) or {}
    size = spec.get("image_size") or 32
    h, w = (size, size) if isinstance(size, int) else size
    arch = str(spec.get("arch", ""))[3:] if str(spec.get("arch", "")).startswith("tv:") else ""
    low = max(_MIN_SIZE.get(arch, 1), _TRAIN_MIN_SIZE.get(arch, 1) if training else 1)
    h, w = max(h, low), max(w, low)
    try:
        dev = next(model.parameters()).device
    except StopIteration:
        dev = torch.device("cpu")
    g = torch.Generator().manual_seed(0)
    return torch.randn(batch, spec.get("in_channels", 3), h, w, generator=g).to(dev)


def check_supported(model: nn.Module) -> None:
    """Refuse, in one line naming the layer, what unit-wise channel pruning cannot handle."""
    for name, m in model.named_modules():
        kind = type(m).__name__
        if isinstance(m, nn.MultiheadAttention) or "Attention" in kind:
            raise GraphError(
                f"{_arch(model)}: layer {name!r} ({kind}) couples channels into attention heads, which "
                "structured pruning does not handle; prune its weights instead (a schedule method with "
                "schedule.granularity: weight)"
            )
        if isinstance(m, nn.ConvTranspose2d | nn.Conv3d | nn.Conv1d | nn.RNNBase | nn.Embedding):
            raise GraphError(
                f"{_arch(model)}: layer {name!r} ({kind}) is not a 2-d CNN layer; structured pruning handles "
                "Conv2d, Linear and normalisation layers"
            )


@dataclass
class _Graph:
    dg: Any
    heads: list[nn.Module]
    names: dict[nn.Module, str]
    key: tuple[int, ...]


def _train_forward(model: nn.Module, x: torch.Tensor) -> Any:
    model.train()
    return model(x)


def _outputs(out: Any) -> Any:
    """Every tensor of a model's output (GoogLeNet and Inception return named tuples)."""
    if isinstance(out, torch.Tensor):
        return out
    if isinstance(out, tuple | list):
        return [t for o in out for t in ([_outputs(o)] if isinstance(o, torch.Tensor) else _outputs(o))]
    if isinstance(out, dict):
        return _outputs(list(out.values()))
    return out


def _tolerate_unmappable_reshapes() -> None:
    """Torch-Pruning (1.6) raises ZeroDivisionError on a reshape whose channel mapping it
    cannot infer (ShuffleNet's channel shuffle), on every trace and group query. Mark such a
    node instead (``_ice_opaque``); groups through it are never units (:func:`_permuted`).
    Only that failure changes: every other reshape maps as before."""
    from torch_pruning.dependency import index_mapping

    orig = index_mapping.update_reshape_index_mapping
    if getattr(orig, "_ice_tolerant", False):
        return

    def tolerant(graph: Any, node: Any) -> None:
        try:
            orig(graph, node)
        except ZeroDivisionError:
            node._ice_opaque = True

    tolerant._ice_tolerant = True  # type: ignore[attr-defined]
    index_mapping.update_reshape_index_mapping = tolerant


_CACHE: weakref.WeakKeyDictionary[nn.Module, _Graph] = weakref.WeakKeyDictionary()


def _key(model: nn.Module) -> tuple[int, ...]:
    return tuple(id(m) for m in model.modules())


def _heads(dg: Any) -> list[nn.Module]:
    """Layers whose outputs reach the model's output without passing another conv or
    linear: the classifier(s). Their output channels are the classes, never pruned."""
    heads: list[nn.Module] = []
    for m, node in dg.module2node.items():
        if not isinstance(m, nn.Conv2d | nn.Linear):
            continue
        stack, seen, terminal = list(node.outputs), set(), not node.outputs
        while stack and not terminal:
            n = stack.pop()
            if id(n) in seen:
                continue
            seen.add(id(n))
            if isinstance(n.module, nn.Conv2d | nn.Linear):
                continue
            if not n.outputs:
                terminal = True
            stack.extend(n.outputs)
        if terminal:
            heads.append(m)
    return heads


def _graph(model: nn.Module) -> _Graph:
    key = _key(model)
    g = _CACHE.get(model)
    if g is not None and g.key == key:
        return g
    import torch_pruning as tp

    check_supported(model)
    names = {m: n for n, m in model.named_modules()}
    was_training = model.training
    buffers = {k: v.clone() for k, v in model.state_dict().items() if not isinstance(v, nn.Parameter)}
    # the graph is traced through autograd: a frozen layer (ICE's freeze list) fed by frozen
    # layers leaves no trace, so every parameter takes part in the traced pass
    frozen = [p for p in model.parameters() if not p.requires_grad]
    for p in frozen:
        p.requires_grad_(True)
    _tolerate_unmappable_reshapes()
    try:
        dg = tp.DependencyGraph().build_dependency(
            model,
            example_inputs=example_input(model, training=True),
            forward_fn=_train_forward,  # auxiliary heads run only in training mode
            output_transform=_outputs,
        )
    except Exception as err:
        raise GraphError(f"{_arch(model)}: the dependency graph cannot trace the model ({_first_line(err)})") from None
    finally:
        with torch.no_grad():  # the traced training-mode pass must not move batch-norm statistics
            for k, v in model.state_dict().items():
                if k in buffers:
                    v.copy_(buffers[k])
        for p in frozen:
            p.requires_grad_(False)
        model.train(was_training)
    for m in model.modules():
        if isinstance(m, nn.Conv2d | nn.Linear) and m not in dg.module2node:
            raise GraphError(
                f"{_arch(model)}: layer {names[m]!r} ({type(m).__name__}) never runs in a forward pass, so its "
                "channels cannot be kept consistent"
            )
    g = _Graph(dg, _heads(dg), names, key)
    _CACHE[model] = g
    return g


def _first_line(err: BaseException) -> str:
    text = str(err).strip().splitlines()
    return f"{type(err).__name__}: {text[0]}" if text else type(err).__name__


def _role(dg: Any, module: nn.Module, handler: Any) -> str | None:
    import torch_pruning as tp

    if isinstance(module, nn.Conv2d):
        if module.groups > 1 and module.groups == module.in_channels == module.out_channels:
            return "dw"
        return "out" if dg.is_out_channel_pruning_fn(handler) else "in"
    if isinstance(module, nn.Linear):
        return "out" if handler is tp.prune_linear_out_channels else "in"
    if isinstance(module, nn.modules.batchnorm._BatchNorm | nn.GroupNorm | nn.LayerNorm | nn.PReLU):
        return "bn" if isinstance(module, nn.modules.batchnorm._BatchNorm) else "norm"
    if isinstance(module, nn.Module) and any(True for _ in module.parameters(recurse=False)):
        return "param"
    return None  # a parameter-free op node (add, concat, shuffle, flatten, activation)


def _shuffles(node: Any) -> bool:
    if getattr(node, "_ice_opaque", False):
        return True
    fn = node.grad_fn
    if fn is None or not ("View" in fn.name() or "Reshape" in fn.name()):
        return False
    sizes = getattr(fn, "_saved_self_sym_sizes", None) or getattr(fn, "_saved_self_sizes", None)
    return sizes is not None and len(sizes) > 4


def _feeds_shuffle(node: Any) -> bool:
    """Whether a layer's outputs reach a channel shuffle before the next conv or linear
    (checked before asking Torch-Pruning for the group, which is slow to fail there)."""
    stack, seen = list(node.outputs), set()
    while stack:
        n = stack.pop()
        if id(n) in seen or isinstance(n.module, nn.Conv2d | nn.Linear):
            continue
        seen.add(id(n))
        if _shuffles(n):
            return True
        stack.extend(n.outputs)
    return False


def _permuted(group: Any) -> bool:
    """Whether the group's channels pass a channel shuffle: a reshape from a 5-d tensor
    (``[N, groups, C/groups, H, W]`` back to ``[N, C, H, W]``), or one Torch-Pruning could not map."""
    return any(_shuffles(dep.target) for dep, _ in group)


def _ch_groups(group: Any) -> int:
    """Channel groups the removal must respect: a grouped conv keeps the same number of
    channels in every group, so channels go by the same local positions in each."""
    g = 1
    for dep, _ in group:
        m = dep.target.module
        if isinstance(m, nn.Conv2d) and m.groups > 1 and not (m.groups == m.in_channels == m.out_channels):
            g = math.lcm(g, m.groups)
        if isinstance(m, nn.GroupNorm) and m.num_groups > 1:
            g = math.lcm(g, m.num_groups)
    return g


def _root_fn(module: nn.Module) -> Any:
    import torch_pruning as tp

    return tp.prune_conv_out_channels if isinstance(module, nn.Conv2d) else tp.prune_linear_out_channels


def graph_group(model: nn.Module, root: str, idxs: list[int] | None = None) -> Any:
    """Torch-Pruning's group for removing ``idxs`` (default: all) of ``root``'s output channels."""
    g = _graph(model)
    m = model.get_submodule(root)
    width = int(m.out_channels if isinstance(m, nn.Conv2d) else m.out_features)  # type: ignore[arg-type]
    return g.dg.get_pruning_group(m, _root_fn(m), list(range(width)) if idxs is None else idxs)


def _all_groups(g: _Graph) -> Iterator[Any]:
    """Torch-Pruning's ``get_all_groups`` (each output-channel group once, the heads' never),
    except that a root whose group Torch-Pruning cannot map (an index error inside its
    split and concat mappings, as around ShuffleNet's ``chunk``) is skipped, not fatal."""
    dg, visited = g.dg, set[nn.Module]()
    for m in list(dg.module2node):
        if m in g.heads or not isinstance(m, nn.Conv2d | nn.Linear) or m in visited:
            continue
        pruner = dg.get_pruner_of_module(m)
        if pruner is None or pruner.get_out_channels(m) is None or _feeds_shuffle(dg.module2node[m]):
            continue
        try:
            group = dg.get_pruning_group(m, pruner.prune_out_channels, list(range(pruner.get_out_channels(m))))
        except (IndexError, ZeroDivisionError, KeyError):
            continue
        outs = [dep.target.module for dep, _ in group if dg.is_out_channel_pruning_fn(dep.handler)]
        visited.update(o for o in outs if isinstance(o, nn.Module))
        if not any(o in g.heads for o in outs):
            yield group


def graph_units(model: nn.Module) -> list[Unit]:
    """One unit per pruning group, in model order; the classifier's outputs are never a unit."""
    g = _graph(model)
    order = {m: i for i, m in enumerate(model.modules())}
    units = []
    for group in _all_groups(g):
        if _permuted(group):
            continue  # its channels pass a channel shuffle: no index mapping keeps them aligned
        # the root is the group's first producer in model order (conv1, not the SE gate on it)
        outs = [
            dep.target.module
            for dep, _ in group
            if isinstance(dep.target.module, nn.Conv2d | nn.Linear) and g.dg.is_out_channel_pruning_fn(dep.handler)
        ]
        root = min(outs, key=lambda m: order[m])
        members: list[Member] = [Member(g.names[root], "dw" if _role(g.dg, root, None) == "dw" else "out")]
        seen: set[str] = {g.names[root]}
        for dep, _ in group:
            mod = dep.target.module
            role = _role(g.dg, mod, dep.handler)
            if role is None or mod not in g.names or g.names[mod] in seen:
                continue
            seen.add(g.names[mod])
            members.append(Member(g.names[mod], role))
        width = root.out_channels if isinstance(root, nn.Conv2d) else root.out_features
        ch = _ch_groups(group)
        if width < 2 or width % ch or width // ch < 2:
            continue  # nothing can go while every group keeps a channel
        units.append((order[root], Unit(g.names[root], tuple(members), engine="graph", channel_groups=ch)))
    return [u for _, u in sorted(units, key=lambda t: t[0])]


def _snapshot(model: nn.Module) -> list[tuple[nn.Module, dict[str, Any]]]:
    saved = []
    for m in model.modules():
        state = {"_parameters": dict(m._parameters), "_buffers": dict(m._buffers)}
        for attr in (
            "in_channels",
            "out_channels",
            "groups",
            "in_features",
            "out_features",
            "num_features",
            "normalized_shape",
            "num_channels",
            "num_parameters",
        ):
            if attr in m.__dict__:
                state[attr] = m.__dict__[attr]
        saved.append((m, state))
    return saved


def _restore(saved: list[tuple[nn.Module, dict[str, Any]]]) -> None:
    for m, state in saved:
        m._parameters.clear()
        m._parameters.update(state.pop("_parameters"))
        m._buffers.clear()
        m._buffers.update(state.pop("_buffers"))
        for k, v in state.items():
            m.__dict__[k] = v


@torch.no_grad()
def _probe(model: nn.Module) -> None:
    was_training = model.training
    model.eval()
    try:
        model(example_input(model))
    finally:
        model.train(was_training)


def graph_prune(model: nn.Module, unit: Any, removed: torch.Tensor) -> list[tuple[Any, nn.Parameter, int, Any]]:
    """Remove the output channels ``removed`` of ``unit``'s root through its whole group.

    Returns the replaced parameters as ``(old, new, dim, kept indices or None)`` for
    :func:`ice.train.remap_optimizer`. After the surgery a probe batch runs forward; if
    it fails, every layer is restored and :class:`GraphError` names the unit.
    """
    idxs = sorted(int(i) for i in removed)
    if not idxs:
        return []
    g = _graph(model)
    group = graph_group(model, unit.name, idxs)
    before = [(m, n, p) for m in model.modules() for n, p in m._parameters.items() if p is not None]
    full: dict[tuple[int, int], list[int]] = {}
    for dep, item_idxs in group:
        mod = dep.target.module
        pruner = g.dg.get_pruner_of_module(mod)
        out = g.dg.is_out_channel_pruning_fn(dep.handler)
        n = pruner.get_out_channels(mod) if out else pruner.get_in_channels(mod)
        if n is not None:
            gone = set(int(i) for i in item_idxs)
            full[(id(mod), 0 if out else 1)] = [i for i in range(int(n)) if i not in gone]
    saved = _snapshot(model)
    try:
        group.prune()
        _probe(model)
    except Exception as err:
        _restore(saved)
        _CACHE.pop(model, None)  # Torch-Pruning's own op state (concat offsets) is rebuilt on the next call
        raise GraphError(
            f"{_arch(model)}: removing channels of unit {unit.name!r} breaks the model ({_first_line(err)}); "
            "the model is unchanged"
        ) from None
    changes: list[tuple[Any, nn.Parameter, int, Any]] = []
    for m, n, old in before:
        new = m._parameters.get(n)
        if new is None or new is old:
            continue
        dims = [d for d in range(old.dim()) if old.shape[d] != new.shape[d]]
        keep: Any = None
        dim = dims[0] if dims else 0
        if len(dims) == 1:
            # a conv's or linear's dim 1 follows its inputs; everything else follows outputs
            role = 1 if isinstance(m, nn.Conv2d | nn.Linear) and dim != 0 else 0
            kept = full.get((id(m), role)) or full.get((id(m), 1 - role))  # a depthwise conv records either
            if kept is not None:  # a grouped conv's inputs: the first in/groups, as Torch-Pruning keeps them
                keep = torch.tensor(kept[: new.shape[dim]], dtype=torch.long)
        changes.append((old, new, dim, keep))
    return changes
