import pytest
import torch

from ice.checkpoint import CheckpointError, load_checkpoint, save_checkpoint
from ice.files import sha256_file
from ice.metrics import (
    conv_param_fraction,
    count_macs,
    count_params,
    measure_latency,
    prunable_conv_params,
    sparsity,
)
from ice.models import build_model
from ice.pruning import prunable_units, prune_unit


def pruned(arch):
    torch.manual_seed(0)
    m = build_model(arch, 10)
    for i, u in enumerate(prunable_units(m)[:4]):
        prune_unit(m, u, 0.3 + 0.1 * i, input_shape=(1, 3, 32, 32))
    # make BN statistics non-trivial so the round trip covers buffers too
    m.train()
    with torch.no_grad():
        m(torch.randn(8, 3, 32, 32))
    return m.eval()


@pytest.mark.parametrize("arch", ["cifar_resnet20", "vgg11_bn", "mobilenetv2"])
def test_pruned_model_round_trips_with_identical_outputs(tmp_path, arch):
    m = pruned(arch)
    x = torch.randn(4, 3, 32, 32)
    path = tmp_path / "m.pt"
    digest = save_checkpoint(path, m, {"step": 3, "acc": 91.5})
    assert digest == sha256_file(path)
    loaded, meta = load_checkpoint(path, sha256=digest)
    loaded.eval()
    assert meta == {"step": 3, "acc": 91.5}
    assert torch.equal(loaded(x), m(x))
    assert count_params(loaded) == count_params(m) < count_params(build_model(arch, 10))


def test_saving_twice_gives_identical_bytes(tmp_path):
    m = pruned("cifar_resnet20")
    a = save_checkpoint(tmp_path / "a.pt", m, {"k": 1})
    b = save_checkpoint(tmp_path / "b.pt", m, {"k": 1})
    assert a == b


def test_checkpoint_holds_only_tensors_and_plain_data(tmp_path):
    m = pruned("cifar_resnet20")
    save_checkpoint(tmp_path / "m.pt", m)
    payload = torch.load(tmp_path / "m.pt", weights_only=True)
    assert payload["spec"]["arch"] == "cifar_resnet20"
    assert payload["widths"]["layer1.0.conv1"] == [16, 11]


def test_wrong_sha256_is_rejected(tmp_path):
    path = tmp_path / "m.pt"
    save_checkpoint(path, build_model("cifar_resnet20", 10))
    with pytest.raises(CheckpointError, match="sha256 mismatch"):
        load_checkpoint(path, sha256="0" * 64)


def test_truncated_and_garbage_files_are_rejected(tmp_path):
    path = tmp_path / "m.pt"
    save_checkpoint(path, build_model("cifar_resnet20", 10))
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError, match="truncated or corrupt"):
        load_checkpoint(path)
    path.write_bytes(b"not a checkpoint at all")
    with pytest.raises(CheckpointError, match="truncated or corrupt"):
        load_checkpoint(path)
    with pytest.raises(CheckpointError, match="cannot be read"):
        load_checkpoint(tmp_path / "missing.pt")


def test_pickled_module_is_refused(tmp_path):
    path = tmp_path / "evil.pt"
    torch.save(build_model("cifar_resnet20", 10), path)  # a whole pickled module
    with pytest.raises(CheckpointError):
        load_checkpoint(path)


def test_failed_write_leaves_nothing_behind(tmp_path):
    path = tmp_path / "m.pt"
    m = build_model("cifar_resnet20", 10)
    good = save_checkpoint(path, m, {"v": 1})
    with pytest.raises(CheckpointError, match=r"meta.bad: object is not plain data"):
        save_checkpoint(path, m, {"bad": object()})  # would not load back with weights_only
    assert sha256_file(path) == good  # the old file is untouched
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.pt"]


def test_params_and_macs_of_resnet20():
    m = build_model("cifar_resnet20", 10)
    # ~0.27M params and ~41M MACs, the standard figures for ResNet-20 with 1x1 projections
    assert 270_000 < count_params(m) < 275_000
    assert 40_000_000 < count_macs(m, (1, 3, 32, 32)) < 42_000_000


def test_sparsity_and_conv_fraction():
    m = build_model("cifar_resnet20", 10)
    assert sparsity(m) == 0.0
    total = prunable_conv_params(m)
    stem = m.conv1.weight.numel()
    assert (
        total
        == sum(x.weight.numel() for x in m.modules() if isinstance(x, torch.nn.Conv2d) and x.kernel_size == (3, 3))
        - stem
    )
    prune_unit(m, prunable_units(m)[0], 0.5, input_shape=(1, 3, 32, 32))
    assert conv_param_fraction(m, total) == pytest.approx(1 - (8 * 16 * 9 * 2) / total)


def test_latency_is_measured():
    m = build_model("cifar_resnet20", 10)
    out = measure_latency(m, (1, 3, 32, 32), iters=3, warmup=1)
    assert out["median_ms"] > 0 and out["p90_ms"] >= out["median_ms"]


def _hostile(path, spec):
    torch.save(
        {"format": "ice-checkpoint/1", "spec": spec, "widths": {}, "state_dict": {}, "meta": {}, "versions": {}}, path
    )


