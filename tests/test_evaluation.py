"""Tests for ``lb evaluate`` (lbcore.apps.evaluation, lbcore.apps.report, lbcore.commands.evaluate_cmd)."""

from __future__ import annotations

import json
import math
import re
import sys
from pathlib import Path

import numpy as np
import pytest

from lbcore.errors import SpecError


@pytest.fixture(autouse=True)
def _one_thread():
    """One torch thread: on a small shared CPU, thread contention makes the small networks of
    these tests (extractor crops, the face-swap autoencoder) ten times slower."""
    torch = pytest.importorskip("torch")
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


# --------------------------------------------------------------------------- parsing


def test_extractor_specs_split_on_semicolons_and_labels():
    from lbcore.apps.evaluation import parse_extractor_specs

    got = parse_extractor_specs(["fan=fan:width=64,weights=x.pth;hrnet", "fan:landmarks=68", "hrnet:weights=none"])
    assert got == {"fan": "fan:width=64,weights=x.pth", "hrnet": "hrnet", "fan-2": "fan:landmarks=68",
                   "hrnet-2": "hrnet:weights=none"}
    # a spec whose first '=' sits after a ':' has no label
    assert parse_extractor_specs(["tiny:points=68"]) == {"tiny": "tiny:points=68"}
    with pytest.raises(SpecError, match="twice"):
        parse_extractor_specs(["a=tiny;a=tiny:seed=1"])
    with pytest.raises(SpecError, match="at least one"):
        parse_extractor_specs([" ; "])


def test_ablation_ranges_include_the_stop():
    from lbcore.apps.evaluation import parse_ablation

    assert parse_ablation("alpha=0.5:1.5:0.25") == ("alpha", [0.5, 0.75, 1.0, 1.25, 1.5])
    assert parse_ablation("steps=14:28:2") == ("steps", [float(v) for v in range(14, 29, 2)])
    assert parse_ablation("eps=4,8") == ("eps", [4.0, 8.0])
    with pytest.raises(SpecError, match="PARAM"):
        parse_ablation("momentum=1:2:1")
    with pytest.raises(SpecError, match="numbers"):
        parse_ablation("alpha=a:b:c")


def test_attack_config_applies_ablation_values():
    from lbcore.apps.evaluation import EvaluateOptions, attack_config

    o = EvaluateOptions(extractors=("tiny",), eps=10.0, seed=3)
    cfg = attack_config("lb", o, ("alpha", 0.75))
    assert cfg.optimizer == "mifgsm:alpha=0.75,decay=0.5" and cfg.eps == 10.0 and cfg.seed == 3
    assert attack_config("lb", o, ("steps", 14.0)).steps == 14
    assert attack_config("base2", o).optimizer == "ifgsm:alpha=1" and attack_config("base2", o).steps == 20


def test_degradation_list_keeps_spec_parameters_together():
    from lbcore.commands.evaluate_cmd import _split_degradations

    assert _split_degradations(("none,jpeg:quality=75,jpeg:quality=50,c,c2",)) == (
        "none", "jpeg:quality=75", "jpeg:quality=50", "c", "c2")
    assert _split_degradations(("jpeg:quality=75,subsampling=444,c2:crf=30", "h264")) == (
        "jpeg:quality=75,subsampling=444", "c2:crf=30", "h264")


def test_units_cover_every_source_once():
    from lbcore.apps.evaluation import EvaluateOptions, Unit, plan_units

    o = EvaluateOptions(extractors=("a=tiny;b=tiny",), attacks=("none", "lb", "base1"), ablate=("steps=2:4:2",))
    units = plan_units(o, ["a", "b"])
    assert units[0] == Unit("none", None)
    assert [u for u in units if u.ablate] == [Unit("lb", "a", ("steps", 2.0)), Unit("lb", "a", ("steps", 4.0)),
                                              Unit("lb", "b", ("steps", 2.0)), Unit("lb", "b", ("steps", 4.0))]
    assert len(units) == 1 + 2 * 2 + 4
    with pytest.raises(SpecError, match="unknown attack"):
        plan_units(EvaluateOptions(attacks=("pgd",)), ["a"])


# --------------------------------------------------------------------------- exact crop SSIMs


def _takeo(shared: Path):
    from lbcore.io import read_image
    from lbcore.io.annotations import load_annotations

    rec = load_annotations(shared / "data" / "faces68" / "takeo.pts")[0]
    return read_image(rec.image_path).rgb, rec


