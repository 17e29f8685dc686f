"""``model.weights``: start from an existing model instead of pre-training.

One resolver, :func:`fetch_weights`, turns the setting into a local checkpoint file,
one branch per scheme:

- a path (relative to the project root) to a checkpoint written by
  ``ice.checkpoint.save_checkpoint``;
- ``models:/<name>@<alias>`` or ``models:/<name>/<version>``: that registered version's
  checkpoint, through MLflow (the version's ``sha256`` tag is verified).

A new scheme (``s3://``) is one more branch there. :func:`check_weights` checks the
model against params (arch, classes, channels); the task ``tasks.pretrain.import_pretrained``
evaluates it, and the pretrain flow drives both. Every refusal is a :class:`WeightsError`
with one line naming both values.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

__all__ = ["SCHEMES", "WeightsError", "fetch_weights", "check_weights"]

SCHEMES = ("<path>", "models:/<name>@<alias>", "models:/<name>/<version>")


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
    if not rel or not (local / rel).is_file():
        raise WeightsError(
            f"model.weights: {uri} (version {mv.version}) holds no ice checkpoint; "
            "register models with this pipeline (flows.pretrain or flows.prune)"
        )
    return local / rel, (mv.tags or {}).get("sha256")


def fetch_weights(uri: str, root: Path, tracking_uri: str, dest: Path) -> tuple[Path, str | None]:
    """A local checkpoint file for ``uri`` (downloaded under ``dest`` if needed), and the
    sha256 that its source vouches for (the registry's tag), if any."""
    if uri.startswith("models:/"):
        return _from_registry(uri, tracking_uri, dest)
    if "://" in uri:
        raise WeightsError(
            f"model.weights = {uri!r}: scheme {uri.split('://')[0]!r} is not supported; allowed: {', '.join(SCHEMES)}"
        )
    path = Path(uri).expanduser()
    path = path if path.is_absolute() else root / path
    if not path.is_file():
        raise WeightsError(f"model.weights: {path} does not exist")
    return path, None


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
