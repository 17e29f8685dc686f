"""Weights from where users keep them, read without unpickling anything.

A model trained elsewhere usually arrives as one of:

- a plain state dict, ``torch.save(model.state_dict(), path)`` (also nested under a
  ``state_dict``/``model_state_dict``/``model`` key, and with DataParallel's ``module.``);
- a ``.safetensors`` file (Hugging Face's format: a JSON header and raw tensor bytes, read by
  the safetensors package, which never unpickles);
- a ``torch.export`` archive (``.pt2``), what ``mlflow.pytorch.log_model`` writes by default
  in MLflow 3: its weights sit in the archive as raw bytes described by JSON;
- an ice checkpoint (``ice.checkpoint.save_checkpoint``), which carries its own widths.

:func:`read_state_dict` reads the first three into tensors. Each read is data only: torch
files with ``torch.load(weights_only=True)``, safetensors by its own reader (no pickle in the
format), a ``.pt2`` from its JSON weight table and raw bytes (never ``torch.export.load``, which
unpickles), so a file never chooses code to run. A pickled whole module (``torch.save(model)``, or ``log_model`` with
``serialization_format="pickle"``) cannot be read that way: it is refused in one line that
gives the three lines converting it in the user's own trusted code. :func:`load_weights`
checks every shape against the architecture before loading: the first mismatched key is
named with both shapes.
"""

from __future__ import annotations

import json
import struct
import zipfile
from pathlib import Path

import torch
from torch import nn

__all__ = ["WeightsFormatError", "FORMATS", "sniff", "read_state_dict", "load_weights", "save_safetensors"]

FORMATS = ("ice checkpoint", "state dict (torch.save(model.state_dict()))", ".safetensors", "torch.export .pt2")
CONVERT = (
    "convert it in your own trusted code: model = torch.load(path, weights_only=False); "
    "torch.save(model.state_dict(), 'weights.pt'); then set model.weights: weights.pt"
)
_NESTED = ("state_dict", "model_state_dict", "model")


class WeightsFormatError(ValueError):
    """The file is not weights this reader can take; the message is one line."""


def _pt2_prefix(z: zipfile.ZipFile) -> str | None:
    for name in z.namelist():
        if name.endswith("archive_format") and z.read(name).strip() == b"pt2":
            return name[: -len("archive_format")]
    return None


def _is_safetensors(head: bytes, size: int) -> bool:
    if len(head) < 9:
        return False
    (n,) = struct.unpack("<Q", head[:8])
    return 0 < n <= size - 8 and head[8:9] == b"{"


def sniff(path: str | Path) -> str:
    """``ice``, ``state_dict``, ``safetensors``, ``pt2`` or ``pickled_module``, from the bytes
    alone (``torch.load(weights_only=True)`` for torch files: nothing is unpickled)."""
    path = Path(path)
    with open(path, "rb") as f:
        head = f.read(9)
    if _is_safetensors(head, path.stat().st_size):
        return "safetensors"
    if zipfile.is_zipfile(path):
        with zipfile.ZipFile(path) as z:
            if _pt2_prefix(z) is not None:
                return "pt2"
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:
        if "GLOBAL" in str(err) or head[:1] == b"\x80":  # it names code to import, or is a raw pickle
            return "pickled_module"
        raise WeightsFormatError(
            f"{path}: not a weights file ({type(err).__name__}); allowed: {', '.join(FORMATS)}"
        ) from None
    if isinstance(obj, dict) and str(obj.get("format", "")).startswith("ice-checkpoint"):
        return "ice"
    if isinstance(_tensors(obj), dict):
        return "state_dict"
    raise WeightsFormatError(
        f"{path}: holds a {type(obj).__name__}, not a state dict of tensors; allowed: {', '.join(FORMATS)}"
    )


def _tensors(obj: object) -> dict[str, torch.Tensor] | None:
    """A mapping of names to tensors, or one nested under a usual key; None otherwise."""
    if (
        isinstance(obj, dict)
        and obj
        and all(isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in obj.items())
    ):
        return dict(obj)
    if isinstance(obj, dict):
        for key in _NESTED:
            if key in obj:
                return _tensors(obj[key])
    return None


