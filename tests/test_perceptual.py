"""Perceptual budgets (soft face mask, texture masking, SSIM/PSNR floor), output formats and the
bad options of ``lb protect``: engine checks on a tiny model, end-to-end checks on one small
real photo with the bundled demonstration FAN."""

from __future__ import annotations

import io
import json
import math
import os
import subprocess
import sys
from pathlib import Path

import attrs
import numpy as np
import pytest
import torch

from lbcore.attacks import AttackConfig, preset
from lbcore.engine import attack
from lbcore.errors import SpecError
from lbcore.metrics import psnr, region_mask_ssim
from lbcore.types import Faces

LB = [sys.executable, "-m", "lbcore"]


def _image(seed: int = 0) -> torch.Tensor:
    """A 96x128 image: a flat grey left half, a textured right half (0..255 floats)."""
    g = torch.Generator().manual_seed(seed)
    x = torch.full((1, 3, 96, 128), 120.0)
    x[..., 64:] = (torch.rand((1, 3, 96, 64), generator=g) * 160 + 40).round()
    return x


FACES = Faces.from_lists([[[16.0, 12.0, 112.0, 84.0]]])


@pytest.fixture
def ext(tiny_plugin):
    from lb_test_tiny_model import tiny  # installed by the tiny_plugin fixture

    return tiny()


def _run(ext, config: AttackConfig) -> tuple[torch.Tensor, torch.Tensor]:
    x = _image()
    adv = attack(x, FACES, ext, config).adversarial
    return x, adv


def test_soft_mask_changes_nothing_outside_and_fades_out(ext):
    from lbcore.perceptual import soft_face_mask

    cfg = AttackConfig(eps=12, steps=6, mask="face", mask_margin=0.0, feather=0.5, random_start=1)
    x, adv = _run(ext, cfg)
    d = (adv - x).abs()[0].mean(0)
    m = soft_face_mask((96, 128), FACES, 1, 0.5, 0.0)[0, 0]
    assert float(d.max()) > 3  # it did attack
    assert float(d[m == 0].max()) == 0  # nothing outside the ellipse
    # the outermost 4-pixel band of the perturbed region: under one grey level on average
    import cv2

    region = (m > 0).numpy().astype(np.uint8)
    inner = cv2.erode(region, np.ones((9, 9), np.uint8), borderType=cv2.BORDER_CONSTANT, borderValue=0)
    band = (region > 0) & (inner == 0)
    assert float(d.numpy()[band].mean()) < 1.0
    # the paper's crop-square attack has the hard edge this removes
    x, adv = _run(ext, AttackConfig(eps=12, steps=6, random_start=1))
    d = (adv - x).abs()[0].mean(0).numpy()
    assert d[12:16, 16:112].mean() > 1


def test_texture_masking_keeps_flat_areas_almost_untouched(ext):
    x, adv = _run(ext, AttackConfig(eps=12, steps=6, texture=1.0, random_start=1))
    d = (adv - x).abs()[0].mean(0)
    flat, textured = d[20:76, 24:56], d[20:76, 72:104]
    assert float(textured.mean()) > 4 * float(flat.mean()) and float(textured.mean()) > 1


@pytest.mark.parametrize("ssim_min,psnr_min", [(0.97, 0.0), (0.0, 40.0), (0.95, 38.0)])
def test_similarity_budget_holds_on_the_returned_images(ext, ssim_min, psnr_min):
    cfg = AttackConfig(eps=16, steps=6, ssim_min=ssim_min, psnr_min=psnr_min, optimizer="mifgsm-l2",
                       random_start=1)
    x, adv = _run(ext, cfg)
    a = x[0].permute(1, 2, 0).numpy().astype(np.uint8)
    b = adv[0].permute(1, 2, 0).numpy().astype(np.uint8)
    box = FACES.boxes[0].numpy()
    assert (b != a).any()
    assert region_mask_ssim(a, b, box, variant="mask-mean") >= ssim_min
    assert psnr(a, b, mask=box) >= psnr_min
    # ... where the same attack without the floor goes beyond it (the guard had work to do)
    free = attack(x, FACES, ext, attrs.evolve(cfg, ssim_min=0.0, psnr_min=0.0)).adversarial
    f = free[0].permute(1, 2, 0).numpy().astype(np.uint8)
    assert region_mask_ssim(a, f, box, variant="mask-mean") < ssim_min or psnr(a, f, mask=box) < psnr_min


def test_guard_ssim_equals_the_metric():
    from lbcore.perceptual import QualityGuard

    x = _image()
    adv = (x + torch.randn(x.shape, generator=torch.Generator().manual_seed(1)) * 6).round().clamp(0, 255)
    s, p = QualityGuard(x, FACES, 0.9, 30).measure(adv)
    a = x[0].permute(1, 2, 0).numpy().astype(np.uint8)
    b = adv[0].permute(1, 2, 0).numpy().astype(np.uint8)
    box = FACES.boxes[0].numpy()
    assert float(s[0]) == pytest.approx(region_mask_ssim(a, b, box, variant="mask-mean"), abs=1e-5)
    assert float(p[0]) == pytest.approx(psnr(a, b, mask=box), abs=1e-6)


