"""The MLflow pyfunc of a registered ice model, logged as code (MLflow's "models from code").

MLflow stores this file as it is, next to the model's one artifact, the ``ice``
checkpoint (tensors, widths and plain metadata). Loading rebuilds the network from the
checkpoint with ``torch.load(weights_only=True)``: nothing is unpickled. ``predict``
takes normalised float32 images ``[B, C, H, W]`` and returns the logits.
"""

from __future__ import annotations

from typing import Any

import mlflow
from mlflow.pyfunc import PythonModel


class IceCheckpointModel(PythonModel):
    def load_context(self, context: Any) -> None:
        from ice.checkpoint import load_checkpoint

        self.model, self.meta = load_checkpoint(context.artifacts["checkpoint"])
        self.model.eval()

    # no type hints here: MLflow would read them as the model's schema; the signature is logged instead
    def predict(self, context, model_input, params=None):  # type: ignore[no-untyped-def]
        import numpy as np
        import torch

        x = torch.as_tensor(np.asarray(model_input, dtype=np.float32))
        with torch.no_grad():
            return self.model(x).numpy()


mlflow.models.set_model(IceCheckpointModel())
