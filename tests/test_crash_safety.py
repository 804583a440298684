"""Crash safety: ``lb protect`` (and ``lb evaluate``) killed with SIGKILL at random points.

After every kill the output folder may hold only complete files under final names (every PNG
decodes to the end, every sidecar and report is valid JSON, no sidecar without its output); a
rerun then does exactly the missing work (finished outputs keep their modification times) and the
final outputs are byte-identical to those of an uninterrupted run. Kill points are drawn from a
seeded generator: "after k files finished, plus a random delay", so they land before the first
output, between an output and its sidecar, inside an attack, and so on.
"""

from __future__ import annotations

import json
import os
import random
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest

cv2 = pytest.importorskip("cv2")

N_IMAGES = 10
CRASH_POINTS = 5
PROTECT = ["--extractor", "tiny", "--box", "10,10,150,150", "--steps", "10", "--no-compression-check", "-q"]


def _env(site: Path) -> dict[str, str]:
    return {**os.environ, "OMP_NUM_THREADS": "1",
            "PYTHONPATH": os.pathsep.join(filter(None, [str(site), os.environ.get("PYTHONPATH")]))}


def _pattern(seed: int, side: int = 160) -> np.ndarray:
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:side, 0:side]
    base = np.stack([(xx * 3 + seed * 20) % 256, (yy * 3) % 256, ((xx + yy) * 2) % 256], -1)
    return np.clip(base + rng.integers(-20, 20, (side, side, 3)), 0, 255).astype(np.uint8)


def _complete_png(path: Path) -> bool:
    """The file is a whole PNG: it ends with the IEND chunk and decodes at full size."""
    data = path.read_bytes()
    if not data.endswith(b"IEND\xaeB`\x82"):
        return False
    img = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_UNCHANGED)
    return img is not None and img.shape == (160, 160, 3)


def _valid_json(path: Path) -> bool:
    try:
        json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return False
    return True


def _final_names(out: Path) -> list[Path]:
    return sorted(p for p in out.rglob("*") if p.is_file() and not p.name.startswith("."))


def _kill_when(cmd: list[str], env: dict[str, str], ready: Any, delay: float, poll_s: float) -> bool:
    """Start ``cmd``, wait until ``ready()`` (or it ends), sleep ``delay``, SIGKILL it.
    Returns whether it was still running when killed (a real crash point)."""
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env)
    try:
        t_end = time.monotonic() + 120
        while proc.poll() is None and time.monotonic() < t_end and not ready():
            time.sleep(poll_s)
        time.sleep(delay)
        running = proc.poll() is None
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    return running


def _check_no_partial(out: Path) -> tuple[int, set[str]]:
    """Count partial files under final names; return them and the set of *finished* outputs
    (PNG plus sidecar). A PNG without its sidecar is allowed: the rerun redoes it."""
    partial = 0
    finished: set[str] = set()
    for p in _final_names(out):
        if p.suffix == ".png":
            if not _complete_png(p):
                partial += 1
            elif (p.parent / (p.name + ".lb.json")).exists():
                finished.add(p.name)
        elif p.name.endswith(".json"):
            partial += not _valid_json(p)
            if p.name.endswith(".lb.json"):
                assert (p.parent / p.name[: -len(".lb.json")]).exists(), f"{p.name} without its output"
        else:
            partial += 1  # nothing else belongs under a final name
    return partial, finished


@pytest.fixture(scope="module")
def images(tmp_path_factory):
    src = tmp_path_factory.mktemp("crash") / "in"
    src.mkdir()
    for i in range(N_IMAGES):
        cv2.imwrite(str(src / f"img{i}.png"), _pattern(i))
    return src


@pytest.fixture(scope="module")
def reference(images, tiny_site, tmp_path_factory):
    """The outputs of an uninterrupted run."""
    out = tmp_path_factory.mktemp("crash") / "reference"
    res = subprocess.run([sys.executable, "-m", "lbcore", "protect", str(images), "-o", str(out), *PROTECT],
                         capture_output=True, text=True, env=_env(tiny_site), timeout=300)
    assert res.returncode == 0, res.stderr
    return {p.name: p.read_bytes() for p in out.glob("*.png")}


