"""dlib's 68-point shape predictor as an lbcore extractor, with a query-estimated gradient.

dlib's predictor (Kazemi & Sullivan's ensemble of regression trees) is not differentiable: each
split compares the grey levels of two pixels with a threshold, so its output is piecewise
constant in the image. To attack it in the same engine and ensembles as the networks,
:class:`DlibShapePredictor` runs it inside :class:`_PredictorFunction`, a
``torch.autograd.Function`` whose backward *estimates* ``J^T g`` from queries with antithetic
NES (:func:`lb_dlib.estimator.nes_vjp`) in the face's neighbourhood. For Eq. 1
(``heatmap-cosine``) it also renders Gaussian heat-maps from the landmarks, differentiably, so
the ensemble's loss reaches the landmarks and, through the estimator, the pixels.

Every call of the predictor on one face is a *query*; :attr:`DlibShapePredictor.queries`
counts them (``forward`` and ``backward`` separately).
"""

from __future__ import annotations

import importlib.util
from pathlib import Path
from typing import Any

import numpy as np
import torch

from lb_dlib.estimator import nes_vjp
from lbcore import ExtractorOutput, Faces
from lbcore.errors import SpecError, WeightsError
from lbcore.extractor import Extractor
from lbcore.schemes import IBUG68

__all__ = ["DlibShapePredictor", "default_model_path", "render_heatmaps", "MODEL_HINT"]

MODEL_HINT = "pip install 'setuptools<81' face-recognition-models (it ships dlib's 68-point model)"


def default_model_path() -> Path:
    """``shape_predictor_68_face_landmarks.dat`` inside the installed ``face-recognition-models``.

    Located without importing the package (its ``__init__`` needs ``pkg_resources``), as
    lbcore's dlib teacher does.
    """
    spec = importlib.util.find_spec("face_recognition_models")
    if spec is None or spec.origin is None:
        raise WeightsError(f"dlib68 needs dlib's 68-point model: {MODEL_HINT}")
    dat = Path(spec.origin).parent / "models" / "shape_predictor_68_face_landmarks.dat"
    if not dat.is_file():
        raise WeightsError(f"{dat}: dlib's 68-point model is missing; reinstall face-recognition-models")
    return dat


def load_predictor(path: Path) -> Any:
    """``dlib.shape_predictor`` from a ``.dat`` file (dlib's own deserialiser: data, no code)."""
    try:
        import dlib
    except ImportError:
        raise SpecError("dlib68 needs dlib: pip install dlib-bin") from None
    if not path.is_file():
        raise WeightsError(f"{path}: no such shape-predictor file")
    try:
        return dlib.shape_predictor(str(path))
    except RuntimeError as err:
        raise WeightsError(f"{path}: not a dlib shape predictor ({str(err).strip().splitlines()[0][:100]})") from None


def render_heatmaps(points: torch.Tensor, size: int, sigma: float) -> torch.Tensor:
    """Gaussian heat-maps ``(F, K, size, size)`` centred on ``points`` ``(F, K, 2)`` (heat-map
    pixels, centres at integers); differentiable with respect to ``points``."""
    grid = torch.arange(size, device=points.device, dtype=points.dtype)
    dx = (grid[None, None, None, :] - points[..., 0, None, None]) ** 2
    dy = (grid[None, None, :, None] - points[..., 1, None, None]) ** 2
    return torch.exp(-(dx + dy) / (2.0 * sigma * sigma))


def _to_uint8_hwc(image: torch.Tensor) -> np.ndarray:
    """``(3, H, W)`` float 0..255 -> contiguous ``(H, W, 3)`` uint8, as an 8-bit file would hold."""
    arr = image.detach().float().round().clamp(0, 255).to(torch.uint8).permute(1, 2, 0).cpu().numpy()
    return np.ascontiguousarray(arr)


