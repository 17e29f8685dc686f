"""Batches: normalised ``(x, y)`` from any split, with batch-level augmentation drawn on the
CPU from a seeded generator, so a seed gives the same batches on any device."""

from __future__ import annotations

import math
from collections.abc import Iterator

import torch

from ice.data.splits import AnySplit, Dataset

__all__ = [
    "augment_kind",
    "n_steps",
    "normalize",
    "augment_batch",
    "resized_crop_batch",
    "probe_batch",
    "batches",
    "read_ahead",
]


def augment_kind(setting: str, size: tuple[int, ...]) -> str:
    """``data.augmentation`` resolved for images of ``size`` (H, W): ``auto`` is ``resized_crop``
    from 96 px on (ImageNet-style), ``pad_crop`` below (CIFAR-style)."""
    if setting != "auto":
        return setting
    return "resized_crop" if min(size) >= 96 else "pad_crop"


def n_steps(n: int, batch_size: int, fraction: float = 1.0) -> int:
    """Batches in ``fraction`` of an epoch over ``n`` items (half rounds up, at least one)."""
    if n == 0:
        return 0
    return max(1, math.floor(math.ceil(n / batch_size) * fraction + 0.5))


def normalize(x: torch.Tensor, mean: tuple[float, ...], std: tuple[float, ...]) -> torch.Tensor:
    """uint8 ``[B, C, H, W]`` to normalised float32."""
    m = torch.tensor(mean, device=x.device, dtype=torch.float32).view(1, -1, 1, 1)
    s = torch.tensor(std, device=x.device, dtype=torch.float32).view(1, -1, 1, 1)
    return (x.to(torch.float32) / 255.0 - m) / s


def augment_batch(x: torch.Tensor, generator: torch.Generator, padding: int = 4, flip: bool = True) -> torch.Tensor:
    """Random crop with zero padding and horizontal flip, on a whole batch at once."""
    b, c, h, w = x.shape
    offs = torch.randint(0, 2 * padding + 1, (2, b), generator=generator)
    flips = torch.rand(b, generator=generator) < 0.5 if flip else None
    offs = offs.to(x.device)
    padded = torch.nn.functional.pad(x, (padding, padding, padding, padding))
    rows = (offs[0].view(b, 1) + torch.arange(h, device=x.device)).view(b, 1, h, 1)
    cols = (offs[1].view(b, 1) + torch.arange(w, device=x.device)).view(b, 1, 1, w)
    out = padded[
        torch.arange(b, device=x.device).view(b, 1, 1, 1), torch.arange(c, device=x.device).view(1, c, 1, 1), rows, cols
    ]
    if flips is not None:
        out = torch.where(flips.to(x.device).view(b, 1, 1, 1), out.flip(3), out)
    return out


def resized_crop_batch(
    x: torch.Tensor,
    generator: torch.Generator,
    scale: tuple[float, float] = (0.25, 1.0),
    ratio: tuple[float, float] = (3 / 4, 4 / 3),
    flip: bool = True,
) -> torch.Tensor:
    """Random-resized crop and horizontal flip (ImageNet-style) on a whole batch at once, on
    ``x``'s device: each image's box (a share ``scale`` of its area, aspect ``ratio``) is
    resampled bilinearly back to the image's size. The boxes come from ``generator`` on the
    CPU, so a seed gives the same crops on any device. Returns float images in 0-255."""
    b, _, h, w = x.shape
    area = torch.empty(b).uniform_(scale[0], scale[1], generator=generator)
    log_r = torch.empty(b).uniform_(math.log(ratio[0]), math.log(ratio[1]), generator=generator)
    r = torch.exp(log_r)
    cw = torch.sqrt(area * r).clamp(max=1.0)  # box width and height as shares of the image's
    ch = torch.sqrt(area / r).clamp(max=1.0)
    cx = torch.rand(b, generator=generator) * (1 - cw)  # box corner, as shares
    cy = torch.rand(b, generator=generator) * (1 - ch)
    flips = torch.rand(b, generator=generator) < 0.5 if flip else torch.zeros(b, dtype=torch.bool)
    theta = torch.zeros(b, 2, 3)
    theta[:, 0, 0] = torch.where(flips, -cw, cw)
    theta[:, 0, 2] = 2 * cx + cw - 1
    theta[:, 1, 1] = ch
    theta[:, 1, 2] = 2 * cy + ch - 1
    theta = theta.to(x.device)
    grid = torch.nn.functional.affine_grid(theta, [b, x.shape[1], h, w], align_corners=False)
    return torch.nn.functional.grid_sample(
        x.to(torch.float32), grid, mode="bilinear", padding_mode="border", align_corners=False
    )