@pytest.mark.parametrize("variant", ["masked-image", "mask-mean"])
def test_region_mask_ssim_equals_the_full_image_metric(variant):
    from lbcore.metrics import mask_ssim, region_mask_ssim

    rng = np.random.default_rng(0)
    img = rng.integers(0, 256, (120, 160, 3)).astype(np.uint8)
    adv = np.clip(img.astype(int) + rng.integers(-15, 16, img.shape), 0, 255).astype(np.uint8)
    for box in ([40.0, 30.0, 90.0, 85.0], [0.0, 0.0, 30.0, 40.0], [130.5, 90.2, 160.0, 120.0]):
        want = mask_ssim(img, adv, np.array(box), variant=variant)
        got = region_mask_ssim(img, adv, np.array(box), variant)
        assert got == pytest.approx(want, abs=1e-9)
        assert got < 1 - 1e-4  # the perturbation is seen


def test_fast_ssim_w_equals_synthesis_ssim_w(shared):
    from lbcore.apps.evaluation import fast_ssim_w
    from lbcore.apps.synthesis import ssim_w, train_autoencoder

    img, rec = _takeo(shared)
    # a larger frame around the face so the crop is a real crop
    big = np.pad(img, ((60, 40), (80, 30), (0, 0)), mode="reflect")
    lm = rec.landmarks + [80, 60]
    box = rec.box + [80, 60, 80, 60]
    rng = np.random.default_rng(1)
    adv = np.clip(big.astype(int) + rng.integers(-15, 16, big.shape), 0, 255).astype(np.uint8)
    lm_adv = lm + rng.normal(0, 6, lm.shape)
    swapper = train_autoencoder([(big, lm)], [(big, lm)], steps=2, size=32, width=8, bottleneck=32)
    full = ssim_w(big, adv, lm, lm_adv, swapper, box).as_dict()
    fast = fast_ssim_w(big, adv, lm, lm_adv, swapper, box)
    # the same up to OpenCV's fixed-point (1/32 px) warp coordinates, which round differently
    # when the frame moves by an integer offset
    for k in ("ssim_w", "ssim_w_clean_landmarks", "ssim_identity", "ssim_alignment", "alignment_shift_iod",
              "ssim_w_masked_image", "ssim_w_clean_pixels"):
        assert fast[k] == pytest.approx(full[k], abs=5e-4), k
    assert fast["failure"] is None and full["failure"] is None
    assert full["ssim_w"] < 0.99


def test_fast_ssim_w_scores_a_swap_that_cannot_be_made_worst(shared):
    from lbcore.apps.evaluation import fast_ssim_w
    from lbcore.apps.synthesis import WORST_SSIM, train_autoencoder

    img, rec = _takeo(shared)
    lm, box = rec.landmarks, rec.box
    swapper = train_autoencoder([(img, lm)], [(img, lm)], steps=1, size=32, width=8, bottleneck=32)
    far = lm + [10.0 * img.shape[1], 0.0]  # landmarks 10 frame widths to the right
    collapsed = np.repeat(lm[:1], 68, axis=0)
    for bad in (far, collapsed):
        got = fast_ssim_w(img, img, lm, bad, swapper, box)
        assert got["ssim_w"] == WORST_SSIM and got["failure"], got
        assert got["ssim_w_masked_image"] > 0.5  # what the paper's figure would have said


# --------------------------------------------------------------------------- data folders


