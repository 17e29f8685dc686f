"""Checkpoints that rebuild a (pruned) model from tensors alone.

A checkpoint holds the architecture spec, the per-layer widths, the state dict and a
plain-data ``meta`` mapping. Loading rebuilds the architecture, shrinks it to the
recorded widths and loads the weights with ``torch.load(weights_only=True)``: no
module is ever unpickled. Writes are atomic (temporary file, fsync, rename) and
return the file's sha256, which loading can verify.
"""

from __future__ import annotations

import hashlib
import io
from collections import OrderedDict
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ice.files import atomic_write_bytes
from ice.models import UnsafeSpecError, adopt_shapes, check_spec, layer_widths, rebuild

__all__ = [
    "CheckpointError",
    "save_checkpoint",
    "load_checkpoint",
    "check_checkpoint",
]

FORMAT = "ice-checkpoint/1"


class CheckpointError(RuntimeError):
    """The file is missing, truncated, corrupt or not the expected one."""


def _check_plain(value: Any, where: str = "meta") -> None:
    if value is None or isinstance(value, str | int | float | bool | torch.Tensor):
        return
    if isinstance(value, dict):
        for k, v in value.items():
            if not isinstance(k, str | int):
                raise CheckpointError(f"{where}: key {k!r} must be a string or int")
            _check_plain(v, f"{where}.{k}")
        return
    if isinstance(value, list | tuple):
        for i, v in enumerate(value):
            _check_plain(v, f"{where}[{i}]")
        return
    raise CheckpointError(
        f"{where}: {type(value).__name__} is not plain data (str, number, bool, None, tensor, list, dict)"
    )


def save_checkpoint(path: str | Path, model: nn.Module, meta: dict[str, Any] | None = None) -> str:
    """Save ``model`` (built by :func:`ice.models.build_model`) atomically; return the sha256."""
    spec = getattr(model, "ice_spec", None)
    if spec is None:
        raise CheckpointError("model has no ice_spec; build it with ice.models.build_model")
    _check_plain(meta or {})
    sd = model.state_dict()
    state = {k: v.detach().cpu().contiguous() for k, v in sd.items()}
    # per-module state-dict versions (MNASNet refuses a state dict without them)
    versions = {k: int(v["version"]) for k, v in getattr(sd, "_metadata", {}).items() if "version" in v}
    payload = {
        "format": FORMAT,
        "spec": spec,
        "widths": layer_widths(model),
        "state_dict": state,
        "meta": meta or {},
        "versions": versions,
    }
    buf = io.BytesIO()
    torch.save(payload, buf)
    data = buf.getvalue()
    atomic_write_bytes(path, data)
    return hashlib.sha256(data).hexdigest()


def check_checkpoint(path: str | Path, trusted_arch: str | None = None) -> dict[str, Any]:
    """The spec of the checkpoint at ``path``, after the checks :func:`load_checkpoint` makes
    before it builds anything (plain data, an ice checkpoint, a spec that names no code its
    reader did not choose). Nothing is imported, built or called."""
    path = Path(path)
    try:
        payload = torch.load(path, map_location="cpu", weights_only=True)
    except OSError as err:
        raise CheckpointError(f"{path}: cannot be read ({err.strerror or err})") from None
    except Exception as err:
        raise CheckpointError(f"{path}: truncated or corrupt checkpoint ({type(err).__name__})") from None
    if not isinstance(payload, dict) or payload.get("format") != FORMAT:
        raise CheckpointError(f"{path}: not an ice checkpoint")
    try:
        check_spec(payload.get("spec"), trusted_arch)
    except UnsafeSpecError as err:
        raise CheckpointError(f"{path}: unsafe checkpoint: {err}") from None
    except ValueError as err:
        raise CheckpointError(f"{path}: {err}") from None
    return dict(payload["spec"])


def load_checkpoint(
    path: str | Path,
    sha256: str | None = None,
    map_location: str | torch.device = "cpu",
    trusted_arch: str | None = None,
) -> tuple[nn.Module, dict[str, Any]]:
    """Rebuild the model saved at ``path``; verify ``sha256`` when given.

    The file is untrusted data: its architecture must be a registered one, a torchvision
    classifier, or a user architecture that trusted configuration names (``trusted_arch``,
    the params' ``model.arch``; see :func:`ice.models.check_spec`). Anything else is refused
    as unsafe before any import or call."""
    path = Path(path)
    try:
        data = path.read_bytes()
    except OSError as err:
        raise CheckpointError(f"{path}: cannot be read ({err.strerror or err})") from None
    if sha256 is not None:
        got = hashlib.sha256(data).hexdigest()
        if got != sha256:
            raise CheckpointError(f"{path}: sha256 mismatch, expected {sha256[:12]}… got {got[:12]}…")
    try:
        payload = torch.load(io.BytesIO(data), map_location=map_location, weights_only=True)
    except Exception as err:  # truncated zip, garbage bytes, foreign pickle
        raise CheckpointError(f"{path}: truncated or corrupt checkpoint ({type(err).__name__})") from None
    if not isinstance(payload, dict) or payload.get("format") != FORMAT:
        raise CheckpointError(
            f"{path}: not an ice checkpoint (format {payload.get('format') if isinstance(payload, dict) else None!r})"
        )
    try:  # before anything is imported or built: a checkpoint is data, and never chooses code to run
        check_spec(payload.get("spec"), trusted_arch)
    except UnsafeSpecError as err:
        raise CheckpointError(f"{path}: unsafe checkpoint: {err}") from None
    except ValueError as err:  # a trusted user arch that no longer imports
        raise CheckpointError(f"{path}: {err}") from None
    if not isinstance(payload.get("widths", {}), dict) or not isinstance(payload.get("state_dict"), dict):
        raise CheckpointError(f"{path}: not an ice checkpoint (widths or state_dict missing)")
    model = rebuild(payload["spec"], payload["widths"])
    model.ice_spec = payload["spec"]  # type: ignore[assignment]
    adopt_shapes(model, payload["state_dict"])
    state = OrderedDict(payload["state_dict"])
    state._metadata = OrderedDict((k, {"version": v}) for k, v in payload.get("versions", {}).items())  # type: ignore[attr-defined]
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError as err:
        raise CheckpointError(f"{path}: weights do not fit the recorded widths ({str(err).splitlines()[0]})") from None
    return model.to(map_location), payload["meta"]
