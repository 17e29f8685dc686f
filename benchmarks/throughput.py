"""Training throughput: the library's data + training path against pure compute.

For each model it prints
- ``library``: images/s through ``ice.train.train_epoch`` (batches drawn from in-memory
  uint8 tensors, random crop + flip on the whole batch, normalisation, forward, backward, step),
  for each ``--formats``: ``memory`` (one tensor, what CIFAR gets) or ``shards`` (the same
  images in decoded shards on disk, read per batch: what a large dataset gets);
- ``compute``: images/s of forward + backward + step on one preloaded, normalised batch;
and their ratio. Target: ratio >= 0.9 (data handling costs under 10%).

    python benchmarks/throughput.py [--images 1536] [--batch 128] [--archs cifar_resnet20 cifar_resnet56]
                                    [--formats memory shards]
"""

from __future__ import annotations

import argparse
import time

import torch
import torch.nn.functional as F

from ice.data import Dataset, Split, batches
from ice.models import build_model
from ice.train import make_optimizer, pick_device, train_epoch, use_channels_last


def synthetic_cifar(n: int) -> Dataset:
    g = torch.Generator().manual_seed(0)
    x = torch.randint(0, 256, (n, 3, 32, 32), dtype=torch.uint8, generator=g)
    y = torch.randint(0, 10, (n,), generator=g)
    s = Split(x, y)
    return Dataset("synthetic", s, s, s, [str(i) for i in range(10)], (0.49, 0.48, 0.45), (0.25, 0.24, 0.26))


def sharded(ds: Dataset, where: str) -> Dataset:
    """``ds`` with its images in decoded shards under ``where`` (1 MiB each), read per batch."""
    from pathlib import Path

    from ice.data import ShardedSplit, verified_dir
    from ice.shards import ShardReader, ShardWriter, encode_image

    assert isinstance(ds.train, Split)
    w = ShardWriter(where, 1 << 20)
    for img in ds.train.x:
        w.add(encode_image(img.permute(1, 2, 0).numpy(), "raw"))
    reader = ShardReader(w.close(), "raw", ds.train.shape, verified_dir(Path(where)))
    s = ShardedSplit(reader, torch.arange(len(ds.train)), ds.train.y)
    return Dataset("synthetic-shards", s, s, s, ds.classes, ds.mean, ds.std)


def library_rate(arch: str, ds: Dataset, batch: int, device: torch.device) -> float:
    torch.manual_seed(0)
    m = build_model(arch, 10).to(device)
    opt = make_optimizer(m, 0.01)
    train_epoch(m, ds, opt, batch_size=batch, fraction=2 * batch / len(ds.train), device=device)  # warm-up
    if device.type == "cuda":
        torch.cuda.synchronize()
    t = time.perf_counter()
    stats = train_epoch(
        m, ds, opt, batch_size=batch, augment=True, device=device, generator=torch.Generator().manual_seed(1)
    )
    if device.type == "cuda":
        torch.cuda.synchronize()
    return stats["images"] / (time.perf_counter() - t)


def compute_rate(arch: str, ds: Dataset, batch: int, device: torch.device) -> float:
    torch.manual_seed(0)
    m = build_model(arch, 10).to(device)
    m.train()
    opt = make_optimizer(m, 0.01)
    cl = use_channels_last("auto", device)
    x, y = next(batches(ds.train, batch, ds.mean, ds.std, device=device, channels_last=cl))
    steps = len(ds.train) // batch

    def step() -> None:
        loss = F.cross_entropy(m(x), y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    for _ in range(2):
        step()
    if device.type == "cuda":
        torch.cuda.synchronize()
    t = time.perf_counter()
    for _ in range(steps):
        step()
    if device.type == "cuda":
        torch.cuda.synchronize()
    return steps * batch / (time.perf_counter() - t)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--images", type=int, default=1536)
    ap.add_argument("--batch", type=int, default=128)
    ap.add_argument("--archs", nargs="+", default=["cifar_resnet20", "cifar_resnet56"])
    ap.add_argument("--formats", nargs="+", default=["memory", "shards"], choices=["memory", "shards"])
    args = ap.parse_args()
    import tempfile

    device = pick_device()
    ds = synthetic_cifar(args.images)
    tmp = tempfile.TemporaryDirectory(prefix="ice-throughput-")
    data = {"memory": ds, "shards": sharded(ds, tmp.name)}
    print(f"device={device} threads={torch.get_num_threads()} images={args.images} batch={args.batch}")
    print(f"{'arch':<16} {'format':<8} {'library img/s':>14} {'compute img/s':>14} {'ratio':>7}")
    for arch in args.archs:
        for fmt in args.formats:
            # interleave to share the machine's noise between the two figures
            lib = library_rate(arch, data[fmt], args.batch, device)
            comp = compute_rate(arch, ds, args.batch, device)
            print(f"{arch:<16} {fmt:<8} {lib:>14.1f} {comp:>14.1f} {lib / comp:>7.3f}", flush=True)
    tmp.cleanup()


if __name__ == "__main__":
    main()