def test_a_folder_uses_the_annotation_files_inside_it(shared, tmp_path):
    from lbcore.apps.evaluation import EvaluateOptions, load_dataset
    from lbcore.io.annotations import load_annotations

    folder = shared / "data" / "dlib_faces"
    xmls = sorted(folder.glob("*.xml"))
    want = sum(len(load_annotations(x, "dlib-xml")) for x in xmls)
    images, faces, notes = load_dataset([folder], EvaluateOptions())  # no detector: every face annotated
    assert len(faces) == want and all(f.landmarks is not None and f.landmarks.shape == (68, 2) for f in faces)
    assert len(images) == len(list(folder.glob("*.jpg")))
    (note,) = [n for n in notes if "ground truth from" in n]
    assert all(x.name in note for x in xmls) and "0 image(s) without annotation" in note

    # a .pts beside an image wins over a list; a .txt that is not a WFLW list is ignored
    mixed = tmp_path / "mixed"
    mixed.mkdir()
    for img in sorted(folder.glob("*.jpg"))[:2]:
        (mixed / img.name).symlink_to(img)
    recs = [r for x in xmls for r in load_annotations(x, "dlib-xml") if r.image_path.parent == folder]
    from lbcore.io.annotations import write_dlib_xml, write_pts

    first = next(r for r in recs if r.image_path.name == sorted(folder.glob("*.jpg"))[0].name)
    write_pts(mixed / first.image_path.with_suffix(".pts").name, first.landmarks + 1.0)
    kept = [r.__class__(mixed / r.image_path.name, r.box, r.landmarks, r.scheme, r.attributes, r.source)
            for r in recs if (mixed / r.image_path.name).exists()]
    write_dlib_xml(mixed / "faces.xml", kept)
    (mixed / "README.txt").write_text("not an annotation list\n")
    images, faces, notes = load_dataset([mixed], EvaluateOptions())
    assert len(images) == 2
    pts_face = [f for f in faces if images[f.image].name.endswith(first.image_path.name)]
    assert len(pts_face) == 1 and np.allclose(pts_face[0].landmarks, first.landmarks + 1.0)
    assert any("faces.xml ignored" in n for n in notes)


# --------------------------------------------------------------------------- the command


def _section_tables(md: str, heading: str) -> list[list[list[str]]]:
    """The Markdown tables under the ``## heading`` section, as lists of cell rows (no header)."""
    m = re.search(r"^## " + re.escape(heading) + r".*?$(.*?)(?=^## |\Z)", md, re.M | re.S)
    assert m, f"section {heading!r} missing"
    tables, cur = [], []
    for line in m.group(1).splitlines():
        if line.startswith("|"):
            cur.append([c.strip() for c in line.strip().strip("|").split("|")])
        elif cur:
            tables.append(cur[2:])
            cur = []
    if cur:
        tables.append(cur[2:])
    return tables


@pytest.fixture
def models(request, tiny_plugin, fresh_pm):
    """``(extractor specs, ground truth mode, label attacked and checked)``: the trained FAN
    fixture and a tiny network when the FAN can be trained, else two tiny random networks
    with the first one's clean predictions as ground truth (the paper's protocol)."""
    try:
        _, _, ckpt = request.getfixturevalue("trained_fan")
    except pytest.skip.Exception:
        return "a=tiny:points=68;b=tiny:points=68,seed=1", "reference", "a"
    return f"fan=fan:modules=1,landmarks=68,width=32,resolution=128,weights={ckpt};tiny=tiny:points=68", "auto", "fan"


