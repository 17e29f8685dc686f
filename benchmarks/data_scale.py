"""Data at scale: what preparing and reading a folder of photos costs, by folder size.

For each N it generates a JPEG folder in ImageNet's layout (``train/<class>/``,
``test/<class>/``; 224-500 px images of smooth synthetic content, so files are realistic in
size), then runs, each in a fresh process so that its peak RSS is its own:

- ``prepare``: ``ice.data.load_dataset`` (folder, ``data.image_size``) and ``save_prepared``,
  what the prepare stage does;
- ``epoch``: ``load_prepared``, then one epoch of the data path (batches, the dataset's
  augmentation, a tiny model's forward and backward).

and prints peak RSS, seconds, images/s and disk used (the folder, the decode cache, the
prepared file). Targets (issue 24): the streaming path's peak RSS at 100,000 images at most
1.5x its peak at 10,000. Today's path holds every decoded image in memory, so its peak grows
with N; where N would not fit, pass smaller sizes.

    python benchmarks/data_scale.py --n 10000 40000 100000 [--image-size 224] [--classes 100]
    python benchmarks/data_scale.py --n 200 --image-size 64        # a quick look
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def generate(root: Path, n: int, classes: int, seed: int = 0) -> None:
    """``n`` training images (and n/10 test images) over ``classes`` class folders: 224-500 px
    JPEGs of smooth gradients with mild noise, which compress as photos do (tens of KB)."""
    import numpy as np
    from PIL import Image

    rng = np.random.default_rng(seed)
    for split, count in (("train", n), ("test", max(classes, n // 10))):
        for i in range(count):
            c = i % classes
            d = root / split / f"n{c:08d}"
            d.mkdir(parents=True, exist_ok=True)
            w, h = (int(v) for v in rng.integers(224, 501, 2))
            yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
            base = rng.uniform(0, 255, 3).astype(np.float32)
            fx, fy = rng.uniform(0.5, 4, 2) * np.pi / np.array([w, h])
            wave = 60 * np.sin(xx[..., None] * fx + yy[..., None] * fy + rng.uniform(0, 6, 3))
            img = np.clip(base + wave + rng.normal(0, 10, (h, w, 3)), 0, 255).astype(np.uint8)
            Image.fromarray(img).save(d / f"img_{i:07d}.JPEG", quality=85)


def du(path: Path) -> int:
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file()) if path.exists() else 0


def child(args: argparse.Namespace) -> None:
    """One measured phase, in its own process; prints one JSON line."""
    import torch

    from ice.data import batches, load_dataset, load_prepared, save_prepared

    work = Path(args.work)
    t0 = time.perf_counter()
    out: dict[str, float] = {}
    if args.phase == "prepare":
        ds = load_dataset(
            source="folder",
            root=str(work / "folder"),
            cache_dir=str(work / "cache"),
            image_size=args.image_size,
            val_fraction=0.01,
        )
        save_prepared(ds, work / "dataset.pt")
        out["images"] = len(ds.train) + len(ds.val) + len(ds.test)
    else:
        ds = load_prepared(work / "dataset.pt")
        torch.manual_seed(0)
        model = torch.nn.Sequential(
            torch.nn.Conv2d(ds.in_channels, 8, 3, stride=4, padding=1),
            torch.nn.ReLU(),
            torch.nn.AdaptiveAvgPool2d(1),
            torch.nn.Flatten(),
            torch.nn.Linear(8, ds.num_classes),
        )
        opt = torch.optim.SGD(model.parameters(), lr=0.01)
        g = torch.Generator().manual_seed(0)
        seen = 0
        for x, y in batches(
            ds.train, 128, ds.mean, ds.std, shuffle=True, augment=True, generator=g, augment_kind=ds.augment
        ):
            loss = torch.nn.functional.cross_entropy(model(x), y)
            opt.zero_grad()
            loss.backward()
            opt.step()
            seen += len(y)
        out["images"] = seen
    out["seconds"] = time.perf_counter() - t0
    out["peak_rss_mb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KB on Linux
    print(json.dumps(out))


def measure(phase: str, work: Path, image_size: int) -> dict[str, float]:
    cmd = [sys.executable, __file__, "--child", phase, "--work", str(work), "--image-size", str(image_size)]
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    r = subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=ROOT)
    if r.returncode != 0:
        return {"error": 1.0, "peak_rss_mb": float("nan"), "seconds": float("nan"), "images": 0.0}
    return dict(json.loads(r.stdout.strip().splitlines()[-1]))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, nargs="+", default=[10000, 40000, 100000])
    ap.add_argument("--image-size", type=int, default=224)
    ap.add_argument("--classes", type=int, default=100)
    ap.add_argument("--work", default="", help="where the folders go (default: a temporary directory)")
    ap.add_argument("--keep", action="store_true", help="keep the generated folders")
    ap.add_argument("--child", choices=["prepare", "epoch"], help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        args.phase = args.child
        child(args)
        return
    base = Path(args.work or tempfile.mkdtemp(prefix="ice-data-scale-"))
    print(f"image_size={args.image_size} classes={args.classes} work={base}")
    print(f"{'N':>8} {'phase':>8} {'peak RSS MB':>12} {'seconds':>9} {'img/s':>8} {'disk MB':>9}")
    for n in args.n:
        work = base / f"n{n}"
        if not (work / "folder").exists():
            t = time.perf_counter()
            generate(work / "folder", n, args.classes)
            print(f"{n:>8} generated {du(work / 'folder') / 1e6:,.0f} MB of JPEGs in {time.perf_counter() - t:.0f} s")
        for phase in ("prepare", "epoch"):
            m = measure(phase, work, args.image_size)
            rate = m["images"] / m["seconds"] if m["seconds"] == m["seconds"] and m["seconds"] > 0 else 0.0
            prepared = work / "dataset.pt"
            disk = (du(work / "cache") + (prepared.stat().st_size if prepared.exists() else 0)) / 1e6
            err = "  (failed: out of memory?)" if m.get("error") else ""
            print(f"{n:>8} {phase:>8} {m['peak_rss_mb']:>12,.0f} {m['seconds']:>9.1f} {rate:>8,.0f} {disk:>9,.0f}{err}")
        if not args.keep:
            shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
