"""Which shard format: ice's own shards against mosaicml-streaming, webdataset, litdata and a
plain numpy memmap, on the same records, measured the same way (issue 24, part 1).

Every format stores the same records: the images of a generated ImageNet-layout folder
(``benchmarks/data_scale.py``'s generator), resized and center-cropped to ``--image-size``
and JPEG-encoded once (so each library stores identical bytes and every reader decodes
with PIL in the reading process). For each format, in fresh processes:

- ``write``: seconds to write the records, and the bytes on disk;
- ``read``: one shuffled epoch with the format's own seeded shuffle, every image decoded and
  stacked into batches of 128; images/s, peak RSS, and whether a second pass with the same
  seed gives the same order (deterministic), and whether record ``i`` can be read directly
  (random access: what a seeded validation subset or a held-out split needs).

The libraries are not project dependencies: install them beside the project, e.g.
``pip install --target /work/libsite --no-deps mosaicml-streaming webdataset braceexpand litdata
lightning-utilities tifffile obstore catalogue brotli python-snappy cramjam xxhash zstd``, and
run with ``--libs /work/libsite``. mosaicml-streaming 0.13 imports ``transformers`` for its
DataLoader's type checks only; this script stands in two empty classes for it (no model code runs).

    python benchmarks/shard_libs.py --n 5000 --image-size 96 --libs /work/libsite
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import pickle
import shutil
import subprocess
import sys
import tempfile
import time
import types
from pathlib import Path

from benchmarks.common import REPO as ROOT

FORMATS = ("ice", "ice-1thread", "memmap", "webdataset", "mosaic", "litdata")
SHARD = 64 << 20
BATCH = 128


def _decode(data: bytes):  # type: ignore[no-untyped-def]
    import io

    import numpy as np
    from PIL import Image

    with Image.open(io.BytesIO(data)) as img:
        return np.asarray(img.convert("RGB"))


def _stub_transformers() -> None:
    names = (
        "transformers",
        "transformers.feature_extraction_utils",
        "transformers.tokenization_utils_base",
        "transformers.models",
        "transformers.models.auto",
        "transformers.models.auto.tokenization_auto",
    )
    for name in names:
        m = types.ModuleType(name)
        m.__path__ = []  # type: ignore[attr-defined]
        sys.modules.setdefault(name, m)
    sys.modules["transformers.feature_extraction_utils"].BatchFeature = type("BatchFeature", (dict,), {})  # type: ignore[attr-defined]
    sys.modules["transformers.tokenization_utils_base"].BatchEncoding = type("BatchEncoding", (dict,), {})  # type: ignore[attr-defined]
    sys.modules["transformers.models.auto.tokenization_auto"].AutoTokenizer = object  # type: ignore[attr-defined]
    from ice._compat import import_torchvision

    import_torchvision()


# ----------------------------------------------------------------------------- writers
def write(fmt: str, records: list[tuple[bytes, int]], out: Path) -> None:
    out.mkdir(parents=True)
    if fmt.startswith("ice"):
        import numpy as np

        from ice.shards import ShardWriter

        w = ShardWriter(out, SHARD)
        for data, _ in records:
            w.add(data)
        shards = w.close()
        np.save(out / "labels.npy", np.array([y for _, y in records]))
        (out / "shards.json").write_text(json.dumps(shards))
    elif fmt == "memmap":
        import numpy as np

        offsets = np.zeros(len(records) + 1, dtype=np.int64)
        offsets[1:] = np.cumsum([len(d) for d, _ in records])
        with open(out / "data.bin", "wb") as f:
            for d, _ in records:
                f.write(d)
        np.save(out / "offsets.npy", offsets)
        np.save(out / "labels.npy", np.array([y for _, y in records]))
    elif fmt == "webdataset":
        import webdataset as wds

        with wds.ShardWriter(str(out / "shard-%06d.tar"), maxsize=SHARD, verbose=0) as sink:
            for i, (d, y) in enumerate(records):
                sink.write({"__key__": f"{i:08d}", "jpg": d, "cls": str(y).encode()})
    elif fmt == "mosaic":
        from streaming import MDSWriter

        with MDSWriter(out=str(out), columns={"x": "bytes", "y": "int"}, size_limit=SHARD) as w:
            for d, y in records:
                w.write({"x": d, "y": y})
    elif fmt == "litdata":
        from litdata.streaming.writer import BinaryWriter

        w = BinaryWriter(str(out), chunk_bytes=SHARD)
        for i, (d, y) in enumerate(records):
            w[i] = {"x": d, "y": y}
        w.done()
        w.merge()


# ----------------------------------------------------------------------------- readers
def epoch(fmt: str, src: Path, seed: int, limit: int | None = None):  # type: ignore[no-untyped-def]
    """Yield (batch of decoded images as one uint8 tensor, labels) for one shuffled epoch."""
    import numpy as np
    import torch

    def batched(pairs):  # type: ignore[no-untyped-def]
        xs, ys = [], []
        for x, y in pairs:
            xs.append(_decode(x) if isinstance(x, bytes) else x)
            ys.append(y)
            if len(xs) == BATCH:
                yield torch.from_numpy(np.stack(xs)), torch.tensor(ys)
                xs, ys = [], []
        if xs:
            yield torch.from_numpy(np.stack(xs)), torch.tensor(ys)

    if fmt.startswith("ice"):
        from ice.data import ShardedSplit, read_ahead
        from ice.shards import ShardReader, shard_name

        shards = json.loads((src / "shards.json").read_text())
        labels = torch.from_numpy(np.load(src / "labels.npy"))
        c_h_w = _decode(ShardReader(shards, "jpeg", (3, 1, 1), lambda s: src / shard_name(s)).record(0)).shape
        reader = ShardReader(
            shards,
            "jpeg",
            (3, c_h_w[0], c_h_w[1]),
            lambda s: src / shard_name(s),
            threads=1 if fmt == "ice-1thread" else None,
        )
        split = ShardedSplit(reader, torch.arange(len(labels)), labels)
        if fmt == "ice-1thread":
            split.prefetch = False  # type: ignore[misc]
        g = torch.Generator().manual_seed(seed)
        # raw uint8 batches: the same work as the other readers (no normalisation)
        order = torch.randperm(len(split), generator=g)
        todo = [order[i : i + BATCH] for i in range(0, len(order), BATCH)]
        for idx, xb in zip(todo, read_ahead(split, todo), strict=True):
            yield xb, split.y[idx]
    elif fmt == "memmap":
        offsets = np.load(src / "offsets.npy")
        labels = np.load(src / "labels.npy")
        data = np.memmap(src / "data.bin", dtype=np.uint8, mode="r")
        order = torch.randperm(len(labels), generator=torch.Generator().manual_seed(seed)).numpy()
        yield from batched((data[offsets[i] : offsets[i + 1]].tobytes(), int(labels[i])) for i in order)
    elif fmt == "webdataset":
        import webdataset as wds

        urls = sorted(str(p) for p in src.glob("*.tar"))
        ds = wds.WebDataset(urls, shardshuffle=len(urls), seed=seed, empty_check=False).shuffle(1000, seed=seed)
        yield from batched((s["jpg"], int(s["cls"])) for s in ds)
    elif fmt == "mosaic":
        from streaming import StreamingDataset

        ds = StreamingDataset(local=str(src), shuffle=True, shuffle_seed=seed, batch_size=BATCH)
        yield from batched((s["x"], int(s["y"])) for s in ds)
    elif fmt == "litdata":
        from litdata import StreamingDataset as LitDataset

        ds = LitDataset(str(src), shuffle=True, seed=seed)
        yield from batched((s["x"], int(s["y"])) for s in ds)


def random_access(fmt: str, src: Path, i: int) -> bool:
    """Whether record ``i`` can be read directly (no pass over what comes before it)."""
    try:
        if fmt in ("webdataset",):
            return False  # a tar stream: sequential only
        if fmt == "mosaic":
            from streaming import StreamingDataset

            return StreamingDataset(local=str(src), shuffle=False, batch_size=BATCH)[i] is not None
        if fmt == "litdata":
            from litdata import StreamingDataset as LitDataset

            return LitDataset(str(src))[i] is not None
        return True  # ice shards and memmap: an offset table
    except Exception:
        return False


# ----------------------------------------------------------------------------- driver
def child(args: argparse.Namespace) -> None:
    if args.fmt == "mosaic":
        _stub_transformers()
    # imports first: the clock measures the format, not loading its modules
    import numpy  # noqa: F401
    import torch  # noqa: F401
    from PIL import Image  # noqa: F401

    import ice.data  # noqa: F401
    import ice.shards  # noqa: F401

    if args.fmt == "webdataset":
        import webdataset  # noqa: F401
    elif args.fmt == "mosaic":
        import streaming  # noqa: F401
    elif args.fmt == "litdata":
        import litdata  # noqa: F401
        import litdata.streaming.writer  # noqa: F401
    work = Path(args.work)
    out = work / "formats" / args.fmt
    t0 = time.perf_counter()
    res: dict[str, float | bool] = {}
    if args.phase == "write":
        records = pickle.loads((work / "records.pkl").read_bytes())
        shutil.rmtree(out, ignore_errors=True)
        write(args.fmt, records, out)
        res["seconds"] = time.perf_counter() - t0
        res["disk_mb"] = sum(p.stat().st_size for p in out.rglob("*") if p.is_file()) / 1e6
    else:
        seen = 0
        order = hashlib.sha256()
        for x, y in epoch(args.fmt, out, seed=0):
            seen += len(y)
            order.update(y.numpy().tobytes())
            order.update(x[:, 0, 0].numpy().tobytes())
        res["seconds"] = time.perf_counter() - t0
        res["images"] = seen
        from benchmarks.data_scale import peak_rss_mb

        res["peak_rss_mb"] = peak_rss_mb()
        again = hashlib.sha256()
        for x, y in epoch(args.fmt, out, seed=0):
            again.update(y.numpy().tobytes())
            again.update(x[:, 0, 0].numpy().tobytes())
        res["deterministic"] = order.hexdigest() == again.hexdigest()
        res["random_access"] = random_access(args.fmt, out, 17)
    print(json.dumps(res))


def prepare_records(work: Path, n: int, image_size: int, classes: int) -> None:
    from benchmarks.data_scale import generate
    from ice.config import DataConfig
    from ice.data import ImageDecoder, list_members
    from ice.shards import encode_image

    folder = work / "folder"
    if not folder.exists():
        generate(folder, n, classes)
    files = list_members(DataConfig(source="folder", root=str(folder)))["train"]
    decode = ImageDecoder(str(folder), image_size)
    names = sorted({k.split("/", 1)[0] for k, _ in files})
    records = [(encode_image(decode("train", k, p), "jpeg"), names.index(k.split("/", 1)[0])) for k, p in sorted(files)]
    (work / "records.pkl").write_bytes(pickle.dumps(records))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=5000)
    ap.add_argument("--image-size", type=int, default=96)
    ap.add_argument("--classes", type=int, default=100)
    ap.add_argument("--libs", default="", help="a directory holding the libraries (pip install --target)")
    ap.add_argument("--work", default="")
    ap.add_argument("--formats", nargs="+", default=list(FORMATS), choices=FORMATS)
    ap.add_argument("--child", choices=["write", "read"], help=argparse.SUPPRESS)
    ap.add_argument("--fmt", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        args.phase = args.child
        child(args)
        return
    work = Path(args.work or tempfile.mkdtemp(prefix="ice-shard-libs-"))
    work.mkdir(parents=True, exist_ok=True)
    if not (work / "records.pkl").exists():
        t = time.perf_counter()
        prepare_records(work, args.n, args.image_size, args.classes)
        print(f"records: {args.n} images at {args.image_size} px, JPEG, in {time.perf_counter() - t:.0f} s ({work})")
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(p for p in (str(ROOT), args.libs) if p)}
    print(
        f"{'format':<12} {'write s':>8} {'disk MB':>8} {'read img/s':>10} {'peak RSS MB':>11} {'determ.':>8} {'random':>7}"
    )
    for fmt in args.formats:
        got: dict[str, dict] = {}
        for phase in ("write", "read"):
            if phase == "write" and fmt == "ice-1thread":
                src, dst = work / "formats" / "ice", work / "formats" / "ice-1thread"
                if not dst.exists():
                    shutil.copytree(src, dst)
                got[phase] = got.get("write") or {"seconds": float("nan"), "disk_mb": float("nan")}
                continue
            cmd = [sys.executable, __file__, "--child", phase, "--fmt", fmt, "--work", str(work)]
            r = subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=ROOT)
            if r.returncode != 0:
                print(f"{fmt:<12} {phase} failed: {r.stderr.strip().splitlines()[-1] if r.stderr else r.returncode}")
                break
            got[phase] = json.loads(r.stdout.strip().splitlines()[-1])
        if "read" not in got:
            continue
        w, rd = got["write"], got["read"]
        print(
            f"{fmt:<12} {w['seconds']:>8.1f} {w['disk_mb']:>8.1f} {rd['images'] / rd['seconds']:>10,.0f} "
            f"{rd['peak_rss_mb']:>11,.0f} {'yes' if rd['deterministic'] else 'no':>8} {'yes' if rd['random_access'] else 'no':>7}",
            flush=True,
        )


if __name__ == "__main__":
    main()
