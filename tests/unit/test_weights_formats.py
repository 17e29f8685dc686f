"""Weights from where users keep them: plain state dicts, safetensors and torch.export archives are
read weights-only and give the ice checkpoint's accuracy; pickled modules and wrong shapes are refused."""

from __future__ import annotations

import os
import pickle

import pytest
import torch

from ice.checkpoint import load_checkpoint, save_checkpoint
from ice.models import build_model
from ice.train import accuracy, fit
from ice.weights import WeightsFormatError, load_weights, read_state_dict, save_safetensors, sniff

ARCH = "cifar_resnet20"


@pytest.fixture(scope="module")
def trained(digits):
    torch.manual_seed(0)
    m = build_model(ARCH, 10, in_channels=1)
    fit(m, digits, epochs=2, lr=0.1, batch_size=64, augment=False, seed=0)
    return m.eval()


def _fresh():
    return build_model(ARCH, 10, in_channels=1)


def _acc(model, digits):
    return accuracy(model, digits, "val")["acc"]


def test_every_format_gives_the_accuracy_of_the_ice_checkpoint(digits, trained, tmp_path):
    from safetensors.torch import save_file

    save_checkpoint(tmp_path / "ice.pt", trained)
    want = _acc(load_checkpoint(tmp_path / "ice.pt")[0], digits)
    sd = trained.state_dict()
    torch.save(sd, tmp_path / "plain.pt")
    torch.save({"epoch": 3, "state_dict": sd}, tmp_path / "nested.pt")  # a training script's checkpoint
    torch.save({f"module.{k}": v for k, v in sd.items()}, tmp_path / "dataparallel.pt")
    save_file({k: v.contiguous() for k, v in sd.items()}, tmp_path / "hf.safetensors")  # the package's writer
    save_safetensors(tmp_path / "ours.safetensors", trained)
    torch.export.save(torch.export.export(trained, (torch.zeros(1, 1, 8, 8),)), tmp_path / "model.pt2")
    kinds = {}
    for name in ("plain.pt", "nested.pt", "dataparallel.pt", "hf.safetensors", "ours.safetensors", "model.pt2"):
        kind, tensors = read_state_dict(tmp_path / name)
        kinds[name] = kind
        model = load_weights(_fresh(), tensors, name, ARCH)
        assert _acc(model, digits) == want, name
    assert kinds == {
        "plain.pt": "state_dict",
        "nested.pt": "state_dict",
        "dataparallel.pt": "state_dict",
        "hf.safetensors": "safetensors",
        "ours.safetensors": "safetensors",
        "model.pt2": "pt2",
    }
    assert sniff(tmp_path / "ice.pt") == "ice"


class _Hostile:
    """Unpickling this writes a marker file: what a pickled model may do."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def test_a_pickled_module_is_refused_in_one_line_and_nothing_runs(trained, tmp_path):
    marker = tmp_path / "PWNED"
    torch.save(trained, tmp_path / "whole.pt")  # torch.save(model): a pickled module
    with open(tmp_path / "evil.pt", "wb") as f:
        pickle.dump({"state_dict": _Hostile(marker)}, f)
    torch.save({"weights": _Hostile(marker)}, tmp_path / "evil-zip.pt")
    for name in ("whole.pt", "evil.pt", "evil-zip.pt"):
        with pytest.raises(WeightsFormatError) as err:
            read_state_dict(tmp_path / name)
        msg = str(err.value)
        assert "\n" not in msg and "pickled whole model" in msg and "model.state_dict()" in msg, msg
    assert not marker.exists(), "unpickling ran code"


def test_a_wrong_shape_names_the_first_mismatched_key_with_both_shapes(trained, tmp_path):
    other = build_model(ARCH, 100, in_channels=1)  # 100 classes: the classifier differs
    _, sd = ("state_dict", other.state_dict())
    with pytest.raises(WeightsFormatError) as err:
        load_weights(_fresh(), sd, "w.pt", ARCH)
    assert str(err.value) == "w.pt: fc.weight has shape (100, 64) in the file, (10, 64) in model.arch cifar_resnet20"
    missing = {k: v for k, v in trained.state_dict().items() if k != "bn1.running_mean"}
    with pytest.raises(WeightsFormatError, match=r"has no 'bn1.running_mean'"):
        load_weights(_fresh(), missing, "w.pt", ARCH)
    (tmp_path / "junk.pt").write_bytes(b"not a model at all")
    with pytest.raises(WeightsFormatError, match="not a weights file"):
        read_state_dict(tmp_path / "junk.pt")
