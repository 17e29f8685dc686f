"""The paper's two other settings, end to end on a generated folder with their layout.

Tiny-ImageNet and ImageNet cannot be downloaded here, so each preset runs on a folder of a
few synthetic JPEGs per class in the same layout (``train/<class>/``, ``test/<class>/``,
images of mixed sizes, resized at prepare). Only sizes are reduced with overrides: classes,
images, epochs, units, trials, batch sizes, the recovery's budget and, for WRN-101-2, the
image size. Tiny-ImageNet's 110,000 images at 64 px decode to 1.35 GB, so its preset's
``data.format: auto`` stores them as shards; the small folder here would stay in memory, so its
test sets ``data.format: shards``, the format the real dataset takes. Everything else (architecture, criterion, fp16 autocast, no distillation, the
fine-tune share, the search grid and objective) is the preset's own.
"""

from __future__ import annotations

import csv
import shutil

import pytest
import torch

from helpers import ROOT

pytestmark = pytest.mark.slow

SIZES = {  # what a test may shrink; nothing else is overridden
    "data.val_fraction": 0.25,
    "train.epochs": 1,
    "train.batch_size": 8,
    "prune.batch_size": 8,
    "prune.max_units": 2,
    "prune.eval_images": None,
    "prune.target.max_epochs": 0.5,
    "ice.autotune.n_trials": 1,
    "ice.autotune.subset": 0.5,
    "ice.autotune.min_val_images": 0,
    "schedule.epochs": 1,
    "evaluate.latency_iters": 1,
    "tracking.register_models": False,
}


def _jpeg_folder(root, classes=3, train=8, test=3, seed=0):
    """ImageNet's layout: a folder per class, JPEGs of 80-150 px with smooth content."""
    from PIL import Image

    g = torch.Generator().manual_seed(seed)
    for split, n in (("train", train), ("test", test)):
        for c in range(classes):
            d = root / split / f"n{c:08d}"
            d.mkdir(parents=True)
            for i in range(n):
                w, h = (int(v) for v in torch.randint(80, 150, (2,), generator=g))
                base = torch.rand(3, 1, 1, generator=g) * 200
                ramp = torch.linspace(0, 55, w).view(1, 1, w).expand(3, h, w) * (c + 1) / classes
                img = (base + ramp).clamp(0, 255).to(torch.uint8).permute(1, 2, 0).numpy()
                Image.fromarray(img).save(d / f"img_{i}.JPEG", quality=90)


def _first_units(preset):
    """The units a run of the preset at ``prune.max_units: 2`` prunes: its model's first two."""
    from ice.config import load_params
    from ice.models import build_model
    from ice.pruning import prunable_units

    arch = load_params(ROOT / "params" / f"{preset}.yaml").model.arch
    return [u.name for u in prunable_units(build_model(arch, 3, in_channels=3))[:2]]


@pytest.mark.parametrize(
    "preset, extra",
    [
        ("tiny-imagenet-densenet121", {"data.format": "shards"}),
        # 127 M parameters, a 500 MB checkpoint per step: 3 min 44 s even at 32 px, so it runs with
        # `pytest -m zoo` (as the torchvision zoo does), not in the default suite
        pytest.param("imagenet-wrn101-2", {"data.image_size": 32}, marks=pytest.mark.zoo),
    ],
)
def test_the_paper_preset_runs_on_a_folder_of_its_layout(preset, extra, harness, tmp_path, monkeypatch):
    from flows.pipeline import pipeline
    from ice.config import load_params

    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    monkeypatch.setenv("ICE_QUIET", "1")
    src = ROOT / "params" / f"{preset}.yaml"
    shutil.copy(src, tmp_path / "params.yaml")
    _jpeg_folder(tmp_path / "raw")
    overrides = {"data.root": str(tmp_path / "raw"), **SIZES, **extra}
    metrics = pipeline("params.yaml", str(tmp_path), overrides)

    p = load_params(src)
    assert set(metrics["methods"]) == set(p.prune.methods) == {"ice", "iterative", "prune_once"}
    pruned = {m: r["params"] for m, r in metrics["methods"].items()}
    assert len(set(pruned.values())) == 1 and pruned["ice"] < metrics["pretrained"]["params"]  # one architecture
    from ice.data import ShardedSplit, load_prepared

    ds = load_prepared(tmp_path / "data" / "prepared" / "dataset.pt")
    # both presets stream their images from shards (WRN-101-2's preset says shards; Tiny-ImageNet's is set)
    assert isinstance(ds.train, ShardedSplit) and isinstance(ds.test, ShardedSplit)
    shards = sorted((tmp_path / "data" / "prepared" / "shards").glob("*.shard"))
    assert shards and {p.name for p in shards} == {
        f"{s['sha256']}.shard" for s in ds.train.reader.shards + ds.test.reader.shards
    }
    size = extra.get("data.image_size", p.data.image_size)
    assert ds.image_size == (size, size) and ds.num_classes == 3
    assert ds.augment == ("pad_crop" if preset.startswith("tiny") else "resized_crop")
    with open(tmp_path / "reports" / "steps" / "ice.csv") as f:
        rows = list(csv.DictReader(f))
    assert [r["unit"] for r in rows if r["phase"] == "step"] == [u for u in _first_units(preset)]
