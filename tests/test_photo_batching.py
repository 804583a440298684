"""Photos attacked together across files (``lb protect --photo-batch``) and per-step progress.

Tiny FAN networks (random weights) and fixed face boxes keep these fast; a photo's output (and
its report) must be byte-identical whatever it is grouped with: pairs (``--photo-batch 2``) vs
groups of four and six.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest

TINY = "fan:weights=none,width=16,landmarks=68,resolution=64"
BOX = ((20.0, 16.0, 84.0, 84.0),)


def _photos(folder: Path) -> Path:
    """Six photos of different sizes and formats (PNG and JPEG at different qualities: their
    attacks differ, JPEG outputs go through a differentiable JPEG at the file's own quality)."""
    from PIL import Image

    rng = np.random.default_rng(0)
    folder.mkdir(parents=True, exist_ok=True)
    sizes = [(96, 112), (104, 96), (120, 128), (100, 100), (128, 104), (112, 120)]
    for i, (h, w) in enumerate(sizes):
        yy, xx = np.mgrid[0:h, 0:w]
        base = np.stack([xx * 2, yy * 2, (xx + yy)], -1) % 256
        rgb = np.clip(base + rng.integers(-40, 40, (h, w, 3)), 0, 255).astype(np.uint8)
        im = Image.fromarray(rgb)
        if i % 2:
            im.save(folder / f"p{i}.jpg", quality=[80, 92, 97][i // 2])
        else:
            im.save(folder / f"p{i}.png")
    return folder


def _protect(src: Path, out: Path, **kw: Any) -> dict[str, Any]:
    import torch

    from lbcore.apps.protection import protect

    torch.manual_seed(0)  # the same random tiny network in every run

    opts: dict[str, Any] = dict(extractors=(TINY,), boxes=BOX, steps=3, check_compression=False)
    opts.update(kw)
    return protect([src], out, **opts)


def _outputs(out: Path) -> dict[str, str]:
    return {p.relative_to(out).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(out.rglob("*")) if p.is_file() and p.suffix in (".png", ".jpg", ".webp")}


def _records(report: dict[str, Any], out: Path) -> str:
    """The report's per-file records and summary, with the output folder's name taken out."""
    text = json.dumps({"files": report["files"], "summary": report["summary"]}, sort_keys=True)
    return text.replace(str(out), "OUT")


@pytest.fixture(scope="module")
def src(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return _photos(tmp_path_factory.mktemp("photos") / "in")


@pytest.fixture(scope="module")
def one_by_one(src: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, Any]]:
    out = tmp_path_factory.mktemp("one") / "out"
    return out, _protect(src, out, photo_batch=2)


def test_batched_outputs_and_report_identical(src, one_by_one, tmp_path, monkeypatch):
    from lbcore.apps import photo_batch

    groups: list[int] = []
    forward = photo_batch.CrossFileBatcher._forward

    def counting(self, reqs):
        groups.append(len(reqs))
        return forward(self, reqs)

    monkeypatch.setattr(photo_batch.CrossFileBatcher, "_forward", counting)
    out1, rep1 = one_by_one
    assert not groups  # (the fixture ran before the patch)
    out = tmp_path / "out"
    rep = _protect(src, out, photo_batch=4)
    assert max(groups) == 4  # four photos' faces went through the network in one call
    assert rep["summary"]["files"] == {"protected": 6}
    assert _outputs(out) == _outputs(out1)
    assert len(_outputs(out)) == 6
    assert _records(rep, out) == _records(rep1, out1)


def test_batched_compression_checks_identical(src, tmp_path):
    """The report's re-compression figures (JPEG 75/50) too; two photos keep it quick."""
    from PIL import Image

    few = tmp_path / "few"
    few.mkdir()
    for name in ("p0.png", "p1.jpg"):
        Image.open(src / name).save(few / name, quality=90)
    reps = {}
    for bs in (1, 2):
        out = tmp_path / f"out{bs}"
        reps[bs] = (_protect(few, out, photo_batch=bs + 1, check_compression=True), out)
    (r1, o1), (r2, o2) = reps[1], reps[2]
    assert _outputs(o1) == _outputs(o2)
    assert _records(r1, o1) == _records(r2, o2)
    assert "after_compression" in json.dumps(r2["files"])


def test_resume_after_crash_mid_batch(src, one_by_one, tmp_path, monkeypatch):
    """A crash while the third photo of a batch is written keeps the two finished ones; the
    rerun skips them, finishes the rest, and every output equals the uninterrupted run's."""
    from lbcore.apps import protection

    finish = protection._Run.finish_image
    calls = {"n": 0}

    def crashing(self, job, adv):
        calls["n"] += 1
        if calls["n"] == 3:
            raise KeyboardInterrupt  # (Ctrl-C; a kill leaves the same files: writes are atomic)
        return finish(self, job, adv)

    monkeypatch.setattr(protection._Run, "finish_image", crashing)
    out = tmp_path / "out"
    rep = _protect(src, out, photo_batch=6)
    assert rep.get("interrupted") is True
    statuses = [r["status"] for r in rep["files"]]
    assert statuses[:2] == ["protected", "protected"] and "interrupted" in statuses[2:]
    assert len(_outputs(out)) == 2
    monkeypatch.setattr(protection._Run, "finish_image", finish)
    rep2 = _protect(src, out, photo_batch=6)
    assert [r["status"] for r in rep2["files"]] == ["done earlier"] * 2 + ["protected"] * 4
    out1, _ = one_by_one
    assert _outputs(out) == _outputs(out1)


def test_on_step_called_once_per_step():
    import torch

    from lbcore.attacks import AttackConfig
    from lbcore.engine import attack
    from lbcore.plugins import get_plugin_manager
    from lbcore.types import Faces

    ext = get_plugin_manager().build("extractors", TINY)
    torch.manual_seed(0)
    x = torch.rand(1, 3, 80, 80) * 255
    calls: list[tuple[int, int]] = []
    attack(x, Faces.from_lists([[[10.0, 10.0, 70.0, 70.0]]]), ext, AttackConfig(steps=5),
           on_step=lambda k, n: calls.append((k, n)))
    assert calls == [(k, 5) for k in range(1, 6)]


def test_terminal_shows_per_photo_steps(src, tmp_path, monkeypatch):
    """On a terminal, `lb protect` shows each photo (or batch) with its faces and attack steps."""
    from click.testing import CliRunner

    from lbcore.cli import cli
    from lbcore.commands import protect_cmd

    class _Tty:
        def __getattr__(self, name: str) -> Any:
            import sys

            return getattr(sys.stderr, name)

        def isatty(self) -> bool:
            return True

    class _Sys:
        stderr = _Tty()

        def __getattr__(self, name: str) -> Any:
            import sys

            return getattr(sys, name)

    monkeypatch.setattr(protect_cmd, "sys", _Sys())
    args = ["protect", str(src / "p0.png"), str(src / "p2.png"), "-o", str(tmp_path / "o"),
            "--extractor", TINY, "--box", "20,16,84,84", "--steps", "3", "--no-compression-check"]
    res = CliRunner().invoke(cli, [*args, "--photo-batch", "1"])
    assert res.exit_code == 0, res.output
    text = res.output + (res.stderr if hasattr(res, "stderr") else "")
    assert "p0.png: 1 face(s)" in text and "3/3" in text and "step" in text
    res = CliRunner().invoke(cli, [*args, "--photo-batch", "2", "--force"])
    assert res.exit_code == 0, res.output
    text = res.output + (res.stderr if hasattr(res, "stderr") else "")
    assert "2 photos, 2 face(s)" in text and "6/6" in text


def test_shared_calls_capped_and_identical():
    """Shared network calls hold at most 15 crops and never split one photo's faces (a photo with
    more faces is a call of its own); every photo's result equals its batch-of-one result."""
    import torch

    from lbcore.apps.photo_batch import CrossFileBatcher
    from lbcore.attacks import AttackConfig
    from lbcore.engine import attack
    from lbcore.plugins import get_plugin_manager
    from lbcore.types import Faces

    torch.manual_seed(0)
    ext = get_plugin_manager().build("extractors", TINY)
    photos = []
    for i in range(6):
        n = 16 if i == 2 else 1
        x = (torch.rand(1, 3, 72 + 4 * i, 80) * 255).round()
        photos.append((x, Faces.from_lists([[[4.0 + k / 2, 6.0, 60.0 + k / 2, 66.0] for k in range(n)]])))
    cfg = AttackConfig(steps=2)

    def jobs() -> list[Any]:
        return [lambda x=x, f=f: attack(x, f, ext, cfg).adversarial for x, f in photos]

    sizes: list[int] = []
    part = CrossFileBatcher._forward_part

    def recording(self, reqs):
        sizes.append(sum(int(r.x.shape[0]) for r in reqs))
        return part(self, reqs)

    CrossFileBatcher._forward_part = recording  # type: ignore[method-assign]
    try:
        together = CrossFileBatcher([ext], invariant=True).run(jobs())
        assert sorted(set(sizes)) == [2, 3, 16]  # photos 0+1, then 2 (16 faces) alone, then 3+4+5
        alone = [CrossFileBatcher([ext], invariant=True).run([j])[0] for j in jobs()]
    finally:
        CrossFileBatcher._forward_part = part  # type: ignore[method-assign]
    assert all(torch.equal(a, b) for a, b in zip(together, alone, strict=True))