class DlibShapePredictor(Extractor):
    """dlib's 68-point shape predictor on each face box; gradients estimated from queries.

    Args:
        model: path of a dlib shape-predictor ``.dat`` (68 points); default the one in
            ``face-recognition-models``.
        samples: queries per face per backward (NES, antithetic pairs; rounded up to even).
        sigma: standard deviation of the NES perturbation (0..255 scale).
        seed: seeds the perturbations (each backward draws new ones from this stream).
        region: the perturbed square: the box's centre, side ``region`` times the box's longer side.
        tile: pixels per side of the blocks sharing one perturbation value (1 = every pixel).
        heatmaps: render Gaussian heat-maps from the landmarks (so ``heatmap-cosine`` applies).
        heatmap_size: side of the rendered heat-maps (they cover the ``region`` square).
        hm_sigma: width of the rendered Gaussians in heat-map pixels.
        grad: ``surrogate`` (soft trees along dlib's path, no queries) or ``nes`` (queries).
        temperature: width (grey levels) of the soft trees' sigmoids.
        blur: Gaussian sigma (pixels) the surrogate's gradient is smoothed with (0: off). dlib reads
            single pixels, so its raw gradient is a sparse set of dots that JPEG re-compression
            removes; smoothed, the change spreads over each dot's neighbours. The smoothed gradient is
            rescaled to the raw one's norm, so that dlib pulls as hard as before in an ensemble.
    """

    scheme = IBUG68

    def __init__(self, model: str | Path | None = None, samples: int = 96, sigma: float = 6.0, seed: int = 0,
                 region: float = 1.5, tile: int = 2, heatmaps: bool = True, heatmap_size: int = 64,
                 hm_sigma: float = 3.0, grad: str = "surrogate", temperature: float = 8.0,
                 blur: float = 0.0) -> None:
        super().__init__()
        if grad not in ("nes", "surrogate"):
            raise SpecError(f"dlib68: unknown grad {grad!r} (valid: nes, surrogate)")
        if temperature <= 0:
            raise SpecError("dlib68: temperature > 0 is required")
        if not 0 <= blur <= 50:
            raise SpecError("dlib68: blur must be in 0..50 (pixels)")
        if samples < 0 or sigma <= 0 or region <= 0 or tile < 1 or heatmap_size < 2 or hm_sigma <= 0:
            raise SpecError("dlib68: samples >= 0, sigma > 0, region > 0, tile >= 1, heatmap_size >= 2 "
                            "and hm_sigma > 0 are required")
        self.model_path = Path(model) if model is not None else default_model_path()
        self.predictor = load_predictor(self.model_path)
        self.samples = int(samples)
        self.sigma = float(sigma)
        self.seed = int(seed)
        self.region = float(region)
        self.tile = int(tile)
        self.render = bool(heatmaps)
        self.heatmap_size = int(heatmap_size)
        self.hm_sigma = float(hm_sigma)
        self.generator = torch.Generator().manual_seed(self.seed)
        self.queries = {"forward": 0, "backward": 0}
        self.grad = grad
        self.temperature = float(temperature)
        self.blur = float(blur)
        self._cascade: Any = None

    @property
    def cascade(self) -> Any:
        """The predictor's trees as a :class:`~lb_dlib.trees.TreeCascade` (decoded on first use)."""
        if self._cascade is None:
            from lb_dlib.trees import TreeCascade, read_model

            self._cascade = TreeCascade(read_model(self.model_path))
        return self._cascade

    # -- dlib ------------------------------------------------------------------------------
    def run_dlib(self, image: np.ndarray, box: tuple[float, float, float, float],
                 offset: tuple[int, int] = (0, 0)) -> np.ndarray:
        """dlib's landmarks ``(68, 2)`` for ``box`` (x1, y1, x2, y2 in full-image pixels) on an
        ``(H, W, 3)`` uint8 ``image`` whose top-left pixel is full-image ``offset`` ``(x, y)``."""
        import dlib

        ox, oy = offset
        rect = dlib.rectangle(int(round(box[0])) - ox, int(round(box[1])) - oy,
                              int(round(box[2])) - ox, int(round(box[3])) - oy)
        shape = self.predictor(image, rect)
        pts = np.array([[p.x + ox, p.y + oy] for p in shape.parts()], dtype=np.float32)
        if pts.shape != (68, 2):
            raise WeightsError(f"{self.model_path}: predicts {pts.shape[0]} points, dlib68 needs 68")
        return pts

    def region_of(self, box: torch.Tensor, h: int, w: int) -> tuple[int, int, int, int]:
        """The perturbed square of a face (integer bounds, clipped to the image)."""
        x1, y1, x2, y2 = (float(v) for v in box)
        cx, cy = (x1 + x2) / 2, (y1 + y2) / 2
        half = self.region * max(x2 - x1, y2 - y1) / 2
        return (max(0, int(np.floor(cx - half))), max(0, int(np.floor(cy - half))),
                min(w, int(np.ceil(cx + half)) + 1), min(h, int(np.ceil(cy + half)) + 1))

    def window_of(self, box: torch.Tensor, h: int, w: int) -> tuple[int, int, int, int]:
        """The part of the image the backward's queries see: the region and a margin of one box side
        (dlib reads only near its current shape; pixels beyond the window read as zero)."""
        x1, y1, x2, y2 = (float(v) for v in box)
        side = 0.5 * max(x2 - x1, y2 - y1)
        rx1, ry1, rx2, ry2 = self.region_of(box, h, w)
        return (max(0, int(rx1 - side)), max(0, int(ry1 - side)), min(w, int(rx2 + side)), min(h, int(ry2 + side)))

    def landmarks(self, images: torch.Tensor, faces: Faces) -> torch.Tensor:
        """dlib's landmarks ``(F, 68, 2)`` (float32, on ``images``' device), counted as queries."""
        out = torch.zeros((len(faces), 68, 2), dtype=torch.float32)
        cache: dict[int, np.ndarray] = {}
        for i in range(len(faces)):
            b = int(faces.image_index[i])
            if b not in cache:
                cache[b] = _to_uint8_hwc(images[b])
            out[i] = torch.from_numpy(self.run_dlib(cache[b], tuple(faces.boxes[i].tolist())))  # type: ignore[arg-type]
            self.queries["forward"] += 1
        return out.to(images.device)

    def surrogate_vjp(self, images: torch.Tensor, faces: Faces, grad: torch.Tensor) -> torch.Tensor:
        """``J^T grad`` of the soft-tree surrogate along dlib's own path (white box, no queries)."""
        out = torch.zeros(images.shape, dtype=torch.float32)
        _, _, h, w = images.shape
        for i in range(len(faces)):
            if not bool(grad[i].abs().sum() > 0):
                continue
            b = int(faces.image_index[i])
            box = faces.boxes[i].detach().cpu()
            wx1, wy1, wx2, wy2 = self.window_of(box, h, w)
            win = images[b, :, wy1:wy2, wx1:wx2].detach().float().cpu().round().requires_grad_(True)
            rect = tuple(int(round(float(v))) for v in box)
            rect = (rect[0] - wx1, rect[1] - wy1, rect[2] - wx1, rect[3] - wy1)
            with torch.enable_grad():
                _, soft = self.cascade.run(win, rect, temperature=self.temperature)  # type: ignore[arg-type]
                (g,) = torch.autograd.grad((soft * grad[i].detach().cpu().float()).sum(), win)
            if self.blur > 0:  # smoothed, at the raw gradient's norm: the same pull in an ensemble's sum
                smooth = _gaussian_blur(g, self.blur)
                g = smooth * (g.norm() / smooth.norm().clamp_min(1e-30))
            out[b, :, wy1:wy2, wx1:wx2] += g
        return out.to(images.device)

    def estimate_vjp(self, images: torch.Tensor, faces: Faces, grad: torch.Tensor) -> torch.Tensor:
        """NES estimate of ``J^T grad`` for the landmarks of every face (``grad`` ``(F, 68, 2)``)."""
        out = torch.zeros(images.shape, dtype=torch.float32)
        _, _, h, w = images.shape
        for i in range(len(faces)):
            if not bool(grad[i].abs().sum() > 0):
                continue
            b = int(faces.image_index[i])
            box = faces.boxes[i].detach().cpu()
            wx1, wy1, wx2, wy2 = self.window_of(box, h, w)
            rx1, ry1, rx2, ry2 = self.region_of(box, h, w)
            window = images[b, :, wy1:wy2, wx1:wx2].detach().float().cpu()
            base = _to_uint8_hwc(window)
            # the region inside the window, HWC float (perturbations are added here, then rounded)
            sl = (slice(ry1 - wy1, ry2 - wy1), slice(rx1 - wx1, rx2 - wx1))
            reg = window[:, sl[0], sl[1]].permute(1, 2, 0).numpy()
            box_t = tuple(box.tolist())

            def query(delta: torch.Tensor, _base: Any = base, _reg: Any = reg, _sl: Any = sl,
                      _box: Any = box_t, _off: Any = (wx1, wy1)) -> torch.Tensor:
                im = _base.copy()
                buf = _reg + delta.permute(1, 2, 0).numpy()
                np.rint(buf, out=buf)
                np.clip(buf, 0, 255, out=buf)
                im[_sl] = buf
                self.queries["backward"] += 1
                return torch.from_numpy(self.run_dlib(im, _box, _off))

            est = nes_vjp(query, (3, ry2 - ry1, rx2 - rx1), grad[i].detach().cpu(), self.samples, self.sigma,
                          self.generator, tile=self.tile)
            out[b, :, ry1:ry2, rx1:rx2] += est
        return out.to(images.device)

    def reset_queries(self) -> None:
        self.queries = {"forward": 0, "backward": 0}

    @property
    def total_queries(self) -> int:
        return self.queries["forward"] + self.queries["backward"]

    # -- the extractor contract ------------------------------------------------------------
    def forward(self, images: torch.Tensor, faces: Faces) -> ExtractorOutput:
        """Landmarks ``(F, 68, 2)`` in image pixels (gradient: NES estimate) and, with
        ``heatmaps``, Gaussian heat-maps rendered from them over each face's region square."""
        lm = _PredictorFunction.apply(images, faces.boxes, faces.image_index, self)
        out = ExtractorOutput(landmarks=lm)
        if self.render:
            boxes = faces.boxes.to(images.device, torch.float32)
            cx, cy = (boxes[:, 0] + boxes[:, 2]) / 2, (boxes[:, 1] + boxes[:, 3]) / 2
            side = self.region * torch.maximum(boxes[:, 2] - boxes[:, 0], boxes[:, 3] - boxes[:, 1])
            m = self.heatmap_size
            s = side / m
            z = torch.zeros_like(s)
            theta = torch.stack([torch.stack([s, z, cx - side / 2 + 0.5 * s], 1),
                                 torch.stack([z, s, cy - side / 2 + 0.5 * s], 1)], 1)  # hm pixel -> image
            # image -> heat-map pixels (the inverse of theta: a scale and a shift)
            hm_pts = (lm - theta[:, None, :, 2]) / s[:, None, None]
            out.heatmaps = render_heatmaps(hm_pts, m, self.hm_sigma)
            out.hm_to_image = theta
        return out

    def decode(self, output: ExtractorOutput) -> torch.Tensor:
        """dlib's landmarks themselves (image pixels)."""
        if output.landmarks is None:
            raise ValueError("dlib68 output without landmarks")
        return output.landmarks.float()

    def extra_repr(self) -> str:
        return (f"model={self.model_path.name}, samples={self.samples}, sigma={self.sigma}, "
                f"region={self.region}, tile={self.tile}, heatmaps={self.render}")


