"""Reliability of ``lb protect`` as a user runs it: a whole corpus of bad inputs in one folder
and one batch, resource limits, bounded memory on a long video, and hostile plugins.

Every bad input is generated here (no committed binaries). The run must: exit with 1 (some
inputs failed, see lbcore.errors), print exactly one line per bad file naming it and saying why,
protect the good files, leave every input byte-identical and leave no temporary file behind.
"""

from __future__ import annotations

import hashlib
import json
import os
import struct
import subprocess
import sys
import zlib
from collections.abc import Callable
from fractions import Fraction
from pathlib import Path

import numpy as np
import pytest

cv2 = pytest.importorskip("cv2")
av = pytest.importorskip("av")

LB = [sys.executable, "-m", "lbcore"]
TINY = ["--extractor", "tiny", "--box", "8,8,88,88", "--steps", "2", "--no-compression-check", "--format", "png"]
"""The cheap protect settings: the tiny test extractor (a real plugin), a fixed face box, lossless PNG
outputs (the corpus checks name collisions between inputs that would map to one output name)."""


def lb(*args: object, site: Path | None = None, timeout: float = 300) -> subprocess.CompletedProcess[str]:
    """Run the real CLI (with the plugin folder ``site`` on its path); output is decoded
    leniently: a test must see odd bytes, not crash on them."""
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    if site is not None:
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(site), env.get("PYTHONPATH")]))
    return subprocess.run([*LB, *map(str, args)], capture_output=True, text=True, errors="backslashreplace",
                          env=env, timeout=timeout)


# ------------------------------------------------------------------------------ generators


def _chunk(kind: bytes, payload: bytes) -> bytes:
    return struct.pack(">I", len(payload)) + kind + payload + struct.pack(">I", zlib.crc32(kind + payload))


