"""BlazeFace short-range (MediaPipe's face detector) as an lbcore detector.

Follows MediaPipe's ``face_detection_short_range`` graph: the image is letterboxed to a square
(zero borders) and resized to 128 x 128, scaled to ``[-1, 1]``; the network scores 896 SSD
anchors (a 16 x 16 grid of stride 8 with 2 anchors per cell, an 8 x 8 grid of stride 16 with 6;
fixed unit anchor size, centres at cell centres) and regresses per anchor a box ``(dx, dy, w, h)``
and 6 keypoints in input pixels relative to the anchor centre. Scores are sigmoids of the logits
(clipped to +-100), kept above ``threshold``; overlapping boxes (IoU > ``nms``) are blended,
weighted by score (MediaPipe's WEIGHTED non-maximum suppression).

Runs without gradients on the CPU (the detector only finds boxes).
"""

from __future__ import annotations

import os

import numpy as np
import torch
import torch.nn.functional as F

from lb_mediapipe.tflite_torch import TFLiteNet
from lbcore.detectors import Detector

__all__ = ["BlazeFaceDetector", "anchors"]

INPUT = 128


def anchors() -> np.ndarray:
    """The 896 anchor centres ``(x, y)`` in ``[0, 1]`` of the short-range model, in output order."""
    out = []
    for stride, per_cell in ((8, 2), (16, 6)):
        n = INPUT // stride
        for y in range(n):
            for x in range(n):
                out += [((x + 0.5) / n, (y + 0.5) / n)] * per_cell
    return np.asarray(out, dtype=np.float32)


def _iou(box: np.ndarray, others: np.ndarray) -> np.ndarray:
    x1 = np.maximum(box[0], others[:, 0])
    y1 = np.maximum(box[1], others[:, 1])
    x2 = np.minimum(box[2], others[:, 2])
    y2 = np.minimum(box[3], others[:, 3])
    inter = np.clip(x2 - x1, 0, None) * np.clip(y2 - y1, 0, None)
    area = (box[2] - box[0]) * (box[3] - box[1])
    areas = (others[:, 2] - others[:, 0]) * (others[:, 3] - others[:, 1])
    return inter / np.maximum(area + areas - inter, 1e-9)


def weighted_nms(dets: np.ndarray, iou: float) -> np.ndarray:
    """``(N, 5+)`` rows ``x1 y1 x2 y2 score ...``: clusters of IoU > ``iou`` around the best
    remaining detection become their score-weighted mean (coordinates), with the best score."""
    order = np.argsort(-dets[:, 4])
    dets = dets[order]
    out = []
    while len(dets):
        overlap = _iou(dets[0], dets[:, :4]) > iou
        cluster = dets[overlap]
        w = cluster[:, 4:5]
        merged = (cluster * w).sum(0) / w.sum()
        merged[4] = dets[0, 4]
        out.append(merged)
        dets = dets[~overlap]
    return np.asarray(out, dtype=np.float32).reshape(-1, dets.shape[1] if len(out) == 0 else len(out[0]))


