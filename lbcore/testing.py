"""Helpers for plugin authors' test suites: contract checks and a fresh plugin manager.

Usage from a plugin's pytest suite::

    from lbcore.testing import check_extractor
    def test_conformance():
        check_extractor("myextractor:landmarks=98")
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

__all__ = ["fresh_plugin_manager", "check_extractor", "sample_batch", "ConformanceError"]


class ConformanceError(AssertionError):
    """A component breaks its contract; the message says which check and why."""


@contextmanager
def fresh_plugin_manager(**env: str) -> Iterator[Any]:
    """A newly loaded plugin manager (optionally under extra environment variables),
    installed as the shared one for the duration of the ``with`` block."""
    from lbcore import plugins

    old_env = {k: os.environ.get(k) for k in env}
    os.environ.update(env)
    old = plugins._shared
    try:
        plugins._shared = None
        pm = plugins.get_plugin_manager()
        yield pm
    finally:
        plugins._shared = old
        for k, v in old_env.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


def sample_batch(height: int = 160, width: int = 200, seed: int = 0) -> tuple[Any, Any]:
    """Two smooth random images with three faces (two in the first image, one off-centre and
    partly outside the second) - enough to exercise cropping, batching and clipping."""
    import torch
    import torch.nn.functional as F

    from lbcore.types import Faces

    g = torch.Generator().manual_seed(seed)
    low = torch.rand(2, 3, height // 8, width // 8, generator=g) * 255
    images = F.interpolate(low, size=(height, width), mode="bilinear", align_corners=False)
    boxes = torch.tensor(
        [[20.0, 30.0, 90.0, 110.0], [110.0, 20.0, 180.0, 100.0], [150.0, 100.0, 230.0, 190.0]]
    )
    return images, Faces(boxes, torch.tensor([0, 0, 1]))


def _fail(what: str, why: str) -> None:
    raise ConformanceError(f"{what}: {why}")


def check_extractor(extractor: Any, *, device: str = "cpu", check_gradient: bool = True) -> dict[str, Any]:
    """Run the extractor contract checks; raise :class:`ConformanceError` on the first failure.

    ``extractor`` is a spec string (built through the shared plugin manager) or an instance.
    Checks: output shapes, declared scheme, landmarks finite and in image coordinates near the
    boxes, gradient of Eq. 1 reaches the input pixels (and only the images with faces), batch
    independence (a face's output does not depend on the other faces in the batch),
    determinism, and that the device is taken from the inputs.

    Returns a dict of what was measured (for reports).
    """
    import torch

    from lbcore.extractor import Extractor
    from lbcore.losses import heatmap_cosine_loss
    from lbcore.plugins import get_plugin_manager
    from lbcore.types import Faces

    if isinstance(extractor, str):
        extractor = get_plugin_manager().build("extractors", extractor)
    if not isinstance(extractor, Extractor):
        _fail("type", f"{type(extractor).__name__} is not an lbcore.Extractor")
    scheme = getattr(extractor, "scheme", None)
    if scheme is None or scheme.num_points <= 0:
        raise ConformanceError("scheme: extractor declares no landmark scheme")
    a, b = scheme.eye_corners
    if not (0 <= a < scheme.num_points and 0 <= b < scheme.num_points and a != b):
        _fail("scheme", f"eye corners {scheme.eye_corners} invalid for {scheme.num_points} points")
    extractor = extractor.to(device).eval()
    images, faces = sample_batch()
    images, faces = images.to(device), faces.to(device)
    out = extractor(images, faces)
    k = scheme.num_points
    n = len(faces)
    if out.heatmaps is None and out.landmarks is None:
        _fail("output", "neither heatmaps nor landmarks")
    if out.heatmaps is not None:
        hm = out.heatmaps
        if hm.dim() != 4 or hm.shape[0] != n or hm.shape[1] != k:
            _fail("heatmaps", f"shape {tuple(hm.shape)}, expected ({n}, {k}, h, w)")
        if out.hm_to_image is None or tuple(out.hm_to_image.shape) != (n, 2, 3):
            _fail("hm_to_image", "missing or not (F, 2, 3)")
    with torch.no_grad():
        lm = extractor.decode(out)
    if tuple(lm.shape) != (n, k, 2):
        _fail("decode", f"shape {tuple(lm.shape)}, expected ({n}, {k}, 2)")
    if not bool(torch.isfinite(lm).all()):
        _fail("decode", "non-finite landmarks")
    boxes = faces.boxes
    for i in range(n):
        x1, y1, x2, y2 = boxes[i].tolist()
        w, h = x2 - x1, y2 - y1
        inside = (
            (lm[i, :, 0] >= x1 - 1.0 * w) & (lm[i, :, 0] <= x2 + 1.0 * w)
            & (lm[i, :, 1] >= y1 - 1.0 * h) & (lm[i, :, 1] <= y2 + 1.0 * h)
        )
        if not bool(inside.all()):
            _fail("decode", f"face {i}: landmarks far outside the face box (not image coordinates?)")
    # determinism
    out2 = extractor(images, faces)
    ref = out.heatmaps if out.heatmaps is not None else out.landmarks
    ref2 = out2.heatmaps if out2.heatmaps is not None else out2.landmarks
    assert ref is not None and ref2 is not None
    if not torch.allclose(ref, ref2, atol=1e-5, rtol=1e-4):
        _fail("determinism", "two forward passes in eval mode differ")
    # batch independence: face 2 alone equals face 2 in the batch
    solo = extractor(images[1:2], Faces(faces.boxes[2:3], torch.zeros(1, dtype=torch.long, device=faces.boxes.device)))
    solo_ref = solo.heatmaps if solo.heatmaps is not None else solo.landmarks
    assert solo_ref is not None
    if not torch.allclose(solo_ref[0], ref[2], atol=1e-4, rtol=1e-3):
        _fail("batch independence", "a face's output depends on the other faces in the batch")
    result: dict[str, Any] = {"faces": n, "points": k}
    if check_gradient:
        x = images.clone().requires_grad_(True)
        adv = extractor(x, faces)
        if adv.heatmaps is not None and out.heatmaps is not None:
            loss = heatmap_cosine_loss(out.heatmaps.detach(), adv.heatmaps).sum()
        else:
            assert adv.landmarks is not None
            loss = adv.landmarks.sum()
        (g,) = torch.autograd.grad(loss, x)
        if not bool(torch.isfinite(g).all()):
            _fail("gradient", "non-finite gradient")
        for i in range(n):
            x1, y1, x2, y2 = [int(v) for v in boxes[i].tolist()]
            img = int(faces.image_index[i])
            region = g[img, :, max(y1, 0): max(y2, 1), max(x1, 0): max(x2, 1)]
            if float(region.abs().sum()) == 0.0:
                _fail("gradient", f"no gradient reaches the pixels of face {i}")
        result["grad_abs_sum"] = float(g.abs().sum())
    if device == "cpu" and torch.cuda.is_available():
        extractor.to("cuda")
        cuda_out = extractor(images.cuda(), faces.to("cuda"))
        got = cuda_out.heatmaps if cuda_out.heatmaps is not None else cuda_out.landmarks
        assert got is not None
        if got.device.type != "cuda":
            _fail("device", "output not on the inputs' device")
        extractor.to("cpu")
    return result
