"""The default ensemble of ``lb protect`` is built from the weights files that are present.

Offline, as a user would: a test plugin declares two published files of one extractor (two
architectures) and a demonstration model; a local 127.0.0.1 server publishes the files; ``lb
weights download`` fetches them (sha256-checked) and ``lb protect`` with no ``--extractor``
attacks what is present, naming each member by its weights file.
"""

from __future__ import annotations

import functools
import hashlib
import http.server
import json
import os
import subprocess
import sys
import threading
from pathlib import Path

import numpy as np
import pytest

PLUGIN_SRC = '''
from lbcore import hookimpl
from lbcore.weights import WeightsFile

BASE = "{base}"
WEIGHTS = [
    WeightsFile(name="tinyw-a", filename="tinyw-a.pt", fits="tinyw:points=5", url=BASE + "/tinyw-a.pt",
                sha256="{sha_a}", licence="test"),
    WeightsFile(name="tinyw-b", filename="tinyw-b.pt", fits="tinyw:points=68", url=BASE + "/tinyw-b.pt",
                sha256="{sha_b}", licence="test"),
]


def tinyw(points: int = 5, weights: str = "auto"):
    """Tiny heat-map network whose weights come from a file."""
    from lb_test_tiny_model import tiny
    from lbcore.weights import choose_weights, extract_state_dict, load_checkpoint, load_state_dict_strict

    path = choose_weights(weights, owner="tinyw", published=WEIGHTS, demos=[],
                          fits=lambda e: e.fits == f"tinyw:points={{points}}", no_fit="no tinyw file")
    model = tiny(points=points)
    if path is not None:
        load_state_dict_strict(model, extract_state_dict(load_checkpoint(path), path), path)
    return model


def tinyw_demo():
    """Demonstration model of the test plugin."""
    from lb_test_tiny_model import tiny
    return tiny(points=5, seed=3)


@hookimpl
def register_extractors(register):
    register("tinyw", tinyw, weights=list(WEIGHTS))
    register("tinyw-demo", tinyw_demo, demo=True)
'''

BOX = "8,8,56,56"


def _state_dict_file(path: Path, points: int, seed: int) -> str:
    import torch
    from lb_test_tiny_model import tiny  # installed by the tiny_plugin fixture

    torch.save(tiny(points=points, seed=seed).state_dict(), path)
    return hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.fixture
def published(tmp_path, tiny_plugin, install_dist):
    """The two files, served on 127.0.0.1, and the plugin that knows them."""
    served = tmp_path / "served"
    served.mkdir()
    sha_a = _state_dict_file(served / "tinyw-a.pt", 5, 1)
    sha_b = _state_dict_file(served / "tinyw-b.pt", 68, 2)
    handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=str(served))
    handler.log_message = lambda *a, **k: None  # type: ignore[attr-defined]
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    base = f"http://127.0.0.1:{server.server_address[1]}"
    install_dist(tiny_plugin, "lb-test-wts", "wts", "lb_test_wts_plugin",
                 PLUGIN_SRC.format(base=base, sha_a=sha_a, sha_b=sha_b))
    env = {**os.environ, "XDG_CACHE_HOME": str(tmp_path / "cache"), "LB_LOAD_PLUGINS": "wts"}
    env.pop("LB_WEIGHTS_DIR", None)
    image = tmp_path / "face.png"
    import cv2

    rng = np.random.default_rng(0)
    cv2.imwrite(str(image), rng.integers(0, 255, (64, 64, 3), dtype=np.uint8))
    yield env, image, tmp_path / "cache" / "landmark-breaker" / "weights"
    server.shutdown()


def _lb(env: dict, *args: str, check: bool = True) -> subprocess.CompletedProcess:
    proc = subprocess.run([sys.executable, "-m", "lbcore", *args], env=env, capture_output=True, text=True,
                          timeout=300)
    if check:
        assert proc.returncode == 0, proc.stderr
    return proc