class BlazeFaceDetector(Detector):
    """MediaPipe BlazeFace short range (see the module docstring).

    Args:
        path: ``face_detection_short_range.tflite``.
        threshold: minimum score.
        nms: IoU for the weighted non-maximum suppression.
        tight: move the box's top edge down by 10 % of its height, to the brow-to-chin box the
            extractors' crop rules expect (BlazeFace's box starts on the forehead: on the three
            faces68 photos it finds, its top lay 2-17 % of its height above the annotated brows,
            its bottom within 1 % of the chin); ``False`` returns BlazeFace's box as is.
        tiles: also run on overlapping squares of 1/2, 1/4, ... of the image side, down to
            this many levels (stopping at squares under 85 px), for faces too small for the
            short-range model at the whole image's scale (0: the whole image only, as MediaPipe).
    """

    def __init__(self, path: str | os.PathLike[str], threshold: float = 0.5, nms: float = 0.3, tight: bool = True,
                 tiles: int = 0) -> None:
        self.net = TFLiteNet(path, input_shape=(1, INPUT, INPUT, 3), output_sizes=(896 * 16, 896),
                             what="a BlazeFace short-range model (face_detection_short_range.tflite)").eval()
        self.anchors = anchors()
        self.threshold = float(threshold)
        self.nms = float(nms)
        self.tight = tight
        self.tiles = int(tiles)

    def _window(self, image: np.ndarray, x0: int, y0: int, side: int) -> np.ndarray:
        """Detections ``(N, 17)`` in the ``side``-pixel square window at ``(x0, y0)`` (zero
        outside the image; the whole image, letterboxed, when the window is its bounding square)."""
        h, w = image.shape[:2]
        x = torch.from_numpy(np.ascontiguousarray(image)).permute(2, 0, 1)[None].float()
        x = x[..., max(y0, 0): min(y0 + side, h), max(x0, 0): min(x0 + side, w)]
        # zero borders where the window leaves the image, as MediaPipe's letterbox (BORDER_ZERO)
        left, top = max(-x0, 0), max(-y0, 0)
        x = F.pad(x, (left, side - x.shape[3] - left, top, side - x.shape[2] - top))
        # antialiased (MediaPipe samples without): large photos shrink ~10x to 128 px
        x = F.interpolate(x, size=(INPUT, INPUT), mode="bilinear", align_corners=False, antialias=True)
        with torch.no_grad():
            reg, cls = self.net(x / 127.5 - 1.0)
        reg = reg[0].numpy().astype(np.float64)
        logit = np.clip(cls[0, :, 0].numpy().astype(np.float64), -100.0, 100.0)
        score = 1.0 / (1.0 + np.exp(-logit))
        keep = score >= self.threshold
        if not keep.any():
            return np.zeros((0, 17), dtype=np.float64)
        a = self.anchors[keep].astype(np.float64)
        r = reg[keep] / INPUT
        cx, cy = r[:, 0] + a[:, 0], r[:, 1] + a[:, 1]
        bw, bh = r[:, 2], r[:, 3]
        kp = r[:, 4:16].reshape(-1, 6, 2) + a[:, None, :]
        boxes = np.stack([cx - bw / 2, cy - bh / 2, cx + bw / 2, cy + bh / 2], axis=1)
        # normalised window coordinates -> image pixels (pixel centres at integers)
        boxes = boxes * side + np.array([x0, y0, x0, y0]) - 0.5
        kp = kp * side + np.array([x0, y0]) - 0.5
        return np.concatenate([boxes, score[keep, None], kp.reshape(-1, 12)], axis=1)

    def raw(self, image: np.ndarray) -> np.ndarray:
        """``(N, 17)`` rows ``x1 y1 x2 y2 score kx0 ky0 ... kx5 ky5`` in image pixels (after NMS)."""
        h, w = image.shape[:2]
        side = max(h, w)
        found = [self._window(image, (w - side) // 2, (h - side) // 2, side)]
        for level in range(1, self.tiles + 1):
            # squares of half the size at each level, overlapping by half, over the whole image
            tile = side >> level
            if tile < 2 * INPUT // 3:
                break
            step = tile // 2
            for y0 in range(0, max(h - step, 1), step):
                for x0 in range(0, max(w - step, 1), step):
                    d = self._window(image, x0, y0, tile)
                    # a face cut by the tile's edge is found whole at another tile or level
                    inside = ((d[:, 0] >= x0) & (d[:, 1] >= y0) & (d[:, 2] < x0 + tile) & (d[:, 3] < y0 + tile))
                    found.append(d[inside])
        dets = np.concatenate(found, axis=0)
        if not len(dets):
            return np.zeros((0, 17), dtype=np.float32)
        return weighted_nms(dets, self.nms)

    def __call__(self, image: np.ndarray) -> np.ndarray:
        dets = self.raw(image)
        if len(dets) == 0:
            return np.zeros((0, 5), dtype=np.float32)
        out = dets[:, :5].copy()
        if self.tight:
            out[:, 1] += 0.1 * (out[:, 3] - out[:, 1])
        return out[np.argsort(-out[:, 4])].astype(np.float32)