@pytest.mark.parametrize(
    "arch",
    ["logging:basicConfig", "os:system", "subprocess:Popen", "builtins:eval", "this:s", "tests_marker_mod:make"],
)
def test_a_checkpoint_never_chooses_code_to_run(arch, tmp_path, monkeypatch):
    """A file is data: an arch that is not registered nor the reader's own is refused as unsafe,
    before anything is imported or called (the marker file would exist if it had been)."""
    from ice.checkpoint import CheckpointError, check_checkpoint, load_checkpoint

    marker = tmp_path / "marker"
    (tmp_path / "tests_marker_mod.py").write_text(
        f"from pathlib import Path\nPath({str(marker)!r}).write_text('imported')\n"
        f"def make(**kw):\n    Path({str(marker)!r}).write_text('called')\n"
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    path = tmp_path / "hostile.pt"
    _hostile(path, {"arch": arch, "num_classes": 10, "in_channels": 1, "kwargs": {"filename": str(marker)}})
    for load in (load_checkpoint, check_checkpoint):
        with pytest.raises(CheckpointError, match=r"hostile\.pt: unsafe checkpoint: arch .* neither a registered"):
            load(path)
    assert not marker.exists()


def test_the_readers_own_arch_must_be_a_module_class_and_kwargs_must_be_its_arguments(tmp_path, monkeypatch):
    from ice.checkpoint import CheckpointError, load_checkpoint, save_checkpoint
    from ice.models import build_model

    marker = tmp_path / "marker"
    (tmp_path / "tests_user_mod.py").write_text(
        "from pathlib import Path\nimport torch\n"
        f"def make(num_classes=10, **kw):\n    Path({str(marker)!r}).write_text('called')\n"
        "class Net(torch.nn.Module):\n"
        "    def __init__(self, num_classes=10, in_channels=3, width=4):\n"
        "        super().__init__()\n        self.conv = torch.nn.Conv2d(in_channels, width, 3)\n"
        "        self.fc = torch.nn.Linear(width, num_classes)\n"
        "    def forward(self, x):\n        return self.fc(self.conv(x).mean((2, 3)))\n"
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    # even when the reader trusts it, a function is never called
    _hostile(tmp_path / "f.pt", {"arch": "tests_user_mod:make", "num_classes": 10, "in_channels": 3, "kwargs": {}})
    with pytest.raises(CheckpointError, match="not a torch.nn.Module subclass"):
        load_checkpoint(tmp_path / "f.pt", trusted_arch="tests_user_mod:make")
    assert not marker.exists()
    # a trusted class loads; a kwarg it does not declare is refused
    save_checkpoint(tmp_path / "ok.pt", build_model("tests_user_mod:Net", 10, width=6))
    model, _ = load_checkpoint(tmp_path / "ok.pt", trusted_arch="tests_user_mod:Net")
    assert model.conv.out_channels == 6
    _hostile(
        tmp_path / "kw.pt", {"arch": "tests_user_mod:Net", "num_classes": 10, "in_channels": 3, "kwargs": {"evil": 1}}
    )
    with pytest.raises(CheckpointError, match=r"unsafe checkpoint: kwargs.evil is not an argument"):
        load_checkpoint(tmp_path / "kw.pt", trusted_arch="tests_user_mod:Net")
    # registry archs: only their builders' own arguments
    _hostile(tmp_path / "reg.pt", {"arch": "cifar_resnet20", "num_classes": 10, "in_channels": 3, "kwargs": {"x": 1}})
    with pytest.raises(CheckpointError, match=r"kwargs.x is not an argument of 'cifar_resnet20'"):
        load_checkpoint(tmp_path / "reg.pt")


def test_params_name_no_standard_library_or_function_arch():
    from ice.config import ParamsError, parse_params

    for arch, why in (
        ("logging:basicConfig", "standard-library"),
        ("this:s", "standard-library"),
        ("builtins:eval", "standard-library"),
        ("torch.nn:Conv2d", "takes no num_classes"),
        ("torch:zeros", "not a torch.nn.Module subclass"),
        ("a b:c", "not an import path"),
    ):
        with pytest.raises(ParamsError, match=why):
            parse_params({"model": {"arch": arch}})


def test_params_files_are_bounded(tmp_path):
    import time

    from ice.config import ParamsError, load_params

    bomb = ["seed: 0", "a0: &a0 [1,1,1,1,1,1,1,1,1,1]"]
    bomb += [f"a{i}: &a{i} [" + ",".join([f"*a{i - 1}"] * 10) + "]" for i in range(1, 10)]
    (tmp_path / "bomb.yaml").write_text("\n".join(bomb) + "\nprune:\n  ratio: *a9\n")
    (tmp_path / "big.yaml").write_text("seed: 0\n#" + "x" * 2_000_000 + "\n")
    (tmp_path / "long.yaml").write_text("prune:\n  ratio: '" + "y" * 100_000 + "'\n")
    for name, why in (("bomb", "YAML alias"), ("big", "larger than 1,048,576 bytes"), ("long", "prune.ratio")):
        t0 = time.perf_counter()
        with pytest.raises(ParamsError, match=why) as err:
            load_params(tmp_path / f"{name}.yaml")
        assert time.perf_counter() - t0 < 5
        assert "\n" not in str(err.value) and len(str(err.value)) < 400, str(err.value)[:500]