def test_protect_survives_sigkill_and_resumes_exactly(images, reference, tiny_site, tmp_path,
                                                      reliability_counts):
    assert len(reference) == N_IMAGES
    inputs_before = {p.name: p.read_bytes() for p in images.iterdir()}
    out = tmp_path / "out"
    rng = random.Random(20200)
    cmd = [sys.executable, "-m", "lbcore", "protect", str(images), "-o", str(out), *PROTECT]
    kills = 0
    log = []
    for i in range(CRASH_POINTS):
        _, done_before = _check_no_partial(out) if out.exists() else (0, set())
        if N_IMAGES - len(done_before) < 3:
            # a fast machine finished nearly everything before the kill: reopen some work so
            # every crash point has a run to interrupt (the rerun must then redo exactly these)
            for n in sorted(done_before)[-3:]:
                (out / n).unlink()
                (out / (n + ".lb.json")).unlink(missing_ok=True)
            _, done_before = _check_no_partial(out)
        mtimes = {n: (out / n).stat().st_mtime_ns for n in done_before}
        # "after": k more files finished, then a random delay (inside the next attack or write);
        # "between": the moment an output is in place but its sidecar is not yet
        mode = "between" if i % 2 else "after"
        target = min(N_IMAGES - 1, len(done_before) + rng.randint(1, 2))
        delay = rng.uniform(0.0, 0.4) if mode == "after" else 0.0
        def ready(mode: str = mode, target: int = target) -> bool:
            names = set(os.listdir(out)) if out.exists() else set()
            if mode == "after":
                return sum(n.endswith(".png.lb.json") for n in names) >= target
            return any(n.endswith(".png") and not n.startswith(".") and n + ".lb.json" not in names for n in names)

        still_running = _kill_when(cmd, _env(tiny_site), ready, delay, poll_s=0.001)
        log.append((mode, target, round(delay, 2), still_running, len(done_before)))
        kills += still_running
        partial, done_after = _check_no_partial(out) if out.exists() else (0, set())
        reliability_counts["partial_outputs"] += partial
        assert partial == 0, log
        # the killed run did not redo (touch) what an earlier run had finished
        assert done_before <= done_after
        assert all((out / n).stat().st_mtime_ns == t for n, t in mtimes.items()), log
    reliability_counts["crash_points"] += kills
    assert kills >= CRASH_POINTS - 2, log  # (a "between" window can be missed on a fast machine)

    # the rerun completes exactly the missing work
    _, done = _check_no_partial(out)
    mtimes = {n: (out / n).stat().st_mtime_ns for n in done}
    res = subprocess.run([*cmd[:-1], "--json"], capture_output=True, text=True, env=_env(tiny_site), timeout=300)
    assert res.returncode == 0, res.stderr
    report = json.loads(res.stdout)
    statuses = {Path(r["input"]).name: r["status"] for r in report["files"]}
    assert sorted(n for n, s in statuses.items() if s == "done earlier") == sorted(done), (statuses, done)
    assert all(s in ("done earlier", "protected") for s in statuses.values())
    assert all((out / n).stat().st_mtime_ns == t for n, t in mtimes.items())
    outputs = {p.name: p.read_bytes() for p in out.glob("*.png")}
    lost = sum(outputs.get(n) != b for n, b in reference.items())
    reliability_counts["outputs_lost"] += lost
    assert lost == 0  # every output present and byte-identical to an uninterrupted run
    assert {p.name: p.read_bytes() for p in images.iterdir()} == inputs_before
    leftovers = [p.name for p in out.iterdir() if ".lbtmp-" in p.name]
    # hidden temporaries of killed runs may remain (never under a final name, skipped as inputs)
    assert all(p.startswith(".") for p in leftovers)


def test_sigkill_during_video_leaves_no_partial_video(tmp_path, tiny_site, reliability_counts):
    """A video is written to a hidden temporary and renamed when complete: a kill mid-video
    leaves nothing under the final name, and the rerun writes the whole video."""
    av = pytest.importorskip("av")
    from fractions import Fraction

    src = tmp_path / "clip.mp4"
    with av.open(str(src), "w") as c:
        vs = c.add_stream("libx264", rate=Fraction(25))
        vs.width, vs.height, vs.pix_fmt = 160, 160, "yuv420p"
        vs.options = {"preset": "ultrafast"}
        for i in range(48):
            f = av.VideoFrame.from_ndarray(_pattern(i), format="rgb24")
            f.pts = i
            for p in vs.encode(f):
                c.mux(p)
        for p in vs.encode(None):
            c.mux(p)
    out = tmp_path / "out"
    cmd = [sys.executable, "-m", "lbcore", "protect", str(src), "-o", str(out), "--batch-size", "4", *PROTECT]
    cmd[cmd.index("-q")] = "--json"
    # the kill lands mid-video: once the hidden temporary video exists
    running = _kill_when(cmd, _env(tiny_site), lambda: out.exists() and any(".lbtmp-" in p.name for p in out.iterdir()),
                         delay=0.2, poll_s=0.01)
    assert running, "the run finished before the kill"
    reliability_counts["crash_points"] += 1
    assert not (out / "clip.mkv").exists()
    assert not (out / "clip.mkv.lb.json").exists()
    res = subprocess.run(cmd, capture_output=True, text=True, env=_env(tiny_site), timeout=300)
    assert res.returncode == 0, res.stderr
    from lbcore.io import probe_video

    assert probe_video(out / "clip.mkv").frame_count == 48
    assert json.loads(res.stdout)["files"][0]["frames"] == 48
    shutil.rmtree(out)