def _protect(env: dict, image: Path, out: Path, *extra: str, check: bool = True) -> tuple[dict, subprocess.CompletedProcess]:
    proc = _lb(env, "protect", str(image), "-o", str(out), "--box", BOX, "--steps", "2", "--device", "cpu",
               "--no-compression-check", *extra, check=check)
    report = json.loads((out / "report.json").read_text()) if (out / "report.json").is_file() else {}
    return report, proc


def test_downloaded_files_join_the_default_ensemble(published, tmp_path):
    env, image, cache = published
    rows = {r["name"]: r for r in json.loads(_lb(env, "weights", "list", "--json").stdout)}
    assert rows["tinyw-a"]["found"] is None and not rows["tinyw-a"]["protect_default"]

    # nothing downloaded: the demonstration model, with the note
    report, _ = _protect(env, image, tmp_path / "out0")
    assert report["settings"]["extractors"] == ["tinyw-demo"]
    assert any("demonstration model" in n for n in report["notes"])

    # one file downloaded: it joins, named by its weights file, and `lb weights list` says so
    got = _lb(env, "weights", "download", "tinyw-a", "-q").stdout.strip()
    assert Path(got) == cache / "tinyw-a.pt" and Path(got).is_file()
    rows = {r["name"]: r for r in json.loads(_lb(env, "weights", "list", "--json").stdout)}
    assert rows["tinyw-a"]["protect_default"] and not rows["tinyw-b"]["protect_default"]
    assert "[used by lb protect]" in next(ln for ln in _lb(env, "weights", "list").stdout.splitlines()
                                          if ln.startswith("tinyw-a"))
    report, _ = _protect(env, image, tmp_path / "out1")
    assert report["settings"]["extractors"] == ["tinyw (tinyw-a)"]
    assert (tmp_path / "out1" / "face.png").is_file()

    # deleted again: back to the demonstration model
    (cache / "tinyw-a.pt").unlink()
    report, _ = _protect(env, image, tmp_path / "out2")
    assert report["settings"]["extractors"] == ["tinyw-demo"]

    # --all fetches both: two architectures of one plugin give two members
    _lb(env, "weights", "download", "--all", "-q")
    report, _ = _protect(env, image, tmp_path / "out3")
    assert report["settings"]["extractors"] == ["tinyw (tinyw-a)", "tinyw (tinyw-b)"]


def test_a_corrupt_file_is_left_out_unless_the_user_named_it(published, tmp_path):
    env, image, cache = published
    _lb(env, "weights", "download", "tinyw-a", "tinyw-b", "-q")
    (cache / "tinyw-b.pt").write_bytes(b"not a checkpoint at all")
    report, proc = _protect(env, image, tmp_path / "out")
    assert report["settings"]["extractors"] == ["tinyw (tinyw-a)"]
    bad = [n for n in report["notes"] if n.startswith("tinyw (tinyw-b): not used")]
    assert len(bad) == 1 and "tinyw-b.pt" in bad[0] and "\n" not in bad[0]

    # named by the user: it must be used, so the run fails with exit 3 and one line
    _, proc = _protect(env, image, tmp_path / "named", "--weights", f"tinyw-b={cache / 'tinyw-b.pt'}", check=False)
    assert proc.returncode == 3
    err = [ln for ln in proc.stderr.splitlines() if ln.strip()]
    assert len(err) == 1 and "tinyw-b" in err[0], proc.stderr

    # a --weights name nobody knows is an error too, not silently ignored
    _, proc = _protect(env, image, tmp_path / "unknown", "--weights", "foo=/nonexistent", check=False)
    assert proc.returncode == 3 and "foo" in proc.stderr and len(proc.stderr.strip().splitlines()) == 1


def test_the_page_names_the_models_in_plain_words():
    from lbcore.apps.web.words import protected_against

    text = protected_against(["fan (2dfan4)", "fan-demo"])
    assert text.startswith("Protected against 2D-FAN4") and "FaceFusion" in text and "demonstration" in text
    assert protected_against(["mediapipe"]) == "Protected against the landmark model mediapipe."
    assert protected_against([]) == ""
    assert protected_against(["mediapipe (mediapipe-face-landmark)", "dlib68"]) == (
        "Protected against Google's MediaPipe Face Mesh and dlib's 68-point predictor, which faceswap, "
        "face_recognition and many scripts use.")
    assert protected_against(["faceapi68 (faceapi-landmark-68)"]) == (
        "Protected against face-api.js's landmark model, which many web pages and browser apps use.")