def test_the_projection_searches_each_face_along_its_line_as_measuring_would():
    """The projection's per-face search (three filterings, then arithmetic for every trial
    factor) gives the SSIM and PSNR that measuring ``x + s * (adv - x)`` gives; and with two
    overlapping faces (which share pixels, so they are checked on the blended image) every face
    of the projected image meets both floors, at a factor no smaller than needed."""
    from lbcore.perceptual import QualityGuard

    x = torch.cat([_image(), _image(1)], dim=3).repeat(2, 1, 1, 1)  # two images
    faces = Faces.from_lists([[[16.0, 12.0, 112.0, 84.0], [90.0, 20.0, 170.0, 90.0]], [[80.0, 10.0, 150.0, 80.0]]])
    adv = (x + torch.randn(x.shape, generator=torch.Generator().manual_seed(2)) * 9).clamp(0, 255)
    guard = QualityGuard(x, faces, 0.93, 33.0)
    assert guard.shared == [True, True, False]
    along = guard._along(adv)
    for s in (0.05, 0.4, 1.0):
        scale = torch.full((3,), s, dtype=torch.float64)
        ssim, p = guard.measure(adv, scale)
        for f, terms in enumerate(along):
            mac, va, md, cov, vd = terms[:5]
            fast = float(guard._ssim_of(mac, mac + s * md, va, va + 2 * s * cov + s * s * vd, va + s * cov))
            assert fast == pytest.approx(float(ssim[f]), abs=1e-5)
            assert 10 * math.log10(255.0**2 / (float(terms[-1]) * s * s)) == pytest.approx(float(p[f]), abs=1e-6)
        assert guard._ok_along(along, scale).tolist() == guard._face_ok(adv, scale).tolist()
    out = guard.project(adv)
    ssim, p = guard.measure(out)
    assert bool((ssim >= 0.93).all()) and bool((p >= 33.0).all()), (ssim, p)
    # tight: each face's change is near the most its floor allows (within the 2^-7 bisection and
    # the 0.9 shrink of the joint check)
    loose = QualityGuard(x, faces, 0.0, 0.0)
    assert float(loose.measure(adv)[0].max()) < 0.93
    ssim_hi, _ = guard.measure(guard.x + 1.15 * (out - guard.x))
    assert bool((ssim_hi < 0.93).any())


def test_l2_update_rule_step_size():
    from lbcore.optimizers import MomentumL2

    rule = MomentumL2(alpha=0.5)
    x = torch.zeros(2, 3, 8, 8)
    g = torch.randn(2, 3, 8, 8)
    step = rule.step(x, g, rule.init_state(x), eps=8) - x
    rms = step.pow(2).flatten(1).mean(1).sqrt()
    assert torch.allclose(rms, torch.full((2,), 0.5), atol=1e-5)
    assert torch.equal(step.sign(), -g.sign())


@pytest.mark.parametrize("bad", ["lb:eps=-1", "lb:eps=nan", "lb:ssim_min=1.5", "lb:psnr_min=inf",
                                 "lb:texture=2", "lb:mask=square"])
def test_bad_budgets_refused(bad):
    with pytest.raises(SpecError):
        preset(bad)


# -- lb protect end to end -------------------------------------------------------------------

def _lb(*args: object) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*LB, *map(str, args)], capture_output=True, text=True, env=os.environ.copy())


@pytest.mark.parametrize("args,words", [
    (["--quality", "0"], "--quality 0 must be in 1..100"),
    (["--format", "gif"], "unknown output format 'gif'"),
    (["--eps", "-1"], "--eps -1.0 must be a finite number >= 0"),
    (["--eps", "nan"], "--eps nan must be a finite number >= 0"),
    (["--attack", "lb:ssim_min=-0.5"], "ssim_min=-0.5 must be a finite number >= 0"),
])
def test_bad_options_are_one_line_usage_errors(tmp_path, shared, args, words):
    res = _lb("protect", shared / "data" / "photos" / "obama-240p.jpg", "-o", tmp_path / "o", *args)
    assert res.returncode == 2, res.stderr
    assert words in res.stderr and len(res.stderr.strip().splitlines()) == 1, res.stderr
    assert not (tmp_path / "o").exists()