# ------------------------------------------------------------------------------ lb evaluate

EVALUATE = ["--extractors", "tiny;t2=tiny:seed=1", "--attacks", "none,base1,lb,lbmix",
            "--degradations", "none", "--synth", "none", "--steps", "5",
            "--ground-truth", "reference", "-q"]
EVAL_CRASH_POINTS = 3


@pytest.fixture(scope="module")
def eval_data(tmp_path_factory):
    """Four annotated 128x128 'faces' (iBUG .pts files give the face boxes)."""
    pytest.importorskip("lbcore.apps.evaluation")
    src = tmp_path_factory.mktemp("evaluate") / "data"
    src.mkdir()
    rng = np.random.default_rng(0)
    for i in range(4):
        cv2.imwrite(str(src / f"f{i}.png"), _pattern(i, 128))
        pts = rng.uniform(30, 100, (68, 2))
        (src / f"f{i}.pts").write_text("version: 1\nn_points: 68\n{\n"
                                       + "".join(f"{x:.2f} {y:.2f}\n" for x, y in pts) + "}\n")
    return src


def _eval_check(out: Path) -> tuple[int, dict[str, int]]:
    """Partial files under final names, and the finished units (partial/ name -> mtime)."""
    partial = 0
    for p in _final_names(out):
        if p.suffix == ".json":
            partial += not _valid_json(p)
        elif p.suffix == ".png":
            data = p.read_bytes()
            partial += not (data.endswith(b"IEND\xaeB`\x82")
                            and cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_UNCHANGED) is not None)
    # finished units only: pathlib's glob also matches the hidden temporary file of a unit being
    # written when the run was killed (the next run deletes it)
    units = {p.name: p.stat().st_mtime_ns for p in _units(out)}
    return partial, units


def _units(out: Path) -> list[Path]:
    folder = out / "partial"
    return [p for p in folder.glob("*.json") if not p.name.startswith(".")] if folder.is_dir() else []


def test_evaluate_survives_sigkill_and_resumes_exactly(eval_data, tiny_site, tmp_path, reliability_counts):
    env = _env(tiny_site)
    ref_out = tmp_path / "reference"
    res = subprocess.run([sys.executable, "-m", "lbcore", "evaluate", str(eval_data), "-o", str(ref_out), *EVALUATE],
                         capture_output=True, text=True, env=env, timeout=300)
    assert res.returncode == 0, res.stderr
    reference = json.loads((ref_out / "results.json").read_text())
    n_units = len(_units(ref_out))
    assert n_units >= 5
    out = tmp_path / "out"
    cmd = [sys.executable, "-m", "lbcore", "evaluate", str(eval_data), "-o", str(out), *EVALUATE]
    rng = random.Random(4242)
    kills = 0
    log = []
    for _ in range(EVAL_CRASH_POINTS):
        _, before = _eval_check(out)
        target = min(n_units - 1, len(before) + rng.randint(1, 2))
        delay = rng.uniform(0.0, 0.3)
        def ready(target: int = target) -> bool:
            return len(_units(out)) >= target

        running = _kill_when(cmd, env, ready, delay, poll_s=0.005)
        kills += running
        log.append((target, round(delay, 2), running, len(before)))
        partial, after = _eval_check(out)
        reliability_counts["partial_outputs"] += partial
        assert partial == 0, log
        changed = [n for n, t in before.items() if after.get(n) != t]
        assert not changed, (log, changed, sorted(after))  # finished units untouched
    reliability_counts["crash_points"] += kills
    assert kills >= EVAL_CRASH_POINTS - 1, log
    _, before = _eval_check(out)
    res = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=300)
    assert res.returncode == 0, res.stderr
    results = json.loads((out / "results.json").read_text())
    _, after = _eval_check(out)
    assert all(after.get(n) == t for n, t in before.items())
    assert len(after) == n_units
    if before:
        assert f"{len(before)} of {n_units} unit(s) resumed" in " ".join(results["notes"])
    same = json.dumps(results["rows"], sort_keys=True) == json.dumps(reference["rows"], sort_keys=True)
    reliability_counts["outputs_lost"] += 0 if same else 1
    assert same  # every row present and equal to an uninterrupted run's
