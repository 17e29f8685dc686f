import math

import pytest
import torch
from torch import nn

from ice.metrics import count_macs, count_params
from ice.models import build_model
from ice.names import CRITERION_NAMES
from ice.pruning import Masks, channel_importance, magnitude_masks, prunable_units, prune_unit

SHAPE = (1, 3, 32, 32)


def test_unknown_arch_lists_choices():
    with pytest.raises(ValueError, match="cifar_resnet56.*vgg16_bn"):
        build_model("resnet9000", 10)


@pytest.mark.parametrize("depth", [20, 32, 44, 56, 110, 152])
def test_cifar_resnet_depths_and_units(depth):
    m = build_model(f"cifar_resnet{depth}", 10)
    convs = [x for x in m.modules() if isinstance(x, nn.Conv2d) and x.kernel_size == (3, 3)]
    assert len(convs) + 1 == depth  # 3x3 convs + fc
    assert len(prunable_units(m)) == (depth - 2) // 2  # 75 steps for ResNet-152, as in the paper


def test_resnet_unit_pruning_removes_exactly_the_expected_params_and_macs():
    m = build_model("cifar_resnet20", 10)
    unit = prunable_units(m)[0]  # layer1.0: 16 -> conv1(16) -> conv2 -> 16, 32x32
    info = prune_unit(m, unit, 0.5, input_shape=SHAPE)
    k, c, hw = 8, 16, 32 * 32
    assert info["params_before"] - info["params_after"] == k * c * 9 + 2 * k + c * k * 9
    assert info["macs_before"] - info["macs_after"] == hw * k * c * 9 * 2
    assert m.layer1[0].conv1.out_channels == 8 and m.layer1[0].conv2.in_channels == 8
    assert m.layer1[0].bn1.running_mean.shape == (8,)
    assert m(torch.randn(2, 3, 32, 32)).shape == (2, 10)


def test_vgg_pruning_shrinks_next_conv_and_classifier():
    m = build_model("vgg11_bn", 10)
    units = prunable_units(m)
    assert len(units) == 8  # every conv of VGG-11
    last = units[-1]
    info = prune_unit(m, last, 0.25, input_shape=SHAPE)
    assert m.classifier.in_features == 384
    k = 128
    # last conv 512->512 3x3 at 2x2, its BN, and 128 columns of the classifier
    assert info["params_before"] - info["params_after"] == k * 512 * 9 + 2 * k + k * 10
    assert info["macs_before"] - info["macs_after"] == 4 * k * 512 * 9 + k * 10
    assert m(torch.randn(2, 3, 32, 32)).shape == (2, 10)


def test_mobilenetv2_prunes_expansion_channels_through_the_depthwise_conv():
    m = build_model("mobilenetv2", 10)
    units = prunable_units(m)
    assert len(units) == 16  # 17 blocks, the first has no expansion
    u = units[0]  # blocks.1: 16 -> 96 -> 24 at 32x32
    info = prune_unit(m, u, 0.5, input_shape=SHAPE)
    k, cin, cout, hw = 48, 16, 24, 32 * 32
    assert info["params_before"] - info["params_after"] == k * cin + 2 * k + k * 9 + 2 * k + k * cout
    assert info["macs_before"] - info["macs_after"] == hw * k * (cin + 9 + cout)
    assert m.blocks[1].conv2.groups == 48
    assert m(torch.randn(2, 3, 32, 32)).shape == (2, 10)


@pytest.mark.parametrize(
    # dependency groups: ResNet-18's 8 inner block channels plus its 4 residual streams,
    # ResNet-50's 32 plus 5, DenseNet-121's 58 bottlenecks plus 62 concatenated outputs,
    # MobileNetV2's 16 expansions plus 8 residual streams and the last conv
    "arch, n_units",
    [("tv:resnet18", 12), ("tv:resnet50", 37), ("tv:densenet121", 120), ("tv:mobilenet_v2", 25)],
)
def test_torchvision_families(arch, n_units):
    m = build_model(arch, 10)
    units = prunable_units(m)
    assert len(units) == n_units
    assert all(u.engine == "graph" for u in units)
    shape = (1, 3, 64, 64)
    p0, c0 = count_params(m), count_macs(m, shape)
    prune_unit(m, units[0], 0.5, input_shape=shape)
    assert count_params(m) < p0 and count_macs(m, shape) < c0
    m.eval()
    assert m(torch.randn(1, 3, 64, 64)).shape == (1, 10)


def test_other_models_get_dependency_groups_in_model_order():
    m = build_model("tv:alexnet", 10)
    units = prunable_units(m)
    convs = ["features.0", "features.3", "features.6", "features.8", "features.10"]
    assert [u.conv for u in units] == convs + ["classifier.1", "classifier.4"]  # classifier.6 is the head
    prune_unit(m, units[0], 0.5, input_shape=(1, 3, 224, 224))
    assert m.features[0].out_channels == 32 and m.features[3].in_channels == 32
    prune_unit(m, units[-1], 0.5, input_shape=(1, 3, 224, 224))
    assert m.classifier[4].out_features == 2048 and m.classifier[6].in_features == 2048


