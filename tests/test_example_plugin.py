"""The example third-party plugin, installed for real: a fresh virtual environment, ``pip
install`` of examples/lb_example_regressor (a real entry point in a real ``.dist-info``), then
``lb plugins --json``, ``lb list``, ``lb attack`` and ``lb evaluate`` with it, its own test suite,
and ``pip uninstall``.

The fresh environment reuses this interpreter's packages (torch, lbcore, the first-party
plugins) through a ``.pth`` file instead of downloading them again; only the example package
is installed into it, with ``--no-deps --no-build-isolation`` (offline).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import sysconfig
import venv
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[1]
EXAMPLE = ROOT / "examples" / "lb_example_regressor"
BOX = (30.0, 26.0, 110.0, 118.0)


@pytest.fixture(scope="module")
def fresh_env(tmp_path_factory: pytest.TempPathFactory):
    """A new venv that sees this environment's packages; yields ``(python, env, workdir)``."""
    work = tmp_path_factory.mktemp("example_plugin")
    target = work / "venv"
    venv.EnvBuilder(with_pip=False, symlinks=True).create(target)
    python = target / "bin" / "python"
    site = Path(subprocess.run(
        [str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
        capture_output=True, text=True, check=True).stdout.strip())
    # ``import site; site.addsitedir(...)`` also runs the .pth files there (the editable
    # installs of lbcore and the first-party plugins); the venv's own site-packages stays first
    ours = sysconfig.get_paths()["purelib"]
    (site / "_lb_parent_env.pth").write_text(f"import site; site.addsitedir({ours!r})\n")
    env = {k: v for k, v in os.environ.items() if not k.startswith(("LB_", "PYTHON", "PIP_"))}
    env.update(OMP_NUM_THREADS="1", PIP_DISABLE_PIP_VERSION_CHECK="1", PIP_NO_INPUT="1", PIP_NO_INDEX="1",
               LB_CACHE_DIR=str(work / "cache"))
    # install from a copy: an in-place build would leave build/ and *.egg-info in the checkout
    src = work / "src"
    shutil.copytree(EXAMPLE, src, ignore=shutil.ignore_patterns("build", "*.egg-info", "__pycache__"))
    return python, env, work, site, src


def _plugins(python: Path, env: dict[str, str], work: Path, _run) -> dict[str, dict]:
    out = _run([str(python), "-m", "lbcore", "plugins", "--json"], env, work).stdout
    return {d["name"]: d for d in json.loads(out)}


def _write_face(folder: Path) -> Path:
    """A smooth test image and a 68-point .pts annotation (the schematic face in the box)."""
    from lbcore.io import write_image_atomic
    from lbcore.io.annotations import write_pts

    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    low = rng.random((9, 12, 3)) * 255
    import cv2

    img = cv2.resize(low, (144, 128), interpolation=cv2.INTER_LINEAR).round().clip(0, 255).astype(np.uint8)
    path = folder / "face.png"
    write_image_atomic(path, img)
    sys.path.insert(0, str(EXAMPLE))
    try:
        from lb_example_regressor.model import mean_face_in_box
    finally:
        sys.path.remove(str(EXAMPLE))
    shape = mean_face_in_box().numpy().astype(np.float64)
    x1, y1, x2, y2 = BOX
    write_pts(folder / "face.pts", shape * [x2 - x1, y2 - y1] + [x1, y1])
    return path


def test_install_use_and_uninstall_the_example_plugin(fresh_env, run_checked):
    _run = run_checked
    python, env, work, site, src = fresh_env
    before = _plugins(python, env, work, _run)
    assert "lbcore" in before and "lb-example-regressor" not in before

    _run([str(python), "-m", "pip", "install", "-q", "--no-deps", "--no-build-isolation", str(src)], env, work,
         timeout=180)
    assert any(p.name.startswith("lb_example_regressor-0.1.0") for p in site.glob("*.dist-info"))

    # lb plugins --json: the example is a distribution like the first-party ones
    report = _plugins(python, env, work, _run)
    example = report["lb-example-regressor"]
    assert example["version"] == "0.1.0"
    assert example["components"]["extractors"] == ["example-regressor"]
    assert example["components"]["losses"] == ["example-nme"]
    assert set(example["components"]) == set(report["lbcore"]["components"])

    # lb list: the same row layout as first-party components
    rows = json.loads(_run([str(python), "-m", "lbcore", "list", "extractors", "--json"], env, work).stdout)
    row = next(r for r in rows if r["name"] == "example-regressor")
    assert row["distribution"] == "lb-example-regressor"
    assert "68 landmark coordinates" in row["summary"] and "context: float" in row["params"]
    losses = json.loads(_run([str(python), "-m", "lbcore", "list", "losses", "--json"], env, work).stdout)
    assert {"example-nme", "heatmap-cosine"} <= {r["name"] for r in losses}

    # lb attack by name: Eq. 1 on the rendered heat-maps, and a distance loss with a random start
    face = _write_face(work / "data")
    box = ",".join(str(v) for v in BOX)
    for extra in ([], ["--loss", "example-nme", "--random-start", "2"]):
        out_dir = work / ("attack" + "-".join(extra))
        out = _run([str(python), "-m", "lbcore", "attack", str(face), "-o", str(out_dir), "--box", box,
                    "--extractor", "example-regressor", "--steps", "3", "--device", "cpu", "--json", *extra],
                   env, work).stdout
        res = json.loads(out.strip().splitlines()[-1])
        assert res["faces"] == 1 and res["steps"] == 3 and 0 < res["linf"] <= 15
        assert res["loss"] < res["clean_loss"]  # the attack lowered its loss
        assert (out_dir / "face.png").is_file()

    # the plugin's own attack, by name, in lb list, lb attack and lb protect
    attacks = json.loads(_run([str(python), "-m", "lbcore", "list", "attacks", "--json"], env, work).stdout)
    assert [r["name"] for r in attacks][:5] == ["base1", "base2", "lb", "lbtrans", "lbmix"]
    row = next(r for r in attacks if r["name"] == "example-displacement")
    assert row["distribution"] == "lb-example-regressor" and row["settings"]["loss"] == "example-nme"
    assert example["components"]["attacks"] == ["example-displacement"]
    out = _run([str(python), "-m", "lbcore", "attack", str(face), "-o", str(work / "own-attack"), "--box", box,
                "--extractor", "example-regressor", "--attack", "example-displacement:steps=3", "--device", "cpu",
                "--json"], env, work).stdout
    res = json.loads(out.strip().splitlines()[-1])
    assert res["steps"] == 3 and 0 < res["linf"] <= 15 and res["loss"] < res["clean_loss"]
    prot = work / "own-protect"
    _run([str(python), "-m", "lbcore", "protect", str(face), "-o", str(prot), "--box", box,
          "--extractor", "example-regressor", "--attack", "example-displacement", "--steps", "2",
          "--no-compression-check", "--device", "cpu"], env, work, timeout=180)
    rep = json.loads((prot / "report.json").read_text())
    assert rep["settings"]["attack"] == "example-displacement" and (prot / "face.png").is_file()

    # lb evaluate by name (the annotation gives the face and its ground truth)
    proc = subprocess.run([str(python), "-m", "lbcore", "evaluate", "--help"], env=env, cwd=work,
                          capture_output=True, text=True, timeout=60)
    if proc.returncode == 0:
        ev = work / "eval"
        out = _run([str(python), "-m", "lbcore", "evaluate", str(work / "data"), "-o", str(ev),
                    "--extractors", "example-regressor", "--attacks", "none,lb,example-displacement",
                    "--degradations", "none",
                    "--steps", "2", "--synth", "none", "--device", "cpu", "--json"], env, work, timeout=180).stdout
        results = json.loads(out[out.index("{"):])
        targets = {r.get("target") for r in results["rows"]}
        assert "example-regressor" in targets, results["rows"][:2]
        assert "example-displacement" in {r.get("attack") for r in results["rows"]}, results["rows"][:2]
        assert (ev / "results.json").is_file()

    # the plugin's own test suite, using lbcore.testing, against the installed entry point
    _run([str(python), "-m", "pytest", "-q", "-p", "no:cacheprovider", "-k", "conforms", str(src / "tests")],
         env, src, timeout=180)

    _run([str(python), "-m", "pip", "uninstall", "-y", "-q", "lb-example-regressor"], env, work)
    after = _plugins(python, env, work, _run)
    assert "lb-example-regressor" not in after and set(after) == set(before)
    failed = subprocess.run([str(python), "-m", "lbcore", "attack", str(face), "-o", str(work / "gone"),
                             "--box", box, "--extractor", "example-regressor"],
                            env=env, cwd=work, capture_output=True, text=True, timeout=120)
    assert failed.returncode != 0 and "unknown extractor 'example-regressor'" in failed.stderr
