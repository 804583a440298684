"""Fixtures for the core's tests: a tiny heat-map extractor and installable test plugins."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

TINY_EXTRACTOR_SRC = '''
"""A small heat-map extractor used by the core's tests (random weights, input-dependent)."""
from __future__ import annotations

import torch

from lbcore.extractor import HeatmapExtractor
from lbcore.schemes import known_scheme
from lbcore.types import LandmarkScheme


class TinyHeatmapNet(HeatmapExtractor):
    """Crop the face box to 32x32, a few convolutions, K heat-maps at 16x16."""

    input_size = (32, 32)

    def __init__(self, points: int = 5, seed: int = 0) -> None:
        super().__init__()
        # a known layout when there is one; otherwise the tiny net declares its own scheme
        self.scheme = known_scheme(points) or LandmarkScheme(f"tiny{points}", points, (0, 1))
        g = torch.Generator().manual_seed(seed)
        self.net = torch.nn.Sequential(
            torch.nn.Conv2d(3, 16, 3, padding=1), torch.nn.ReLU(),
            torch.nn.Conv2d(16, 16, 3, stride=2, padding=1), torch.nn.ReLU(),
            torch.nn.Conv2d(16, points, 3, padding=1),
        )
        with torch.no_grad():
            for p in self.net.parameters():
                p.copy_(torch.randn(p.shape, generator=g) * 0.3)

    def crop_theta(self, boxes: torch.Tensor) -> torch.Tensor:
        w = (boxes[:, 2] - boxes[:, 0]) / self.input_size[1]
        h = (boxes[:, 3] - boxes[:, 1]) / self.input_size[0]
        z = torch.zeros_like(w)
        x0 = boxes[:, 0] + 0.5 * w - 0.5
        y0 = boxes[:, 1] + 0.5 * h - 0.5
        return torch.stack([torch.stack([w, z, x0], 1), torch.stack([z, h, y0], 1)], 1)

    def normalise(self, crops: torch.Tensor) -> torch.Tensor:
        return crops / 127.5 - 1.0

    def forward_crops(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)

    def decode(self, output):
        from lbcore.extractor import apply_affine, argmax_2d

        return apply_affine(output.hm_to_image, argmax_2d(output.heatmaps))


def tiny(points: int = 5, seed: int = 0) -> TinyHeatmapNet:
    """Tiny random heat-map network for tests."""
    return TinyHeatmapNet(points=points, seed=seed)
'''

TINY_PLUGIN_SRC = '''
from lbcore import hookimpl


def _tiny(points: int = 5, seed: int = 0):
    """Tiny random heat-map network for tests."""
    from lb_test_tiny_model import tiny
    return tiny(points=points, seed=seed)


@hookimpl
def register_extractors(register):
    register("tiny", _tiny)
