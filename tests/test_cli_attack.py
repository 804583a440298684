"""``lb attack`` and ``lb list`` run as a user would, on real photos, with a plugin installed
through a real entry point (the tiny test extractor)."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys

import cv2
import numpy as np
import pytest


def _lb(*args):
    return subprocess.run([sys.executable, "-m", "lbcore", *map(str, args)], capture_output=True, text=True,
                          env={**os.environ, "OMP_NUM_THREADS": "1"})


def test_attack_writes_png_within_budget(tiny_plugin, shared, tmp_path):
    import cv2

    src = tmp_path / "in" / "obama-240p.jpg"
    src.parent.mkdir()
    shutil.copy(shared / "data" / "photos" / "obama-240p.jpg", src)
    digest = hashlib.sha256(src.read_bytes()).hexdigest()
    out = tmp_path / "out"
    res = _lb("attack", src, "-o", out, "--extractor", "tiny", "--extractor", "tiny:seed=3",
              "--attack", "lb", "--box", "180,25,260,105", "--json")
    assert res.returncode == 0, res.stderr
    row = json.loads(res.stdout.strip().splitlines()[-1])
    assert row["faces"] == 1 and row["loss"] < row["clean_loss"] and row["linf"] == 15.0
    assert row["clean_loss"] == 10.0  # two extractors x 5 heat-maps, identical at the start
    adv = cv2.imread(str(out / "obama-240p.png")).astype(int)
    clean = cv2.imread(str(src)).astype(int)
    diff = np.abs(adv - clean)
    assert diff.max() == 15
    assert diff[:20].max() == 0  # outside the (cropped) face region nothing changes
    assert hashlib.sha256(src.read_bytes()).hexdigest() == digest


def test_attack_detects_faces_and_refuses_overwrite(tiny_plugin, shared, tmp_path):
    src = tmp_path / "two_people.jpg"
    shutil.copy(shared / "data" / "photos" / "two_people.jpg", src)
    res = _lb("attack", src, "-o", tmp_path / "o", "--extractor", "tiny", "--steps", "2", "--json")
    assert res.returncode == 0, res.stderr
    assert json.loads(res.stdout.strip().splitlines()[-1])["faces"] == 2
    png = tmp_path / "in.png"
    shutil.copy(tmp_path / "o" / "two_people.png", png)
    res = _lb("attack", png, "-o", tmp_path, "--extractor", "tiny", "--steps", "1", "--box", "0,0,50,50")
    assert res.returncode == 1
    assert "refusing to write over the input" in res.stderr


def test_attack_bad_spec_is_one_line(tiny_plugin, tmp_path):
    res = _lb("attack", tmp_path / "x.png", "-o", tmp_path, "--extractor", "tiny:size=3")
    assert res.returncode == 2
    assert res.stderr.strip() == "lb: error: tiny:size=3: unknown parameter 'size' (valid: points, seed)"


def test_list_kinds(tiny_plugin):
    res = _lb("list", "extractors", "--json")
    names = {r["name"]: r for r in json.loads(res.stdout)}
    assert names["tiny"]["distribution"] == "lb-test-tiny"
    assert names["tiny"]["summary"] == "Tiny random heat-map network for tests."
    res = _lb("list", "attacks")
    assert [ln.split()[0] for ln in res.stdout.splitlines()] == ["base1", "base2", "lb", "lbtrans", "lbmix"]


def test_attack_amp_bf16_and_compile_on_the_cpu(tiny_plugin, shared, tmp_path):
    """--amp bf16 (autocast on the CPU) and --compile run the same attack: within the budget,
    lower Eq. 1 than the clean image; --amp fp16 on the CPU is a one-line usage error."""
    import cv2

    src = shared / "data" / "photos" / "obama-240p.jpg"
    for extra, name in ((["--amp", "bf16"], "bf16"), (["--compile"], "compiled")):
        res = _lb("attack", src, "-o", tmp_path / name, "--extractor", "tiny", "--steps", "3",
                  "--box", "180,25,260,105", "--json", *extra)
        assert res.returncode == 0, res.stderr
        row = json.loads(res.stdout.strip().splitlines()[-1])
        assert row["loss"] < row["clean_loss"] and row["linf"] <= 15.0
        diff = np.abs(cv2.imread(str(tmp_path / name / "obama-240p.png")).astype(int) - cv2.imread(str(src)).astype(int))
        assert 0 < diff.max() <= 15
    res = _lb("attack", src, "-o", tmp_path / "fp16", "--extractor", "tiny", "--amp", "fp16", "--box", "1,1,50,50")
    assert res.returncode == 2 and res.stderr.strip().startswith("lb: error:") and "fp16 is for CUDA" in res.stderr
    assert len(res.stderr.strip().splitlines()) == 1


def test_attack_batched_across_files_gives_the_same_files(tiny_plugin, shared, tmp_path):
    """``lb attack --batch-size N``: four photos (two sizes) attacked in pairs and all together
    share the network calls and write byte-identical files and the same loss figures."""
    src = tmp_path / "in"
    src.mkdir()
    for name in ("obama-240p.jpg", "two_people.jpg"):
        shutil.copy(shared / "data" / "photos" / name, src / name)
        shutil.copy(shared / "data" / "photos" / name, src / ("copy_" + name))
    files = sorted(src.iterdir())
    outs = {}
    for n in (2, 4):
        out = tmp_path / f"out{n}"
        res = _lb("attack", *files, "-o", out, "--extractor", "tiny", "--steps", "3", "--box", "100,20,200,120",
                  "--batch-size", n, "--json")
        assert res.returncode == 0, res.stderr
        rows = [json.loads(line) for line in res.stdout.strip().splitlines()]
        assert [r["image"] for r in rows] == [str(f) for f in files]
        outs[n] = ({p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(out.glob("*.png"))},
                   [(r["loss"], r["clean_loss"], r["linf"]) for r in rows])
    assert len(outs[2][0]) == 4
    assert outs[2] == outs[4]


def test_attack_batch_shares_one_network_call_across_files(tiny_plugin, shared, tmp_path, monkeypatch):
    """In process: with ``--batch-size 3`` three photos' crops go through the network together."""
    from click.testing import CliRunner

    from lbcore.apps import photo_batch
    from lbcore.cli import cli

    calls: list[int] = []
    forward = photo_batch.CrossFileBatcher._forward_part

    def counting(self, reqs):
        calls.append(len(reqs))
        return forward(self, reqs)

    monkeypatch.setattr(photo_batch.CrossFileBatcher, "_forward_part", counting)
    src = tmp_path / "in"
    src.mkdir()
    for k in range(3):
        shutil.copy(shared / "data" / "photos" / "obama-240p.jpg", src / f"p{k}.jpg")
    res = CliRunner().invoke(cli, ["attack", *map(str, sorted(src.iterdir())), "-o", str(tmp_path / "out"),
                                    "--extractor", "tiny", "--steps", "2", "--box", "180,25,260,105",
                                    "--batch-size", "3"])
    assert res.exit_code == 0, res.output
    assert max(calls) == 3


