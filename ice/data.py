"""Datasets of uint8 images, in memory or in shards on disk, with batch-level augmentation.

``load_dataset(spec)`` returns a :class:`Dataset` whose ``train``, ``val`` and ``test``
splits hold ``uint8`` images ``[N, C, H, W]`` and ``int64`` labels. The validation
split is held out from train with a seed; the test split is never used for decisions.
A split is a :class:`Split` (one tensor in memory) or a :class:`ShardedSplit` (records in
shard files, :mod:`ice.shards`, read per batch): both answer ``len``, ``shape``,
``read(idx)``, ``take`` and ``sample``, and :func:`batches` gives the same batches from
either for the same seed.

Decoded tensors are cached as a ``.pt`` file (loaded with ``weights_only=True``), keyed
by the source's path, size and modification time, so a second load of CIFAR-10 takes
a fraction of a second.
"""

from __future__ import annotations

import hashlib
import io
import math
import os
import tarfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from ice.config import DataConfig

__all__ = [
    "augment_kind",
    "resized_crop_batch",
    "Split",
    "ShardedSplit",
    "Dataset",
    "load_dataset",
    "holdout",
    "save_prepared",
    "load_prepared",
    "batches",
    "probe_batch",
    "n_steps",
    "augment_batch",
    "normalize",
    "IMAGE_EXTS",
]

IMAGE_EXTS = (".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp", ".tif", ".tiff", ".ppm", ".pgm")
_CACHE_FORMAT = 2


class _Sampled:
    y: torch.Tensor
    index: torch.Tensor | None

    def __len__(self) -> int:
        return int(self.y.shape[0])

    def _base(self) -> torch.Tensor:
        return self.index if self.index is not None else torch.arange(len(self))

    def take(self, idx: torch.Tensor) -> Any:
        raise NotImplementedError

    def sample(self, n: int, generator: torch.Generator) -> Any:
        """``n`` items drawn at random with ``generator``, kept in their original order."""
        return self.take(torch.randperm(len(self), generator=generator)[:n].sort().values)


@dataclass
class Split(_Sampled):
    x: torch.Tensor  # uint8 [N, C, H, W]
    y: torch.Tensor  # int64 [N]
    index: torch.Tensor | None = None  # positions in the source split (for disjointness checks)

    prefetch = False  # reading is indexing a tensor: nothing to overlap

    @property
    def shape(self) -> tuple[int, int, int]:
        """One image's ``(C, H, W)``."""
        return int(self.x.shape[1]), int(self.x.shape[2]), int(self.x.shape[3])

    def read(self, idx: torch.Tensor) -> torch.Tensor:
        """uint8 images ``[B, C, H, W]`` at positions ``idx``."""
        return self.x[idx]

    def take(self, idx: torch.Tensor) -> Split:
        return Split(self.x[idx], self.y[idx], self._base()[idx])


@dataclass
class ShardedSplit(_Sampled):
    """A split whose images stay in shard files: ``rows`` are its records in ``reader``.

    Views (``take``, ``sample``, the val holdout) share one reader and copy only positions
    and labels, so every view of a large dataset costs a few bytes per image."""

    reader: Any  # ice.shards.ShardReader
    rows: torch.Tensor  # int64 [N]: records of reader
    y: torch.Tensor  # int64 [N]
    index: torch.Tensor | None = None

    prefetch = True  # reads touch the disk (and decode): the next batch is read beside this one

    @property
    def shape(self) -> tuple[int, int, int]:
        c, h, w = self.reader.shape
        return int(c), int(h), int(w)

    def read(self, idx: torch.Tensor) -> torch.Tensor:
        return self.reader.read(self.rows[idx])

    def take(self, idx: torch.Tensor) -> ShardedSplit:
        return ShardedSplit(self.reader, self.rows[idx], self.y[idx], self._base()[idx])


AnySplit = Split | ShardedSplit


