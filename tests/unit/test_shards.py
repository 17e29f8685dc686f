"""Sharded prepared data (issue 24, part 1): the same images and batches as the in-memory
format, deterministic streaming, byte-exact mid-epoch resume, verified shards, and a worker
with no local copy training from shards in a real SeaweedFS bucket."""

from __future__ import annotations

import copy
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from ice.config import DataConfig
from ice.data import batches, load_dataset, load_prepared, verified_dir
from ice.sharded import write_sharded


def _folder(root: Path, n_train: int = 24, n_test: int = 6, classes=("ant", "bee", "cat")) -> Path:
    """An ImageFolder of smooth RGB images of a few sizes (PNG: lossless, so raw records can be compared)."""
    rng = np.random.default_rng(0)
    for split, n in (("train", n_train), ("test", n_test)):
        for k, c in enumerate(classes):
            (root / split / c).mkdir(parents=True)
            for i in range(n):
                h, w = 40 + i % 5, 48
                base = np.linspace(0, 255, w)[None, :, None] * np.ones((h, 1, 3))
                img = (base * (0.3 + 0.2 * k) + rng.integers(0, 40, (h, w, 3))).clip(0, 255).astype(np.uint8)
                Image.fromarray(img).save(root / split / c / f"{i:03d}.png")
    return root


def _spec(tmp_path: Path, size: int, **kw) -> DataConfig:
    return DataConfig(
        source="folder",
        root=str(tmp_path / "src"),
        image_size=size,
        cache_dir=str(tmp_path / "cache"),
        val_fraction=0.25,
        **kw,
    )


@pytest.fixture
def src(tmp_path):
    return _folder(tmp_path / "src")


def _sharded(tmp_path: Path, spec: DataConfig, shard_bytes: int = 16_000):
    out = write_sharded(spec, tmp_path / "dataset.pt", tmp_path / "shards", shard_bytes=shard_bytes)
    return out, load_prepared(tmp_path / "dataset.pt", out["sha256"])


def test_small_images_are_stored_decoded_with_the_same_bytes_splits_and_statistics(src, tmp_path):
    spec = _spec(tmp_path, 32)
    mem = load_dataset(spec)
    out, sh = _sharded(tmp_path, spec)
    assert out["kind"] == "raw" and len(out["shards"]) > 3  # several shards, not one file
    assert (sh.mean, sh.std, sh.classes, sh.meta) == (mem.mean, mem.std, mem.classes, mem.meta)
    for name in ("train", "val", "test"):
        a, b = getattr(mem, name), getattr(sh, name)
        assert torch.equal(a.y, b.y) and torch.equal(a.index, b.index), name
        assert torch.equal(a.x, b.read(torch.arange(len(b)))), name
    assert sh.input_shape(2) == mem.input_shape(2) == (2, 3, 32, 32)
    # the same seed gives the same augmented batches from either format
    kw = {"shuffle": True, "augment": True, "augment_kind": mem.augment}
    g1, g2 = torch.Generator().manual_seed(5), torch.Generator().manual_seed(5)
    for (xa, ya), (xb, yb) in zip(
        batches(mem.train, 8, mem.mean, mem.std, generator=g1, **kw),
        batches(sh.train, 8, sh.mean, sh.std, generator=g2, **kw),
        strict=True,
    ):
        assert torch.equal(xa, xb) and torch.equal(ya, yb)
    # the same spec writes the same manifest and shards, byte for byte
    again = write_sharded(spec, tmp_path / "again.pt", tmp_path / "shards2", shard_bytes=16_000)
    assert again == out
    assert (tmp_path / "again.pt").read_bytes() == (tmp_path / "dataset.pt").read_bytes()


def test_large_images_are_stored_encoded_and_stream_the_same_batches_twice(src, tmp_path):
    spec = _spec(tmp_path, 96)
    out, sh = _sharded(tmp_path, spec)
    mem = load_dataset(spec)
    assert out["kind"] == "jpeg" and sh.augment == "resized_crop" == mem.augment
    # JPEG is lossy: close to the decoded images, not equal
    got = sh.test.read(torch.arange(len(sh.test))).float()
    assert (got - mem.test.x.float()).abs().mean() < 3.0
    kw = {"shuffle": True, "augment": True, "augment_kind": sh.augment}
    runs = [
        list(batches(sh.train, 8, sh.mean, sh.std, generator=torch.Generator().manual_seed(1), **kw)) for _ in range(2)
    ]
    assert len(runs[0]) == 7
    for (xa, ya), (xb, yb) in zip(*runs, strict=True):
        assert torch.equal(xa, xb) and torch.equal(ya, yb)


@pytest.mark.parametrize("size", [32, 96])
def test_a_fine_tune_resumed_mid_epoch_ends_with_the_same_bytes(src, tmp_path, size):
    from ice.models import build_model
    from ice.train import make_optimizer, train_epoch

    _, data = _sharded(tmp_path, _spec(tmp_path, size))
    torch.manual_seed(0)
    model = build_model("cifar_resnet20", num_classes=3, in_channels=3)
    first = copy.deepcopy(model)
    opt = make_optimizer(model, 0.05)

    def epoch(m, o, **kw):
        return train_epoch(m, data, o, batch_size=8, generator=torch.Generator().manual_seed(9), **kw)

    epoch(model, opt)  # never stopped
    # stopped after 3 of 7 steps: the state then is what a checkpoint would hold
    stopped, opt2 = copy.deepcopy(first), make_optimizer(first, 0.05)
    opt2 = make_optimizer(stopped, 0.05)
    saved: dict = {}

    class Killed(Exception):
        pass

    def kill_after_three(step, _loss):
        if step == 2:
            saved["model"] = copy.deepcopy(stopped.state_dict())
            saved["opt"] = copy.deepcopy(opt2.state_dict())
            raise Killed

    with pytest.raises(Killed):
        epoch(stopped, opt2, on_step=kill_after_three)
    resumed = copy.deepcopy(first)
    resumed.load_state_dict(saved["model"])
    opt3 = make_optimizer(resumed, 0.05)
    opt3.load_state_dict(saved["opt"])
    out = epoch(resumed, opt3, start=3)
    assert out["images"] == len(data.train) - 3 * 8
    for (k, a), b in zip(model.state_dict().items(), resumed.state_dict().values(), strict=True):
        assert torch.equal(a, b), k