'''


def make_dist(root: Path, dist: str, entry_name: str, module: str, source: str,
              extra_modules: dict[str, str] | None = None, version: str = "1.0") -> Path:
    """Install a distribution into ``root`` the way pip lays it out (a module plus a
    ``.dist-info`` with ``entry_points.txt``), so ``importlib.metadata`` finds a *real* entry
    point once ``root`` is on ``sys.path`` / ``PYTHONPATH``."""
    root.mkdir(parents=True, exist_ok=True)
    (root / f"{module}.py").write_text(textwrap.dedent(source))
    for name, src in (extra_modules or {}).items():
        (root / f"{name}.py").write_text(textwrap.dedent(src))
    info = root / f"{dist.replace('-', '_')}-{version}.dist-info"
    info.mkdir(exist_ok=True)
    (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {dist}\nVersion: {version}\n")
    (info / "entry_points.txt").write_text(f"[lbcore]\n{entry_name} = {module}\n")
    return root


@pytest.fixture
def plugin_path(tmp_path, monkeypatch):
    """A folder on sys.path where tests install plugin distributions with make_dist."""
    root = tmp_path / "site"
    root.mkdir()
    monkeypatch.syspath_prepend(str(root))
    old = os.environ.get("PYTHONPATH")
    monkeypatch.setenv("PYTHONPATH", str(root) + (os.pathsep + old if old else ""))
    from lbcore.plugins import reset_plugin_manager

    reset_plugin_manager()  # the shared manager loads again, with what the test installs here
    yield root
    reset_plugin_manager()  # ... and without it afterwards
    for name in list(sys.modules):
        if name.startswith(("lb_test_", "broken_")):
            del sys.modules[name]


@pytest.fixture
def install_dist():
    """``install_dist(root, dist, entry_name, module, source, extra_modules)`` (see make_dist)."""
    return make_dist


@pytest.fixture
def tiny_plugin(plugin_path):
    """The tiny extractor installed as a real plugin distribution ``lb-test-tiny``."""
    make_dist(plugin_path, "lb-test-tiny", "tiny", "lb_test_tiny_plugin", TINY_PLUGIN_SRC,
              {"lb_test_tiny_model": TINY_EXTRACTOR_SRC})
    return plugin_path


@pytest.fixture
def tiny_extractor(tiny_plugin):
    from lb_test_tiny_model import tiny

    return tiny()


# ------------------------------------------------------------------------- reliability figures

RELIABILITY_KEY = pytest.StashKey[dict]()
"""Counters the reliability tests record; printed in the test run summary."""


@pytest.fixture(scope="session")
def reliability_counts(pytestconfig: pytest.Config) -> dict:
    """Session-wide counters of the reliability tests (bad inputs tried, hostile checkpoints
    refused, crash points tried, inputs changed, outputs lost), shown by the summary hook."""
    return pytestconfig.stash.setdefault(RELIABILITY_KEY, {
        "bad_inputs": 0,
        "inputs_checked": 0,
        "inputs_changed": 0,
        "hostile_checkpoints": 0,
        "hostile_refused": 0,
        "code_executed": 0,
        "hostile_plugins": 0,
        "crash_points": 0,
        "outputs_lost": 0,
        "partial_outputs": 0,
    })


def pytest_terminal_summary(terminalreporter, exitstatus, config):  # noqa: ARG001 - hook signature
    counts = config.stash.get(RELIABILITY_KEY, None)
    if not counts:
        return
    c = counts
    terminalreporter.write_sep("-", "reliability")
    terminalreporter.write_line(
        f"reliability: {c['bad_inputs']} bad inputs tried ({c['inputs_checked']} inputs checked byte for byte, "
        f"{c['inputs_changed']} changed), {c['hostile_refused']} of {c['hostile_checkpoints']} hostile checkpoints "
        f"refused ({c['code_executed']} ran code), {c['hostile_plugins']} hostile plugins survived, "
        f"{c['crash_points']} crash points tried ({c['partial_outputs']} partial outputs, "
        f"{c['outputs_lost']} outputs lost)"
    )


@pytest.fixture(scope="session")
def tiny_site(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A folder holding the tiny extractor as an installed plugin distribution, for CLI
    subprocesses of module- or session-scoped fixtures: put it on their ``PYTHONPATH``."""
    root = tmp_path_factory.mktemp("tiny_site")
    make_dist(root, "lb-test-tiny", "tiny", "lb_test_tiny_plugin", TINY_PLUGIN_SRC,
              {"lb_test_tiny_model": TINY_EXTRACTOR_SRC})
    return root


def _write_audio_only(path: Path, samples: int = 24000) -> Path:
    """An AAC-in-MP4 file with no video stream (half a second of silence by default)."""
    import av
    import numpy as np

    with av.open(str(path), "w") as out:
        s = out.add_stream("aac", rate=48000, layout="mono")
        for k in range(0, samples, 960):
            af = av.AudioFrame.from_ndarray(np.zeros((1, 960), np.float32), format="fltp", layout="mono")
            af.sample_rate, af.pts = 48000, k
            for p in s.encode(af):
                out.mux(p)
        for p in s.encode(None):
            out.mux(p)
    return path


@pytest.fixture(scope="session")
def write_audio_only():
    """Writes an audio-only MP4: ``write_audio_only(path)``."""
    return _write_audio_only


def _run_checked(args: list[str], env: dict[str, str], cwd: Path, timeout: float = 120,
                 ok: bool = True) -> subprocess.CompletedProcess[str]:
    """Run a command; unless ``ok=False``, fail with its output's tail when it exits non-zero."""
    proc = subprocess.run(args, env=env, cwd=cwd, capture_output=True, text=True, timeout=timeout)
    if ok and proc.returncode != 0:
        raise AssertionError(f"{' '.join(args[:5])}... exited {proc.returncode}:\n{proc.stdout[-2000:]}\n"
                             f"{proc.stderr[-3000:]}")
    return proc


@pytest.fixture(scope="session")
def run_checked():
    """``run_checked(args, env, cwd, timeout=120, ok=True)``: a subprocess that must succeed."""
    return _run_checked