def test_l1_removes_the_smallest_filters():
    m = build_model("cifar_resnet20", 10)
    u = prunable_units(m)[0]
    with torch.no_grad():
        w = m.layer1[0].conv1.weight
        for i in range(16):
            w[i].fill_(0.01 * (i + 1) * (1 if i % 2 else -1))
    info = prune_unit(m, u, 0.25, criterion="l1", input_shape=SHAPE)
    assert info["removed"] == [0, 1, 2, 3]
    kept = m.layer1[0].conv1.weight.abs().flatten(1).mean(1)
    assert torch.allclose(kept, torch.tensor([0.01 * (i + 1) for i in range(4, 16)]))


@pytest.mark.parametrize("criterion", CRITERION_NAMES)
def test_every_criterion_scores_each_channel(criterion):
    m = build_model("cifar_resnet20", 10)
    u = prunable_units(m)[1]
    data = (torch.randn(8, 3, 32, 32), torch.randint(0, 10, (8,)))
    scores = channel_importance(m, u, criterion, data=data, seed=3)
    assert scores.shape == (16,) and torch.isfinite(scores).all()
    again = channel_importance(m, u, criterion, data=data, seed=3)
    assert torch.equal(scores, again)
    info = prune_unit(m, u, 0.5, criterion=criterion, data=data)
    assert info["width_after"] == 8


def test_data_criteria_need_data():
    m = build_model("cifar_resnet20", 10)
    with pytest.raises(ValueError, match="needs data"):
        channel_importance(m, prunable_units(m)[0], "taylor")
    with pytest.raises(ValueError, match="choose one of"):
        channel_importance(m, prunable_units(m)[0], "magic")


@pytest.mark.parametrize("scope", ["local", "global"])
@pytest.mark.parametrize("target", [0.5, 0.8, 0.95])
def test_magnitude_masks_give_exact_sparsity(scope, target):
    m = build_model("cifar_resnet20", 10)
    masks = magnitude_masks(m, target, scope=scope)
    weights = [x.weight for x in m.modules() if isinstance(x, nn.Conv2d | nn.Linear)]
    total = sum(w.numel() for w in weights)
    zeros = sum(int((w == 0).sum()) for w in weights)
    if scope == "local":
        expected = sum(round(target * w.numel()) for w in weights)
        for w in weights:
            assert int((w == 0).sum()) == round(target * w.numel())
    else:
        expected = round(target * total)
    assert zeros == expected
    assert math.isclose(masks.sparsity(), expected / total)


def test_global_masks_prune_smallest_weights_first():
    lin = nn.Sequential(nn.Linear(2, 2, bias=False), nn.Linear(2, 1, bias=False))
    with torch.no_grad():
        lin[0].weight.copy_(torch.tensor([[1.0, 5.0], [0.1, 3.0]]))
        lin[1].weight.copy_(torch.tensor([[0.2, 4.0]]))
    masks = magnitude_masks(lin, 0.5, scope="global")
    assert masks.masks["0.weight"].tolist() == [[False, True], [False, True]]
    assert masks.masks["1.weight"].tolist() == [[False, True]]


def test_masks_reapply_after_an_update():
    m = nn.Linear(4, 4)
    masks = magnitude_masks(m, 0.5)
    with torch.no_grad():
        m.weight.add_(1.0)
    Masks(masks.masks).apply(m)
    assert int((m.weight == 0).sum()) == 8


def test_round_to_keeps_widths_on_a_multiple():
    from ice.pruning.structured import n_to_remove

    assert [w - n_to_remove(w, 0.6, "round", 8) for w in (16, 32, 64)] == [8, 16, 24]
    assert [w - n_to_remove(w, 0.6, "round") for w in (16, 32, 64)] == [6, 13, 26]
    assert 6 - n_to_remove(6, 0.5, "round", 8) == 3  # a width below the multiple keeps the ratio
    m = build_model("cifar_resnet20", 10)
    u = prunable_units(m)[0]
    info = prune_unit(m, u, 0.6, input_shape=SHAPE, round_to=8)
    assert info["width_after"] == 8 and m.layer1[0].conv2.in_channels == 8


def test_a_frozen_stem_is_pruned_as_an_unfrozen_one():
    """The dependency graph is traced through autograd: ICE's freeze list (here every conv,
    the stem too) must not hide a layer, or ICE would skip units the baseline prunes."""
    import copy

    from ice.metrics import count_params
    from ice.models import build_model
    from ice.pruning import prunable_units, prune_unit
    from ice.train import freeze

    torch.manual_seed(0)
    base = build_model("tv:resnet18", 10)  # traced by the dependency graph (CIFAR ResNets have a table)
    frozen = copy.deepcopy(base)
    convs = [n for n, m in frozen.named_modules() if isinstance(m, torch.nn.Conv2d)]
    freeze(frozen, convs)
    units = prunable_units(frozen)  # the traced pass
    assert [u.name for u in units] == [u.name for u in prunable_units(base)]
    assert not any(p.requires_grad for n, p in frozen.named_parameters() if not n.startswith("fc."))  # as it was
    for m in (base, frozen):
        for u in prunable_units(m)[:2]:
            prune_unit(m, u, 0.5, "l1", input_shape=(1, 3, 32, 32))
    assert count_params(frozen) == count_params(base) < count_params(build_model("tv:resnet18", 10))
