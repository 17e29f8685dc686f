"""The evaluate stage's task: accuracy, size, cost and latency of one model."""

from __future__ import annotations

from typing import Any

from prefect import task

from plumbing.artifacts import (
    accuracies,
    load_data,
    load_model,
    params_of,
    project_paths,
    task_device,
)

__all__ = ["measure_model"]


@task(name="measure-model", tags=["compute"])
def measure_model(
    root: str, data_ref: dict[str, str], model_ref: dict[str, str], cfg: dict[str, Any]
) -> dict[str, Any]:
    """Final figures of one model: validation and test accuracy, size, MACs, latency."""
    import torch

    from ice.metrics import count_macs, count_params, measure_latency, sparsity

    paths = project_paths(root)
    params = params_of(cfg)
    device = task_device(cfg)
    model = load_model(paths, model_ref, device)
    data = load_data(paths, data_ref)
    bs = params.evaluate.batch_size
    shape = data.input_shape()
    with torch.no_grad():
        lat = measure_latency(
            model, data.input_shape(params.evaluate.latency_batch), iters=params.evaluate.latency_iters
        )
    return {
        **accuracies(model, data, bs),
        "params": count_params(model),
        "params_nonzero": count_params(model, nonzero=True),
        "macs": count_macs(model, shape),
        "weight_sparsity": sparsity(model),  # zeros among conv and linear weights (masks)
        "latency_ms": lat["median_ms"],
        "val_images": len(data.val),
        "test_images": len(data.test),
    }
