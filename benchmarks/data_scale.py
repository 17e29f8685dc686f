"""Data at scale: what preparing and reading a folder of photos costs, by folder size and format.

For each N it generates a JPEG folder in ImageNet's layout (``train/<class>/``,
``test/<class>/``; 224-500 px images of smooth synthetic content, so files are realistic in
size), then runs, each in a fresh process so that its peak RSS is its own:

- ``prepare``: what the prepare stage does, for ``data.format`` ``memory``
  (``load_dataset`` + ``save_prepared``: every image decoded into one tensor) and ``shards``
  (``ice.sharded.write_sharded``: streamed into 64 MiB shards);
- ``epoch``: ``load_prepared``, then one epoch of the data path (batches, the dataset's
  augmentation, a tiny model's forward and backward);
- ``s3``: with ``--s3``, the same epoch on a worker with no local copy: the shards in a
  SeaweedFS bucket on loopback (started here, stopped by its PID), read through the bounded
  shard cache (``plumbing.shard_store.ShardCache``) from an empty cache.

and prints peak RSS, seconds, images/s and disk used (the prepared file and its shards,
plus the decode cache of the memory format). The memory format runs only where its
estimated peak (ten decoded copies) fits in this machine's memory.

Targets (issue 24): the shards' peak RSS at 100,000 images at most 1.5x its peak at 10,000;
one epoch from S3 within 10% of local disk.

Distinct content costs the generator ~20 ms an image, so a folder's files are copies of a pool
of ``--pool`` distinct JPEGs (each file whole and real; the data path's work per file is the
same); ``--pool 0`` makes every image distinct.

    python benchmarks/data_scale.py --n 10000 40000 100000 --s3 [--image-size 224] [--classes 100]
    python benchmarks/data_scale.py --n 200 --image-size 64        # a quick look
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def peak_rss_mb() -> float:
    """This process's peak resident memory, from /proc (VmHWM). Not ``ru_maxrss``: Linux keeps
    that across fork and exec, so a child would report at least its parent's peak."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def _image(rng, quality: int = 85) -> bytes:  # type: ignore[no-untyped-def]
    import io

    import numpy as np
    from PIL import Image

    w, h = (int(v) for v in rng.integers(224, 501, 2))
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    base = rng.uniform(0, 255, 3).astype(np.float32)
    fx, fy = rng.uniform(0.5, 4, 2) * np.pi / np.array([w, h])
    wave = 60 * np.sin(xx[..., None] * fx + yy[..., None] * fy + rng.uniform(0, 6, 3))
    img = np.clip(base + wave + rng.normal(0, 10, (h, w, 3)), 0, 255).astype(np.uint8)
    buf = io.BytesIO()
    Image.fromarray(img).save(buf, format="JPEG", quality=quality)
    return buf.getvalue()


