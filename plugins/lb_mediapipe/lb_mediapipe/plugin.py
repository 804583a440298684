"""Registers the ``mediapipe`` and ``mediapipe-attention`` extractors and the ``blazeface`` detector. Importing this module
does not import torch.

Weights: MediaPipe's published ``.tflite`` files (Apache-2.0), looked up the project's way
(:func:`lbcore.weights.resolve_weights`: ``--weights NAME=PATH``, ``$LB_WEIGHTS_DIR``, the cache
folder) and checked against the sha256 that MediaPipe's build files pin for the published URL
(the same bytes ship in the ``mediapipe==0.10.21`` wheel, where ``scripts/setup.sh`` takes them
from: see :mod:`lb_mediapipe.fetch`). ``weights=auto`` (default) is that file; a path loads any
file that is a face mesh (a different file is refused with one line naming the problem).
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

from lbcore import hookimpl
from lbcore.errors import SpecError, WeightsError
from lbcore.weights import WeightsFile, choose_weights, sha256sum

__all__ = ["FACE_MESH_WEIGHTS", "ATTENTION_MESH_WEIGHTS", "BLAZEFACE_WEIGHTS", "mediapipe", "mediapipe_attention",
           "blazeface", "register_extractors", "register_detectors"]

_NOTE = ("MediaPipe {what} (Google, Apache-2.0); also inside the mediapipe==0.10.21 wheel on PyPI "
         "(mediapipe/modules/{member}), which scripts/setup.sh unpacks into the weights cache")

FACE_MESH_WEIGHTS = WeightsFile(
    name="mediapipe-face-landmark",
    filename="face_landmark.tflite",
    fits="mediapipe",
    url="https://storage.googleapis.com/mediapipe-assets/face_landmark.tflite",
    size=1_242_398,
    sha256="1055cb9d4a9ca8b8c688902a3a5194311138ba256bcc94e336d8373a5f30c814",
    licence="Apache-2.0",
    note=_NOTE.format(what="Face Mesh (468 points, 192x192 input, float16 weights)",
                      member="face_landmark/face_landmark.tflite"),
)

ATTENTION_MESH_WEIGHTS = WeightsFile(
    name="mediapipe-face-landmark-with-attention",
    filename="face_landmark_with_attention.tflite",
    fits="mediapipe-attention",
    # the generation MediaPipe's third_party/external_files.bzl pins with this sha256
    url="https://storage.googleapis.com/mediapipe-assets/face_landmark_with_attention.tflite?generation=1676415468821650",
    size=2_495_106,
    sha256="e06a804e0144f9929eda782122916b35d60c697c3c9344013ca2bbe76a6ce2b4",
    licence="Apache-2.0",
    note=_NOTE.format(what="Attention Mesh (478 points: mesh with refined lips, eyes and irises; 192x192 input, "
                           "float16 weights, MediaPipe's custom operators)",
                      member="face_landmark/face_landmark_with_attention.tflite"),
)

BLAZEFACE_WEIGHTS = WeightsFile(
    name="mediapipe-face-detection-short-range",
    filename="face_detection_short_range.tflite",
    fits="blazeface",
    url="https://storage.googleapis.com/mediapipe-assets/face_detection_short_range.tflite",
    size=229_714,
    sha256="bbff11cebd1eb27a1e004cae0b0e63ec8c551cbf34a4451148b4908b8db3eca8",
    licence="Apache-2.0",
    note=_NOTE.format(what="BlazeFace short-range face detector (128x128 input)",
                      member="face_detection/face_detection_short_range.tflite"),
)

# in the default ensemble of `lb protect`: attacking the plain mesh barely moves this one (held
# out, median NME 0.02 at the medium strength on 11 faces), and it is what FaceMesh(refine_landmarks=True)
# and the Face Landmarker run; as a third member it cost 19 % more time per photo (README)
DEFAULT_ATTENTION = True

_verified: set[tuple[str, int, int]] = set()


def _verify(entry: WeightsFile, path: Path) -> Path:
    """A known file must have the published sha256 (checked once per process; 1 MB)."""
    st = path.stat()
    key = (str(path.resolve()), st.st_size, st.st_mtime_ns)
    if entry.sha256 is None or key in _verified:
        return path
    got = sha256sum(path)
    if got != entry.sha256:
        raise WeightsError(
            f"{path}: sha256 {got[:12]}... does not match the published {entry.name!r} "
            f"({entry.sha256[:12]}...); the file is corrupt or a different model (pass weights=PATH to load it anyway)")
    _verified.add(key)
    return path


def _resolve(weights: str | None, entry: WeightsFile, owner: str) -> Path:
    path = choose_weights(weights, owner=owner, published=[entry], demos=[], fits=lambda e: True, verify=_verify,
                          no_fit=f"{owner}: no weights known")
    if path is None:
        raise WeightsError(f"{owner}: weights=none is not available (the network is only useful with MediaPipe's "
                           f"weights); pass weights=auto or a .tflite path")
    return path


def _check_crop(name: str, scale: float, sigma: float) -> None:
    """One-line :class:`SpecError` for a crop scale or heat-map width out of range."""
    if not 0.5 <= scale <= 4.0:
        raise SpecError(f"{name}: scale={scale} outside 0.5..4")
    if sigma <= 0:
        raise SpecError(f"{name}: sigma={sigma} must be positive")


def mediapipe(weights: str = "auto", scale: float = 1.5, sigma: float = 12.0) -> Any:
    """MediaPipe Face Mesh (468 points, Apache-2.0) reduced to iBUG-68, differentiable (converted from TFLite).

    Args:
        weights: ``auto`` (MediaPipe's ``face_landmark.tflite`` from the weights folders), the
            known name ``mediapipe-face-landmark``, or a ``.tflite`` path.
        scale: the crop's side over the face box's longer side (MediaPipe's ROI: 1.5).
        sigma: width in crop pixels (of 192) of the Gaussians rendered at the landmarks, the
            heat-maps Eq. 1 compares.

    Returns:
        A :class:`~lb_mediapipe.extractor.FaceMeshExtractor` in eval mode.
    """
    _check_crop("mediapipe", scale, sigma)
    path = _resolve(weights, FACE_MESH_WEIGHTS, "mediapipe")

    from lb_mediapipe.extractor import FaceMeshExtractor, load_face_mesh

    return FaceMeshExtractor(load_face_mesh(path), scale=scale, sigma=sigma).eval()


def mediapipe_attention(weights: str = "auto", scale: float = 1.5, sigma: float = 12.0) -> Any:
    """MediaPipe Attention Mesh (478 points, Apache-2.0; what FaceMesh(refine_landmarks=True) runs) reduced
    to iBUG-68, differentiable (converted from TFLite, MediaPipe's custom operators rebuilt in torch).

    Args:
        weights: ``auto`` (MediaPipe's ``face_landmark_with_attention.tflite`` from the weights
            folders), the known name ``mediapipe-face-landmark-with-attention``, or a ``.tflite`` path.
        scale: the crop's side over the face box's longer side (MediaPipe's ROI: 1.5).
        sigma: width in crop pixels (of 192) of the Gaussians rendered at the landmarks.

    Returns:
        An :class:`~lb_mediapipe.attention.AttentionMeshExtractor` in eval mode.
    """
    _check_crop("mediapipe-attention", scale, sigma)
    path = _resolve(weights, ATTENTION_MESH_WEIGHTS, "mediapipe-attention")

    from lb_mediapipe.attention import AttentionMeshExtractor, load_attention_mesh

    return AttentionMeshExtractor(load_attention_mesh(path), scale=scale, sigma=sigma).eval()


def blazeface(weights: str = "auto", threshold: float = 0.5, nms: float = 0.3, box: str = "tight", tiles: int = 1) -> Any:
    """MediaPipe BlazeFace short-range detector (Apache-2.0; faces within ~2 m of the camera), converted from TFLite.

    Args:
        weights: ``auto`` (``face_detection_short_range.tflite`` from the weights folders) or a path.
        threshold: minimum score (MediaPipe: 0.5).
        nms: IoU above which overlapping detections are blended (MediaPipe: 0.3, weighted NMS).
        box: ``tight`` widens BlazeFace's box to the brow-to-chin box the extractors' crop
            rules expect; ``raw`` returns BlazeFace's own box.
        tiles: extra levels of overlapping half-size squares, for small faces (default 1; 0: the
            whole image only, as MediaPipe runs it).
    """
    if not 0 <= tiles <= 4:
        raise SpecError(f"blazeface: tiles={tiles} outside 0..4")
    if box not in ("tight", "raw"):
        raise SpecError(f"blazeface: box={box!r} (valid: tight, raw)")
    path = _resolve(weights, BLAZEFACE_WEIGHTS, "blazeface")

    from lb_mediapipe.detector import BlazeFaceDetector

    return BlazeFaceDetector(path, threshold=threshold, nms=nms, tight=box == "tight", tiles=tiles)


@hookimpl
def register_extractors(register: Callable[..., None]) -> None:
    register("mediapipe", mediapipe, weights=[FACE_MESH_WEIGHTS],
             note="regression network: landmarks are its 468 points reduced to iBUG-68; heat-maps are rendered")
    register("mediapipe-attention", mediapipe_attention, weights=[ATTENTION_MESH_WEIGHTS], default=DEFAULT_ATTENTION,
             note="regression network with attention crops: the refined mesh's first 468 points reduced to "
                  "iBUG-68; all 478 in extra['mesh']; heat-maps are rendered")


@hookimpl
def register_detectors(register: Callable[..., None]) -> None:
    register("blazeface", blazeface, weights=[BLAZEFACE_WEIGHTS])
