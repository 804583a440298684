"""Registers the ``faceapi68`` and ``faceapi68-tiny`` extractors. Importing this module does not import torch.

Weights: face-api.js's published TensorFlow.js files (a JSON weights manifest and the binary file
it names, side by side), as the ``@vladmandic/face-api`` 1.7.15 npm package ships them
(``model/``; MIT). ``python -m lb_faceapi.fetch`` (run by ``scripts/setup.sh``) takes them from
that package on the npm registry into the weights cache, where ``weights=auto`` finds them; both
files are checked against the sha256 of the package's copies. ``weights=PATH`` loads any
face-api.js landmark manifest (the binary beside it).
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

from lbcore import hookimpl
from lbcore.errors import SpecError, WeightsError
from lbcore.weights import WeightsFile, choose_weights, sha256sum

__all__ = ["FULL_WEIGHTS", "TINY_WEIGHTS", "BINARY_SHA256", "PACKAGE", "faceapi68", "faceapi68_tiny",
           "register_extractors"]

PACKAGE = "@vladmandic/face-api@1.7.15"
_NOTE = ("face-api.js's {what} (MIT); a TensorFlow.js weights manifest with {binary} beside it, from the "
         "npm package " + PACKAGE + " (model/), which scripts/setup.sh unpacks into the weights cache "
         "(python -m lb_faceapi.fetch)")

FULL_WEIGHTS = WeightsFile(
    name="faceapi-landmark-68",
    filename="face_landmark_68_model-weights_manifest.json",
    fits="faceapi68",
    size=8_485,
    sha256="ca4886639f86e99b39fed0c155f81b63317225773bd9616716e887b0153389c9",
    licence="MIT",
    note=_NOTE.format(what="68-point landmark network (112x112 input, 4 dense blocks of separable convolutions, "
                           "coordinates regressed; uint8-quantised weights)", binary="face_landmark_68_model.bin"),
)

TINY_WEIGHTS = WeightsFile(
    name="faceapi-landmark-68-tiny",
    filename="face_landmark_68_tiny_model-weights_manifest.json",
    fits="faceapi68-tiny",
    size=4_806,
    sha256="9a1a5dd19fd814fd5095c3cb58f8e0d3193b8c5b9a6715b30a69d559aea31ad4",
    licence="MIT",
    note=_NOTE.format(what="tiny 68-point landmark network (112x112 input, 3 dense blocks, 80 KB)",
                      binary="face_landmark_68_tiny_model.bin"),
)

BINARY_SHA256 = {
    FULL_WEIGHTS.name: ("face_landmark_68_model.bin", "4611ef65c87d836d03d684b30eec4d195d8b219fa1dd58fc58945831c6b9299b"),
    TINY_WEIGHTS.name: ("face_landmark_68_tiny_model.bin", "b98e9f2f7da76f8a6dda9741a36ed485b224b889d552de2b2c1bb16217f67bfc"),
}
"""The binary file each known manifest names and its sha256 (the npm package's copies)."""

# crop="square": the square's side over the face box's longer side; the best median NME on the
# shared annotated faces with the default detector's boxes was at 1.2-1.3 (README of lb-faceapi).
# crop="faceapi" (default): face-api.js's own box emulated (lb_faceapi.extractor), scale 1.
SQUARE_SCALE = 1.25

DEFAULT = True
"""``faceapi68`` is a member of ``lb protect``'s default ensemble when its files are present."""

_verified: set[tuple[str, int, int]] = set()


def _verify(entry: WeightsFile, path: Path) -> Path:
    """A known manifest and the binary beside it must have the package's sha256 (once per process)."""
    name, binary_sha = BINARY_SHA256[entry.name]
    for p, want in ((path, entry.sha256), (path.parent / name, binary_sha)):
        if not p.is_file():
            raise WeightsError(f"{p}: missing (the manifest {path.name} needs it beside it)")
        st = p.stat()
        key = (str(p.resolve()), st.st_size, st.st_mtime_ns)
        if key in _verified:
            continue
        got = sha256sum(p)
        if got != want:
            raise WeightsError(f"{p}: sha256 {got[:12]}... does not match {PACKAGE}'s copy ({str(want)[:12]}...); "
                               "a different or corrupt file (pass weights=PATH to load it anyway)")
        _verified.add(key)
    return path


def _resolve(weights: str | None, entry: WeightsFile) -> Path:
    path = choose_weights(weights, owner=entry.fits, published=[entry], demos=[], fits=lambda _e: True,
                          verify=_verify, no_fit=f"{entry.fits}: no weights known")
    if path is None:
        raise WeightsError(f"{entry.fits}: weights=none is not available (the network is defined by face-api.js's "
                           "weights); pass weights=auto or a weights manifest path")
    return path


def _build(entry: WeightsFile, tiny: bool, weights: str, scale: float | None, sigma: float, crop: str) -> Any:
    if crop not in ("faceapi", "square"):
        raise SpecError(f"{entry.fits}: crop={crop!r} (valid: faceapi, square)")
    if scale is None:
        scale = 1.0 if crop == "faceapi" else SQUARE_SCALE
    if not 0.5 <= scale <= 4.0:
        raise SpecError(f"{entry.fits}: scale={scale} outside 0.5..4")
    if sigma <= 0:
        raise SpecError(f"{entry.fits}: sigma={sigma} must be positive")
    path = _resolve(weights, entry)

    from lb_faceapi.extractor import FaceApiExtractor
    from lb_faceapi.net import load_face_landmark_net

    return FaceApiExtractor(load_face_landmark_net(path, tiny=tiny), scale=scale, sigma=sigma, crop=crop).eval()


def faceapi68(weights: str = "auto", crop: str = "faceapi", scale: float | None = None, sigma: float = 7.0) -> Any:
    """face-api.js's 68-point landmark network (a mobile coordinate regressor, MIT), differentiable.

    Args:
        weights: ``auto`` (the manifest from the weights folders), the known name
            ``faceapi-landmark-68``, or the path of a weights manifest (its binary beside it).
        crop: ``faceapi``: the square face-api.js feeds its network, from its own detector's box
            as measured against the project's (zero bands beside it, TensorFlow.js's resize grid);
            ``square``: a square centred on the project's box, image content everywhere.
        scale: the square's side over its box's longer side (default 1 for ``faceapi``, 1.25
            for ``square``).
        sigma: width in crop pixels (of 112) of the Gaussians rendered at the landmarks.
    """
    return _build(FULL_WEIGHTS, False, weights, scale, sigma, crop)


def faceapi68_tiny(weights: str = "auto", crop: str = "faceapi", scale: float | None = None,
                   sigma: float = 7.0) -> Any:
    """face-api.js's tiny 68-point landmark network (80 KB; MIT), differentiable. Arguments as ``faceapi68``."""
    return _build(TINY_WEIGHTS, True, weights, scale, sigma, crop)


@hookimpl
def register_extractors(register: Callable[..., None]) -> None:
    # in lb protect's default ensemble at every strength: held out it barely moved (median NME 0.020
    # at medium, 0.041 at high on the 47 sample faces); attacked, 0.133 (37/47 broken) and 0.319
    # (47/47) for about the same time and the same visibility floor (README, "default ensemble")
    register("faceapi68", faceapi68, weights=[FULL_WEIGHTS], default=DEFAULT,
             note="regression network: 68 iBUG points regressed from a 112x112 square; heat-maps are rendered")
    # the same family trained on the same data: neither a second member nor an honest held-out column
    register("faceapi68-tiny", faceapi68_tiny, weights=[TINY_WEIGHTS], default=False,
             note="the tiny variant of faceapi68 (3 dense blocks)")
