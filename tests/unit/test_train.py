import pytest
import torch

from ice.models import build_model
from ice.train import (
    accuracy,
    fit,
    freeze,
    frozen_convs,
    frozen_names,
    kd_loss,
    make_optimizer,
    pick_device,
    train_epoch,
)


def test_pick_device_on_this_machine():
    dev = pick_device()
    assert dev.type == ("cuda" if torch.cuda.is_available() else "cpu")
    assert pick_device("cpu").type == "cpu"


def test_kd_loss_is_zero_for_identical_logits_and_positive_otherwise():
    z = torch.randn(4, 10)
    assert float(kd_loss(z, z)) == pytest.approx(0.0, abs=1e-6)
    assert float(kd_loss(z, torch.randn(4, 10))) > 0


def test_training_learns_digits(digits):
    torch.manual_seed(0)
    m = build_model("cifar_resnet20", 10, in_channels=1)
    before = accuracy(m, digits)["acc"]
    hist = fit(m, digits, epochs=3, lr=0.05, batch_size=64, augment=False, seed=0)
    after = accuracy(m, digits)["acc"]
    assert len(hist) == 3
    assert after > 80.0 and after > before + 30


def test_bf16_autocast_trains_as_well_as_fp32(digits):
    """train.amp: bf16 autocast (CPU here, as on a GPU) ends within a point of float32."""
    accs = {}
    for amp in ("off", "bf16"):
        torch.manual_seed(0)
        m = build_model("cifar_resnet20", 10, in_channels=1)
        fit(m, digits, epochs=3, lr=0.05, batch_size=64, augment=False, seed=0, amp=amp)
        accs[amp] = accuracy(m, digits)["acc"]
    assert accs["off"] > 80.0
    assert abs(accs["bf16"] - accs["off"]) <= 1.0, accs


def test_fp16_autocast_scales_the_gradients(digits):
    torch.manual_seed(0)
    m = build_model("cifar_resnet20", 10, in_channels=1)
    w = m.fc.weight.clone()
    stats = train_epoch(m, digits, make_optimizer(m, 0.05), batch_size=64, fraction=0.5, augment=False, amp="fp16")
    assert stats["loss"] == stats["loss"] and stats["loss"] < 10  # finite: the scaler kept fp16 gradients in range
    assert not torch.equal(m.fc.weight, w)
    with pytest.raises(ValueError, match="train.amp must be one of off, bf16, fp16"):
        train_epoch(m, digits, make_optimizer(m, 0.05), batch_size=64, fraction=0.1, amp="fp8")


def test_no_device_to_host_read_per_step(digits, monkeypatch):
    """The loss and correct counts stay on the device until the epoch ends: the number of
    tensor-to-Python reads does not grow with the number of steps (each one stalls a GPU)."""
    reads = {"n": 0}
    for name in ("item", "__float__", "__int__", "__bool__", "tolist"):
        original = getattr(torch.Tensor, name)

        def counted(self, *a, _original=original, **k):
            reads["n"] += 1
            return _original(self, *a, **k)

        monkeypatch.setattr(torch.Tensor, name, counted)

    def count(fraction: float) -> tuple[int, float]:
        torch.manual_seed(0)
        m = build_model("cifar_resnet20", 10, in_channels=1)
        opt = make_optimizer(m, 0.01)
        reads["n"] = 0
        stats = train_epoch(m, digits, opt, batch_size=32, fraction=fraction, augment=False)
        return reads["n"], stats["images"]

    few, n_few = count(0.1)
    many, n_many = count(0.5)
    assert n_many >= 4 * n_few  # several times the steps...
    assert many == few, (few, many)  # ...and not one read more


def test_fraction_of_an_epoch(digits):
    m = build_model("cifar_resnet20", 10, in_channels=1)
    opt = make_optimizer(m, 0.01)
    full = train_epoch(m, digits, opt, batch_size=64, augment=False)
    half = train_epoch(m, digits, opt, batch_size=64, augment=False, fraction=0.5)
    assert full["images"] == len(digits.train)
    assert half["images"] == pytest.approx(len(digits.train) / 2, abs=64)


