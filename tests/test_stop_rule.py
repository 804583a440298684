"""The per-face early-stop rule of the engine (``AttackConfig.stop_nme``) and its pass count."""

from __future__ import annotations

import pytest
import torch

from lbcore.attacks import AttackConfig
from lbcore.engine import attack, preset
from lbcore.errors import SpecError
from lbcore.testing import sample_batch


def _nme(ext, clean, adv, faces):
    a, b = ext.scheme.eye_corners
    g = ext.predict(clean, faces)
    p = ext.predict(adv, faces)
    return (p - g).norm(dim=-1).mean(-1) / (g[:, a] - g[:, b]).norm(dim=-1)


def test_stop_off_is_unchanged_and_counts_every_pass(tiny_extractor):
    images, faces = sample_batch(seed=3)
    cfg = preset("lb", steps=8)
    res = attack(images, faces, tiny_extractor, cfg)
    again = attack(images, faces, tiny_extractor, preset("lb", steps=8, stop_nme=0.0))
    assert torch.equal(res.adversarial, again.adversarial)
    # one extractor, 8 steps: 8 forward+backward passes per face
    assert res.passes.tolist() == [8] * len(faces)
    two = attack(images, faces, [tiny_extractor, tiny_extractor], cfg)
    assert two.passes.tolist() == [16] * len(faces)


def test_a_face_past_the_threshold_stops_early(tiny_extractor):
    images, faces = sample_batch(seed=3)  # 3 faces, two of them in image 0
    limit = 0.05
    res = attack(images, faces, tiny_extractor, preset("lb", steps=20, stop_nme=limit))
    got = _nme(tiny_extractor, images, res.adversarial, faces)
    stopped = res.passes < 20
    assert bool(stopped.any()), res.passes  # (the tiny net: face 1 passes 0.05 within 2-3 steps)
    # a stopped face is past the limit on the returned 8-bit images (rounding may move it a little)
    assert bool((got[stopped] > 0.7 * limit).all()), (got, res.passes)
    # a face that never got past it ran every step
    assert bool((res.passes[~stopped] == 20).all())


def test_a_stopped_face_keeps_its_perturbation_while_the_others_go_on(tiny_extractor):
    images, faces = sample_batch(seed=3)
    full = attack(images, faces, tiny_extractor, preset("lb", steps=20))
    reached = _nme(tiny_extractor, images, full.adversarial, faces)
    limit = 0.5
    done = reached > limit
    assert bool(done[:2].all()) and not bool(done[2]), reached  # both faces of image 0, not image 1's
    # starting from that result, image 0's faces end at the first check (one pass), image 1's goes on
    res = attack(images, faces, tiny_extractor, preset("lb", steps=20, stop_nme=limit), init=full.adversarial)
    assert res.passes.tolist()[:2] == [1, 1] and int(res.passes[2]) > 1
    assert torch.equal(res.adversarial[0], full.adversarial[0])  # frozen exactly as given


def test_margin_makes_it_stricter(tiny_extractor):
    images, faces = sample_batch(seed=3)
    loose = attack(images, faces, tiny_extractor, preset("lb", steps=20, stop_nme=0.05))
    strict = attack(images, faces, tiny_extractor, preset("lb", steps=20, stop_nme=0.05, stop_margin=4))
    assert int(strict.passes.sum()) > int(loose.passes.sum())


@pytest.mark.parametrize("bad", [{"stop_nme": -0.1}, {"stop_nme": float("nan")}, {"stop_margin": 0.5},
                                 {"stop_every": 0}])
def test_bad_stop_settings_are_refused(bad):
    with pytest.raises(SpecError, match="stop_"):
        AttackConfig(**bad)
