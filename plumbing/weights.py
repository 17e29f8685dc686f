"""``model.weights``: start from an existing model instead of pre-training.

One resolver, :func:`fetch_weights`, turns the setting into a local weights file,
one branch per scheme:

- a path (relative to the project root);
- ``models:/<name>@<alias>`` or ``models:/<name>/<version>``: a registered version, through
  MLflow (for this pipeline's versions the ``sha256`` tag is verified);
- ``runs:/<run_id>/<artifact path>``: a run's artifact, e.g. what another project logged with
  ``mlflow.pytorch.log_state_dict`` or ``mlflow.pytorch.log_model``.

The file may be an ice checkpoint or any format :mod:`ice.weights` reads without unpickling (a
plain state dict, ``.safetensors``, the ``.pt2`` archive MLflow 3's ``log_model`` writes by
default); :func:`as_checkpoint` turns the others into an ice checkpoint of ``model.arch``,
every shape checked first. A pickled whole model (``log_model(serialization_format="pickle")``,
``torch.save(model)``) is refused with the lines that convert it. :func:`check_weights` checks
the model against params (arch, classes, channels); the task ``tasks.pretrain.import_pretrained``
evaluates it, and the pretrain flow drives them. Every refusal is a :class:`WeightsError` with
one line naming both values.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

__all__ = ["SCHEMES", "WeightsError", "fetch_weights", "as_checkpoint", "check_weights"]

SCHEMES = ("<path>", "models:/<name>@<alias>", "models:/<name>/<version>", "runs:/<run_id>/<path>")


class WeightsError(ValueError):
    """``model.weights`` cannot be used; the message is one line."""


def _parse_models_uri(uri: str) -> tuple[str, str | None, str | None]:
    rest = uri.removeprefix("models:/")
    if "@" in rest:
        name, alias = rest.split("@", 1)
        if name and alias and "/" not in alias:
            return name, alias, None
    elif rest.count("/") == 1:
        name, version = rest.split("/")
        if name and version.isdigit():
            return name, None, version
    raise WeightsError(f"model.weights = {uri!r} is not allowed; allowed: {', '.join(SCHEMES)}")


def _from_registry(uri: str, tracking_uri: str, dest: Path) -> tuple[Path, str | None]:
    import mlflow
    import yaml
    from mlflow import MlflowClient

    name, alias, version = _parse_models_uri(uri)
    client = MlflowClient(tracking_uri)
    try:
        client.get_registered_model(name)
    except Exception:
        names = sorted(m.name for m in client.search_registered_models(max_results=50))
        raise WeightsError(
            f"model.weights: {uri}: no registered model {name!r} in {tracking_uri} "
            f"(registered: {', '.join(names) or 'none'})"
        ) from None
    try:
        mv = client.get_model_version_by_alias(name, alias) if alias else client.get_model_version(name, str(version))
    except Exception:
        model = client.get_registered_model(name)
        known = (
            sorted(model.aliases)
            if alias
            else sorted(v.version for v in client.search_model_versions(f"name='{name}'", max_results=100))
        )
        what = f"alias {alias!r}" if alias else f"version {version}"
        raise WeightsError(
            f"model.weights: {uri}: model {name!r} has no {what} "
            f"({'aliases' if alias else 'versions'}: {', '.join(map(str, known)) or 'none'})"
        ) from None
    local = Path(
        mlflow.artifacts.download_artifacts(
            artifact_uri=f"models:/{name}/{mv.version}", dst_path=str(dest), tracking_uri=tracking_uri
        )
    )
    flavor = yaml.safe_load((local / "MLmodel").read_text()).get("flavors", {}).get("python_function", {})
    rel = (flavor.get("artifacts") or {}).get("checkpoint", {}).get("path")
    if rel and (local / rel).is_file():  # registered by this pipeline: its checkpoint, and the sha256 it vouches for
        return local / rel, (mv.tags or {}).get("sha256")
    return _weights_in(local, f"{uri} (version {mv.version})"), None


def _from_run(uri: str, tracking_uri: str, dest: Path) -> Path:
    import mlflow

    rest = uri.removeprefix("runs:/")
    run_id, _, path = rest.partition("/")
    if not run_id or not path:
        raise WeightsError(f"model.weights = {uri!r} is not allowed; allowed: {', '.join(SCHEMES)}")
    try:
        local = Path(
            mlflow.artifacts.download_artifacts(artifact_uri=uri, dst_path=str(dest), tracking_uri=tracking_uri)
        )
    except Exception as err:
        raise WeightsError(
            f"model.weights: {uri}: cannot be downloaded from {tracking_uri} ({type(err).__name__})"
        ) from None
    return local if local.is_file() else _weights_in(local, uri)


def _weights_in(local: Path, source: str) -> Path:
    """The weights file inside a downloaded MLflow model or artifact directory: an MLflow
    ``pytorch`` flavor's ``.pt2`` (refusing its pickled form), a logged state dict, or one
    weights file."""
    import yaml

    from ice.weights import CONVERT

    mlmodel = local / "MLmodel"
    if mlmodel.is_file():
        flavor = yaml.safe_load(mlmodel.read_text()).get("flavors", {}).get("pytorch", {})
        data = local / str(flavor.get("model_data", "data"))
        if (data / "model.pt2").is_file():
            return data / "model.pt2"
        if (data / "model.pth").is_file():
            raise WeightsError(
                f"model.weights: {source} was logged as a pickled whole model (serialization_format='pickle'), "
                f"which runs code when it is read; {CONVERT}, or log it with mlflow.pytorch.log_state_dict"
            )
    found = [p for p in sorted(local.rglob("*")) if p.is_file() and p.suffix in (".pth", ".pt", ".safetensors", ".pt2")]
    if len(found) == 1:
        return found[0]
    raise WeightsError(
        f"model.weights: {source} holds {'no' if not found else len(found)} weights files; "
        "point runs:/<run_id>/<path> at one (a logged state dict, .safetensors or .pt2)"
    )


def fetch_weights(uri: str, root: Path, tracking_uri: str, dest: Path) -> tuple[Path, str | None]:
    """A local checkpoint file for ``uri`` (downloaded under ``dest`` if needed), and the
    sha256 that its source vouches for (the registry's tag), if any."""
    if uri.startswith("models:/"):
        return _from_registry(uri, tracking_uri, dest)
    if uri.startswith("runs:/"):
        return _from_run(uri, tracking_uri, dest), None
    if "://" in uri:
        raise WeightsError(
            f"model.weights = {uri!r}: scheme {uri.split('://')[0]!r} is not supported; allowed: {', '.join(SCHEMES)}"
        )
    path = Path(uri).expanduser()
    path = path if path.is_absolute() else root / path
    if not path.is_file():
        raise WeightsError(f"model.weights: {path} does not exist")
    return path, None


def as_checkpoint(
    path: Path, source: str, arch: str, num_classes: int, in_channels: int, image_size: Any, dest: Path
) -> tuple[Path, str]:
    """An ice checkpoint of the weights at ``path`` and their format: the file itself when it is
    one, else ``arch`` built for this data with the file's tensors loaded (every key and shape
    checked first), written under ``dest``. Nothing in the file is unpickled."""
    from ice.checkpoint import save_checkpoint
    from ice.models import build_model
    from ice.weights import WeightsFormatError, load_weights, read_state_dict, sniff

    try:
        if sniff(path) == "ice":
            return path, "ice"
        kind, tensors = read_state_dict(path)
        model = build_model(arch, num_classes, in_channels, image_size=image_size)
        load_weights(model, tensors, source, arch)
    except WeightsFormatError as err:
        raise WeightsError(f"model.weights: {source}: {str(err).split(': ', 1)[-1]}") from None
    out = dest / "imported.pt"
    save_checkpoint(out, model, {"imported_from": kind})
    return out, kind


def check_weights(path: Path, source: str, arch: str, num_classes: int, in_channels: int) -> dict[str, Any]:
    """The checkpoint's meta, after checking that it is an ice checkpoint of ``arch`` for this data."""
    from ice.checkpoint import CheckpointError, load_checkpoint

    try:
        model, meta = load_checkpoint(path, trusted_arch=arch)
    except CheckpointError as err:
        raise WeightsError(f"model.weights: {source}: {str(err).split(': ', 1)[-1]}") from None
    spec: dict[str, Any] = getattr(model, "ice_spec", {})
    for key, want, where in (
        ("arch", arch, "model.arch"),
        ("num_classes", num_classes, "the data's classes"),
        ("in_channels", in_channels, "the data's channels"),
    ):
        if spec.get(key) != want:
            raise WeightsError(f"model.weights: {source} has {key} {spec.get(key)!r}, {where}: {want!r}")
    return meta