def pattern(h: int, w: int, seed: int = 0) -> np.ndarray:
    """(h, w, 3) uint8 RGB: gradients plus noise (the tiny extractor's heat-maps depend on it)."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:h, 0:w]
    base = np.stack([(xx * 3) % 256, (yy * 3) % 256, ((xx + yy) * 2) % 256], -1)
    return np.clip(base + rng.integers(-20, 20, (h, w, 3)), 0, 255).astype(np.uint8)


def encode(bgr: np.ndarray, ext: str) -> bytes:
    ok, buf = cv2.imencode(ext, bgr)
    assert ok
    return buf.tobytes()


def write_video(path: Path, n: int, size: tuple[int, int], codec: str = "libx264",
                times_ms: list[int] | None = None, faststart: bool = False, seed: int = 0) -> None:
    """A small video of ``pattern`` frames (times in ms make it variable-frame-rate)."""
    w, h = size
    with av.open(str(path), "w", options={"movflags": "+faststart"} if faststart else {}) as out:
        vs = out.add_stream(codec, rate=Fraction(25))
        vs.width, vs.height = w, h
        vs.pix_fmt = "yuv420p" if codec == "libx264" else "bgr0"
        if codec == "libx264":
            vs.options = {"preset": "ultrafast", "crf": "20"}
        vs.codec_context.time_base = Fraction(1, 1000) if times_ms else Fraction(1, 25)
        for i in range(n):
            f = av.VideoFrame.from_ndarray(pattern(h, w, seed + i), format="rgb24")
            f.pts = times_ms[i] if times_ms else i
            for p in vs.encode(f):
                out.mux(p)
        for p in vs.encode(None):
            out.mux(p)


NON_UTF8 = os.fsdecode(b"caf\xe9-\xff.png")
PLAIN = {"photo.png", "photo2.jpg", "twin.jpg", "sub/inner.png"}
"""The ordinary good files of the corpus (everything else in it is bad or odd)."""


def build_corpus(root: Path, write_audio_only: Callable[[Path], Path]) -> tuple[dict[str, str], dict[str, str]]:
    """Write the bad-input corpus (plus good files and handled oddities) into ``root``.

    Returns:
        ``(bad, good)``: bad file name (relative) -> words its error line must contain; good file
        name -> the status it must end with (``protected`` or ``unchanged``).
    """
    root.mkdir(parents=True)
    bad: dict[str, str] = {}
    good: dict[str, str] = {}
    img = pattern(96, 96)
    png = encode(img[:, :, ::-1], ".png")
    jpg = encode(img[:, :, ::-1], ".jpg")
    (root / "photo.png").write_bytes(png)
    good["photo.png"] = "protected"
    (root / "photo2.jpg").write_bytes(jpg)
    good["photo2.jpg"] = "protected"
    # the still-image zoo
    (root / "empty.jpg").write_bytes(b"")
    bad["empty.jpg"] = "empty file"
    (root / "cut.jpg").write_bytes(jpg[: len(jpg) // 2])
    bad["cut.jpg"] = "cannot decode JPEG"
    (root / "cutpng.png").write_bytes(png[: len(png) // 2])
    bad["cutpng.png"] = "cannot decode PNG"
    ihdr = struct.pack(">IIBBBBB", 100_000, 100_000, 8, 2, 0, 0, 0)
    (root / "bomb.png").write_bytes(b"\x89PNG\r\n\x1a\n" + _chunk(b"IHDR", ihdr)
                                    + _chunk(b"IDAT", zlib.compress(b"\0" * 4096)) + _chunk(b"IEND", b""))
    bad["bomb.png"] = "100000x100000"
    from PIL import Image

    Image.fromarray(img).convert("CMYK").save(root / "cmyk.jpg", quality=95)
    good["cmyk.jpg"] = "protected"
    (root / "deep16.png").write_bytes(encode((img.astype(np.uint16) * 257)[:, :, ::-1], ".png"))
    good["deep16.png"] = "protected"
    (root / "rgba.png").write_bytes(encode(np.dstack([img[:, :, ::-1], np.full((96, 96), 200, np.uint8)]), ".png"))
    good["rgba.png"] = "protected"
    (root / "one.png").write_bytes(encode(np.full((1, 1, 3), 7, np.uint8), ".png"))
    good["one.png"] = "unchanged"  # the box misses a 1x1 image: nothing to protect
    (root / "notes.png").write_bytes(b"my notes, not a picture\n" * 20)
    bad["notes.png"] = "not an image"
    (root / "twin.jpg").write_bytes(jpg)  # both would become twin.png
    good["twin.jpg"] = "protected"
    (root / "twin.png").write_bytes(png)
    bad["twin.png"] = "same output"
    # videos
    write_video(root / "full.mp4", 20, (64, 48))
    data = (root / "full.mp4").read_bytes()
    (root / "full.mp4").unlink()
    (root / "cut.mp4").write_bytes(data[: len(data) // 2])
    bad["cut.mp4"] = "not a readable video"
    write_video(root / "full2.mp4", 40, (96, 96), faststart=True)  # index first: fails mid-stream
    data = (root / "full2.mp4").read_bytes()
    (root / "full2.mp4").unlink()
    (root / "cutlate.mp4").write_bytes(data[: int(len(data) * 0.6)])
    bad["cutlate.mp4"] = "truncated video"
    write_video(root / "odd.mkv", 3, (97, 99), codec="ffv1")
    good["odd.mkv"] = "protected"
    write_video(root / "vfr.mkv", 4, (96, 96), codec="ffv1", times_ms=[0, 40, 130, 400])
    good["vfr.mkv"] = "protected"
    write_audio_only(root / "sound.mp4")
    bad["sound.mp4"] = "no video stream"
    # the file system's oddities
    os.mkfifo(root / "pipe.png")
    bad["pipe.png"] = "not a regular file"
    os.symlink("nowhere.png", root / "dangling.png")
    bad["dangling.png"] = "broken symbolic link"
    os.symlink("self.png", root / "self.png")
    bad["self.png"] = "symbolic link loop"
    (root / "sub").mkdir()
    os.symlink("..", root / "sub" / "loop")  # walked once, never twice
    (root / "sub" / "inner.png").write_bytes(png)
    good["sub/inner.png"] = "protected"
    with open(os.fsencode(root) + b"/" + os.fsencode(NON_UTF8), "wb") as f:
        f.write(png)
    good[NON_UTF8] = "protected"
    locked = root / "locked.png"
    locked.write_bytes(png)
    locked.chmod(0)
    if os.access(locked, os.R_OK):  # root: permission bits do not stop reads, so it is good
        good["locked.png"] = "protected"
    else:
        bad["locked.png"] = "permission denied"
    return bad, good


def digests(root: Path) -> dict[str, str]:
    """sha256 of every regular file under ``root`` (symbolic links not followed)."""
    out = {}
    for dirpath, _, files in os.walk(root):
        for name in files:
            p = os.path.join(dirpath, name)
            if os.path.islink(p) or not os.path.isfile(p):
                continue
            try:
                with open(p, "rb") as f:
                    out[os.path.relpath(p, root)] = hashlib.sha256(f.read()).hexdigest()
            except PermissionError:
                out[os.path.relpath(p, root)] = "unreadable"
    return out


# ------------------------------------------------------------------------------ the batch


@pytest.fixture(scope="module")
def batch(tmp_path_factory, tiny_site, reliability_counts, write_audio_only):
    """One ``lb protect`` run over the whole corpus in one folder (tiny extractor plugin)."""
    src = tmp_path_factory.mktemp("corpus") / "in"
    bad, good = build_corpus(src, write_audio_only)
    before = digests(src)
    out = tmp_path_factory.mktemp("protected") / "out"
    res = lb("protect", src, "-o", out, *TINY, site=tiny_site)
    after = digests(src)
    (src / "locked.png").chmod(0o644)
    # the bad files, plus the oddities that must be handled (CMYK, 16-bit, alpha, 1x1, odd sizes,
    # variable frame rate, a name that is not UTF-8, ...) and the symbolic link loop
    reliability_counts["bad_inputs"] += len(bad) + len(set(good) - PLAIN) + 1
    reliability_counts["inputs_checked"] += len(before)
    reliability_counts["inputs_changed"] += sum(after.get(k) != v for k, v in before.items())
    report = json.loads((out / "report.json").read_text())
    return src, out, bad, good, res, report, before, after


def _record(report: dict, rel: str) -> dict:
    """The report's record of the corpus file ``rel``."""
    (rec,) = [r for r in report["files"] if r["input"].endswith(os.sep + rel)]
    return rec