@dataclass
class Dataset:
    name: str
    train: AnySplit
    val: AnySplit
    test: AnySplit
    classes: list[str]
    mean: tuple[float, ...]
    std: tuple[float, ...]
    meta: dict[str, Any] = field(default_factory=dict)

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    @property
    def in_channels(self) -> int:
        return self.train.shape[0]

    @property
    def augment(self) -> str:
        """The training augmentation these images take: ``pad_crop`` or ``resized_crop``."""
        return str(self.meta.get("augment", "pad_crop"))

    @property
    def image_size(self) -> tuple[int, int]:
        return self.train.shape[1], self.train.shape[2]

    def input_shape(self, batch: int = 1) -> tuple[int, int, int, int]:
        return (batch, self.in_channels, *self.image_size)

    def subset(self, fraction: float, seed: int = 0) -> Dataset:
        """A copy keeping ``fraction`` of train and val (test untouched), drawn with ``seed``."""
        g = torch.Generator().manual_seed(seed)
        return Dataset(
            self.name,
            _fraction(self.train, fraction, g),
            _fraction(self.val, fraction, g),
            self.test,
            self.classes,
            self.mean,
            self.std,
            {**self.meta, "subset": fraction},
        )


def _fraction(split: AnySplit, fraction: float, g: torch.Generator) -> AnySplit:
    if fraction >= 1.0:
        return split
    return split.sample(max(1, round(len(split) * fraction)), g)


# ----------------------------------------------------------------------------- loading
def load_dataset(spec: DataConfig | dict[str, Any] | None = None, **overrides: Any) -> Dataset:
    """Load a dataset from a :class:`~ice.config.DataConfig` (or a dict of its fields)."""
    if spec is None:
        spec = DataConfig(**overrides)
    elif isinstance(spec, dict):
        spec = DataConfig(**{**spec, **overrides})
    elif overrides:
        spec = spec.model_copy(update=overrides)
    if spec.source == "digits":
        raw = _load_digits(spec)
    elif spec.source in ("cifar10", "cifar100"):
        raw = _cached(spec, lambda: _load_cifar(spec))
    else:
        raw = _cached(spec, lambda: _load_folder(spec))
    kind = augment_kind(spec.augmentation, tuple(raw["train_x"].shape[2:]))

    train, val = holdout(Split(raw["train_x"], raw["train_y"]), spec.val_fraction, spec.seed)
    test = Split(raw["test_x"], raw["test_y"], torch.arange(len(raw["test_y"])))
    # normalisation statistics of the whole training set (train + val), as is customary;
    # computed once at decode time and cached with the tensors
    mean, std = raw["stats"] if "stats" in raw else _channel_stats(raw["train_x"])
    mean, std = tuple(float(v) for v in mean), tuple(float(v) for v in std)
    meta: dict[str, Any] = {"source": spec.source}
    if kind != "pad_crop":  # the default is not written, so existing prepared data keeps its bytes
        meta["augment"] = kind
    ds = Dataset(spec.source, train, val, test, list(raw["classes"]), mean, std, meta)
    if spec.subset < 1.0:
        ds = ds.subset(spec.subset, seed=spec.seed)
    return ds


def augment_kind(setting: str, size: tuple[int, ...]) -> str:
    """``data.augmentation`` resolved for images of ``size`` (H, W): ``auto`` is ``resized_crop``
    from 96 px on (ImageNet-style), ``pad_crop`` below (CIFAR-style)."""
    if setting != "auto":
        return setting
    return "resized_crop" if min(size) >= 96 else "pad_crop"


def holdout(split: Any, fraction: float, seed: int) -> tuple[Any, Any]:
    """``(train, val)``: ``fraction`` of ``split`` held out with ``seed``, each in the original order.

    The reference checkpoint's split depends on this draw (a test pins it)."""
    perm = torch.randperm(len(split), generator=torch.Generator().manual_seed(seed))
    n_val = max(1, round(len(split) * fraction))
    return split.take(perm[n_val:].sort().values), split.take(perm[:n_val].sort().values)


def _channel_stats(x: torch.Tensor) -> tuple[tuple[float, ...], tuple[float, ...]]:
    # float64 sums over chunks: exact enough and the same on every run
    c = x.shape[1]
    s = torch.zeros(c, dtype=torch.float64)
    s2 = torch.zeros(c, dtype=torch.float64)
    for chunk in x.split(4096):
        f = chunk.to(torch.float64) / 255.0
        s += f.sum(dim=(0, 2, 3))
        s2 += (f * f).sum(dim=(0, 2, 3))
    n = x.shape[0] * x.shape[2] * x.shape[3]
    mean = s / n
    std = (s2 / n - mean * mean).clamp_min(1e-12).sqrt()
    return tuple(round(float(v), 6) for v in mean), tuple(round(float(v), 6) for v in std)