@pytest.fixture(scope="module")
def icc_jpeg(tmp_path_factory, shared) -> Path:
    """obama-240p.jpg re-saved at quality 90 with an sRGB ICC profile embedded."""
    from PIL import Image, ImageCms

    src = shared / "data" / "photos" / "obama-240p.jpg"
    icc = ImageCms.ImageCmsProfile(ImageCms.createProfile("sRGB")).tobytes()
    path = tmp_path_factory.mktemp("icc") / "portrait.jpg"
    with Image.open(src) as im:
        im.convert("RGB").save(path, "JPEG", quality=90, icc_profile=icc)
    return path


@pytest.fixture(scope="module")
def format_runs(icc_jpeg, tmp_path_factory):
    """The same photo protected to each output format (few steps, the default strength)."""
    out = {}
    for fmt in ("auto", "png", "webp", "jpeg"):
        folder = tmp_path_factory.mktemp(f"fmt-{fmt}")
        extra = ["--quality", "95"] if fmt == "jpeg" else []
        res = _lb("protect", icc_jpeg, "-o", folder, "--format", fmt, *extra, "--extractor", "fan-demo", "--steps", "12", "--min-face", "20",
                  "--no-compression-check", "--json", "--device", "cpu")
        assert res.returncode == 0, res.stderr
        out[fmt] = json.loads(res.stdout)
    return out


@pytest.mark.parametrize("fmt,suffix", [("auto", ".jpg"), ("png", ".png"), ("webp", ".webp"), ("jpeg", ".jpg")])
def test_each_output_format(format_runs, icc_jpeg, fmt, suffix):
    from PIL import Image

    from lbcore.io import read_image

    rec = format_runs[fmt]["files"][0]
    path = Path(rec["output"])
    assert rec["status"] == "protected" and path.suffix == suffix and path.is_file()
    clean = read_image(icc_jpeg).rgb
    adv = read_image(path).rgb  # decodable, same size
    assert adv.shape == clean.shape
    with Image.open(path) as im, Image.open(icc_jpeg) as ref:
        assert im.info.get("icc_profile") == ref.info.get("icc_profile")  # ICC profile kept
    if suffix == ".jpg":
        assert path.stat().st_size <= 1.5 * icc_jpeg.stat().st_size
    # the report measures the file as saved: its numbers are those of the decoded output
    face = rec["faces"][0]
    box = np.asarray(face["box"])
    assert face["ssim_box"] == pytest.approx(region_mask_ssim(clean, adv, box, variant="mask-mean"), abs=1e-3)
    settings = format_runs[fmt]["settings"]
    # the perceptual budget holds on every output, lossy ones included
    assert face["ssim_box"] >= settings["ssim_min"] - 1e-4 and face["psnr"] >= settings["psnr_min"] - 0.01
    # and it still protects after the save (few steps here: the tiny demonstration model moves)
    nme = next(iter(face["extractors"].values()))["nme"]
    assert nme > 0.03, nme
    assert math.isfinite(nme)


def test_lossy_webp_is_protected_within_the_budget_of_the_same_save(shared, tmp_path):
    """Lossy WebP costs more similarity by itself than the floor allows (lenna at quality 95: in-box
    SSIM 0.936): the floor is held against the unprotected photo saved the same way, so the file is
    protected (it was written unprotected before) and the protection adds no more than the budget
    to that save."""
    from PIL import Image

    from lbcore.io import read_image

    src = shared / "data" / "faces68" / "lenna.png"
    res = _lb("protect", src, "-o", tmp_path, "--format", "webp", "--quality", "95", "--extractor", "fan-demo",
              "--steps", "12", "--no-compression-check", "--json", "--device", "cpu")
    assert res.returncode == 0, res.stderr
    report = json.loads(res.stdout)
    rec = report["files"][0]
    face = rec["faces"][0]
    box = np.asarray(face["box"])
    clean = read_image(src).rgb
    buf = io.BytesIO()
    Image.fromarray(clean).save(buf, "WEBP", quality=95, method=4)
    with Image.open(io.BytesIO(buf.getvalue())) as im:
        clean_webp = np.asarray(im.convert("RGB"))
    ssim_min, psnr_min = report["settings"]["ssim_min"], report["settings"]["psnr_min"]
    # the premise: the codec alone misses the floor
    assert region_mask_ssim(clean, clean_webp, box, variant="mask-mean") < ssim_min or psnr(clean, clean_webp, mask=box) < psnr_min
    adv = read_image(Path(rec["output"])).rgb
    assert region_mask_ssim(clean_webp, adv, box, variant="mask-mean") >= ssim_min - 1e-3
    assert psnr(clean_webp, adv, mask=box) >= psnr_min - 0.05
    nme = next(iter(face["extractors"].values()))["nme"]
    assert nme > 0.03, nme  # protected after the save
    assert any("lossy WebP (quality 95)" in n for n in report["notes"])


