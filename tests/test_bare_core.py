"""The bare core: ``pip install lbcore`` without extras, plus one third-party plugin.

A fresh virtual environment sees only the core's dependencies (this environment's packages
minus PyAV, Flask, dlib and the first-party plugins, through a filtered mirror of its
site-packages, so nothing is downloaded), gets lbcore installed from a copy of this checkout
(not editable) and the example plugin beside it, and then runs what a user of the Python API
or the research bench would: ``lb --help``, ``lb list``, ``lb attack`` on a photo. Using a
missing extra gives one line naming it.
"""

from __future__ import annotations

import os
import shutil
import sysconfig
import venv
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[1]
# top-level names in site-packages that the extras (and the first-party plugins) bring
EXTRAS = ("av", "flask", "werkzeug", "itsdangerous", "blinker", "dlib", "_dlib_pybind11", "face_recognition_models",
          "lb_fan", "lb_hrnet", "lb_avssan", "lb_codecs", "lbcore", "lb_example_regressor")


def _is_extra(name: str) -> bool:
    low = name.lower()
    if low.startswith("__editable__") or low.endswith(".pth"):
        return True  # editable installs of lbcore and the plugins
    stem = low.split("-")[0].split(".")[0].replace("-", "_")
    return stem in EXTRAS or stem == "dlib_bin" or stem.startswith("lb_")  # every first-party plugin


@pytest.fixture(scope="module")
def bare(tmp_path_factory: pytest.TempPathFactory, run_checked):
    _run = run_checked
    work = tmp_path_factory.mktemp("bare_core")
    mirror = work / "mirror"
    mirror.mkdir()
    ours = Path(sysconfig.get_paths()["purelib"])
    for entry in ours.iterdir():
        if not _is_extra(entry.name):
            (mirror / entry.name).symlink_to(entry)
    target = work / "venv"
    venv.EnvBuilder(with_pip=False, symlinks=True).create(target)
    python = target / "bin" / "python"
    site = Path(_run([str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                     dict(os.environ), work).stdout.strip())
    (site / "_lb_core_deps.pth").write_text(str(mirror) + "\n")
    env = {k: v for k, v in os.environ.items() if not k.startswith(("LB_", "PYTHON", "PIP_", "VIRTUAL_ENV"))}
    env.update(OMP_NUM_THREADS="1", PIP_DISABLE_PIP_VERSION_CHECK="1", PIP_NO_INPUT="1", PIP_NO_INDEX="1",
               XDG_CACHE_HOME=str(work / "cache"))
    for name, src in (("lbcore", ROOT), ("example", ROOT / "examples" / "lb_example_regressor")):
        copy = work / f"src-{name}"
        shutil.copytree(src, copy, ignore=shutil.ignore_patterns(
            ".git", ".venv", "build", "*.egg-info", "__pycache__", "tests", "plugins", "examples", "benchmarks",
            ".*_cache"))
        _run([str(python), "-m", "pip", "install", "-q", "--no-deps", "--no-build-isolation", str(copy)], env, work,
             timeout=300)
    return python, env, work


def test_the_bare_core_runs_the_research_path_with_a_third_party_plugin(bare, run_checked):
    python, env, work = bare
    _run = run_checked
    # the extras really are absent, the core's own dependencies present
    probe = _run([str(python), "-c", "import importlib.util as u; print([m for m in ('av', 'flask', 'dlib', "
                  "'lb_fan', 'torch', 'pluggy', 'cv2', 'skimage', 'PIL') if u.find_spec(m)])"], env, work).stdout
    assert probe.strip() == "['torch', 'pluggy', 'cv2', 'skimage', 'PIL']"
    assert "protect" in _run([str(python), "-m", "lbcore", "--help"], env, work).stdout
    extractors = _run([str(python), "-m", "lbcore", "list", "extractors"], env, work).stdout
    assert extractors.split()[0] == "example-regressor" and "fan" not in extractors.split()
    attacks = _run([str(python), "-m", "lbcore", "list", "attacks"], env, work).stdout
    assert [ln.split()[0] for ln in attacks.splitlines()] == ["base1", "base2", "lb", "lbtrans", "lbmix",
                                                               "example-displacement"]

    import cv2

    rng = np.random.default_rng(0)
    photo = work / "photo.png"
    cv2.imwrite(str(photo), cv2.resize(rng.integers(0, 255, (12, 12, 3), dtype=np.uint8), (96, 96)))
    out = _run([str(python), "-m", "lbcore", "attack", str(photo), "-o", str(work / "out"), "--box", "16,16,80,80",
                "--extractor", "example-regressor", "--steps", "3", "--device", "cpu", "--json"], env, work,
               timeout=300).stdout
    assert '"linf"' in out and (work / "out" / "photo.png").is_file()


@pytest.mark.parametrize("args, extra", [
    (["serve", "--port", "0"], "web"),
    (["protect", "{video}", "-o", "{out}", "--box", "1,1,20,20", "--extractor", "example-regressor"], "video"),
    (["attack", "{photo}", "-o", "{out}", "--detector", "dlib-hog", "--extractor", "example-regressor"], "detect"),
])
def test_a_missing_extra_is_one_line_naming_it(bare, run_checked, args, extra):
    python, env, work = bare
    _run = run_checked
    video = work / "clip.mp4"
    video.write_bytes(b"\x00\x00\x00\x18ftypisom" + bytes(64))
    photo = work / "face.png"
    import cv2

    cv2.imwrite(str(photo), np.full((40, 40, 3), 128, np.uint8))
    args = [a.format(video=video, photo=photo, out=work / f"out-{extra}") for a in args]
    proc = _run([str(python), "-m", "lbcore", *args], env, work, timeout=300, ok=False)
    text = proc.stdout + proc.stderr
    lines = [ln for ln in text.splitlines() if ln.strip()]
    assert proc.returncode != 0 and f"lbcore[{extra}]" in text, text
    assert len([ln for ln in lines if f"lbcore[{extra}]" in ln]) == 1 and "Traceback" not in text
    assert "warning" not in text  # no first-party plugin half-installed