def _gaussian_blur(g: torch.Tensor, sigma: float) -> torch.Tensor:
    """``(C, H, W)`` smoothed by a separable Gaussian of ``sigma`` pixels (zero padding)."""
    radius = max(1, int(3 * sigma + 0.5))
    t = torch.arange(-radius, radius + 1, dtype=torch.float32)
    k = torch.exp(-0.5 * (t / sigma) ** 2)
    k = k / k.sum()
    x = g.unsqueeze(1)  # channels as a batch: the same kernel for each
    x = torch.nn.functional.conv2d(x, k.view(1, 1, 1, -1), padding=(0, radius))
    x = torch.nn.functional.conv2d(x, k.view(1, 1, -1, 1), padding=(radius, 0))
    return x.squeeze(1)


class _PredictorFunction(torch.autograd.Function):
    """images -> dlib landmarks; backward: NES estimate of ``J^T grad_output`` (see module doc)."""

    @staticmethod
    def forward(ctx: Any, images: torch.Tensor, boxes: torch.Tensor, image_index: torch.Tensor,
                ext: DlibShapePredictor) -> torch.Tensor:
        faces = Faces(boxes.detach(), image_index)
        ctx.save_for_backward(images.detach(), boxes.detach(), image_index)
        ctx.ext = ext
        return ext.landmarks(images.detach(), faces)

    @staticmethod
    def backward(ctx: Any, *grads: torch.Tensor) -> tuple[torch.Tensor | None, None, None, None]:
        (grad,) = grads
        images, boxes, image_index = ctx.saved_tensors
        if not ctx.needs_input_grad[0]:
            return None, None, None, None
        fn = ctx.ext.surrogate_vjp if ctx.ext.grad == "surrogate" else ctx.ext.estimate_vjp
        est = fn(images, Faces(boxes, image_index), grad)
        return est.to(images.dtype), None, None, None