def generate(root: Path, n: int, classes: int, seed: int = 0, pool: int = 1000) -> None:
    """``n`` training images (and n/10 test images) over ``classes`` class folders: 224-500 px
    JPEGs of smooth gradients with mild noise, which compress as photos do (tens of KB); files
    are drawn from ``pool`` distinct images (0: all distinct)."""
    import numpy as np

    rng = np.random.default_rng(seed)
    made = [_image(rng) for _ in range(pool)] if pool else []
    for split, count in (("train", n), ("test", max(classes, n // 10))):
        for i in range(count):
            c = i % classes
            d = root / split / f"n{c:08d}"
            d.mkdir(parents=True, exist_ok=True)
            data = made[int(rng.integers(0, pool))] if pool else _image(rng)
            (d / f"img_{i:07d}.JPEG").write_bytes(data)


def du(path: Path) -> int:
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file()) if path.exists() else 0


def _model(ds):  # type: ignore[no-untyped-def]
    import torch

    torch.manual_seed(0)
    return torch.nn.Sequential(
        torch.nn.Conv2d(ds.in_channels, 8, 3, stride=4, padding=1),
        torch.nn.ReLU(),
        torch.nn.AdaptiveAvgPool2d(1),
        torch.nn.Flatten(),
        torch.nn.Linear(8, ds.num_classes),
    )


def child(args: argparse.Namespace) -> None:
    """One measured phase, in its own process; prints one JSON line."""
    import torch

    from ice.config import DataConfig
    from ice.data import batches, load_dataset, load_prepared, save_prepared
    from ice.sharded import write_sharded

    work = Path(args.work)
    spec = DataConfig(
        source="folder",
        root=str(work / "folder"),
        cache_dir=str(work / "cache"),
        image_size=args.image_size,
        val_fraction=0.01,
        format=args.format,
    )
    where = work / args.format
    t0 = time.perf_counter()
    out: dict[str, float] = {}
    if args.phase == "prepare":
        where.mkdir(exist_ok=True)
        if args.format == "memory":
            ds = load_dataset(spec)
            save_prepared(ds, where / "dataset.pt")
            out["images"] = len(ds.train) + len(ds.val) + len(ds.test)
        else:
            s = write_sharded(spec, where / "dataset.pt", where / "shards")
            out["images"] = s["train"] + s["val"] + s["test"]
    else:
        locate = None
        if args.phase == "s3":
            from plumbing.s3 import S3Store
            from plumbing.shard_store import ShardCache, cache_bytes

            cache = work / "s3-cache"
            shutil.rmtree(cache, ignore_errors=True)
            locate = ShardCache(S3Store(args.store, cache), cache, cache_bytes())
        ds = load_prepared(where / "dataset.pt", locate=locate)
        model = _model(ds)
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
    out["peak_rss_mb"] = peak_rss_mb()
    print(json.dumps(out))


def measure(phase: str, fmt: str, work: Path, image_size: int, store: str = "") -> dict[str, float]:
    cmd = [sys.executable, __file__, "--child", phase, "--format", fmt, "--work", str(work)]
    cmd += ["--image-size", str(image_size), "--store", store]
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    r = subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=ROOT)
    if r.returncode != 0:
        tail = (r.stderr.strip().splitlines() or ["killed"])[-1]
        return {"error": 1.0, "why": tail, "peak_rss_mb": float("nan"), "seconds": float("nan"), "images": 0.0}  # type: ignore[dict-item]
    return dict(json.loads(r.stdout.strip().splitlines()[-1]))


def _fits(n: int, image_size: int) -> bool:
    """Whether the memory format's peak (about ten decoded copies) fits in this machine's memory."""
    avail = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_AVPHYS_PAGES")
    return n * 1.1 * 3 * image_size * image_size * 10 < avail


def _upload(work: Path, url: str) -> None:
    """The sharded dataset's shards into the bucket, as the prepare stage puts them."""
    from plumbing.s3 import S3Store
    from plumbing.shard_store import SUFFIX

    store = S3Store(url, work / "upload-cache")
    for f in sorted((work / "shards" / "shards").glob(f"*{SUFFIX}")):
        store.put(f, f.name.removesuffix(SUFFIX), SUFFIX, name="shard")


def _row(n: int, fmt: str, phase: str, m: dict[str, float], disk: float) -> None:
    rate = m["images"] / m["seconds"] if m["seconds"] == m["seconds"] and m["seconds"] > 0 else 0.0
    err = f"  (failed: {m.get('why')})" if m.get("error") else ""
    print(
        f"{n:>8} {fmt:>7} {phase:>8} {m['peak_rss_mb']:>12,.0f} {m['seconds']:>9.1f} {rate:>8,.0f} {disk:>9,.0f}{err}",
        flush=True,
    )


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, nargs="+", default=[10000, 40000, 100000])
    ap.add_argument("--image-size", type=int, default=224)
    ap.add_argument("--classes", type=int, default=100)
    ap.add_argument("--pool", type=int, default=1000, help="distinct images the files are drawn from (0: all)")
    ap.add_argument("--formats", nargs="+", default=["memory", "shards"], choices=["memory", "shards"])
    ap.add_argument("--s3", action="store_true", help="also read the shards from a SeaweedFS bucket on loopback")
    ap.add_argument("--work", default="", help="where the folders go (default: a temporary directory)")
    ap.add_argument("--keep", action="store_true", help="keep the generated folders")
    ap.add_argument("--child", choices=["prepare", "epoch", "s3"], help=argparse.SUPPRESS)
    ap.add_argument("--format", default="shards", help=argparse.SUPPRESS)
    ap.add_argument("--store", default="", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        args.phase = args.child
        child(args)
        return
    base = Path(args.work or tempfile.mkdtemp(prefix="ice-data-scale-"))
    server = None
    if args.s3:
        from benchmarks.common import infra

        s3 = infra("s3")  # SeaweedFS, as `make up` starts it

        port = s3.free_base()
        server = s3.start(base / "s3" / "data", port, "ice", env_file=base / "s3" / "s3.env")
        os.environ.update(s3.identity(base / "s3" / "s3.env"))
        os.environ.update({"AWS_ENDPOINT_URL_S3": f"http://127.0.0.1:{port}", "AWS_DEFAULT_REGION": "us-east-1"})
    print(f"image_size={args.image_size} classes={args.classes} pool={args.pool} work={base}")
    print(f"{'N':>8} {'format':>7} {'phase':>8} {'peak RSS MB':>12} {'seconds':>9} {'img/s':>8} {'disk MB':>9}")
    try:
        for n in args.n:
            work = base / f"n{n}"
            if not (work / "folder").exists():
                t = time.perf_counter()
                generate(work / "folder", n, args.classes, pool=args.pool)
                mb = du(work / "folder") / 1e6
                print(f"{n:>8} generated {mb:,.0f} MB of JPEGs in {time.perf_counter() - t:.0f} s", flush=True)
            for fmt in args.formats:
                if fmt == "memory" and not _fits(n, args.image_size):
                    print(f"{n:>8} {fmt:>7} skipped: ten decoded copies would not fit in memory", flush=True)
                    continue
                for phase in ("prepare", "epoch"):
                    m = measure(phase, fmt, work, args.image_size)
                    disk = ((du(work / "cache") if fmt == "memory" else 0) + du(work / fmt)) / 1e6
                    _row(n, fmt, phase, m, disk)
                if fmt == "shards" and server is not None:
                    url = f"s3://ice/scale-{n}"
                    _upload(work, url)
                    m = measure("s3", fmt, work, args.image_size, url)
                    _row(n, fmt, "s3", m, du(work / "s3-cache") / 1e6)
            if not args.keep:
                shutil.rmtree(work, ignore_errors=True)
    finally:
        if server is not None:
            server.terminate()  # weed stops on SIGTERM to its PID
            server.wait(timeout=30)


if __name__ == "__main__":
    main()