def test_batch_exit_code_is_documented_1(batch):
    *_, res, _report, _b, _a = batch
    assert res.returncode == 1, res.stderr  # some inputs failed, the batch finished (lbcore.errors)
    assert "Traceback" not in res.stderr


def test_one_line_per_bad_file_naming_it(batch):
    src, _, bad, good, res, report, _, _ = batch
    lines = res.stdout.splitlines()
    for name, words in bad.items():
        shown = str(src / name)
        mine = [ln for ln in lines if ln.startswith(shown + ":")]
        assert len(mine) == 1, (name, mine)
        assert "ERROR" in mine[0] and words in mine[0], mine[0]
        assert _record(report, name)["status"] == "error"
    errors = [ln for ln in lines if "ERROR" in ln]
    assert len(errors) == len(bad), errors
    # stderr: only progress lines "<file>: <status>" (and notes), no stray library messages
    for ln in res.stderr.splitlines():
        assert ln.startswith((str(src), "note:")), ln


def test_good_and_odd_files_handled(batch):
    src, out, _, good, res, report, _, _ = batch
    for name, status in good.items():
        assert _record(report, name)["status"] == status, (name, _record(report, name))
    deep = cv2.imread(str(out / "deep16.png"), cv2.IMREAD_UNCHANGED)
    assert deep.dtype == np.uint16 and deep.shape == (96, 96, 3)  # 16-bit stays 16-bit
    rgba = cv2.imread(str(out / "rgba.png"), cv2.IMREAD_UNCHANGED)
    assert rgba.shape == (96, 96, 4) and (rgba[:, :, 3] == 200).all()  # alpha kept
    cmyk = cv2.imread(str(out / "cmyk.png"), cv2.IMREAD_UNCHANGED)
    assert cmyk.shape == (96, 96, 3)
    one = cv2.imread(str(out / "one.png"), cv2.IMREAD_UNCHANGED)
    assert one.shape == (1, 1, 3) and (one == 7).all()
    assert os.path.exists(os.fsencode(out) + b"/caf\xe9-\xff.png")  # the name's bytes survive
    assert "caf\\xe9-\\xff.png: protected" in res.stdout  # shown printable
    assert (out / "sub" / "inner.png").is_file()
    assert not (out / "sub" / "loop").exists()
    from lbcore.io import iter_video_frames, probe_video

    odd = probe_video(out / "odd.mkv")
    assert (odd.width, odd.height, odd.frame_count) == (97, 99, 3)
    vfr = probe_video(out / "vfr.mkv")
    assert vfr.frame_count == 4
    assert len(list(iter_video_frames(out / "vfr.mkv"))) == 4