def probe_batch(data: Dataset, n: int = 256, device: torch.device | str = "cpu") -> tuple[torch.Tensor, torch.Tensor]:
    """The first ``n`` training images, normalised: data for activation-based criteria."""
    return next(batches(data.train, n, data.mean, data.std, device=device))


def batches(
    split: AnySplit,
    batch_size: int,
    mean: tuple[float, ...],
    std: tuple[float, ...],
    *,
    shuffle: bool = False,
    augment: bool = False,
    generator: torch.Generator | None = None,
    device: torch.device | str = "cpu",
    fraction: float = 1.0,
    channels_last: bool = False,
    augment_kind: str = "pad_crop",
    start: int = 0,
) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """Yield normalised ``(x, y)`` batches from a split, in memory or in shards.

    ``augment`` applies ``augment_kind`` (the dataset's :attr:`Dataset.augment`):
    ``pad_crop`` (:func:`augment_batch`) or ``resized_crop`` (:func:`resized_crop_batch`).

    Random draws (order, crops, flips) come from ``generator`` on the CPU, so a seed
    gives the same batches on any device, from either kind of split. ``fraction`` < 1
    stops after that share of the batches. ``start`` resumes mid-epoch: the first
    ``start`` batches are not read, but their random draws are made, so batch ``k`` is
    the same bytes as in a pass that began at 0. A sharded split reads (and decodes) the
    next batch in a thread while this one is used.
    """
    n = len(split)
    if generator is None:
        generator = torch.Generator().manual_seed(0)
    order = torch.randperm(n, generator=generator) if shuffle else torch.arange(n)
    n_batches = n_steps(n, batch_size, fraction)
    dev = torch.device(device)
    _, h, w = split.shape
    pad = 4 if w >= 16 else 1
    for i in range(min(start, n_batches)):  # the skipped batches' draws: the same calls on stand-in images
        if augment:
            stand_in = torch.zeros(len(order[i * batch_size : (i + 1) * batch_size]), 1, 2, 2, dtype=torch.uint8)
            _augment(stand_in, generator, augment_kind, pad)
    todo = [order[i * batch_size : (i + 1) * batch_size] for i in range(start, n_batches)]
    for idx, xb in zip(todo, read_ahead(split, todo), strict=True):
        yb = split.y[idx]
        if dev.type == "cuda":  # pinned pages: the copy runs beside the GPU's work, not before it
            xb, yb = xb.pin_memory(), yb.pin_memory()
        xb = xb.to(dev, non_blocking=True)
        yb = yb.to(dev, non_blocking=True)
        if augment:
            xb = _augment(xb, generator, augment_kind, pad)
        xb = normalize(xb, mean, std)
        if channels_last:
            xb = xb.contiguous(memory_format=torch.channels_last)
        yield xb, yb


def _augment(xb: torch.Tensor, generator: torch.Generator, kind: str, pad: int) -> torch.Tensor:
    if kind == "resized_crop":
        return resized_crop_batch(xb, generator)
    return augment_batch(xb, generator, padding=pad)


def read_ahead(split: AnySplit, todo: list[torch.Tensor]) -> Iterator[torch.Tensor]:
    """``split.read`` of each index batch, in order; one batch ahead in a thread where reads are slow."""
    if not split.prefetch or len(todo) < 2:
        for idx in todo:
            yield split.read(idx)
        return
    from concurrent.futures import ThreadPoolExecutor

    with ThreadPoolExecutor(1, thread_name_prefix="ice-prefetch") as pool:
        ahead = pool.submit(split.read, todo[0])
        for k in range(len(todo)):
            got = ahead.result()
            if k + 1 < len(todo):
                ahead = pool.submit(split.read, todo[k + 1])
            yield got