def _load_digits(spec: DataConfig) -> dict[str, Any]:
    from sklearn.datasets import load_digits

    d = load_digits()
    x = torch.from_numpy(d.images).to(torch.float32)  # values 0..16
    x = (x * (255.0 / 16.0)).round().to(torch.uint8).unsqueeze(1).contiguous()
    y = torch.from_numpy(d.target).to(torch.int64)
    # digits ships no test split: hold one out with a fixed seed, independent of the val seed
    g = torch.Generator().manual_seed(1234)
    perm = torch.randperm(len(y), generator=g)
    n_test = round(len(y) * spec.test_fraction)
    te, tr = perm[:n_test].sort().values, perm[n_test:].sort().values
    return {
        "train_x": x[tr],
        "train_y": y[tr],
        "test_x": x[te],
        "test_y": y[te],
        "classes": [str(i) for i in range(10)],
    }


def _load_cifar(spec: DataConfig) -> dict[str, Any]:
    from ice._compat import import_torchvision

    tv = import_torchvision()
    cls = tv.datasets.CIFAR10 if spec.source == "cifar10" else tv.datasets.CIFAR100
    root = spec.root or "data/raw"
    try:
        tr = cls(root, train=True, download=spec.download)
        te = cls(root, train=False, download=spec.download)
    except RuntimeError as err:
        raise FileNotFoundError(
            f"{spec.source} not found under {root!r}; set data.download: true to fetch it, "
            f"or data.source: folder with a local copy ({err})"
        ) from None
    out: dict[str, Any] = {"classes": list(tr.classes)}
    for name, d in (("train", tr), ("test", te)):
        out[f"{name}_x"] = torch.from_numpy(d.data).permute(0, 3, 1, 2).contiguous()
        out[f"{name}_y"] = torch.tensor(d.targets, dtype=torch.int64)
    return out


# ----------------------------------------------------------------------------- ImageFolder / tar
def _load_folder(spec: DataConfig) -> dict[str, Any]:
    assert spec.root is not None
    root = Path(spec.root)
    if not root.exists():
        raise FileNotFoundError(f"data.root {str(root)!r} does not exist")
    if root.is_file():
        try:
            files = _tar_members(root)
        except (tarfile.TarError, EOFError, OSError) as err:
            raise ValueError(
                f"data.root {str(root)!r}: not a readable tar archive ({type(err).__name__}: {err})"
            ) from None
    else:
        files = _dir_members(root)
    return _decode_members(files, str(root), spec.image_size)


def _split_class(parts: tuple[str, ...]) -> tuple[str, str] | None:
    """Find ``.../(train|test)/<class>/<file>`` in a member path."""
    if len(parts) >= 3 and parts[-3] in ("train", "test"):
        return parts[-3], parts[-2]
    return None


def _tar_members(path: Path) -> dict[str, list[tuple[str, Any]]]:
    out: dict[str, list[tuple[str, Any]]] = {"train": [], "test": []}
    with tarfile.open(path, "r:*") as tar:
        for member in tar:
            if not member.isfile() or not member.name.lower().endswith(IMAGE_EXTS):
                continue
            found = _split_class(Path(member.name).parts)
            if found is None:
                continue
            f = tar.extractfile(member)
            assert f is not None
            out[found[0]].append((found[1] + "/" + Path(member.name).name, f.read()))
    return out


def _dir_members(root: Path) -> dict[str, list[tuple[str, Any]]]:
    out: dict[str, list[tuple[str, Any]]] = {"train": [], "test": []}
    for path in sorted(root.rglob("*")):
        if path.is_file() and path.suffix.lower() in IMAGE_EXTS:
            found = _split_class(path.relative_to(root).parts)
            if found is not None:
                out[found[0]].append((found[1] + "/" + path.name, path))
    return out


def class_lookup(files: dict[str, list[tuple[str, Any]]], where: str) -> list[str]:
    """The sorted class names of an ImageFolder listing; a one-line error when a split is empty."""
    if not files["train"] or not files["test"]:
        raise ValueError(f"{where}: expected an ImageFolder layout with train/<class>/ and test/<class>/ images")
    return sorted({key.split("/", 1)[0] for split in files.values() for key, _ in split})