@pytest.mark.parametrize("batch", ["1", "3"])
def test_attack_an_image_the_attack_refuses_is_one_line_and_the_others_are_written(tiny_plugin, shared, tmp_path,
                                                                                    monkeypatch, batch):
    """An input error raised inside one image's attack (an extractor refusing its face, say) fails that
    image only, one line naming it; the other images of the batch are written; exit 1."""
    from click.testing import CliRunner

    import lbcore.engine
    from lbcore.cli import cli
    from lbcore.errors import InputError

    real = lbcore.engine.attack

    def attack(x, faces, *args, **kwargs):
        if float(x[0, 0, 0, 0]) == 0.0:  # (the image made to start with a black pixel)
            raise InputError("p1.png: the extractor refuses this face")
        return real(x, faces, *args, **kwargs)

    monkeypatch.setattr(lbcore.engine, "attack", attack)
    src = tmp_path / "in"
    src.mkdir()
    img = cv2.imread(str(shared / "data" / "photos" / "obama-240p.jpg"))
    img[0, 0] = np.clip(img[0, 0], 1, 255)
    for k in range(3):
        one = img.copy()
        if k == 1:
            one[0, 0] = 0
        cv2.imwrite(str(src / f"p{k}.png"), one)
    res = CliRunner().invoke(cli, ["attack", *map(str, sorted(src.iterdir())), "-o", str(tmp_path / "out"),
                                    "--extractor", "tiny", "--steps", "1", "--box", "180,25,260,105",
                                    "--batch-size", batch])
    assert res.exit_code == 1, res.output
    assert "p1.png: the extractor refuses this face" in res.output
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["p0.png", "p2.png"]
