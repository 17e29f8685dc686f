"""Where images come from: scikit-learn's digits, CIFAR-10/100 through torchvision, and an
ImageFolder (``train/<class>/``, ``test/<class>/``) as a directory or a tar archive.

:func:`decoded` is the one dispatch on ``data.source`` (every image decoded into tensors,
through the decode cache where the source is on disk); :func:`stream_images` gives the same
images one at a time for the shard writer, decoding a folder lazily and reading the others
from :func:`decoded`.
"""

from __future__ import annotations

import io
import tarfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ice.config import DataConfig
from ice.data.cache import cached

__all__ = ["IMAGE_EXTS", "decoded", "stream_images", "list_members", "class_lookup", "ImageDecoder"]

IMAGE_EXTS = (".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp", ".tif", ".tiff", ".ppm", ".pgm")


def decoded(spec: DataConfig) -> dict[str, Any]:
    """Every image of ``spec``'s source as tensors: ``train_x``/``test_x`` uint8 ``[N, C, H, W]``,
    ``train_y``/``test_y`` int64, ``classes`` and, from the cache, ``stats``."""
    if spec.source == "digits":
        return _load_digits(spec)
    if spec.source in ("cifar10", "cifar100"):
        return cached(spec, lambda: _load_cifar(spec))
    return cached(spec, lambda: _decode_members(list_members(spec), str(Path(str(spec.root))), spec.image_size))


def list_members(spec: DataConfig) -> dict[str, list[tuple[str, Any]]]:
    """An ImageFolder source's images per split, as ``(class/name, bytes or path)``; one-line
    errors for a missing root or an unreadable archive."""
    assert spec.root is not None
    root = Path(spec.root)
    if not root.exists():
        raise FileNotFoundError(f"data.root {str(root)!r} does not exist")
    if root.is_file():
        try:
            return _tar_members(root)
        except (tarfile.TarError, EOFError, OSError) as err:
            raise ValueError(
                f"data.root {str(root)!r}: not a readable tar archive ({type(err).__name__}: {err})"
            ) from None
    return _dir_members(root)


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


def stream_images(spec: DataConfig) -> tuple[list[str], dict[str, Iterator[tuple[np.ndarray, int]]], dict[str, int]]:
    """Classes, and per split an iterator of ``(HWC uint8 image, label)`` and its length: a
    folder is decoded one image at a time (memory: one image), the others come from :func:`decoded`."""
    if spec.source == "folder":
        files = list_members(spec)
        where = str(Path(str(spec.root)))
        classes = class_lookup(files, where)
        lookup = {c: i for i, c in enumerate(classes)}
        decode = ImageDecoder(where, spec.image_size)

        def images(split: str) -> Iterator[tuple[np.ndarray, int]]:
            for key, src in sorted(files[split], key=lambda kv: kv[0]):
                yield decode(split, key, src), lookup[key.split("/", 1)[0]]

        return classes, {s: images(s) for s in ("train", "test")}, {s: len(files[s]) for s in ("train", "test")}
    raw = decoded(spec)

    def rows(split: str) -> Iterator[tuple[np.ndarray, int]]:
        x, y = raw[f"{split}_x"], raw[f"{split}_y"]
        for i in range(len(y)):
            yield x[i].permute(1, 2, 0).numpy(), int(y[i])

    return (
        list(raw["classes"]),
        {s: rows(s) for s in ("train", "test")},
        {s: len(raw[f"{s}_y"]) for s in ("train", "test")},
    )


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