def test_evaluate_command_builds_the_papers_tables(shared, models, tmp_path, monkeypatch):
    from click.testing import CliRunner

    from lbcore.cli import cli

    specs, gt_mode, main = models
    monkeypatch.setenv("COLUMNS", "120")
    out = tmp_path / "eval"
    args = ["evaluate", str(shared / "data" / "dlib_faces" / "testing_with_face_landmarks.xml"), "-o", str(out),
            "--extractors", specs, "--attacks", "none,base1,lb,lbtrans", "--degradations", "none,jpeg:quality=50",
            "--ablate", "steps=2:4:2", "--ground-truth", gt_mode, "--limit", "3", "--synth-steps", "4",
            "--device", "cpu", "-q"]
    res = CliRunner().invoke(cli, args, catch_exceptions=False)
    assert res.exit_code == 0, res.output
    results = json.loads((out / "results.json").read_text())
    labels = list(results["config"]["extractors"])
    n = len(labels)
    assert n == 2 and results["data"]["faces"] == 3
    rows = results["rows"]
    # (1 none + 3 attacks x 2 sources) x 2 targets x 2 degradations + 2 sources x 2 values x 2 targets
    assert len(rows) == (1 + 3 * n) * n * 2 + n * 2 * n
    for r in rows:
        assert {"source", "attack", "target", "degradation", "nme", "ssim_i", "ssim_w", "psnr", "n_faces"} <= set(r)
        assert r["n_faces"] == 3 and r["white_box"] == (r["source"] == r["target"])
        assert r["nme"] is not None and 0 <= r["ssim_i"] <= 1
    assert results["seed"] == 0 and results["versions"]["lbcore"] and results["device"]["device"] == "cpu"
    assert any(p["name"] == "lb-test-tiny" for p in results["versions"]["plugins"])
    assert results["config"]["attacks"]["lb"]["steps"] == 20  # the real attack, not shortened

    def row(source, attack, target, deg="none"):
        return next(r for r in rows if r["source"] == source and r["attack"] == attack and r["target"] == target
                    and r["degradation"] == deg and not r["ablate"])

    none, lb = row(None, "none", main), row(main, "lb", main)
    assert lb["nme"] > none["nme"] + 0.1 and lb["nme"] > 3 * none["nme"], (none["nme"], lb["nme"])
    assert none["psnr"] == "inf" and none["ssim_i"] == pytest.approx(1.0)
    assert 20 < lb["psnr"] < 60 and 0.5 < lb["ssim_i"] < 1.0
    assert lb["failure_rate_0.10"] >= none["failure_rate_0.10"]
    # SSIM_W and both controls are measured (68-point extractors, auto face-swap model)
    assert none["ssim_w"] == pytest.approx(1.0) and none["ssim_identity"] == pytest.approx(1.0)
    for key in ("ssim_w", "ssim_w_clean_landmarks", "ssim_identity", "ssim_alignment"):
        assert lb[key] is not None and 0 < lb[key] <= 1.0
    assert len(lb["per_face"]["nme"]) == 3
    # per face: SSIM_W with both of its controls (pixels only, landmarks only), whose means are the row's
    for key in ("ssim_w", "ssim_w_clean_landmarks", "ssim_w_clean_pixels", "ssim_alignment"):
        faces = lb["per_face"][key]
        assert len(faces) == 3 and lb[key] == pytest.approx(float(np.mean(faces)), abs=1e-5), key
    assert none["ssim_w_clean_pixels"] == pytest.approx(1.0)

    md = (out / "report.md").read_text()
    t1 = _section_tables(md, "Table I ")
    assert len(t1[0]) == 1 + n and all(len(r) == 1 + n for r in t1[0])  # None + each source
    assert len(t1[1]) == n and all(len(r) == 2 + n for r in t1[1])  # SSIM_I + SSIM_W per target
    t2 = _section_tables(md, "Table II ")
    assert [r[0] for r in t2[0]] == ["None", "Base1", "LB"] and [r[0] for r in t2[1]] == ["Base1", "LB"]
    t3 = _section_tables(md, "Table III ")
    assert len(t3[0]) == 1 + n and [r[1] for r in t3[0][1:]] == ["LBtrans"] * n
    t4 = _section_tables(md, "Table IV ")
    assert [(r[0], r[1]) for r in t4[0]] == [(d, a) for d in ("None", "IC Q50") for a in ("None", "Base1", "LB")]
    assert float(t4[0][5][labels.index(main) + 2]) == pytest.approx(row(main, "lb", main, "jpeg:quality=50")["nme"], abs=0.006)
    abl = _section_tables(md, "Ablation of steps")
    assert [r[0] for r in abl[0]] == ["2", "4"]
    assert "SSIM_W controls" in md and "mask-SSIM" in md
    for f in ("fig3.png", "fig4.png", "fig3.csv", "fig4.csv"):
        assert (out / f).stat().st_size > 100, f
    assert len(list((out / "partial").glob("*.json"))) == 1 + 3 * n + 2 * n


def test_interrupted_run_resumes_and_is_deterministic(shared, tiny_plugin, fresh_pm, tmp_path, monkeypatch):
    from lbcore.apps import evaluation
    from lbcore.apps.evaluation import EvaluateOptions, evaluate

    data = [shared / "data" / "faces68" / "takeo.pts"]
    opts = EvaluateOptions(extractors=("tiny:points=68",), attacks=("none", "lb", "base2"), degradations=("none",),
                           steps=3, synth="none", device="cpu")
    calls: list[str] = []
    real = evaluation._Evaluation.run_unit

    def counting(self, unit, tick):
        calls.append(unit.attack)
        if unit.attack == "base2" and len(calls) == 3:
            raise KeyboardInterrupt  # interrupted in the last unit
        return real(self, unit, tick)

    monkeypatch.setattr(evaluation._Evaluation, "run_unit", counting)
    with pytest.raises(KeyboardInterrupt):
        evaluate(data, tmp_path, opts)
    assert len(list((tmp_path / "partial").glob("*.json"))) == 2 and not (tmp_path / "results.json").exists()
    first = evaluate(data, tmp_path, opts)
    assert calls == ["none", "lb", "base2", "base2"]  # only the unfinished unit ran again
    assert any("2 of 3 unit(s) resumed" in n for n in first["notes"])
    again = evaluate(data, tmp_path, opts, force=True)
    assert calls[4:] == ["none", "lb", "base2"]
    strip = [{k: v for k, v in r.items()} for r in first["rows"]]
    assert strip == again["rows"]  # the same numbers under the same seed
    # other settings do not reuse the finished units
    evaluate(data, tmp_path, opts, steps=4)
    assert len(calls) == 10
    assert json.loads((tmp_path / "results.json").read_text())["config"]["options"]["steps"] == 4
    # nor does another autocast (bf16 rounds the extractor's forward and backward)
    bf16 = evaluate(data, tmp_path, opts, steps=4, amp="bf16")
    assert len(calls) == 13 and not any("resumed" in n for n in bf16["notes"])
    assert json.loads((tmp_path / "results.json").read_text())["config"]["options"]["amp"] == "bf16"