class ImageDecoder:
    """Decodes source images one at a time to uint8 ``[H, W, C]``: every image takes the first
    one's mode (grey or RGB) and size, or, with ``image_size``, is resized (shorter side) and
    center-cropped to that square."""

    def __init__(self, where: str, image_size: int | None = None) -> None:
        self.where = where
        self.image_size = image_size
        self.mode: str | None = None
        self.size: tuple[int, int] | None = None

    @property
    def channels(self) -> int:
        return 1 if self.mode == "L" else 3

    def __call__(self, split: str, key: str, src: Any) -> Any:
        import numpy as np
        from PIL import Image, ImageOps

        # one unreadable image fails the whole load, naming it: a dataset that silently
        # loses images would make runs irreproducible
        try:
            with Image.open(io.BytesIO(src) if isinstance(src, bytes) else src) as raw:
                if self.mode is None or self.size is None:
                    self.mode = "L" if raw.mode in ("L", "1", "I;16") else "RGB"
                    self.size = (self.image_size, self.image_size) if self.image_size else raw.size
                img = raw.convert(self.mode)
                if self.image_size:  # the central square, resized: resize plus center crop
                    img = ImageOps.fit(img, self.size, method=Image.Resampling.BILINEAR)
                elif img.size != self.size:
                    img = img.resize(self.size, Image.Resampling.BILINEAR)
                arr = np.asarray(img, dtype=np.uint8)
        except (OSError, ValueError, SyntaxError) as err:  # PIL: unidentified, truncated or broken image
            raise ValueError(
                f"{self.where}: {split}/{key} is not a readable image ({type(err).__name__}: {err}); fix or remove it"
            ) from None
        return arr.reshape(arr.shape[0], arr.shape[1], self.channels)


def _decode_members(
    files: dict[str, list[tuple[str, Any]]], where: str, image_size: int | None = None
) -> dict[str, Any]:
    """Decode every image into one uint8 tensor per split (see :class:`ImageDecoder`)."""
    classes = class_lookup(files, where)
    lookup = {c: i for i, c in enumerate(classes)}
    out: dict[str, Any] = {"classes": classes}
    decode = ImageDecoder(where, image_size)
    for split in ("train", "test"):
        items = sorted(files[split], key=lambda kv: kv[0])
        xs = [torch.from_numpy(decode(split, key, src).copy()) for key, src in items]
        out[f"{split}_x"] = torch.stack(xs).permute(0, 3, 1, 2).contiguous()
        out[f"{split}_y"] = torch.tensor([lookup[k.split("/", 1)[0]] for k, _ in items], dtype=torch.int64)
    return out


# ----------------------------------------------------------------------------- cache
def _source_key(spec: DataConfig) -> str:
    root = Path(spec.root or "data/raw")
    h = hashlib.sha256(f"{_CACHE_FORMAT}|{spec.source}|{root.resolve()}".encode())
    if spec.image_size is not None:  # the decoded size is part of what is cached
        h.update(f"|size={spec.image_size}".encode())
    if root.is_file():
        st = root.stat()
        h.update(f"|{st.st_size}|{st.st_mtime_ns}".encode())
    elif root.is_dir():
        st = root.stat()
        h.update(f"|{st.st_mtime_ns}".encode())
    return h.hexdigest()[:16]


def _cached(spec: DataConfig, decode: Any) -> dict[str, Any]:
    cache = Path(spec.cache_dir) / f"{spec.source}-{_source_key(spec)}.pt"
    if cache.exists():
        try:
            return torch.load(cache, weights_only=True, mmap=True)
        except Exception:  # a damaged cache is rebuilt, never trusted
            cache.unlink(missing_ok=True)
    raw = decode()
    raw["stats"] = [list(v) for v in _channel_stats(raw["train_x"])]
    cache.parent.mkdir(parents=True, exist_ok=True)
    tmp = cache.with_suffix(f".tmp{os.getpid()}")
    try:
        torch.save(raw, tmp)
        os.replace(tmp, cache)
    finally:
        tmp.unlink(missing_ok=True)
    return raw


# ----------------------------------------------------------------------------- prepared data
PREPARED_FORMAT = "ice-prepared/1"
SHARDED_FORMAT = "ice-prepared-shards/1"  # a manifest: labels, splits and shard list (ice.sharded)