# ------------------------------------------------------------------ held-out columns (--held-out)

class _Comp:
    def __init__(self, **metadata):
        self.metadata = metadata


class _PM:
    """A plugin manager with three extractors: two registered for measuring, one that cannot build."""

    def __init__(self, broken=("gone",)):
        self.comps = {"net": _Comp(), "real": _Comp(default=False, measure=True), "gone": _Comp(measure=True)}
        self.broken = set(broken)
        self.built = []

    def components(self, kind):
        assert kind == "extractors"
        return self.comps

    def build(self, kind, spec):
        from lbcore.errors import WeightsError

        if spec.split(":")[0] in self.broken:
            raise WeightsError(f"{spec}: model file missing\nsecond line")
        self.built.append(spec)
        return f"<{spec}>"


def test_held_out_auto_measures_registered_models_not_attacked():
    from lbcore.apps.protection import ProtectOptions, held_out_extractors

    pm, notes = _PM(), []
    assert ProtectOptions().held_out == ("auto",)
    got = held_out_extractors(pm, ProtectOptions(), notes)
    assert got == {"real": "<real>"}
    assert notes == ["held-out gone left out of the report: gone: model file missing"]
    # an extractor that is attacked is not also held out
    assert held_out_extractors(_PM(), ProtectOptions(extractors=("real:x=1",)), []) == {}


def test_held_out_none_and_explicit_specs():
    from lbcore.apps.protection import ProtectOptions, held_out_extractors
    from lbcore.errors import SpecError, WeightsError

    assert held_out_extractors(_PM(), ProtectOptions(held_out=("none",)), []) == {}
    assert held_out_extractors(_PM(), ProtectOptions(held_out=()), []) == {"real": "<real>"}  # as auto
    assert held_out_extractors(_PM(), ProtectOptions(held_out=("net", "real")), []) == {"net": "<net>", "real": "<real>"}
    with pytest.raises(WeightsError):  # a named one must build
        held_out_extractors(_PM(), ProtectOptions(held_out=("gone",)), [])
    with pytest.raises(SpecError, match="stand alone"):
        held_out_extractors(_PM(), ProtectOptions(held_out=("auto", "net")), [])


def test_a_member_registered_for_some_strengths_joins_only_at_those():
    from lbcore.apps.protection import default_extractor_specs, plan_default_ensemble

    pm = _PM(broken=())
    pm.comps = {"net": _Comp(), "slow": _Comp(default=("high",), measure=True), "one": _Comp(default="low"),
                "off": _Comp(default=False)}
    assert [m.label for m in plan_default_ensemble(pm)] == ["net"]  # medium, the default strength
    assert [m.label for m in plan_default_ensemble(pm, "high")] == ["net", "slow"]
    assert [m.label for m in plan_default_ensemble(pm, "low")] == ["net", "one"]  # a single name, not its letters
    assert [m.label for m in plan_default_ensemble(pm, "paper")] == ["net"]
    assert list(default_extractor_specs(pm, "high")[0]) == ["net", "slow"]
    pm.comps["slow"] = _Comp(default=("high",), default_spec="slow:blur=3")
    assert [m.spec for m in plan_default_ensemble(pm, "high")] == ["net", "slow:blur=3"]
    default_extractor_specs(pm, "high")
    assert pm.built[-1] == "slow:blur=3"  # built from that spec, named by its name


def test_a_default_member_is_not_also_held_out():
    from lbcore.apps.protection import ProtectOptions, held_out_extractors

    # `lb protect --strength high` with no --extractor attacks "real" as a default member: the
    # report must not measure it a second time as held out
    assert held_out_extractors(_PM(), ProtectOptions(), [], attacked={"net", "real"}) == {}
    assert held_out_extractors(_PM(), ProtectOptions(), [], attacked={"net"}) == {"real": "<real>"}
