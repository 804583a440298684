"""An ONNX landmark network, converted to torch, as a differentiable lbcore extractor.

The geometry comes from the model's :class:`~lb_onnx.description.Description`:

* **crop** ``box``: a square of side ``enlarge * side(box)`` centred on the box centre (moved by
  ``shift`` box widths/heights), sampled with :func:`lbcore.extractor.affine_crop`. With
  ``align="cv2"`` crop pixel ``N/2`` is the centre (``cv2.warpAffine`` with the matrix
  ``scale, translation`` that FaceFusion and InsightFace build); with ``align="area"`` it is
  ``(N-1)/2`` (the crop's pixel squares tile the square). ``face-alignment`` is FAN's rule and
  decoding, taken from lb-fan.
* **heat-map cell -> crop pixel**: ``i * N/h`` with ``cv2`` alignment (FaceFusion's ``/ 64 * 256``),
  ``(i + 0.5) N/h - 0.5`` with ``area``.
* **coordinates -> crop pixel**: ``(v + coords_offset) * coords_scale + coords_shift``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from lb_onnx.description import Description
from lbcore import ExtractorOutput, Faces
from lbcore.extractor import (
    Extractor,
    affine_crop,
    apply_affine,
    argmax_2d,
    compose_affine,
    render_gaussians,
    soft_argmax,
)
from lbcore.schemes import IBUG68, WFLW98
from lbcore.types import LandmarkScheme

__all__ = ["OnnxExtractor", "box_crop_theta", "scheme_of"]


def scheme_of(desc: Description) -> LandmarkScheme:
    """The lbcore scheme of a description (with flip orders where lbcore knows them)."""
    for s in (IBUG68, WFLW98):
        if desc.scheme == s.name and desc.eye_corners == s.eye_corners:
            return s
    return LandmarkScheme(desc.scheme, desc.points, desc.eye_corners)


def box_crop_theta(boxes: torch.Tensor, size: int, side: str = "max", enlarge: float = 1.0,
                   shift: tuple[float, float] = (0.0, 0.0), align: str = "cv2") -> torch.Tensor:
    """``(F, 4)`` boxes -> ``(F, 2, 3)`` crop-pixel -> image-pixel maps of a square box crop."""
    b = boxes.to(torch.float32)
    w = b[:, 2] - b[:, 0]
    h = b[:, 3] - b[:, 1]
    cx = (b[:, 0] + b[:, 2]) / 2 + shift[0] * w
    cy = (b[:, 1] + b[:, 3]) / 2 + shift[1] * h
    length = torch.maximum(w, h) if side == "max" else (w + h) / 2
    s = (enlarge * length).clamp_min(1e-3) / size
    centre = size / 2 if align == "cv2" else (size - 1) / 2
    z = torch.zeros_like(s)
    return torch.stack([torch.stack([s, z, cx - centre * s], 1), torch.stack([z, s, cy - centre * s], 1)], 1)


def _quarter_shift(heatmaps: torch.Tensor, peaks: torch.Tensor) -> torch.Tensor:
    """+-0.25 cell toward the larger neighbour per axis (peaks off the border only)."""
    f, k, h, w = heatmaps.shape
    flat = heatmaps.reshape(f, k, h * w)
    px, py = peaks[..., 0].long(), peaks[..., 1].long()
    inside = ((px > 0) & (px < w - 1) & (py > 0) & (py < h - 1)).to(heatmaps.dtype)

    def at(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return flat.gather(2, (y.clamp(0, h - 1) * w + x.clamp(0, w - 1)).unsqueeze(-1)).squeeze(-1)

    dx = torch.sign(at(px + 1, py) - at(px - 1, py))
    dy = torch.sign(at(px, py + 1) - at(px, py - 1))
    return 0.25 * torch.stack([dx, dy], -1) * inside.unsqueeze(-1)


class OnnxExtractor(Extractor):
    """A converted ONNX network with its description's crop, normalisation and decoding.

    Args:
        net: the torch module from :func:`lb_onnx.convert.to_torch`.
        desc: the model's description.
        batch: the batch size the graph is fixed to (``1``: faces run one at a time), or
            ``None`` for a free batch dimension.
        source: the file, for messages.
    """

    mean: torch.Tensor
    std: torch.Tensor

    def __init__(self, net: torch.nn.Module, desc: Description, batch: int | None = None,
                 source: str | Path = "<onnx>") -> None:
        super().__init__()
        self.net = net
        self.desc = desc
        self.batch = batch
        self.source = str(source)
        self.scheme = scheme_of(desc)
        n = desc.input_size
        self.input_size = (n, n)
        norm = desc.normalise
        self.register_buffer("mean", torch.tensor(norm.mean, dtype=torch.float32).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(norm.std, dtype=torch.float32).view(1, 3, 1, 1), persistent=False)
        if desc.crop.rule == "face-alignment":
            from lbcore.errors import SpecError

            try:
                import lb_fan.extractor  # noqa: F401
            except ImportError:
                raise SpecError(f"{self.source}: crop.rule=face-alignment needs the lb-fan plugin installed") from None

    # -- geometry ------------------------------------------------------------------------------
    def crop_theta(self, boxes: torch.Tensor) -> torch.Tensor:
        c = self.desc.crop
        if c.rule == "face-alignment":
            from lb_fan.extractor import face_alignment_crop_theta

            return face_alignment_crop_theta(boxes, self.desc.input_size)
        return box_crop_theta(boxes, self.desc.input_size, c.side, c.enlarge, c.shift, c.align)

    def _cell_to_crop(self, cells: int, n_faces: int, device: Any) -> torch.Tensor:
        """Heat-map cell (or rendered cell) -> crop pixel, ``(F, 2, 3)``."""
        r = self.desc.input_size / cells
        off = 0.0 if self.desc.crop.align == "cv2" and self.desc.crop.rule == "box" else 0.5 * r - 0.5
        theta = torch.tensor([[r, 0.0, off], [0.0, r, off]], dtype=torch.float32, device=device)
        return theta.expand(n_faces, 2, 3).clone()

    @staticmethod
    def _fine(k: int, n_faces: int, device: Any) -> torch.Tensor:
        """Fine-grid pixel -> crop pixel for ``k``-fold supersampling (pixel squares nest)."""
        s = 1.0 / k
        theta = torch.tensor([[s, 0.0, 0.5 * s - 0.5], [0.0, s, 0.5 * s - 0.5]], dtype=torch.float32, device=device)
        return theta.expand(n_faces, 2, 3).clone()

    def normalise(self, crops: torch.Tensor) -> torch.Tensor:
        """``(F, 3, N, N)`` RGB crops in [0, 255] -> the network's input (values and layout)."""
        x = crops.flip(1) if self.desc.normalise.channels == "BGR" else crops
        x = (x / self.desc.normalise.divide - self.mean) / self.std
        if self.desc.layout == "nhwc":
            return x.permute(0, 2, 3, 1)
        if self.desc.layout == "nwhc":
            return x.permute(0, 3, 2, 1)
        return x

    # -- the network ---------------------------------------------------------------------------
    def run_net(self, x: torch.Tensor) -> list[torch.Tensor]:
        """Every output of the graph for a batch of normalised crops."""
        if self.batch is not None and x.shape[0] != self.batch:
            if self.batch != 1:
                raise ValueError(f"{self.source}: the graph is fixed to batches of {self.batch}")
            parts = [self.run_net(x[i: i + 1]) for i in range(x.shape[0])]
            if not parts:
                parts = [self.run_net(x.new_zeros((1, *x.shape[1:])))]
                return [p[:0] for p in parts[0]]
            return [torch.cat(list(outs), 0) for outs in zip(*parts, strict=True)]
        out = self.net(x)
        if isinstance(out, torch.Tensor):
            return [out]
        return list(out)

    def forward(self, images: torch.Tensor, faces: Faces) -> ExtractorOutput:
        d = self.desc.decode
        k = self.desc.points
        theta = self.crop_theta(faces.boxes.to(images.device, torch.float32))
        k_ss = self.desc.crop.supersample
        if k_ss > 1:  # sample k x finer (same area), then average k x k blocks
            fine = compose_affine(theta, self._fine(k_ss, theta.shape[0], theta.device))
            size = self.desc.input_size * k_ss
            crops = torch.nn.functional.avg_pool2d(affine_crop(images, faces.image_index, fine, (size, size)), k_ss)
        else:
            crops = affine_crop(images, faces.image_index, theta, self.input_size)
        outs = self.run_net(self.normalise(crops))
        n = crops.shape[0]
        extra: dict[str, Any] = {"crop_theta": theta}
        result = ExtractorOutput(extra=extra)
        if d.heatmap_output is not None:
            hm = outs[d.heatmap_output]
            result.heatmaps = hm
            result.hm_to_image = compose_affine(theta, self._cell_to_crop(int(hm.shape[-1]), n, hm.device))
        if d.kind == "coords":
            raw = outs[d.coords_output]
            if d.coords_layout == "planar":
                v = raw.reshape(n, -1, k)[:, :2].transpose(1, 2).to(torch.float32)
            else:
                v = raw.reshape(n, k, -1)[..., :2].to(torch.float32)
            crop_pts = (v + d.coords_offset) * d.coords_scale + d.coords_shift
            pts = apply_affine(theta, crop_pts)
            extra["points"] = pts
            if d.heatmap_output is None:  # a pure regressor: render heat-maps for Eq. 1
                m = d.render_size
                to_crop = self._cell_to_crop(m, n, pts.device)
                cells = (crop_pts - to_crop[:, None, :, 2]) / to_crop[:, None, 0, 0, None]
                result.heatmaps = render_gaussians(cells, m, d.render_sigma)
                result.hm_to_image = compose_affine(theta, to_crop)
                result.landmarks = pts
        elif d.kind == "heatmap-offsets":
            extra["offsets"] = outs[d.offsets_output]
        if self.desc.crop.rule == "face-alignment":
            from lb_fan.extractor import face_alignment_decode_theta

            assert result.heatmaps is not None
            hm_size = (int(result.heatmaps.shape[-2]), int(result.heatmaps.shape[-1]))
            extra["decode_theta"] = face_alignment_decode_theta(faces.boxes.to(images.device), hm_size)
        return result

    # -- decoding ------------------------------------------------------------------------------
    def decode(self, output: ExtractorOutput) -> torch.Tensor:
        """Landmarks ``(F, K, 2)`` in image pixels, the way the description says."""
        d = self.desc.decode
        if d.kind == "coords":
            pts = output.extra.get("points")
            if pts is None:
                pts = output.landmarks
            if pts is None:
                raise ValueError("OnnxExtractor.decode: the output holds no coordinates")
            return pts.detach().to(torch.float32)
        if output.heatmaps is None or output.hm_to_image is None:
            raise ValueError("OnnxExtractor.decode needs heat-maps and hm_to_image")
        hm = output.heatmaps.detach().float()
        if "decode_theta" in output.extra:  # FAN's own decoding (face-alignment crop rule)
            from lb_fan.extractor import decode_heatmaps

            return decode_heatmaps(hm, output.extra["decode_theta"])
        if d.peak == "soft-argmax":
            cells = soft_argmax(hm)
        else:
            cells = argmax_2d(hm)
            if d.kind == "heatmap-offsets":
                off = output.extra["offsets"].detach().float()
                f, k, h, w = hm.shape
                idx = (cells[..., 1].long() * w + cells[..., 0].long()).unsqueeze(-1)
                ox = off[:, :k].reshape(f, k, h * w).gather(2, idx).squeeze(-1)
                oy = off[:, k: 2 * k].reshape(f, k, h * w).gather(2, idx).squeeze(-1)
                cells = cells + torch.stack([ox, oy], -1)
            elif d.peak == "argmax-quarter":
                cells = cells + _quarter_shift(hm, cells)
        return apply_affine(output.hm_to_image.detach().float(), cells)