def _read_safetensors(path: Path) -> dict[str, torch.Tensor]:
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    try:
        return load_file(str(path), device="cpu")
    except (SafetensorError, ValueError) as err:
        raise WeightsFormatError(f"{path}: a damaged .safetensors file ({str(err).splitlines()[0]})") from None


def _read_pt2(path: Path) -> dict[str, torch.Tensor]:
    """The parameters and buffers of a ``torch.export`` archive, from its raw weight files and
    their JSON description; the archive's pickled parts (sample inputs) are never read."""
    from torch._export.serde.serialize import _SERIALIZE_TO_TORCH_DTYPE

    with zipfile.ZipFile(path) as z:
        prefix = _pt2_prefix(z) or ""
        names = [n for n in z.namelist() if n.startswith(prefix) and n.endswith("model_weights_config.json")]
        if not names:
            raise WeightsFormatError(f"{path}: a .pt2 archive without model weights")
        config = json.loads(z.read(names[0]))["config"]
        folder = names[0].rsplit("/", 1)[0]
        out = {}
        for key, entry in config.items():
            if entry.get("use_pickle"):
                raise WeightsFormatError(f"{path}: weight {key!r} is pickled in the archive; {CONVERT}")
            meta = entry["tensor_meta"]
            dtype = _SERIALIZE_TO_TORCH_DTYPE[meta["dtype"]]
            shape = [int(s["as_int"]) for s in meta["sizes"]]
            raw = bytearray(z.read(f"{folder}/{entry['path_name']}"))
            t = torch.frombuffer(raw, dtype=dtype) if raw else torch.empty(0, dtype=dtype)
            out[key] = t[: int(torch.Size(shape).numel())].reshape(shape).clone()
    return out


def read_state_dict(path: str | Path) -> tuple[str, dict[str, torch.Tensor]]:
    """The file's format (:func:`sniff`) and its tensors by name. An ice checkpoint is not read
    here (``ice.checkpoint.load_checkpoint`` rebuilds it with its widths)."""
    path = Path(path)
    kind = sniff(path)
    if kind == "pickled_module":
        raise WeightsFormatError(
            f"{path}: a pickled whole model (Python objects, not a state dict), which runs code when it is read; "
            f"{CONVERT}"
        )
    if kind == "safetensors":
        return kind, _read_safetensors(path)
    if kind == "pt2":
        return kind, _read_pt2(path)
    if kind == "ice":
        raise WeightsFormatError(f"{path}: an ice checkpoint; read it with ice.checkpoint.load_checkpoint")
    sd = _tensors(torch.load(path, map_location="cpu", weights_only=True))
    assert sd is not None
    return kind, sd


def _strip_module(sd: dict[str, torch.Tensor], want: set[str]) -> dict[str, torch.Tensor]:
    if sd and not (set(sd) & want) and all(k.startswith("module.") for k in sd):  # saved from DataParallel
        return {k.removeprefix("module."): v for k, v in sd.items()}
    return sd


def load_weights(model: nn.Module, sd: dict[str, torch.Tensor], source: str, arch: str) -> nn.Module:
    """Load ``sd`` into ``model`` (an unpruned ``arch``) after checking every key and shape;
    each refusal is one line naming the first offending key (and both shapes)."""
    own = model.state_dict()
    sd = _strip_module(sd, set(own))
    for key, t in own.items():
        if key not in sd:
            more = sum(1 for k in own if k not in sd) - 1
            raise WeightsFormatError(
                f"{source}: has no {key!r}{f' (and {more} more keys)' if more else ''} that model.arch {arch} needs"
            )
        if tuple(sd[key].shape) != tuple(t.shape):
            raise WeightsFormatError(
                f"{source}: {key} has shape {tuple(sd[key].shape)} in the file, {tuple(t.shape)} in model.arch {arch}"
            )
    extra = [k for k in sd if k not in own]
    if extra:
        raise WeightsFormatError(f"{source}: has {extra[0]!r}, which model.arch {arch} lacks ({len(extra)} such keys)")
    model.load_state_dict({k: sd[k].to(own[k].dtype) for k in own}, strict=True)
    return model


def save_safetensors(path: str | Path, model: nn.Module) -> None:
    """``model``'s state dict as a ``.safetensors`` file, written atomically."""
    from safetensors.torch import save

    from ice.files import atomic_write_bytes

    sd = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    atomic_write_bytes(path, save(sd))