def save_prepared(ds: Dataset, path: str | Path) -> str:
    """Write ``ds`` (its three splits, classes and statistics) atomically; return the sha256.

    The file holds tensors and plain data only, so :func:`load_prepared` reads it with
    ``weights_only=True``. The same dataset always gives the same bytes.
    """
    from ice.files import atomic_write_bytes

    payload: dict[str, Any] = {
        "format": PREPARED_FORMAT,
        "name": ds.name,
        "classes": list(ds.classes),
        "mean": list(ds.mean),
        "std": list(ds.std),
        "meta": dict(ds.meta),
    }
    for split in ("train", "val", "test"):
        s: Split = getattr(ds, split)
        payload[split] = {
            "x": s.x.contiguous(),
            "y": s.y.contiguous(),
            "index": s.index.contiguous() if s.index is not None else torch.arange(len(s)),
        }
    buf = io.BytesIO()
    torch.save(payload, buf)
    data = buf.getvalue()
    atomic_write_bytes(path, data)
    return hashlib.sha256(data).hexdigest()


def load_prepared(path: str | Path, sha256: str | None = None, locate: Any = None) -> Dataset:
    """Read a file written by :func:`save_prepared` or :func:`ice.sharded.write_sharded`;
    verify ``sha256`` when given.

    A sharded dataset's file is its manifest: its splits read their images from shards that
    ``locate(sha256) -> Path`` finds (default: ``shards/`` beside ``path``, each shard
    verified against its name the first time it is opened)."""
    try:
        data = Path(path).read_bytes()
    except OSError as err:
        raise ValueError(f"{path}: cannot be read ({err.strerror or err})") from None
    if sha256 is not None and hashlib.sha256(data).hexdigest() != sha256:
        raise ValueError(
            f"{path}: sha256 mismatch; the prepared data changed since it was recorded (rerun the prepare stage)"
        )
    try:
        p = torch.load(io.BytesIO(data), weights_only=True)
    except Exception as err:  # truncated zip, garbage bytes
        raise ValueError(
            f"{path}: truncated or corrupt prepared data ({type(err).__name__}); rerun the prepare stage"
        ) from None
    if not isinstance(p, dict) or p.get("format") not in (PREPARED_FORMAT, SHARDED_FORMAT):
        raise ValueError(f"{path}: not prepared data (run the prepare stage)")
    splits: dict[str, AnySplit]
    if p["format"] == SHARDED_FORMAT:
        splits = _sharded_splits(p, locate or verified_dir(Path(path).parent / "shards"))
    else:
        splits = {k: Split(p[k]["x"], p[k]["y"], p[k]["index"]) for k in ("train", "val", "test")}
    return Dataset(
        p["name"],
        splits["train"],
        splits["val"],
        splits["test"],
        list(p["classes"]),
        tuple(p["mean"]),
        tuple(p["std"]),
        dict(p["meta"]),
    )


def _sharded_splits(p: dict[str, Any], locate: Any) -> dict[str, AnySplit]:
    from ice.shards import ShardReader

    readers = {name: ShardReader(shards, p["kind"], p["shape"], locate) for name, shards in p["sources"].items()}
    return {
        k: ShardedSplit(readers[p[k]["source"]], p[k]["rows"], p[k]["y"], p[k]["index"])
        for k in ("train", "val", "test")
    }


def verified_dir(*dirs: Path) -> Callable[[str], Path]:
    """A ``locate`` for shards in the directories ``dirs`` (the first that holds one wins):
    each shard is hashed the first time it is asked for, and one whose bytes do not match
    its name is refused."""
    from ice.files import sha256_file
    from ice.shards import shard_name

    seen: set[str] = set()

    def locate(sha: str) -> Path:
        for d in dirs:
            f = d / shard_name(sha)
            if f.is_file():
                if sha not in seen:
                    if sha256_file(f) != sha:
                        raise ValueError(
                            f"{f}: sha256 does not match its name; the shard changed (rerun the prepare stage)"
                        )
                    seen.add(sha)
                return f
        where = " or ".join(str(d) for d in dirs)
        raise FileNotFoundError(
            f"shard {sha[:12]}… is not in {where}, though the prepared data lists it; rerun the prepare stage"
        )

    return locate


# ----------------------------------------------------------------------------- batches
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
    for idx, xb in zip(todo, _reads(split, todo), strict=True):
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


def _reads(split: AnySplit, todo: list[torch.Tensor]) -> Iterator[torch.Tensor]:
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
