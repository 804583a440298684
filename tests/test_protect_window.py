"""``lb protect`` attacks a window of a large photo (every crop of every face plus a margin, on
the JPEG block grid) instead of the whole photo: the same perturbation at a fraction of the
whole-image work. A small random FAN, a synthetic 400x300 photo with one face box."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from lbcore.attacks import AttackConfig
from lbcore.engine import attack
from lbcore.types import Faces

TINY = "fan:weights=none,width=16,landmarks=68,resolution=64"
BOX = (150.0, 100.0, 214.0, 164.0)


def _rgb() -> np.ndarray:
    rng = np.random.default_rng(0)
    yy, xx = np.mgrid[0:300, 0:400]
    base = np.stack([xx, yy, (xx + yy) // 2], -1) % 256
    return np.clip(base + rng.integers(-30, 30, (300, 400, 3)), 0, 255).astype(np.uint8)


@pytest.mark.parametrize("jitter", [0.0, 0.1])
def test_a_window_of_the_photo_gives_the_same_attack(jitter):
    """The engine on a window that holds the face's crop, with the default medium settings (soft
    face mask, texture masking, SSIM/PSNR floor, the differentiable JPEG of the output): the
    same pixels as on the whole photo (a few at most one grey level apart: float sums in another
    order), and nothing outside the window changes on the whole photo either. (A start away
    from the clean image: at the clean image the loss is at its maximum, the first gradient is
    float noise and any change in the order of sums changes it.)"""
    from lbcore.plugins import get_plugin_manager

    torch.manual_seed(0)
    ext = get_plugin_manager().build("extractors", TINY)
    x = torch.from_numpy(_rgb()).permute(2, 0, 1)[None].float()
    start = (x + torch.randint(-3, 4, x.shape, generator=torch.Generator().manual_seed(1))).clamp(0, 255)
    box = torch.tensor([BOX])
    cfg = AttackConfig(steps=3, optimizer="mifgsm-l2:alpha=1,decay=0.5", eps=16, eot=("diffjpeg:quality=90",),
                       mask="face", texture=0.5, ssim_min=0.95, psnr_min=38, box_jitter=jitter)
    one = torch.zeros(1, dtype=torch.long)
    whole = attack(x, Faces(box, one), ext, cfg, init=start).adversarial
    x0, y0, x1, y1 = 96, 32, 288, 240
    part = attack(x[..., y0:y1, x0:x1], Faces(box - torch.tensor([x0, y0, x0, y0]), one), ext, cfg,
                  init=start[..., y0:y1, x0:x1]).adversarial
    diff = (whole[..., y0:y1, x0:x1] - part).abs()
    assert float((part - x[..., y0:y1, x0:x1]).abs().max()) >= 3  # (an attack happened)
    # (measured: with box_jitter 0.36 % of the pixels one grey level apart, without < 0.1 %)
    assert float(diff.max()) <= 1 and float((diff > 0).float().mean()) < (1e-2 if jitter else 1e-3)
    outside = whole.clone()
    outside[..., y0:y1, x0:x1] = x[..., y0:y1, x0:x1]
    assert torch.equal(outside, x)


def _windows(monkeypatch: pytest.MonkeyPatch) -> list[Any]:
    from lbcore.apps import protection

    seen: list[Any] = []
    original = protection._Run.attack_window

    def recording(self: Any, job: Any) -> Any:
        win = original(self, job)
        crops = [(ext.crop_theta(job.faces.boxes.float()), ext.input_size) for ext in self.attacked.values()]
        seen.append((win, crops))
        return win

    monkeypatch.setattr(protection._Run, "attack_window", recording)
    return seen


@pytest.mark.parametrize(("fmt", "jitter"), [("png", 0.0), ("jpeg", 0.0), ("png", 0.1)])
def test_protect_attacks_a_window_that_holds_every_crop(tmp_path, monkeypatch, fmt, jitter):
    """The window ``lb protect`` picks holds every attacked extractor's crop of the face with a
    32-pixel margin (48 with the JPEG stage's reach), starts on the 16-pixel JPEG block grid,
    and the written photo differs from the input only inside it (PNG output). With ``box_jitter``
    it holds the crops of the farthest jittered boxes too."""
    from PIL import Image

    from lbcore.apps.protection import protect

    src = tmp_path / "in"
    src.mkdir()
    Image.fromarray(_rgb()).save(src / "p.png")
    seen = _windows(monkeypatch)
    torch.manual_seed(0)
    rep = protect([src], tmp_path / "out", extractors=(TINY,), boxes=(BOX,), steps=2, held_out=("none",),
                  check_compression=False, format=fmt, attack=f"lb:box_jitter={jitter}")
    assert rep["summary"]["files"] == {"protected": 1}
    ((win, crops),) = seen
    if jitter:  # the crops of the farthest jittered boxes (scaled by 1 +- j, moved by +-j/2 of the size)
        from lbcore.plugins import get_plugin_manager

        ext = get_plugin_manager().build("extractors", TINY)
        b = torch.tensor(BOX)
        c, size = (b[:2] + b[2:]) / 2, b[2:] - b[:2]
        for s in (-1, 1):
            for dx in (-1, 1):
                for dy in (-1, 1):
                    cc = c + torch.tensor([dx, dy]) * jitter / 2 * size
                    half = size * (1 + s * jitter) / 2
                    crops.append((ext.crop_theta(torch.cat([cc - half, cc + half])[None]), ext.input_size))
    assert win is not None
    x0, y0, x1, y1 = win
    assert x0 % 16 == 0 and y0 % 16 == 0
    margin = 32 + (16 if fmt == "jpeg" else 0)
    for theta, (ch, cw) in crops:
        corners = torch.tensor([[-0.5, -0.5, 1.0], [cw - 0.5, ch - 0.5, 1.0]])
        (a, b), (c, d) = torch.einsum("ij,kj->ki", theta[0], corners).tolist()
        assert x0 <= max(a - margin, 0) and y0 <= max(b - margin, 0)
        assert x1 >= min(c + margin, 400) and y1 >= min(d + margin, 300)
    assert (x1 - x0) * (y1 - y0) < 0.8 * 400 * 300
    if fmt == "png":
        out = np.asarray(Image.open(next(Path(tmp_path / "out").glob("p.*")))).astype(int)
        changed = np.abs(out - _rgb().astype(int)).max(2) > 0
        assert changed.any()
        ys, xs = np.nonzero(changed)
        assert ys.min() >= y0 and ys.max() < y1 and xs.min() >= x0 and xs.max() < x1


def test_whole_image_settings_attack_the_whole_photo(tmp_path, monkeypatch):
    """Input diversity resizes the whole image: no window."""
    from PIL import Image

    from lbcore.apps.protection import protect

    src = tmp_path / "in"
    src.mkdir()
    Image.fromarray(_rgb()).save(src / "p.png")
    seen = _windows(monkeypatch)
    protect([src], tmp_path / "out", extractors=(TINY,), boxes=(BOX,), steps=1, held_out=("none",),
            check_compression=False, attack="lb:diversity_prob=0.5")
    assert [w for w, _ in seen] == [None]
