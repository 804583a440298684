"""Video key frames: the full attack on key frames, the frames between them start from the
key frame's perturbation warped along dense optical flow (OpenCV's DIS) and run a few steps.

:class:`KeyFramePlanner` decides, frame by frame and holding only the last key frame and the
previous frame (small grey copies) and the key frame's face boxes, which frames are key frames:
every ``interval``-th frame, the first frame with faces, and any frame that is not a continuation
of its key frame:

- a scene cut since the key frame: some frame, with or without faces, differs from the frame
  before it, warped onto it along the flow, by more than ``cut_error`` grey levels on average
  (over the whole frame or inside its face boxes). Consecutive frames: motion within a shot,
  however fast, is what the flow models from one frame to the next, while the error against a
  key frame several frames back also grows with the motion itself;
- a face that the key frame does not have (a box with no key-frame box of IoU >= ``min_iou``
  where the flow puts it).

Those frames inherit nothing. A frame of the same shot whose key frame, warped onto it, still
differs by more than ``drift_error`` (the flow from the key frame no longer holds: fast motion,
a turning head) becomes a key frame too (``drift``), warm-started from the warped key frame's
perturbation. :func:`warp` moves a perturbation along a planned flow.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence
from typing import Any

import attrs
import numpy as np

__all__ = ["FramePlan", "KeyFramePlanner", "box_iou", "dense_flow", "warp", "warp_numpy"]


@attrs.define
class FramePlan:
    """What to do with one video frame.

    Attributes:
        index: the frame's number in the video.
        kind: ``key`` (full attack), ``propagated`` (start from ``ref``'s perturbation warped by
            ``flow``, few steps) or ``none`` (no face).
        ref: the frame whose perturbation is warped onto this one: a propagated frame's key
            frame, or for a key frame chosen by the interval the previous key frame (a warm
            start); ``None`` when nothing is inherited (first key frame, cut, new face).
        flow: ``(2, h, w)`` float32: for each pixel of this frame (at the planner's working
            size ``h, w``), where it lies in frame ``ref`` (dx, dy in working pixels); ``None``
            without ``ref``.
        reason: why a key frame is one (``first``, ``interval``, ``cut``, ``new face``, ``drift``).
        error: mean absolute grey-level difference between this frame and its key frame warped
            onto it (whole frame or face boxes, the larger); for a ``cut``, the consecutive-frame
            error that found it; NaN when not computed.
    """

    index: int
    kind: str
    ref: int | None = None
    flow: np.ndarray | None = None
    reason: str = ""
    error: float = float("nan")


def _grey(rgb: np.ndarray, max_side: int) -> tuple[np.ndarray, float]:
    import cv2

    h, w = rgb.shape[:2]
    s = min(1.0, max_side / max(h, w))
    g = cv2.cvtColor(np.ascontiguousarray(rgb), cv2.COLOR_RGB2GRAY)
    if s < 1.0:
        g = cv2.resize(g, (max(1, round(w * s)), max(1, round(h * s))), interpolation=cv2.INTER_AREA)
    return g, s


def dense_flow(frame_grey: np.ndarray, ref_grey: np.ndarray, dis: Any = None) -> np.ndarray:
    """OpenCV DIS optical flow from ``frame_grey`` to ``ref_grey``: ``(2, h, w)`` float32, for each
    pixel of the frame its displacement to the matching point of ``ref``."""
    import cv2

    dis = dis or cv2.DISOpticalFlow_create(cv2.DISOPTICAL_FLOW_PRESET_FAST)  # type: ignore[attr-defined]
    flow = dis.calc(frame_grey, ref_grey, None)  # (h, w, 2)
    return np.ascontiguousarray(flow.transpose(2, 0, 1), dtype=np.float32)


@functools.lru_cache(maxsize=4)
def _pixel_grid(h: int, w: int) -> tuple[np.ndarray, np.ndarray]:
    """``(xs, ys)``: each pixel's own coordinates, float32 ``(h, w)`` (read-only; shared)."""
    xs, ys = np.meshgrid(np.arange(w, dtype=np.float32), np.arange(h, dtype=np.float32))
    xs.flags.writeable = False
    ys.flags.writeable = False
    return xs, ys


