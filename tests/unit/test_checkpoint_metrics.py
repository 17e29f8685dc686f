import pytest
import torch

from ice.checkpoint import CheckpointError, load_checkpoint, save_checkpoint, sha256_file
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