def test_twins_do_not_overwrite_each_other(batch):
    src, out, _, _, _, report, _, _ = batch
    rec = _record(report, "twin.png")
    assert "twin.jpg" in rec["error"]
    side = json.loads((out / "twin.png.lb.json").read_text())
    assert side["input_name"] == "twin.jpg"


def test_inputs_byte_identical(batch):
    *_, before, after = batch
    assert len(before) >= 15
    assert after == before


def test_no_partial_or_temporary_files(batch):
    src, out, bad, *_ = batch
    names = [p.name for p in out.rglob("*")]
    assert not any(".lbtmp-" in n for n in names), names
    for name in bad:  # a failed input leaves nothing under its final name
        stem = Path(name).with_suffix("")
        if name == "twin.png":
            continue
        assert not list(out.glob(f"{stem}.*")), name


def test_rerun_skips_everything_finished(batch, tiny_site):
    src, out, bad, good, *_ = batch
    (src / "locked.png").chmod(0)
    try:
        res = lb("protect", src, "-o", out, *TINY, "--json", site=tiny_site)
    finally:
        (src / "locked.png").chmod(0o644)
    assert res.returncode == 1
    report = json.loads(res.stdout)
    statuses = {r["input"]: r["status"] for r in report["files"]}
    done = [s for s in statuses.values() if s == "done earlier"]
    assert len(done) == len(good)


# ------------------------------------------------------------------------------ resource limits


def test_max_pixels_message_and_flag(tmp_path, tiny_site):
    src = tmp_path / "big.png"
    src.write_bytes(encode(pattern(96, 120)[:, :, ::-1], ".png"))
    res = lb("protect", src, "-o", tmp_path / "o", *TINY, "--max-pixels", "10000", site=tiny_site)
    assert res.returncode == 1
    (line,) = [ln for ln in res.stdout.splitlines() if "ERROR" in ln]
    assert f"{src}: header claims 120x96 = 0.0 megapixels, over the limit of 0.0 megapixels" in line
    assert "raise it with --max-pixels" in line
    assert not (tmp_path / "o" / "big.png").exists()
    res = lb("protect", src, "-o", tmp_path / "o", *TINY, "--max-pixels", "11520", site=tiny_site)
    assert res.returncode == 0, res.stdout + res.stderr
    assert (tmp_path / "o" / "big.png").is_file()


def test_max_frames_message_and_flag(tmp_path, tiny_site):
    src = tmp_path / "clip.mp4"
    write_video(src, 6, (96, 96))
    res = lb("protect", src, "-o", tmp_path / "o", *TINY, "--max-frames", "5", site=tiny_site)
    assert res.returncode == 1
    (line,) = [ln for ln in res.stdout.splitlines() if "ERROR" in ln]
    assert f"{src}: video has 6 frames (0.24 s), over the limit of 5 frames (0.2 s at 25 fps" in line
    assert line.count("--max-frames") == 1
    assert not list((tmp_path / "o").glob("clip*"))
    res = lb("protect", src, "-o", tmp_path / "o", *TINY, "--max-frames", "6", site=tiny_site)
    assert res.returncode == 0, res.stdout + res.stderr
    assert (tmp_path / "o" / "clip.mkv").is_file()


RSS_WRAPPER = """
import resource, sys
from lbcore.cli import cli
try:
    cli(sys.argv[1:], prog_name="lb")
except SystemExit as e:
    code = e.code
print("MAXRSS_KB", resource.getrusage(resource.RUSAGE_SELF).ru_maxrss, file=sys.stderr)
sys.exit(code)
"""