def test_a_changed_or_missing_shard_is_refused_in_one_line(src, tmp_path):
    out, _ = _sharded(tmp_path, _spec(tmp_path, 32))
    victim = tmp_path / "shards" / f"{out['shards'][0]['sha256']}.shard"
    data = bytearray(victim.read_bytes())
    data[-1] ^= 0xFF
    victim.write_bytes(bytes(data))
    ds = load_prepared(tmp_path / "dataset.pt", out["sha256"])
    with pytest.raises(ValueError, match="sha256 does not match") as err:
        ds.train.read(torch.arange(len(ds.train)))
    assert "\n" not in str(err.value)
    victim.unlink()
    locate = verified_dir(tmp_path / "shards")
    with pytest.raises(FileNotFoundError, match="rerun the prepare stage"):
        locate(out["shards"][0]["sha256"])


def test_prepare_memory_stays_bounded_by_a_shard_not_the_dataset(tmp_path):
    """The writer holds at most one shard: its record buffer never passes shard_bytes plus one image."""
    from ice.shards import ShardWriter

    w = ShardWriter(tmp_path, shard_bytes=10_000)
    peak = 0
    for i in range(200):
        w.add(bytes([i % 256]) * 3_000)
        peak = max(peak, w.size)
    shards = w.close()
    assert peak < 10_000 + 3_000 and sum(s["count"] for s in shards) == 200 and len(shards) == 50


@pytest.mark.integration
def test_a_worker_with_no_local_copy_trains_from_shards_in_a_bucket(src, tmp_path, s3_env, monkeypatch):
    """The prepare task writes shards into a real SeaweedFS bucket; a second project root (another
    worker: no data/, no store) loads the dataset from its S3 reference through a cache bounded
    below the dataset's size, and trains an epoch on it."""
    from ice.models import build_model
    from ice.train import make_optimizer, train_epoch
    from plumbing.artifacts import load_data
    from plumbing.paths import Paths
    from tasks.prepare import prepare_data

    monkeypatch.setattr("ice.shards.SHARD_BYTES", 40_000)  # a few shards of a small dataset
    cfg = _spec(tmp_path, 96).model_dump(mode="json") | {"format": "shards"}
    out = prepare_data.fn(str(tmp_path / "producer"), cfg, "s3://ice/shards-test")
    assert out["format"] == "shards" and out["ref"]["uri"].startswith("s3://ice/shards-test/objects/")
    keys = s3_env.keys("shards-test/")
    assert all(f"shards-test/objects/{s['sha256']}.shard" in keys for s in out["shards"])
    total = sum(s["bytes"] for s in out["shards"])
    biggest = max(s["bytes"] for s in out["shards"])
    monkeypatch.setenv("ICE_SHARD_CACHE_BYTES", str(3 * biggest))  # far less than the dataset
    worker = Paths(tmp_path / "worker")
    data = load_data(worker, out["ref"])
    torch.manual_seed(0)
    model = build_model("cifar_resnet20", num_classes=3, in_channels=3)
    stats = train_epoch(
        model, data, make_optimizer(model, 0.05), batch_size=16, generator=torch.Generator().manual_seed(0)
    )
    assert stats["images"] == len(data.train) == out["train"]
    cache = worker.store / "shard-cache"
    cached = list(cache.glob("*.shard"))
    assert cached and sum(p.stat().st_size for p in cached) <= 3 * biggest < total
    assert not (tmp_path / "worker" / "data").exists()


def test_gc_keeps_the_current_shards_and_drops_stale_ones_and_the_download_cache(src, tmp_path):
    import json
    import subprocess
    import sys

    from helpers import ROOT
    from plumbing.paths import Paths

    paths = Paths(tmp_path / "project")
    paths.prepared.parent.mkdir(parents=True)
    out = write_sharded(_spec(tmp_path, 32), paths.prepared, paths.store / "shards", shard_bytes=16_000)
    paths.prepared_record.write_text(json.dumps({"sha256": out["sha256"], "format": "shards"}))
    stale = paths.store / "shards" / f"{'0' * 64}.shard"
    stale.write_bytes(b"an earlier dataset's shard")
    cached = paths.store / "shard-cache" / f"{'1' * 64}.shard"
    cached.parent.mkdir(parents=True)
    cached.write_bytes(b"downloaded from a bucket")
    r = subprocess.run(
        [sys.executable, "scripts/gc.py", "--root", str(paths.root)], cwd=ROOT, capture_output=True, text=True
    )
    assert r.returncode == 0, r.stderr
    assert not stale.exists() and not cached.exists()
    assert sorted(p.name for p in (paths.store / "shards").glob("*.shard")) == sorted(
        f"{s['sha256']}.shard" for s in out["shards"]
    )
    assert load_prepared(paths.prepared, out["sha256"], locate=verified_dir(paths.store / "shards")).train.read(
        torch.arange(3)
    ).shape == (3, 3, 32, 32)