def test_video_key_frames_with_a_detector(shared, tiny_plugin, fresh_pm, tmp_path):
    from lbcore.apps.evaluation import EvaluateOptions, evaluate

    video = shared / "data" / "video" / "short_hamilton_clip.mp4"
    res = evaluate([video], tmp_path, EvaluateOptions(
        extractors=("tiny:points=68",), attacks=("none", "lb"), degradations=("none", "c"), steps=2,
        synth="none", key_frames=True, limit=2, device="cpu"))
    names = {f["image"] for f in res["faces"]}
    assert res["data"]["faces"] == 2 and all("#pts=" in n for n in names)
    assert res["data"]["ground_truth"]["tiny"] == {"annotation": 0, "reference": 2}
    lb = [r for r in res["rows"] if r["attack"] == "lb"]
    assert {r["degradation"] for r in lb} == {"none", "c"} and all(r["ssim_w"] is None for r in lb)
    assert "n/a" in (tmp_path / "report.md").read_text()


def test_every_kth_frame(shared, tmp_path):
    from lbcore.apps.evaluation import EvaluateOptions, _video_images

    video = shared / "data" / "video" / "short_hamilton_clip.mp4"
    frames = [img.name for _, img in zip(range(3), _video_images(video, EvaluateOptions(every=100)), strict=False)]
    assert [f.rsplit("=", 1)[1] for f in frames] == ["0", "100", "200"]


def test_report_without_matplotlib_writes_csv(tmp_path, monkeypatch):
    from lbcore.apps.report import write_report

    rows = []
    for a, s in (("none", None), ("lb", "x")):
        for d in ("none", "c2"):
            rows.append({"source": s, "attack": a, "target": "x", "degradation": d, "ablate": None, "nme": 0.5,
                         "ssim_i": 0.9, "ssim_w": None, "psnr": 30.0, "failure_rate_0.08": 1.0,
                         "failure_rate_0.10": 0.0, "ssim_i_mask_mean": 0.8})
    results = {"config": {"extractors": {"x": "tiny"}, "options": {"attacks": ["none", "lb"], "ground_truth": "auto"},
                          "degradations": ["none", "c2"], "reference": {"label": "x", "spec": "tiny"},
                          "synth": {"mode": "none"}}, "rows": rows, "notes": []}
    monkeypatch.setitem(sys.modules, "matplotlib", None)
    written = {p.name for p in write_report(results, tmp_path)}
    assert written == {"report.md", "fig3.csv"}
    md = (tmp_path / "report.md").read_text()
    assert "matplotlib is not installed" in md and "| VC C2 | LB | 0.50 |" in md
    lines = (tmp_path / "fig3.csv").read_text().splitlines()
    assert lines[0] == "extractor,attack,degradation,nme,ssim_i,ssim_w" and len(lines) == 5
    assert not math.isnan(float(lines[1].split(",")[3]))


def test_bad_options_are_one_line_errors(shared, tiny_plugin, fresh_pm, tmp_path):
    from click.testing import CliRunner

    from lbcore.cli import cli

    data = str(shared / "data" / "faces68" / "takeo.pts")
    res = CliRunner().invoke(cli, ["evaluate", data, "-o", str(tmp_path), "--extractors", "tiny", "--attacks", "pgd"])
    assert res.exit_code == 2 and "unknown attack 'pgd'" in res.output
    res = CliRunner().invoke(cli, ["evaluate", data, "-o", str(tmp_path), "--extractors", "nope"])
    assert res.exit_code == 2 and "unknown extractor 'nope'" in res.output
    res = CliRunner().invoke(cli, ["evaluate", str(tmp_path / "missing"), "-o", str(tmp_path), "--extractors", "tiny"])
    assert res.exit_code == 1 and "no such file" in res.output