def warp_numpy(img: np.ndarray, flow: np.ndarray) -> np.ndarray:
    """``img`` (``(h, w)`` or ``(h, w, c)``, the reference frame's grid) pulled onto the frame the
    flow ``(2, h, w)`` starts from (bilinear, zero outside)."""
    import cv2

    h, w = flow.shape[1:]
    xs, ys = _pixel_grid(h, w)
    return cv2.remap(img, xs + flow[0], ys + flow[1], cv2.INTER_LINEAR, borderMode=cv2.BORDER_CONSTANT, borderValue=0)


def warp(delta: Any, flow: Any) -> Any:
    """A perturbation ``(N, C, H, W)`` (torch, the reference frames' grid) warped onto the frames
    the flows ``(N, 2, h, w)`` start from; the flow (working size) is resized to ``H, W``.
    Bilinear; pixels that come from outside the reference frame get 0."""
    import torch
    import torch.nn.functional as F

    n, _, hh, ww = delta.shape
    flow = torch.as_tensor(flow, device=delta.device, dtype=torch.float32)
    h, w = flow.shape[-2:]
    if (h, w) != (hh, ww):
        flow = F.interpolate(flow, size=(hh, ww), mode="bilinear", align_corners=False)
        flow = flow * torch.tensor([ww / w, hh / h], device=delta.device).view(1, 2, 1, 1)
    ys, xs = torch.meshgrid(torch.arange(hh, device=delta.device, dtype=torch.float32),
                            torch.arange(ww, device=delta.device, dtype=torch.float32), indexing="ij")
    gx = (xs + flow[:, 0]) * (2.0 / max(ww - 1, 1)) - 1.0
    gy = (ys + flow[:, 1]) * (2.0 / max(hh - 1, 1)) - 1.0
    grid = torch.stack([gx, gy], dim=-1)
    return F.grid_sample(delta.float(), grid, mode="bilinear", padding_mode="zeros", align_corners=True)


def box_iou(p: Sequence[float], q: Sequence[float]) -> float:
    """Intersection over union of two ``[x1, y1, x2, y2]`` boxes (0 for empty ones)."""
    ix = max(0.0, min(p[2], q[2]) - max(p[0], q[0]))
    iy = max(0.0, min(p[3], q[3]) - max(p[1], q[1]))
    inter = ix * iy
    union = (p[2] - p[0]) * (p[3] - p[1]) + (q[2] - q[0]) * (q[3] - q[1]) - inter
    return inter / union if union > 0 else 0.0


