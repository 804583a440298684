"""The network's layout against the original's key list, and strict checkpoint loading."""

from __future__ import annotations

from collections import OrderedDict

import pytest
import torch

from lb_hrnet import plugin
from lb_hrnet.model import HighResolutionNet
from lb_hrnet.plugin import hrnet
from lbcore.errors import WeightsError


def test_parameter_count_w18():
    net = HighResolutionNet()
    assert sum(p.numel() for p in net.parameters()) == 9_662_528


def test_keys_and_shapes_match_the_original(hrnet_key_list):
    own = HighResolutionNet(width=18, landmarks=98).state_dict()
    assert [(k, tuple(v.shape)) for k, v in own.items()] == hrnet_key_list
    assert len(hrnet_key_list) == 1839
    # transition2 keeps branches 0 and 1 unchanged: no parameters there.
    assert not any(k.startswith(("transition2.0.", "transition2.1.")) for k, _ in hrnet_key_list)


def test_small_width_keeps_the_key_names(hrnet_key_list):
    small = HighResolutionNet(width=6).state_dict()
    assert list(small) == [k for k, _ in hrnet_key_list]
    assert small["head.3.weight"].shape == (98, 90, 1, 1)  # 15 * width channels into the head


def test_output_shape_and_landmarks():
    net = HighResolutionNet(width=6, landmarks=68).eval()
    with torch.no_grad():
        out = net(torch.zeros(2, 3, 256, 256))
    assert out.shape == (2, 68, 64, 64)


def test_three_checkpoint_forms_load_strictly_and_agree(tmp_path, random_checkpoint):
    plain = tmp_path / "plain.pth"
    # The published file is a PyTorch 1.0 (legacy, non-zip) pickle of a plain state dict.
    torch.save(random_checkpoint, plain, _use_new_zipfile_serialization=False)
    wrapped = tmp_path / "wrapped.pth"
    torch.save({"epoch": 3, "state_dict": OrderedDict(("module." + k, v) for k, v in random_checkpoint.items())}, wrapped)
    old = tmp_path / "old.pth"
    torch.save(OrderedDict((k, v) for k, v in random_checkpoint.items() if not k.endswith("num_batches_tracked")), old)

    x = torch.randn(1, 3, 64, 64, generator=torch.Generator().manual_seed(0))
    outs = []
    for path in (plain, wrapped, old):
        ext = hrnet(weights=str(path))
        assert ext.network.head[3].weight.shape == (98, 270, 1, 1)
        assert torch.equal(ext.network.stage4[2].fuse_layers[3][0][2][0].weight,
                           random_checkpoint["stage4.2.fuse_layers.3.0.2.0.weight"])
        assert torch.equal(ext.network.bn1.running_var, random_checkpoint["bn1.running_var"])
        with torch.no_grad():
            outs.append(ext.forward_crops(ext.normalise(x * 255)))
    assert outs[0].shape == (1, 98, 16, 16)
    assert torch.isfinite(outs[0]).all() and outs[0].std() > 0
    assert torch.equal(outs[0], outs[1]) and torch.equal(outs[0], outs[2])


def test_mismatched_checkpoints_are_refused_in_one_line(tmp_path, random_checkpoint):
    missing = tmp_path / "missing.pth"
    torch.save(OrderedDict((k, v) for k, v in random_checkpoint.items() if not k.startswith("head.3")), missing)
    with pytest.raises(WeightsError, match=r"missing 2 keys: head\.3\.weight, head\.3\.bias") as err:
        hrnet(weights=str(missing))
    assert "\n" not in str(err.value)
    # A width-6 checkpoint does not fit the W18 network: the shape mismatches are named.
    small = tmp_path / "w6.pth"
    torch.save(HighResolutionNet(width=6).state_dict(), small)
    with pytest.raises(WeightsError, match=r"shape mismatches: transition1\.0\.0\.weight: file \(6, 256, 3, 3\) vs model \(18, 256, 3, 3\)"):
        hrnet(weights=str(small))


def test_default_weights_missing_names_where_published(tmp_path, monkeypatch):
    monkeypatch.setenv("LB_WEIGHTS_DIR", str(tmp_path / "empty"))
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    with pytest.raises(WeightsError) as err:
        hrnet()
    msg = str(err.value)
    assert "HR18-WFLW.pth" in msg and "https://1drv.ms/u/s!AiWjZ1LamlxzdTsr_9QZCwJsn5U" in msg
    assert "\n" not in msg
    with pytest.raises(WeightsError, match="no weights for width=8"):
        hrnet(width=8)


def test_default_weights_found_in_weights_dir(tmp_path, monkeypatch, random_checkpoint):
    torch.save(random_checkpoint, tmp_path / "HR18-WFLW.pth")
    monkeypatch.setenv("LB_WEIGHTS_DIR", str(tmp_path))
    ext = hrnet(weights=None)
    assert torch.equal(ext.network.head[0].bias, random_checkpoint["head.0.bias"])


def test_demo_weights_fallback(tmp_path, monkeypatch):
    monkeypatch.setenv("LB_WEIGHTS_DIR", str(tmp_path / "empty"))
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    demo_net = HighResolutionNet(width=6)
    torch.nn.init.constant_(demo_net.head[3].bias, 0.5)
    torch.save(demo_net.state_dict(), tmp_path / "demo.pth")
    entry = plugin.WeightsFile(name="hrnet-demo", filename="hrnet-demo.pth", fits="hrnet:width=6",
                               bundled=str(tmp_path / "demo.pth"))
    monkeypatch.setattr(plugin, "DEMO_WEIGHTS", [entry])
    assert plugin.fits(entry, 6, 98) and not plugin.fits(entry, 18, 98)
    assert plugin.fits(plugin.PUBLISHED_WEIGHTS, 18, 98)
    ext = hrnet(width=6)
    assert torch.equal(ext.network.head[3].bias, torch.full((98,), 0.5))
    # The default W18 request still fails on the missing published file, and says a demo exists.
    with pytest.raises(WeightsError, match=r"HR18-WFLW\.pth.*a demo model fits hrnet:width=6"):
        hrnet()
