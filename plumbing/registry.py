"""The MLflow model registry: pruned and pre-trained checkpoints as versions of one
registered model per architecture and data, each tagged with its checkpoint's sha256."""

from __future__ import annotations

import time
import warnings
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from mlflow import MlflowClient

__all__ = ["ModelRegistry", "registered_name", "PIP_REQUIREMENTS"]

PIP_REQUIREMENTS = ["torch==2.13.0", "numpy"]  # ice itself travels with the model as code


def registered_name(arch: str, source: str) -> str:
    return f"{arch}-{source}".replace(":", "_").replace("/", "_")


class ModelRegistry:
    """The registry half of :class:`plumbing.tracking.Tracker` (which provides the client
    and the experiment)."""

    client: MlflowClient
    experiment_id: str

    def log_model(
        self,
        run_id: str,
        checkpoint: Path,
        name: str,
        alias: str,
        description: str = "",
        tags: Mapping[str, Any] | None = None,
    ) -> str:
        """Log the ice checkpoint at ``checkpoint`` as a model of ``run_id``, register it as a
        version of ``name`` and point ``alias`` at it; return the version.

        The model is a pyfunc defined from code (``plumbing/pyfunc_model.py``) whose only
        artifact is the checkpoint, with the ``ice`` package as its code, a signature
        and an input example: loading it never unpickles anything. The version carries
        the checkpoint's sha256 as a tag.
        """
        import mlflow
        import numpy as np
        from mlflow.models import infer_signature

        import ice
        from ice.checkpoint import load_checkpoint
        from ice.files import sha256_file

        sha = sha256_file(checkpoint)
        existing = self._version_with_sha(name, sha)
        if existing is not None:  # the same bytes are registered already (a cached rerun): point the alias there
            self.client.set_registered_model_alias(name, alias, existing)
            return existing
        model, _ = load_checkpoint(checkpoint, sha256=sha)
        spec: dict[str, Any] = getattr(model, "ice_spec", {})
        h, w = spec.get("image_size") or (32, 32)
        example = np.zeros((2, spec.get("in_channels", 3), h, w), dtype=np.float32)
        import torch

        with torch.no_grad():
            out = model.eval()(torch.from_numpy(example)).numpy()
        signature = infer_signature(example, out)
        # MLflow suggests type hints on predict; the logged signature already describes the input.
        # log_model pushes its own "once" filter for UserWarnings in front of any filter of ours,
        # so the warnings are recorded instead, and all but that one are shown again after.
        with (
            mlflow.start_run(run_id=run_id, experiment_id=self.experiment_id),
            warnings.catch_warnings(record=True) as caught,
        ):
            warnings.simplefilter("default")
            info = mlflow.pyfunc.log_model(
                name="model",
                python_model=str(Path(__file__).with_name("pyfunc_model.py")),
                artifacts={"checkpoint": str(checkpoint)},
                code_paths=[str(Path(ice.__file__).parent)],
                signature=signature,
                input_example=example,
                pip_requirements=PIP_REQUIREMENTS,
            )
        for w in caught:
            if "type hints to the `predict` method" not in str(w.message):
                warnings.warn_explicit(w.message, w.category, w.filename, w.lineno)
        # start_run(run_id=...) ends the run on exit; the flow still owns it
        self.client.update_run(run_id, status="RUNNING")
        try:
            self.client.get_registered_model(name)
        except Exception:
            try:
                self.client.create_registered_model(name, description="Pruned and pretrained models of ice-pipeline")
            except Exception:  # created meanwhile by a parallel flow
                self.client.get_registered_model(name)
        version_tags = {"sha256": sha, "alias": alias, **{k: str(v) for k, v in (tags or {}).items()}}
        mv = mlflow.register_model(info.model_uri, name, tags=version_tags)
        self._wait_ready(name, mv.version)
        if description:
            self.client.update_model_version(name, mv.version, description=description)
        self.client.set_registered_model_alias(name, alias, mv.version)
        return str(mv.version)

    def tag_version(self, name: str, sha: str, tags: Mapping[str, Any]) -> str | None:
        """Tag the registered version of ``name`` holding the checkpoint with ``sha``; its version, or None."""
        version = self._version_with_sha(name, sha)
        if version is not None:
            for k, v in tags.items():
                self.client.set_model_version_tag(name, version, k, str(v))
        return version

    def _version_with_sha(self, name: str, sha: str) -> str | None:
        try:
            found = self.client.search_model_versions(f"name = '{name}' and tags.sha256 = '{sha}'", max_results=1)
        except Exception:  # no such registered model yet
            return None
        return str(found[0].version) if found else None

    def _wait_ready(self, name: str, version: str, timeout: float = 60) -> None:
        end = time.time() + timeout
        while time.time() < end:
            if self.client.get_model_version(name, version).status == "READY":
                return
            time.sleep(0.2)
