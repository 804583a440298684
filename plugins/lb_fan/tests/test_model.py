"""The FAN network: names and shapes match the published key lists; the blocks compute what
face-alignment's blocks compute."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from lb_fan.model import FAN, ConvBlock, HourGlass


@pytest.mark.parametrize(
    ("key_file", "modules", "landmarks", "params"),
    [("fan_2dfan4_68", 4, 68, 23_820_176), ("fan_pyhowfar_98", 4, 98, 23_874_056)],
)
def test_state_dict_matches_reference_key_list(key_list, key_file, modules, landmarks, params):
    ref = key_list(key_file)
    net = FAN(num_modules=modules, num_landmarks=landmarks)
    ours = {k: tuple(v.shape) for k, v in net.state_dict().items()}
    assert ours == ref
    assert list(ours) == list(ref)  # same order too
    assert sum(p.numel() for p in net.parameters()) == params


def test_width_shrinks_shapes_but_keeps_keys(key_list):
    ref = key_list("fan_pyhowfar_98")
    small = FAN(num_modules=4, num_landmarks=98, width=64).state_dict()
    assert list(small) == list(ref)
    assert tuple(small["conv1.weight"].shape) == (16, 3, 7, 7)
    assert tuple(small["m0.b1_4.conv1.weight"].shape) == (32, 64, 3, 3)
    assert tuple(small["al0.weight"].shape) == (64, 98, 1, 1)
    assert tuple(small["l3.weight"].shape) == (98, 64, 1, 1)


def test_one_module_has_no_feedback_layers():
    keys = FAN(num_modules=1, num_landmarks=98, width=32).state_dict().keys()
    assert not any(k.startswith(("bl", "al", "m1.")) for k in keys)
    assert "l0.weight" in keys and "bn_end0.running_var" in keys


@pytest.mark.parametrize("width", [0, 12, 100])
def test_bad_width_is_refused(width):
    with pytest.raises(ValueError, match="multiple of 8"):
        FAN(width=width)


def _randomise(module: torch.nn.Module, seed: int = 0) -> None:
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, t in module.state_dict().items():
            if name.endswith("num_batches_tracked"):
                continue
            if name.endswith("running_var"):
                t.copy_(0.5 + torch.rand(t.shape, generator=g))
            else:
                t.copy_(0.3 * torch.randn(t.shape, generator=g))


def test_convblock_is_preactivation_concat_plus_projected_residual():
    block = ConvBlock(8, 16).eval()
    _randomise(block)
    x = torch.randn(2, 8, 6, 6)

    def bn(m, t):
        return F.batch_norm(t, m.running_mean, m.running_var, m.weight, m.bias, False, 0.0, m.eps)

    o1 = F.conv2d(F.relu(bn(block.bn1, x)), block.conv1.weight, padding=1)
    o2 = F.conv2d(F.relu(bn(block.bn2, o1)), block.conv2.weight, padding=1)
    o3 = F.conv2d(F.relu(bn(block.bn3, o2)), block.conv3.weight, padding=1)
    assert block.downsample is not None
    res = F.conv2d(F.relu(bn(block.downsample[0], x)), block.downsample[2].weight)
    expected = torch.cat([o1, o2, o3], 1) + res
    assert (o1.shape[1], o2.shape[1], o3.shape[1]) == (8, 4, 4)
    torch.testing.assert_close(block(x), expected)
    # Same width: identity residual.
    same = ConvBlock(16, 16).eval()
    assert same.downsample is None


def test_hourglass_uses_average_pooling_and_nearest_upsampling():
    hg = HourGlass(depth=1, features=8).eval()
    _randomise(hg)
    x = torch.randn(1, 8, 4, 4)
    low = hg.b3_1(hg.b2_plus_1(hg.b2_1(F.avg_pool2d(x, 2))))
    expected = hg.b1_1(x) + low.repeat_interleave(2, dim=2).repeat_interleave(2, dim=3)
    torch.testing.assert_close(hg(x), expected)
    # Max pooling would give a different answer: the test can tell them apart.
    low_max = hg.b3_1(hg.b2_plus_1(hg.b2_1(F.max_pool2d(x, 2))))
    wrong = hg.b1_1(x) + low_max.repeat_interleave(2, dim=2).repeat_interleave(2, dim=3)
    assert not torch.allclose(hg(x), wrong)


def test_forward_returns_one_heatmap_per_stack_with_feedback():
    net = FAN(num_modules=2, num_landmarks=5, width=16).eval()
    _randomise(net)
    x = torch.rand(1, 3, 256, 256)
    outs = net(x)
    assert [tuple(o.shape) for o in outs] == [(1, 5, 64, 64)] * 2
    assert all(torch.isfinite(o).all() for o in outs)
    # The second stack sees the first stack's heat-maps through al0.
    with torch.no_grad():
        net.al0.weight.mul_(2.0)
    outs2 = net(x)
    torch.testing.assert_close(outs2[0], outs[0])
    assert not torch.allclose(outs2[1], outs[1])
