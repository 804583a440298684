"""The example plugin's own tests: lbcore's conformance kit plus what is particular to it."""

from __future__ import annotations

import pytest
import torch

from lbcore import AttackConfig, attack
from lbcore.errors import WeightsError
from lbcore.testing import check_component, conformance_report, sample_batch


def test_extractor_conforms(pm):
    measured = check_component("extractor", "example-regressor")
    assert measured["points"] == 68 and measured["faces"] == 3
    assert measured["round_trip_median_px"] < 0.01  # decode returns full-image coordinates
    assert measured["grad_abs_sum"] > 0


def test_extractor_without_rendered_heatmaps_conforms(pm):
    report = conformance_report("extractor", "example-regressor:heatmaps=false")
    assert report.ok, str(report)
    assert pm.build("extractors", "example-regressor:heatmaps=false")(*sample_batch()).heatmaps is None


@pytest.mark.parametrize("on_extractor", [False, True])
def test_loss_conforms(pm, on_extractor):
    options = {"extractor": "example-regressor"} if on_extractor else {}
    report = conformance_report("loss", "example-nme", **options)
    assert report.ok, str(report)
    # clean output scores 0; a changed one scores below it
    assert max(report.measured["clean_value"]) == pytest.approx(0.0, abs=1e-6)
    assert max(report.measured["perturbed_value"]) < 0


def test_untrained_model_lands_on_the_face(pm):
    ext = pm.build("extractors", "example-regressor")
    images, faces = sample_batch()
    lm = ext.predict(images, faces)
    for i, (x1, y1, x2, y2) in enumerate(faces.boxes.tolist()):
        w, h = x2 - x1, y2 - y1
        centre = lm[i].mean(0)
        assert abs(float(centre[0]) - (x1 + x2) / 2) < 0.15 * w
        assert abs(float(centre[1]) - (y1 + y2) / 2) < 0.2 * h
        # a face, not a blob: eyes above the nose tip above the mouth above the chin
        eyes_y = float(lm[i, 36:48, 1].mean())
        assert eyes_y < float(lm[i, 30, 1]) < float(lm[i, 48:60, 1].mean()) < float(lm[i, 8, 1])
        # the subject's right eye is on the image's left
        assert float(lm[i, 36, 0]) < float(lm[i, 45, 0])


@pytest.mark.parametrize("loss,random_start", [("landmark-displacement", 2.0), ("example-nme", 2.0),
                                                ("heatmap-cosine", 0.0)])
def test_attack_moves_the_regressed_landmarks(pm, loss, random_start):
    ext = pm.build("extractors", "example-regressor")
    images, faces = sample_batch()
    clean = ext.predict(images, faces)
    config = AttackConfig(loss=loss, steps=6, eps=8.0, random_start=random_start)
    res = attack(images, faces, ext, config, plugin_manager=pm)
    assert float(res.linf.max()) <= 8.0
    moved = (ext.predict(res.adversarial, faces) - clean).norm(dim=-1).mean()
    # the same budget spent on random signs barely moves them
    noise = torch.sign(torch.randn(images.shape, generator=torch.Generator().manual_seed(5))) * 8.0
    baseline = (ext.predict((images + noise).clamp(0, 255).round(), faces) - clean).norm(dim=-1).mean()
    assert float(moved) > 2.0 * float(baseline), (float(moved), float(baseline))


def test_weights_path_round_trip(pm, tmp_path):
    ext = pm.build("extractors", "example-regressor:seed=3")
    path = tmp_path / "regressor.pth"
    torch.save(ext.state_dict(), path)
    again = pm.build("extractors", f"example-regressor:weights={path}")
    images, faces = sample_batch()
    assert torch.allclose(again.predict(images, faces), ext.predict(images, faces))
    state = ext.state_dict()
    state.pop("head.bias")
    torch.save(state, path)
    with pytest.raises(WeightsError, match="head.bias"):
        pm.build("extractors", f"example-regressor:weights={path}")