def test_teacher_runs_without_grad_and_changes_the_loss(digits):
    torch.manual_seed(0)
    m = build_model("cifar_resnet20", 10, in_channels=1)
    teacher = build_model("cifar_resnet20", 10, in_channels=1)
    state = {k: v.clone() for k, v in m.state_dict().items()}
    g = lambda: torch.Generator().manual_seed(0)  # noqa: E731
    a = train_epoch(m, digits, make_optimizer(m, 0.01), batch_size=64, fraction=0.2, augment=False, generator=g())
    m.load_state_dict(state)
    b = train_epoch(
        m, digits, make_optimizer(m, 0.01), batch_size=64, fraction=0.2, augment=False, generator=g(), teacher=teacher
    )
    assert b["loss"] > a["loss"]
    assert all(p.grad is None for p in teacher.parameters())


def test_frozen_layers_stay_fixed_and_skip_their_gradient(digits):
    torch.manual_seed(0)
    m = build_model("cifar_resnet20", 10, in_channels=1)
    names = freeze(m, ["conv1", "layer1.0.conv1"], bn_stats=True)
    assert names == ["conv1", "bn1", "layer1.0.conv1", "layer1.0.bn1"]
    assert frozen_names(m) == names
    assert frozen_convs(m) == 2  # the count the freeze trial reports: its convs, not their batch norms
    opt = make_optimizer(m, 0.05)
    in_opt = {id(p) for g in opt.param_groups for p in g["params"]}
    assert id(m.conv1.weight) not in in_opt and id(m.layer1[0].bn1.weight) not in in_opt
    w = m.layer1[0].conv1.weight.clone()
    rm = m.bn1.running_mean.clone()
    w2 = m.layer1[0].conv2.weight.clone()
    train_epoch(m, digits, opt, batch_size=64, fraction=0.3, augment=False)
    assert torch.equal(m.layer1[0].conv1.weight, w)
    assert m.layer1[0].conv1.weight.grad is None  # the weight gradient was never computed
    assert torch.equal(m.bn1.running_mean, rm)  # bn_stats=True: frozen BN keeps its statistics
    assert not torch.equal(m.layer1[0].conv2.weight, w2)


def test_frozen_bn_updates_its_statistics_by_default_as_the_reference(digits):
    torch.manual_seed(0)
    m = build_model("cifar_resnet20", 10, in_channels=1)
    freeze(m, ["conv1"])
    rm, w = m.bn1.running_mean.clone(), m.bn1.weight.clone()
    train_epoch(m, digits, make_optimizer(m, 0.05), batch_size=64, fraction=0.3, augment=False)
    assert torch.equal(m.bn1.weight, w)  # affine parameters stay frozen
    assert not torch.equal(m.bn1.running_mean, rm)  # running statistics follow the data, as in the reference code


def test_same_seed_same_weights(digits):
    def run():
        torch.manual_seed(0)
        m = build_model("cifar_resnet20", 10, in_channels=1)
        train_epoch(
            m,
            digits,
            make_optimizer(m, 0.05),
            batch_size=64,
            fraction=0.3,
            augment=True,
            generator=torch.Generator().manual_seed(1),
        )
        return m.state_dict()

    a, b = run(), run()
    assert all(torch.equal(a[k], b[k]) for k in a)


@pytest.mark.slow
def test_small_resnet_learns_real_cifar10(cifar_tar, tmp_path_factory):
    from ice.data import load_dataset

    cache = tmp_path_factory.getbasetemp() / "cifar-cache"
    ds = load_dataset(source="folder", root=str(cifar_tar), cache_dir=str(cache))
    g = torch.Generator().manual_seed(0)
    keep = torch.randperm(len(ds.train), generator=g)[:6000]
    ds.train = ds.train.take(keep)
    ds.test = ds.test.take(torch.arange(2000))
    torch.manual_seed(0)
    m = build_model("cifar_resnet20", 10)
    fit(m, ds, epochs=2, lr=0.05, batch_size=128, augment=True, seed=0)
    acc = accuracy(m, ds, "test")["acc"]
    assert acc > 30.0, f"test accuracy {acc:.1f}% is not well above chance (10%)"
