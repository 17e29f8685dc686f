"""The task that evaluates an imported model (``model.weights``); fetching and checking it
is :mod:`pipeline.weights`."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from prefect import task

from pipeline.paths import Paths

__all__ = ["import_pretrained"]


@task(name="import-pretrained", tags=["gpu"])
def import_pretrained(
    root: str, data_ref: dict[str, str], weights_ref: dict[str, str], cfg: dict[str, Any]
) -> dict[str, Any]:
    """Validation and test accuracy of the imported checkpoint."""
    from tasks.steps import accuracies, load_data, load_model, task_device

    paths = Paths(Path(root))
    return accuracies(load_model(paths, weights_ref, task_device(cfg)), load_data(paths, data_ref))
