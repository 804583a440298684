"""The face-detector contract and the built-in OpenCV Haar-cascade detector.

A detector is a callable ``(H, W, 3) uint8 RGB numpy image -> (N, 5) float array`` of
``x1, y1, x2, y2, score`` in image pixels, best first.
"""

from __future__ import annotations

from typing import Any

import numpy as np

__all__ = ["Detector", "HaarDetector"]


class Detector:
    """Base class for face detectors."""

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
