"""The trainer (lbcore.apps.training) against a tiny heat-map extractor, and on real faces."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

import lbcore
from lbcore.apps.training import (
    PAPER_RECIPES,
    Augment,
    LabelledFace,
    Recipe,
    evaluate_nme,
    export_weights,
    gaussian_targets,
    heatmap_loss,
    prepare_samples,
    recipe_for,
    train,
)
from lbcore.errors import WeightsError
from lbcore.extractor import HeatmapExtractor, argmax_2d
from lbcore.types import LandmarkScheme

# three points: two "eyes" (mirror images of each other) and a "mouth"
TINY = LandmarkScheme("tiny3", 3, (0, 1), (1, 0, 2))


class TinyExtractor(HeatmapExtractor):
    """32x32 crop of the box, 16x16 heat-maps, two 'stacks' for intermediate supervision."""

    input_size = (32, 32)
    scheme = TINY

    def __init__(self) -> None:
        super().__init__()
        self.body = torch.nn.Sequential(
            torch.nn.Conv2d(3, 16, 3, padding=1), torch.nn.BatchNorm2d(16), torch.nn.ReLU(),
            torch.nn.MaxPool2d(2), torch.nn.Conv2d(16, 16, 3, padding=1), torch.nn.ReLU(),
        )
        self.head1 = torch.nn.Conv2d(16, 3, 3, padding=1)
        self.head2 = torch.nn.Conv2d(16 + 3, 3, 3, padding=1)

    def crop_theta(self, boxes: torch.Tensor) -> torch.Tensor:
        c = (boxes[:, :2] + boxes[:, 2:]) / 2
        s = (boxes[:, 2:] - boxes[:, :2]).amax(dim=1) * 1.2 / 32
        theta = torch.zeros(boxes.shape[0], 2, 3, device=boxes.device)
        theta[:, 0, 0] = s
        theta[:, 1, 1] = s
        theta[:, :, 2] = c - s[:, None] * 15.5
        return theta

    def normalise(self, crops: torch.Tensor) -> torch.Tensor:
        return crops / 255.0

    def forward_crops(self, x: torch.Tensor) -> Any:
        f = self.body(x)
        h1 = self.head1(f)
        h2 = self.head2(torch.cat([f, h1], 1))
        return h2, {"training_outputs": [h1, h2]}

    def decode(self, output: Any) -> torch.Tensor:
        pts = argmax_2d(output.heatmaps)
        return pts @ output.hm_to_image[:, :, :2].transpose(1, 2) + output.hm_to_image[:, None, :, 2]


def _synthetic_faces(n: int, seed: int = 0) -> list[LabelledFace]:
    """Grey images with a dark 'face' disc and three bright dots at the landmarks."""
    rng = np.random.default_rng(seed)
    faces = []
    for _ in range(n):
        img = np.full((96, 96, 3), 90, np.uint8)
        cx, cy, r = rng.uniform(40, 56), rng.uniform(40, 56), rng.uniform(18, 24)
        yy, xx = np.mgrid[:96, :96]
        img[(xx - cx) ** 2 + (yy - cy) ** 2 < r**2] = 40
        pts = np.array([[cx - 0.45 * r, cy - 0.3 * r], [cx + 0.45 * r, cy - 0.3 * r], [cx, cy + 0.5 * r]], np.float32)
        for (px, py), col in zip(pts, [(255, 60, 60), (60, 255, 60), (60, 60, 255)], strict=True):
            img[(xx - px) ** 2 + (yy - py) ** 2 < 6] = col
        faces.append(LabelledFace("<synthetic>", [cx - r, cy - r, cx + r, cy + r], pts, image=img))
    return faces


def test_gaussian_targets_peak_at_subpixel_points() -> None:
    pts = torch.tensor([[[3.0, 5.0], [10.25, 2.75], [float("nan"), float("nan")]]])
    t = gaussian_targets(pts, (12, 16), sigma=1.0)
    assert t.shape == (1, 3, 12, 16)
    assert float(t[0, 0, 5, 3]) == pytest.approx(1.0)
    assert argmax_2d(t[:, :2]).tolist() == [[[3.0, 5.0], [10.0, 3.0]]]
    assert float(t[0, 2].abs().sum()) == 0.0  # missing point: no target


def test_heatmap_loss_background_channel_and_mask() -> None:
    target = gaussian_targets(torch.tensor([[[4.0, 4.0], [2.0, 6.0]]]), (8, 8), 1.0)
    valid = torch.ones(1, 2, dtype=torch.bool)
    assert float(heatmap_loss([target], target, valid)) == 0.0
    bg = torch.cat([target, 1 - target.amax(1, keepdim=True)], 1)
    assert float(heatmap_loss([bg, target], target, valid)) == pytest.approx(0.0, abs=1e-7)
    wrong = torch.zeros_like(target)
    assert float(heatmap_loss([wrong], target, valid)) > 0
    # a masked-out point costs nothing
    wrong[:, 0] = target[:, 0]
    assert float(heatmap_loss([wrong], target, torch.tensor([[True, False]]))) == 0.0


def test_augmented_targets_follow_the_crop() -> None:
    """With rotation, scale, translation and flips, each target sits on its dot in the augmented
    crop; after a flip point k is the mirrored face's k, i.e. the original's flip_permutation[k]."""
    from lbcore.apps.training import _invert_affine, _make_batch

    ext = TinyExtractor().eval()
    samples = prepare_samples(_synthetic_faces(6, seed=3))
    rng = np.random.default_rng(0)
    aug = Augment(scale=0.2, rotation=25, translation=0.05, flip=0.5, colour=0, grey=0, blur=0)
    x, theta, lm = _make_batch(ext, samples, TINY, aug, rng, torch.device("cpu"))
    crops = x * 255.0
    crop_pts = torch.einsum("fij,fkj->fki", _invert_affine(theta)[:, :, :2], lm) + _invert_affine(theta)[:, None, :, 2]
    flips = 0
    for f in range(len(samples)):
        flipped = bool(torch.linalg.det(theta[f, :, :2]) < 0)
        flips += int(flipped)
        for k in range(3):
            u, v = (int(round(c)) for c in crop_pts[f, k].tolist())
            pix = crops[f, :, v, u]
            colour = TINY.flip_permutation[k] if flipped else k
            assert int(pix.argmax()) == colour, f"face {f} point {k}: colour {pix.tolist()}"
        # whatever the flip, point 0 (the left eye as seen) is left of point 1 in the crop
        assert crop_pts[f, 0, 0] < crop_pts[f, 1, 0]
    assert 0 < flips < len(samples)


def test_few_steps_lower_the_loss_and_checkpoint_reloads_strictly(tmp_path: Path, fresh_pm: Any) -> None:
    torch.manual_seed(0)
    ext = TinyExtractor()
    samples = prepare_samples(_synthetic_faces(16))
    recipe = Recipe(optimizer="adam", lr=3e-3, sigma=1.0, batch_size=8, epochs=4,
                    augment=Augment(rotation=10, scale=0.1, translation=0.03, blur=0.0))
    out = tmp_path / "tiny.pth"
    res = train(ext, samples, recipe=recipe, val_samples=samples[:4], out=out, spec="tiny",
                seed=1, steps_per_epoch=8, progress=False)
    first = float(np.mean(res.step_losses[:4]))
    last = float(np.mean(res.step_losses[-4:]))
    assert last < 0.6 * first, (first, last)
    assert res.epochs_done == 4 and len(res.val_nme) == 4
    ck = lbcore.load_checkpoint(out)
    assert set(ck) == {"epoch", "netType", "state_dict", "best_acc", "optimizer"}
    assert ck["epoch"] == 4 and ck["netType"] == "tiny"
    assert all(k.startswith("module.") for k in ck["state_dict"])
    side = json.loads((tmp_path / "tiny.pth.json").read_text())
    assert side["seed"] == 1 and len(side["val_nme"]) == 4

    # reload strictly through a registered factory's weights=PATH, as every command does
    class Plugin:
        @lbcore.hookimpl
        def register_extractors(self, register: Any) -> None:
            def tiny(weights: str = "none") -> TinyExtractor:
                m = TinyExtractor()
                if weights != "none":
                    sd = lbcore.extract_state_dict(lbcore.load_checkpoint(weights), weights)
                    lbcore.load_state_dict_strict(m, sd, weights)
                return m.eval()

            register("tiny", tiny)

    fresh_pm.add_plugin(Plugin(), name="tiny-test")
    again = fresh_pm.build("extractors", f"tiny:weights={out}")
    for k, v in ext.state_dict().items():
        assert torch.equal(again.state_dict()[k], v.cpu()), k
    ext.eval()
    assert evaluate_nme(again, samples[:4]) == pytest.approx(evaluate_nme(ext, samples[:4]))

    # exported plain (half) state dict loads too; a wrong network is refused with the key names
    half = export_weights(out, tmp_path / "tiny-half.pth", half=True)
    assert fresh_pm.build("extractors", f"tiny:weights={half}") is not None
    bad = tmp_path / "bad.pth"
    torch.save({"body.0.weight": torch.zeros(1)}, bad)
    with pytest.raises(WeightsError, match="does not fit"):
        fresh_pm.build("extractors", f"tiny:weights={bad}")


def test_adversarial_training_moves_each_batch_within_eps_to_a_higher_loss() -> None:
    """``adv_eps``: the adversary's crops stay within eps (and 0..255) of the augmented crops and
    cost more than they do; training on them runs and is recorded in the recipe."""
    from lbcore.apps.training import _heatmap_points, _make_batch, _worst_case

    torch.manual_seed(0)
    ext = TinyExtractor()
    samples = prepare_samples(_synthetic_faces(4, seed=5))
    rng = np.random.default_rng(0)
    raw, theta, lm = _make_batch(ext, samples, TINY, Augment(blur=0), rng, torch.device("cpu"), normalise=False)
    assert float(raw.max()) > 1.5  # 0..255, not normalised
    hm = ext.forward_crops(ext.normalise(raw))
    hm = hm[0] if isinstance(hm, tuple) else hm
    size = (int(hm.shape[-2]), int(hm.shape[-1]))
    pts = _heatmap_points(ext, samples, theta, lm, size, torch.device("cpu"))
    valid = torch.isfinite(pts).all(-1)
    target = gaussian_targets(pts, size, 1.0)
    noise = (raw + (torch.rand(raw.shape, generator=torch.Generator().manual_seed(1)) * 2 - 1) * 4).clamp(0, 255)
    losses = []
    for eps, steps in ((0.0, 1), (4.0, 1), (4.0, 3)):
        recipe = Recipe(adv_eps=eps, adv_steps=steps)
        adv = noise if eps == 0 else _worst_case(ext, raw, target, valid, recipe, torch.Generator().manual_seed(0))
        assert float((adv - raw).abs().max()) <= 4 + 1e-4
        assert float(adv.min()) >= 0 and float(adv.max()) <= 255
        with torch.no_grad():
            out = ext.forward_crops(ext.normalise(adv))
        losses.append(float(heatmap_loss([out[0] if isinstance(out, tuple) else out], target, valid)))
    # (random noise of the same radius costs less than the adversary's crops)
    assert losses[1] > 1.05 * losses[0] and losses[2] > 1.05 * losses[0], losses
    res = train(ext, samples, recipe=Recipe(batch_size=2, epochs=1, adv_eps=2.0, augment=Augment(blur=0)),
                seed=0, steps_per_epoch=2, progress=False)
    assert res.epochs_done == 1 and all(np.isfinite(res.step_losses))
    assert Recipe(adv_eps=2.0).describe()["adv_eps"] == 2.0


def test_resume_continues_from_the_saved_epoch(tmp_path: Path) -> None:
    samples = prepare_samples(_synthetic_faces(8))
    recipe = Recipe(lr=1e-3, batch_size=4, epochs=2, augment=Augment(blur=0))
    out = tmp_path / "r.pth"
    torch.manual_seed(0)
    train(TinyExtractor(), samples, recipe=recipe, out=out, seed=0, progress=False)
    assert lbcore.load_checkpoint(out)["epoch"] == 2
    more = train(TinyExtractor(), samples, recipe=recipe.replace(epochs=3), out=out, seed=0,
                 resume=out, progress=False)
    assert more.epochs_done == 3 and len(more.losses) == 1  # only epoch 3 ran
    assert lbcore.load_checkpoint(out)["epoch"] == 3


def test_recipes_follow_the_papers() -> None:
    assert PAPER_RECIPES["fan"].optimizer == "rmsprop" and PAPER_RECIPES["fan"].sigma == 1.0
    assert PAPER_RECIPES["hrnet"].optimizer == "adam" and PAPER_RECIPES["hrnet"].sigma == 1.5
    assert PAPER_RECIPES["avssan"].optimizer == "sgd"
    ext = TinyExtractor()
    assert recipe_for(ext, "hrnet") is PAPER_RECIPES["hrnet"]
    assert recipe_for(ext, "unknown") is PAPER_RECIPES["generic"]
    ext.training_recipe = {"preset": "fan", "lr": 1e-3}  # type: ignore[attr-defined]
    r = recipe_for(ext)
    assert r.optimizer == "rmsprop" and r.lr == 1e-3
    assert math.isclose(r.replace(augment={"flip": 0.0}).augment.flip, 0.0)


def _fan_installed() -> bool:
    from lbcore.plugins import get_plugin_manager

    return "fan" in get_plugin_manager().components("extractors")


def _write_face(folder: Path, name: str, seed: int) -> None:
    import cv2

    face = _synthetic_faces(1, seed)[0]
    cv2.imwrite(str(folder / f"{name}.png"), face.image[..., ::-1])
    # 68 points around the synthetic face (iBUG .pts files are 1-based)
    rng = np.random.default_rng(seed)
    box = np.asarray(face.box)
    pts = rng.uniform(box[:2], box[2:], size=(68, 2)) + 1.0
    body = "\n".join(f"{x:.3f} {y:.3f}" for x, y in pts)
    (folder / f"{name}.pts").write_text(f"version: 1\nn_points: 68\n{{\n{body}\n}}\n")


@pytest.mark.skipif(not _fan_installed(), reason="the lb_fan plugin is not installed")
def test_cli_trains_and_the_checkpoint_loads_as_weights(tmp_path: Path) -> None:
    from click.testing import CliRunner

    from lbcore.cli import cli
    from lbcore.plugins import get_plugin_manager

    data = tmp_path / "faces"
    data.mkdir()
    for i in range(3):
        _write_face(data, f"f{i}", i)
    out = tmp_path / "fan.pth"
    spec = "fan:modules=1,landmarks=68,width=8"
    r = CliRunner().invoke(cli, ["train", spec, "--data", str(data), "--format", "pts", "--out", str(out),
                                 "--epochs", "1", "--steps-per-epoch", "2", "--batch-size", "2",
                                 "--device", "cpu", "--no-progress", "--val", str(data), "--adv-eps", "2"])
    assert r.exit_code == 0, r.output
    assert "adversarial eps=2.0 steps=1" in r.stderr
    summary = json.loads(r.stdout.strip().splitlines()[-1])
    assert summary["epochs"] == 1 and summary["val_nme"] > 0
    ck = lbcore.load_checkpoint(out)
    assert ck["netType"] == spec and ck["epoch"] == 1
    ext = get_plugin_manager().build("extractors", f"{spec},weights={out}")
    sd = ext.net.state_dict()
    assert all(torch.equal(sd[k[len("module."):]], v) for k, v in ck["state_dict"].items())


def test_cli_rejects_a_malformed_annotation_with_file_and_line(tmp_path: Path) -> None:
    from click.testing import CliRunner

    from lbcore.cli import cli

    data = tmp_path / "faces"
    data.mkdir()
    _write_face(data, "good", 0)
    bad = data / "good.pts"
    lines = bad.read_text().splitlines()
    lines[5] = "12.5 oops"
    bad.write_text("\n".join(lines) + "\n")
    r = CliRunner().invoke(cli, ["train", "fan:modules=1,landmarks=68,width=8", "--data", str(data),
                                 "--format", "pts", "--out", str(tmp_path / "x.pth"), "--device", "cpu"])
    assert r.exit_code != 0
    assert "good.pts:6" in r.output, r.output
    assert not (tmp_path / "x.pth").exists()


def test_short_training_on_real_faces_then_the_attack_breaks_it(trained_fan: Any) -> None:
    """A short CPU run on ../shared's faces fits them (NME < 0.15); the LB attack (eps 15,
    20 MI-FGSM steps) then pushes the NME of the attacked faces above 0.5."""
    from lbcore.engine import attack, preset
    from lbcore.types import Faces

    extractor, samples, path = trained_fan
    nme = evaluate_nme(extractor, samples)
    assert nme < 0.15, f"NME {nme:.3f} on the training faces after the short run"
    # attack the four human-annotated photos' faces (the last four samples)
    from lbcore.apps.training import _nme

    broken = []
    for s in samples[-4:]:
        img = torch.from_numpy(s.image).permute(2, 0, 1)[None].float()
        faces = Faces(torch.from_numpy(s.box)[None], torch.zeros(1, dtype=torch.long))
        res = attack(img, faces, extractor, preset("lb"), device="cpu")
        pred = extractor.predict(res.adversarial, faces)
        broken.append(float(_nme(pred, torch.from_numpy(s.landmarks)[None], extractor.scheme)[0]))
        assert float(res.linf.max()) <= 15.0
    assert float(np.mean(broken)) > 0.5, broken


def test_hrnet_trains_and_its_checkpoint_inspects_strictly(tmp_path: Path, shared: Path) -> None:
    """The trainer serves HRNet too (reduced width for CPU): its checkpoint, in the published
    layout, loads strictly through `lb weights inspect`."""
    import subprocess
    import sys

    out = tmp_path / "hrnet.pth"
    env = {**__import__("os").environ, "OMP_NUM_THREADS": "1"}
    spec = "hrnet:width=8,landmarks=68"
    res = subprocess.run([sys.executable, "-m", "lbcore", "train", spec, "--data", str(shared / "data" / "faces68"),
                          "--format", "pts", "--out", str(out), "--epochs", "1", "--steps-per-epoch", "2",
                          "--batch-size", "2", "--no-progress"], capture_output=True, text=True, env=env)
    assert res.returncode == 0, res.stderr
    res = subprocess.run([sys.executable, "-m", "lbcore", "weights", "inspect", spec, str(out), "--json"],
                         capture_output=True, text=True, env=env)
    assert res.returncode == 0, res.stderr
    info = json.loads(res.stdout)
    assert info["keys"] == info["model_keys"] == 1839 and info["module_prefix"] is True


def test_avssan_trains_on_98_point_lists(tmp_path: Path, shared: Path) -> None:
    """AVS-SAN (98 points + background) trains through the WFLW list reader at a reduced
    width. The 98 points here are plumbing data (the 68 annotated points plus 30 midpoints), not
    WFLW annotations: the test checks the training path and the checkpoint, not accuracy."""
    import subprocess
    import sys

    from lbcore.io.annotations import load_annotations

    lines = []
    for r in load_annotations(shared / "data" / "faces68", "pts"):
        lm = r.landmarks
        pts = np.concatenate([lm, (lm[:30] + lm[1:31]) / 2])
        (x1, y1), (x2, y2) = lm.min(0), lm.max(0)
        lines.append(" ".join(f"{v:.2f}" for v in pts.reshape(-1))
                     + f" {x1:.0f} {y1:.0f} {x2:.0f} {y2:.0f} 0 0 0 0 0 0 {Path(r.image_path).name}")
    listing = tmp_path / "list98.txt"
    listing.write_text("\n".join(lines) + "\n")
    out = tmp_path / "avs.pth"
    env = {**__import__("os").environ, "OMP_NUM_THREADS": "1"}
    spec = "avssan:width_div=8"
    res = subprocess.run([sys.executable, "-m", "lbcore", "train", spec, "--data", str(listing), "--format", "wflw",
                          "--image-root", str(shared / "data" / "faces68"), "--out", str(out), "--epochs", "1",
                          "--steps-per-epoch", "2", "--batch-size", "2", "--no-progress"],
                         capture_output=True, text=True, env=env)
    assert res.returncode == 0, res.stderr
    assert json.loads(res.stdout.strip().splitlines()[-1])["final_loss"] > 0
    res = subprocess.run([sys.executable, "-m", "lbcore", "weights", "inspect", spec, str(out), "--json"],
                         capture_output=True, text=True, env=env)
    assert res.returncode == 0, res.stderr
    info = json.loads(res.stdout)
    assert info["keys"] == info["model_keys"] == 144 and info["points"] == 98