def test_jpeg_quality_follows_the_input(format_runs):
    auto = format_runs["auto"]["files"][0]
    assert auto["format"] == "jpg" and auto["quality"] == 90  # the input's own quality
    assert format_runs["jpeg"]["files"][0]["quality"] == 95


def test_jpeg_settings_estimate(tmp_path):
    from PIL import Image

    from lbcore.io.images import jpeg_settings

    rgb = (np.random.default_rng(0).random((32, 32, 3)) * 255).astype(np.uint8)
    for q, sub in ((60, 2), (93, 0)):
        buf = io.BytesIO()
        Image.fromarray(rgb).save(buf, "JPEG", quality=q, subsampling=sub)
        (tmp_path / "a.jpg").write_bytes(buf.getvalue())
        js = jpeg_settings(tmp_path / "a.jpg")
        assert js is not None and js.quality == q and js.subsampling == {2: "420", 0: "444"}[sub]
    (tmp_path / "b.png").write_bytes(b"\x89PNG\r\n\x1a\n")
    assert jpeg_settings(tmp_path / "b.png") is None


def test_each_face_spends_its_own_budget(ext):
    """Two faces in one image, one on flat grey, one on texture: the floor holds for both, and
    the one that reaches it first does not hold the other back (per-face scaling)."""
    x = torch.cat([_image()[..., :64].repeat(1, 1, 1, 2), _image()[..., 64:].repeat(1, 1, 1, 2)], dim=3)
    faces = Faces.from_lists([[[20.0, 8.0, 100.0, 88.0], [156.0, 8.0, 236.0, 88.0]]])  # apart
    # (the sign update: every face gets the same step size; the L2 one lets faces compete)
    cfg = AttackConfig(eps=16, steps=6, ssim_min=0.97, psnr_min=40, random_start=1)
    adv = attack(x, faces, ext, cfg).adversarial
    a = x[0].permute(1, 2, 0).numpy().astype(np.uint8)
    b = adv[0].permute(1, 2, 0).numpy().astype(np.uint8)
    sp = [(region_mask_ssim(a, b, box, variant="mask-mean"), psnr(a, b, mask=box)) for box in faces.boxes.numpy()]
    assert all(s >= 0.97 and p >= 40 for s, p in sp), sp
    s, p = sp[1]  # the textured face: near its floor, its budget spent (not cut to the flat face's)
    assert s < 0.985 or p < 43, sp


def test_a_lossy_save_shrinks_only_the_faces_that_miss_the_floor(icc_jpeg):
    """After the JPEG re-encode, a face that still meets the floor keeps its whole change; a face
    that misses it is shrunk to (close to) the floor, not beyond; the floor holds on the file."""
    from types import SimpleNamespace

    from lbcore.apps.protection import _Run
    from lbcore.io import read_image

    loaded = read_image(icc_jpeg)
    x = torch.from_numpy(loaded.rgb).permute(2, 0, 1)[None].float()
    h, w = x.shape[2:]
    boxes = [[20.0, 20.0, 120.0, 120.0], [w - 140.0, 20.0, w - 40.0, 120.0]]
    faces = Faces.from_lists([boxes])
    gen = torch.Generator().manual_seed(0)
    adv = x.clone()
    for (x1, y1, x2, y2), amp in zip(boxes, (5.0, 12.0), strict=True):  # a light change, a heavy one
        noise = (torch.rand(3, 100, 100, generator=gen) * 2 - 1) * amp
        adv[0, :, int(y1):int(y2), int(x1):int(x2)] += noise
    adv = adv.round().clamp(0, 255)
    cfg = AttackConfig(psnr_min=36.0)
    plan = {"suffix": ".jpg", "quality": 90, "subsampling": "420", "icc_profile": loaded.icc_profile, "config": cfg}
    run = SimpleNamespace(torch=torch, notes=[])
    decoded, data = _Run.encode_within_budget(run, loaded, x, adv, faces, plan)  # type: ignore[arg-type]
    clean = loaded.rgb
    got = [psnr(clean, decoded, mask=np.asarray(b)) for b in boxes]
    # the whole change, saved as is, for comparison
    from lbcore.io.images import encode_image

    raw = encode_image(adv[0].permute(1, 2, 0).to(torch.uint8).numpy(), loaded, ".jpg", quality=90, subsampling="420",
                       icc_profile=loaded.icc_profile)
    from lbcore.apps.protection import _decode_rgb

    unshrunk = [psnr(clean, _decode_rgb(raw, loaded), mask=np.asarray(b)) for b in boxes]
    assert unshrunk[0] >= 36 > unshrunk[1], unshrunk  # the set-up: one face passes, one does not
    assert got[0] == pytest.approx(unshrunk[0], abs=0.05), (got, unshrunk)  # kept whole
    assert 36.0 <= got[1] < 36.6, got  # shrunk to the floor, not beyond
    assert run.notes == []
    assert data[:2] == b"\xff\xd8"