def _peak_rss_mb(video: Path, out: Path, site: Path) -> tuple[float, dict]:
    """Peak resident memory (MiB) of one ``lb protect`` process on ``video``, and its record."""
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(site)}
    res = subprocess.run([sys.executable, "-c", RSS_WRAPPER, "protect", str(video), "-o", str(out),
                          "--extractor", "tiny", "--box", "8,8,88,88", "--steps", "1", "--batch-size", "4",
                          "--no-compression-check", "--json"],
                         capture_output=True, text=True, env=env, timeout=300)
    assert res.returncode == 0, res.stderr[-2000:]
    kb = int(res.stderr.split("MAXRSS_KB")[-1].split()[0])
    return kb / 1024, json.loads(res.stdout)["files"][0]


def test_memory_stays_bounded_on_a_long_video(tmp_path, tiny_site):
    """Streamed, not loaded whole: 30x the frames costs far less than the extra frames' size.

    Small frames, many of them and small batches: the signal a whole-video load would add
    (frames x frame size) is large next to the per-batch noise (batch x frame size).
    """
    short, long_ = tmp_path / "short.mp4", tmp_path / "long.mp4"
    w, h, n_short, n_long = 128, 96, 40, 1200
    write_video(short, n_short, (w, h))
    write_video(long_, n_long, (w, h))
    rss_short, rec_short = _peak_rss_mb(short, tmp_path / "o1", tiny_site)
    rss_long, rec_long = _peak_rss_mb(long_, tmp_path / "o2", tiny_site)
    assert rec_short["frames"] == n_short and rec_long["frames"] == n_long
    assert rec_long["faces_protected"] == n_long
    extra_frames_mb = (n_long - n_short) * w * h * 3 / 2**20  # 41 MiB as uint8, 163 MiB as float32
    growth = rss_long - rss_short
    assert growth < extra_frames_mb / 4, (rss_short, rss_long, extra_frames_mb)


# ------------------------------------------------------------------------------ hostile plugins

HOSTILE_PLUGINS = {
    # distribution: (module source, words its warning must contain)
    "lb-test-bad-import": ("raise RuntimeError('boom at import')\n", "boom at import"),
    "lb-test-bad-register": ('''
from lbcore import hookimpl

@hookimpl
def register_extractors(register):
    raise ValueError("boom at registration")
''', "boom at registration"),
    "lb-test-dup-tiny": ('''
from lbcore import hookimpl

def _impostor():
    """Claims the tiny extractor's name."""
    raise RuntimeError("the impostor must never be built")

@hookimpl
def register_extractors(register):
    register("tiny", _impostor)
''', "registered twice"),
    "lb-test-import-exit": ("import sys\nsys.exit(7)\n", "SystemExit: 7"),
    "lb-test-register-exit": ('''
from lbcore import hookimpl

@hookimpl
def register_extractors(register):
    raise SystemExit(8)
''', "SystemExit: 8"),
}


def test_cli_survives_hostile_plugins(tmp_path, tiny_plugin, install_dist, reliability_counts):
    """A plugin whose import raises (or even calls sys.exit), whose registration raises, or that
    registers a duplicate name: the CLI still starts, says which plugin failed, and works."""
    for i, (dist, (source, _)) in enumerate(HOSTILE_PLUGINS.items()):
        # entry points load in name order: "zz" keeps the duplicate after the real "tiny"
        install_dist(tiny_plugin, dist, f"zz-hostile{i}", f"lb_test_hostile{i}", source)
    res = lb("plugins")
    assert res.returncode == 0, res.stderr
    assert "lb-test-tiny" in res.stdout
    src = tmp_path / "face.png"
    src.write_bytes(encode(pattern(96, 96)[:, :, ::-1], ".png"))
    before = src.read_bytes()
    res = lb("protect", src, "-o", tmp_path / "o", *TINY)
    assert res.returncode == 0, res.stdout + res.stderr
    assert "face.png: protected" in res.stdout
    assert (tmp_path / "o" / "face.png").is_file() and src.read_bytes() == before
    for dist, (_, words) in HOSTILE_PLUGINS.items():
        mine = [ln for ln in res.stderr.splitlines() if dist in ln]
        assert mine and all(ln.startswith("lb: warning:") for ln in mine), (dist, res.stderr)
        assert any(words in ln for ln in mine), (dist, mine)
    assert "Traceback" not in res.stderr
    reliability_counts["hostile_plugins"] += len(HOSTILE_PLUGINS)