class KeyFramePlanner:
    """Chooses key frames and computes the flows to them, one frame at a time (see the module
    docstring). Keeps only the last key frame's and the previous frame's grey copies and the key
    frame's boxes: memory does not grow with the video.

    Args:
        interval: a key frame at least every this many frames (1: every frame is a key frame).
        cut_error: mean absolute grey-level error (0..255) between a frame and the previous one
            warped onto it above which there is a scene cut between them.
        drift_error: error against the key frame above which a frame of the same shot becomes a
            warm-started key frame (default: twice ``cut_error``).
        min_iou: a face box matches a key-frame face when their IoU (after moving by the flow)
            is at least this.
        max_side: the flow is computed on frames shrunk to this longest side.
    """

    def __init__(self, interval: int, *, cut_error: float = 15.0, drift_error: float | None = None,
                 min_iou: float = 0.3, max_side: int = 640) -> None:
        import cv2

        self.interval = max(1, int(interval))
        self.cut_error = float(cut_error)
        self.drift_error = 2.0 * self.cut_error if drift_error is None else float(drift_error)
        self.min_iou = float(min_iou)
        self.max_side = int(max_side)
        self.dis = cv2.DISOpticalFlow_create(cv2.DISOPTICAL_FLOW_PRESET_FAST)  # type: ignore[attr-defined]
        self.key: int | None = None
        self.key_grey: np.ndarray | None = None
        self.key_boxes: list[list[float]] = []
        self.prev_grey: np.ndarray | None = None
        self.cut_seen: float | None = None  # the largest consecutive error past cut_error since the key frame

    def plan(self, index: int, rgb: np.ndarray, boxes: list[list[float]]) -> FramePlan:
        """The plan for frame ``index`` (frames must come in order, every one of them, faces or
        not: a cut in frames without faces still ends the key frame) with face ``boxes``."""
        grey, s = _grey(rgb, self.max_side)
        prev, self.prev_grey = self.prev_grey, grey
        if prev is not None and prev.shape == grey.shape and self.key is not None:
            step = self._error(grey, prev, dense_flow(grey, prev, self.dis), boxes, s)
            if step > self.cut_error:
                self.cut_seen = max(step, self.cut_seen or step)
        if not boxes:
            return FramePlan(index, "none")
        if self.key is None or self.key_grey is None or self.key_grey.shape != grey.shape:
            return self._new_key(index, grey, boxes, "first", None, None, float("nan"))
        if self.cut_seen is not None:  # a cut since the key frame
            return self._new_key(index, grey, boxes, "cut", None, None, self.cut_seen)
        flow = dense_flow(grey, self.key_grey, self.dis)
        error = self._error(grey, self.key_grey, flow, boxes, s)
        if not self._same_faces(flow, boxes, s):
            return self._new_key(index, grey, boxes, "new face", None, None, error)
        if error > self.drift_error:
            return self._new_key(index, grey, boxes, "drift", self.key, flow, error)
        if index - self.key >= self.interval:
            return self._new_key(index, grey, boxes, "interval", self.key, flow, error)
        return FramePlan(index, "propagated", self.key, flow, "", error)

    def _new_key(self, index: int, grey: np.ndarray, boxes: list[list[float]], reason: str, ref: int | None,
                 flow: np.ndarray | None, error: float) -> FramePlan:
        self.key, self.key_grey, self.key_boxes = index, grey, [list(b) for b in boxes]
        self.cut_seen = None
        return FramePlan(index, "key", ref, flow, reason, error)

    @staticmethod
    def _error(grey: np.ndarray, ref_grey: np.ndarray, flow: np.ndarray, boxes: list[list[float]], s: float) -> float:
        """Mean absolute grey-level error of ``ref_grey`` warped onto ``grey`` along ``flow``: the
        whole frame's or inside a face box's, the larger."""
        warped = warp_numpy(ref_grey.astype(np.float32), flow)
        h, w = grey.shape
        xs, ys = _pixel_grid(h, w)
        # only pixels whose match lies inside the reference frame (borders uncovered by motion are not errors)
        inside = (xs + flow[0] >= 0) & (xs + flow[0] <= w - 1) & (ys + flow[1] >= 0) & (ys + flow[1] <= h - 1)
        diff = np.abs(warped - grey.astype(np.float32))
        worst = float(diff[inside].mean()) if inside.any() else float("inf")
        for b in boxes:
            x1, y1 = max(0, int(b[0] * s)), max(0, int(b[1] * s))
            x2, y2 = min(w, int(np.ceil(b[2] * s))), min(h, int(np.ceil(b[3] * s)))
            m = inside[y1:y2, x1:x2]
            if m.any():
                worst = max(worst, float(diff[y1:y2, x1:x2][m].mean()))
        return worst

    def _same_faces(self, flow: np.ndarray, boxes: list[list[float]], s: float) -> bool:
        """Every face of this frame has a key-frame face where the flow puts it."""
        h, w = flow.shape[1:]
        for b in boxes:
            x1, y1 = min(w - 1, max(0, int(b[0] * s))), min(h - 1, max(0, int(b[1] * s)))
            x2, y2 = max(x1 + 1, min(w, int(np.ceil(b[2] * s)))), max(y1 + 1, min(h, int(np.ceil(b[3] * s))))
            dx, dy = (float(flow[k, y1:y2, x1:x2].mean()) / s for k in (0, 1))
            moved = [b[0] + dx, b[1] + dy, b[2] + dx, b[3] + dy]
            if not any(box_iou(moved, k) >= self.min_iou for k in self.key_boxes):
                return False
        return True
