"""Reproducing the paper's evaluation (Tables I-IV, Figs. 3-4) on any data: ``lb evaluate``.

The pipeline of the paper's Fig. 2, for every combination the tables need:

* **Data** - image folders with iBUG ``.pts`` files, WFLW list files, dlib XML files (faces and
  boxes from the annotations), image folders without annotations and video files (every frame,
  every k-th frame or the key frames; faces from a detector plugin).
* **Ground truth** of each target extractor, per face: the annotation when there is one whose
  points can be compared with the extractor's (same count, or 98 vs 68 through
  :data:`lbcore.schemes.WFLW98_TO_IBUG68`); otherwise - as the paper did on Celeb-DF - the
  *reference* extractor's predictions on the clean image (the paper used HRNet). The ``none``
  attack row is the NME of the clean image against that ground truth.
* **Attacks** - each ``source`` extractor is attacked with each preset of
  the registered attacks (:mod:`lbcore.attacks`) (batched, on ``--device``); the adversarial image is then
  **degraded** (JPEG, MPEG-4 "C", H.264 double compression "C2", ...) and shown to every
  **target** extractor: white-box on the diagonal (source = target), transfer off it.
* **Metrics per face** - NME (:func:`lbcore.metrics.nme`), failure rates at 0.08 and 0.10,
  SSIM_I (the clean image against the degraded adversarial image on the face box resampled to
  :data:`lbcore.metrics.FACE_SSIM_SIZE` px: ``ssim_i``, the tables' figure; the paper's
  whole-image mask-SSIM ``ssim_i_masked_image`` and the mask-mean variant ``ssim_i_mask_mean``
  for comparison), PSNR in the face box, and SSIM_W - the DeepFake synthesised from the clean
  image with the target's clean landmarks against the one synthesised from the degraded
  adversarial image with the target's landmarks on it, on the face-swap alignment crop of the
  clean landmarks at the swap model's resolution (:func:`lbcore.apps.synthesis.ssim_w`, variant ``aligned``; the paper's
  whole-image figure is ``ssim_w_masked_image``), with its controls: the identity round
  trip (align, no autoencoder, warp back: ``ssim_identity``), the adversarial image
  synthesised with the clean landmarks (``ssim_w_clean_landmarks``), its complement - the clean
  image synthesised with the adversarial landmarks (``ssim_w_clean_pixels``) - and the ideal-alignment
  model (``ssim_alignment``). A face whose adversarial DeepFake cannot be made scores
  :data:`lbcore.apps.synthesis.WORST_SSIM`, with the reason in ``per_face``.

A folder given as data uses every annotation file inside it: ``.pts`` files beside the
images, dlib ``.xml`` files and WFLW list files; which one each image came from is logged.

Work is split into *units* - ``(source, attack, ablation value)`` - whose rows (one per target x
degradation) are written to ``OUT/partial/<hash>.json`` atomically as each finishes; a rerun with
the same settings skips finished units. ``OUT/results.json`` and ``OUT/report.md`` (plus the
figures) are rebuilt at the end from every unit. Everything is deterministic under ``seed``.

Ablations (Fig. 4) attack with ``ablate_attack`` (LB by default) for each value of one parameter
(``alpha``, ``steps``, ``eps`` or ``decay``) and measure without degradation.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import math
import os
import platform
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from pathlib import Path
from typing import Any, Literal

import attrs
import numpy as np

from lbcore.errors import InputError, LBError, SpecError
from lbcore.metrics import (
    box_matrix,
    clip_region,
    crop_ssim,
    region_mask_ssim,
    ssim_window_margin,
    uncrop_masked_ssim,
)

__all__ = [
    "ABLATABLE",
    "DEFAULT_ATTACKS",
    "DEFAULT_DEGRADATIONS",
    "EvalFace",
    "EvalImage",
    "EvaluateOptions",
    "Unit",
    "evaluate",
    "load_dataset",
    "parse_ablation",
    "parse_extractor_specs",
]

DEFAULT_ATTACKS: tuple[str, ...] = ("none", "base1", "base2", "lb", "lbtrans", "lbmix")
DEFAULT_DEGRADATIONS: tuple[str, ...] = ("none", "jpeg:quality=75", "jpeg:quality=50", "c", "c2")
ABLATABLE: tuple[str, ...] = ("alpha", "steps", "eps", "decay")
"""Parameters ``--ablate`` can sweep (alpha and decay are the update rule's)."""

GroundTruth = Literal["auto", "annotations", "reference"]


# --------------------------------------------------------------------------- options


@attrs.define
class EvaluateOptions:
    """Settings of an evaluation run (see ``lb evaluate --help``).

    Attributes:
        extractors: ``SPEC`` or ``LABEL=SPEC`` strings; every one is a source and a target.
        attacks: ``none`` and preset names.
        degradations: degradation specs applied after the attack (``none`` = as is).
        ablate: ``PARAM=START:STOP:STEP`` or ``PARAM=V1,V2,...`` sweeps (Fig. 4).
        ablate_attack: the preset the ablations vary.
        reference: label of one of ``extractors`` or another spec; default ``hrnet`` when listed,
            else the first extractor.
        ground_truth: ``auto`` (annotations where comparable, else the reference), ``annotations``
            (every face must have one) or ``reference`` (always the reference's clean predictions).
        eps, steps: override every preset's budget / iterations (``None``: the paper's).
        synth: ``auto`` (train a small face-swap model on the evaluation faces), ``none`` (no
            SSIM_W) or a folder written by ``lb synth train``.
        synth_steps: training steps of the ``auto`` face-swap model.
        detector: detector spec for faces without annotations.
        min_face: detections smaller than this (pixels) are skipped.
        every: video: keep every k-th frame; key_frames: keep only key frames instead.
        max_frames: longest accepted video (frames).
        limit: use at most this many faces (in data order).
        batch_size: images attacked together (same-sized images only).
        annotation_format, image_root: passed to :func:`lbcore.io.annotations.load_annotations`.
    """

    extractors: tuple[str, ...] = ()
    attacks: tuple[str, ...] = DEFAULT_ATTACKS
    degradations: tuple[str, ...] = DEFAULT_DEGRADATIONS
    ablate: tuple[str, ...] = ()
    ablate_attack: str = "lb"
    reference: str | None = None
    ground_truth: GroundTruth = "auto"
    eps: float | None = None
    steps: int | None = None
    seed: int = 0
    device: str = "auto"
    synth: str = "auto"
    synth_steps: int = 300
    detector: str = "auto"
    min_face: int = 40
    every: int = 1
    key_frames: bool = False
    max_frames: int | None = None
    limit: int | None = None
    batch_size: int = 8
    annotation_format: str = "auto"
    image_root: str | None = None
    force: bool = False
    amp: str = "auto"
    compile: bool = False

    def describe(self) -> dict[str, Any]:
        return attrs.asdict(self)


def parse_extractor_specs(items: Iterable[str]) -> dict[str, str]:
    """``{label: spec}`` from ``--extractors`` values.

    Each value may hold several specs separated by ``;`` (specs contain commas:
    ``fan:width=64,weights=x.pth``). ``LABEL=SPEC`` names an extractor (a label is the text
    before the first ``=`` when it contains neither ``:`` nor ``,``); otherwise the label is the
    component name, numbered when it repeats (``fan``, ``fan-2``).

    Raises:
        SpecError: an empty list or a label given twice.
    """
    out: dict[str, str] = {}
    for item in items:
        for raw in item.split(";"):
            text = raw.strip()
            if not text:
                continue
            head, eq, rest = text.partition("=")
            if eq and ":" not in head and "," not in head and rest.strip():
                label, spec = head.strip(), rest.strip()
                if label in out:
                    raise SpecError(f"--extractors: label {label!r} given twice")
            else:
                spec = text
                base = spec.partition(":")[0].strip()
                label, n = base, 1
                while label in out:
                    n += 1
                    label = f"{base}-{n}"
            if not label or any(c in label for c in " /\\|"):
                raise SpecError(f"--extractors: bad label {label!r} (no spaces, slashes or bars)")
            out[label] = spec
    if not out:
        raise SpecError("--extractors: give at least one extractor spec")
    return out


def _frange(start: float, stop: float, step: float) -> list[float]:
    if step <= 0:
        raise SpecError(f"ablation step {step} must be positive")
    n = int(math.floor((stop - start) / step + 1e-9)) + 1
    if n < 1:
        raise SpecError(f"ablation range {start}:{stop} is empty")
    return [round(start + i * step, 10) for i in range(n)]


def parse_ablation(text: str) -> tuple[str, list[float]]:
    """``"alpha=0.5:1.5:0.25"`` -> ``("alpha", [0.5, 0.75, 1.0, 1.25, 1.5])`` (stop included);
    ``"steps=14,20,28"`` lists values. ``steps`` values become integers.

    Raises:
        SpecError: an unknown parameter or a malformed range.
    """
    param, eq, rest = text.partition("=")
    param = param.strip()
    if not eq or param not in ABLATABLE:
        raise SpecError(f"--ablate {text!r}: expected PARAM=START:STOP:STEP with PARAM one of {', '.join(ABLATABLE)}")
    try:
        if ":" in rest:
            parts = [float(v) for v in rest.split(":")]
            if len(parts) != 3:
                raise ValueError(rest)
            values = _frange(*parts)
        else:
            values = [float(v) for v in rest.split(",") if v.strip()]
    except ValueError:
        raise SpecError(f"--ablate {text!r}: values must be numbers (START:STOP:STEP or V1,V2,...)") from None
    if not values:
        raise SpecError(f"--ablate {text!r}: no values")
    if param == "steps":
        values = [float(int(round(v))) for v in values]
    return param, values


def attack_config(name: str, options: EvaluateOptions, ablation: tuple[str, float] | None = None) -> Any:
    """The :class:`~lbcore.engine.AttackConfig` of a preset under the run's overrides and an
    optional ablation value (``alpha``/``decay`` rewrite the update-rule spec)."""
    from lbcore.attacks import preset
    from lbcore.spec import format_spec, parse_spec

    overrides: dict[str, Any] = {"eps": options.eps, "steps": options.steps, "seed": options.seed}
    cfg = preset(name, **overrides)
    if ablation is None:
        return cfg
    param, value = ablation
    if param == "steps":
        return attrs.evolve(cfg, steps=int(value))
    if param == "eps":
        return attrs.evolve(cfg, eps=float(value))
    rule, params = parse_spec(cfg.optimizer)
    params[param] = repr(float(value))
    return attrs.evolve(cfg, optimizer=format_spec(rule, params))


# --------------------------------------------------------------------------- data


@attrs.define(eq=False)
class EvalFace:
    """One face of the evaluation set.

    Attributes:
        image: index into the image list.
        box: ``(4,)`` x1, y1, x2, y2.
        landmarks: annotated ``(K, 2)`` landmarks or ``None``.
    """

    image: int
    box: np.ndarray
    landmarks: np.ndarray | None = None


@attrs.define(eq=False)
class EvalImage:
    """An image (or video frame) with the faces evaluated in it."""

    name: str
    rgb: np.ndarray
    group: str = ""  # frames of one video share a group (video degradations see them in order)


def _key_frames(path: Path, max_frames: int | None) -> Iterator[tuple[int, np.ndarray]]:
    """The key frames of a video (``(pts, rgb)``), decoding only those."""
    from lbcore.errors import need_extra
    from lbcore.io import probe_video

    av = need_extra("av", "video", "reading video key frames")

    probe_video(path, max_frames)  # header checks and one-line errors
    try:
        with av.open(str(path)) as container:
            stream = container.streams.video[0]
            stream.codec_context.skip_frame = "NONKEY"
            for frame in container.decode(stream):
                if frame.key_frame:
                    yield int(frame.pts or 0), frame.to_ndarray(format="rgb24")
    except av.error.FFmpegError as err:
        raise InputError(f"{path}: cannot decode key frames ({err})") from None


def _video_images(path: Path, options: EvaluateOptions) -> Iterator[EvalImage]:
    """The sampled frames of a video, streamed (every k-th frame, or the key frames)."""
    from lbcore.io import DEFAULT_MAX_FRAMES, iter_video_frames

    max_frames = options.max_frames if options.max_frames is not None else DEFAULT_MAX_FRAMES
    if options.key_frames:
        for pts, rgb in _key_frames(path, max_frames):
            yield EvalImage(f"{path}#pts={pts}", rgb, str(path))
        return
    every = max(1, int(options.every))
    for i, rgb in enumerate(iter_video_frames(path, max_frames)):
        if i % every == 0:
            yield EvalImage(f"{path}#frame={i}", rgb, str(path))


def load_dataset(
    paths: Sequence[str | os.PathLike[str]],
    options: EvaluateOptions,
    detector: Callable[[np.ndarray], np.ndarray] | None = None,
) -> tuple[list[EvalImage], list[EvalFace], list[str]]:
    """Read images, frames and faces.

    Args:
        paths: annotation files (``.pts``, WFLW list, dlib ``.xml``), folders (images with or
            without ``.pts`` beside them, and videos) and video files.
        options: frame sampling, limits and the annotation format.
        detector: called on images without annotations (``(H, W, 3)`` uint8 -> ``(N, 5)``).

    Returns:
        ``(images, faces, notes)``: images hold only those with at least one face.

    Raises:
        InputError: unreadable inputs, or no face at all.
    """
    from lbcore.io import iter_inputs, media_kind, read_image
    from lbcore.io.annotations import load_annotations

    images: list[EvalImage] = []
    faces: list[EvalFace] = []
    notes: list[str] = []
    limit = options.limit if options.limit is not None else math.inf

    def add(img: EvalImage, boxes: list[np.ndarray], lms: list[np.ndarray | None]) -> None:
        room = int(max(limit - len(faces), 0)) if limit != math.inf else len(boxes)
        keep = list(zip(boxes, lms, strict=True))[:room]
        if not keep:
            return
        images.append(img)
        for b, lm in keep:
            faces.append(EvalFace(len(images) - 1, np.asarray(b, dtype=np.float64)[:4], lm))

    def detect(rgb: np.ndarray, name: str) -> list[np.ndarray]:
        if detector is None:
            raise InputError(f"{name}: no annotation and no face detector")
        found = [np.asarray(b[:4], dtype=np.float64) for b in detector(rgb)]
        keep = [b for b in found if min(b[2] - b[0], b[3] - b[1]) >= options.min_face]
        if len(found) > len(keep):
            notes.append(f"{name}: {len(found) - len(keep)} face(s) smaller than {options.min_face} px skipped")
        return keep

    def add_records(records: list[Any]) -> None:
        by_image: dict[str, list[Any]] = {}
        for r in records:
            if r.image_path is None:
                notes.append(f"{r.source}: no image beside the annotation; skipped")
                continue
            by_image.setdefault(str(r.image_path), []).append(r)
        for name, recs in by_image.items():
            if len(faces) >= limit:
                return
            rgb = read_image(name).rgb
            annotated = [r for r in recs if r.box is not None]
            if annotated:
                add(EvalImage(name, rgb), [r.box for r in annotated],
                    [None if r.landmarks is None else np.asarray(r.landmarks, np.float64) for r in annotated])
            else:
                boxes = detect(rgb, name)
                add(EvalImage(name, rgb), boxes, [None] * len(boxes))

    def add_video(path: Path) -> None:
        for img in _video_images(path, options):
            if len(faces) >= limit:
                return
            boxes = detect(img.rgb, img.name)
            add(img, boxes, [None] * len(boxes))

    for raw in paths:
        p = Path(raw)
        if len(faces) >= limit:
            break
        if not p.exists():
            raise InputError(f"{p}: no such file or folder")
        if p.is_dir():
            add_records(folder_records(p, options, notes))
            for entry in iter_inputs([p], recursive=False):
                if entry.kind == "video":
                    add_video(entry.path)
            continue
        kind = media_kind(p)
        if kind == "video":
            add_video(p)
        elif kind == "image":
            rgb = read_image(p).rgb
            boxes = detect(rgb, str(p))
            add(EvalImage(str(p), rgb), boxes, [None] * len(boxes))
        else:
            add_records(load_annotations(p, options.annotation_format,  # type: ignore[arg-type]
                                         image_root=options.image_root))
    if not faces:
        raise InputError(f"{', '.join(map(str, paths))}: no face to evaluate")
    return images, faces, notes


def folder_records(folder: Path, options: EvaluateOptions, notes: list[str]) -> list[Any]:
    """The face records of a data folder: every image in it, annotated by the ``.pts`` file
    beside it or by a dlib ``.xml`` / WFLW list file in the folder (all of them; an image that
    two files annotate keeps the first, ``.pts`` before the lists, lists by name). Which file
    annotated which images is added to ``notes``.

    With ``--format pts`` only ``.pts`` files are read; ``wflw`` / ``dlib-xml``
    restricts the lists to that format.
    """
    from lbcore.io.annotations import load_annotations

    fmt = options.annotation_format
    records = load_annotations(folder, "pts")
    by_image: dict[str, list[Any]] = {}
    for r in records:
        by_image.setdefault(str(r.image_path), []).append(r)
    used: dict[str, int] = {}
    for r in records:
        if r.box is not None:
            used["beside the images (.pts)"] = used.get("beside the images (.pts)", 0) + 1
    if fmt in ("auto", "wflw", "dlib-xml"):
        for f in sorted(folder.iterdir()):
            if not f.is_file() or f.suffix.lower() not in (".xml", ".txt"):
                continue
            kind = "dlib-xml" if f.suffix.lower() == ".xml" else "wflw"
            if fmt not in ("auto", kind):
                continue
            try:
                listed = load_annotations(f, kind, image_root=options.image_root)  # type: ignore[arg-type]
            except LBError:
                if kind == "dlib-xml":
                    raise
                continue  # a .txt that is not a WFLW list (a README, a licence, ...)
            fresh: dict[str, list[Any]] = {}
            for r in listed:
                fresh.setdefault(str(r.image_path), []).append(r)
            taken = 0
            for name, recs in fresh.items():
                old = by_image.get(name)
                if old is not None and any(r.box is not None for r in old):
                    notes.append(f"{name}: annotated by an earlier file too; {f.name} ignored for it")
                    continue
                by_image[name] = recs
                taken += len(recs)
            if taken:
                used[f.name] = taken
    out = [r for recs in by_image.values() for r in recs]
    missing = sum(1 for recs in by_image.values() if all(r.box is None for r in recs))
    where = ", ".join(f"{k} ({n} face(s))" for k, n in used.items()) or "none"
    notes.append(f"{folder}: ground truth from {where}; {missing} image(s) without annotation "
                 "(faces from the detector, ground truth from the reference extractor)")
    return out


# --------------------------------------------------------------------------- units


@attrs.frozen
class Unit:
    """The work whose rows are saved together: one attack from one source (and one ablation
    value). The ``none`` attack has no source."""

    attack: str
    source: str | None
    ablate: tuple[str, float] | None = None

    def key(self) -> dict[str, Any]:
        return {"attack": self.attack, "source": self.source,
                "ablate": None if self.ablate is None else [self.ablate[0], self.ablate[1]]}

    def title(self) -> str:
        who = f"{self.attack}" if self.source is None else f"{self.attack} on {self.source}"
        return who if self.ablate is None else f"{who} ({self.ablate[0]}={self.ablate[1]:g})"


def plan_units(options: EvaluateOptions, labels: Sequence[str]) -> list[Unit]:
    """Every unit of a run, in report order: the attacks, then the ablation sweeps."""
    from lbcore.attacks import attack_names
    from lbcore.spec import parse_spec

    known = attack_names()
    units: list[Unit] = []
    for a in options.attacks:
        if a != "none" and parse_spec(a)[0] not in known:
            raise SpecError(f"--attacks: unknown attack {a!r} (valid: none, {', '.join(known)})")
        if a == "none":
            units.append(Unit("none", None))
        else:
            units.extend(Unit(a, s) for s in labels)
    if options.ablate and parse_spec(options.ablate_attack)[0] not in known:
        raise SpecError(f"--ablate-attack: unknown attack {options.ablate_attack!r} (valid: {', '.join(known)})")
    for text in options.ablate:
        param, values = parse_ablation(text)
        units.extend(Unit(options.ablate_attack, s, (param, v)) for s in labels for v in values)
    seen: set[Unit] = set()
    return [u for u in units if not (u in seen or seen.add(u))]  # type: ignore[func-returns-value]


# --------------------------------------------------------------------------- helpers


def _nan_mean(values: Sequence[float]) -> float:
    a = np.asarray(values, dtype=np.float64)
    a = a[~np.isnan(a)]
    return float(a.mean()) if a.size else float("nan")


def _json_safe(obj: Any) -> Any:
    """NaN -> null, infinity -> ``"inf"``/``"-inf"`` (strict JSON), numpy scalars -> Python."""
    if isinstance(obj, dict):
        return {str(k): _json_safe(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return [_json_safe(v) for v in obj]
    if isinstance(obj, np.ndarray):
        return _json_safe(obj.tolist())
    if isinstance(obj, np.generic):
        obj = obj.item()
    if isinstance(obj, float):
        if math.isnan(obj):
            return None
        if math.isinf(obj):
            return "inf" if obj > 0 else "-inf"
        return round(obj, 6)
    return obj


def _hash(obj: Any) -> str:
    text = json.dumps(obj, sort_keys=True, default=str, separators=(",", ":"))
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def _face_nme(pred: np.ndarray, gt: np.ndarray, scheme: Any) -> float:
    """NME of one face; NaN when the two cannot be compared or the ground truth's eye
    corners coincide (the reference found a degenerate face)."""
    from lbcore.metrics import nme

    try:
        return float(nme(pred, gt, scheme if pred.shape == gt.shape else None))
    except LBError:
        return float("nan")


def _comparable(k_pred: int, k_gt: int) -> bool:
    return k_pred == k_gt or {k_pred, k_gt} == {68, 98}


def fast_ssim_w(clean: np.ndarray, adv: np.ndarray, lm_clean: np.ndarray, lm_adv: np.ndarray,
                swapper: Any, box: np.ndarray) -> dict[str, Any]:
    """:func:`lbcore.apps.synthesis.ssim_w` (figures only), computed on the part of the image that
    the synthesis and the SSIM can touch: the face box with the SSIM window's margin and both
    alignment crops' footprints. The same figures: the synthesised pixels there do not change (up
    to OpenCV's 1/32-px fixed-point warp coordinates), the aligned figures only see the clean
    alignment crop, and the paper's masked SSIM is rescaled to the full image (see
    :func:`uncrop_masked_ssim`)."""
    from lbcore.apps.synthesis import alignment_matrix, ssim_w

    size, pad = swapper.size, swapper.padding
    corners = np.array([[-1.0, -1.0], [size, -1.0], [-1.0, size], [size, size]])
    xs, ys = [box[0], box[2]], [box[1], box[3]]
    for lm in (lm_clean, lm_adv):
        try:
            m = alignment_matrix(lm, size, pad)
        except (LBError, np.linalg.LinAlgError, ValueError):
            continue  # a degenerate alignment: ssim_w reports the failure
        pts = corners @ m[:, :2].T + m[:, 2]
        if not np.isfinite(pts).all():
            continue
        xs += [float(pts[:, 0].min()), float(pts[:, 0].max())]
        ys += [float(pts[:, 1].min()), float(pts[:, 1].max())]
    g = ssim_window_margin()
    x0, y0, x1, y1 = clip_region(clean.shape, min(xs[:2]) - g, min(ys[:2]) - g, max(xs[:2]) + g, max(ys[:2]) + g)
    # the alignment footprints, with two pixels for bilinear sampling
    ax0, ay0, ax1, ay1 = clip_region(clean.shape, min(xs) - 2, min(ys) - 2, max(xs) + 2, max(ys) + 2)
    x0, y0, x1, y1 = min(x0, ax0), min(y0, ay0), max(x1, ax1), max(y1, ay1)
    off = np.array([x0, y0], dtype=np.float64)
    r = ssim_w(clean[y0:y1, x0:x1], adv[y0:y1, x0:x1], lm_clean - off, lm_adv - off, swapper,
               list(np.asarray(box, dtype=np.float64) - [x0, y0, x0, y0])).as_dict()
    out: dict[str, Any] = {k: (v if k in ("failure", "variant") else float(v)) for k, v in r.items()}
    # the aligned-crop figures do not depend on the frame; the paper's whole-image one does
    out["ssim_w_masked_image"] = uncrop_masked_ssim(out["ssim_w_masked_image"], (y1 - y0, x1 - x0),
                                                    clean.shape[:2])
    return out


SSIM_W_KEYS = ("ssim_w", "ssim_w_clean_landmarks", "ssim_identity", "ssim_alignment", "alignment_shift_iod",
               "ssim_w_masked_image", "ssim_w_clean_pixels")


def _versions(pm: Any) -> dict[str, Any]:
    import torch

    try:
        import importlib_metadata

        own = importlib_metadata.version("lbcore")
    except Exception:
        own = "0+unknown"
    return {
        "lbcore": own,
        "python": platform.python_version(),
        "torch": torch.__version__,
        "numpy": np.__version__,
        "plugins": [{"name": d["name"], "version": d["version"]} for d in pm.plugin_report()],
    }


def _device_info(dev: Any) -> dict[str, Any]:
    import torch

    info: dict[str, Any] = {"device": str(dev)}
    if dev.type == "cuda":
        info["name"] = torch.cuda.get_device_name(dev)
    else:
        info["name"] = platform.processor() or platform.machine()
        info["threads"] = torch.get_num_threads()
    return info


METRIC_DOCS: dict[str, str] = {
    "nme": "mean over faces of the NME between the target's landmarks on the (degraded) adversarial image and the ground truth, normalised by the ground truth's outer-eye-corner distance",
    "failure_rate_0.08": "fraction of faces with NME > 0.08",
    "failure_rate_0.10": "fraction of faces with NME > 0.10",
    "ssim_i": "SSIM_I (the tables use this one): SSIM of the clean and the (degraded) adversarial image on the face box resampled to 256x256 px, so the face's size in the frame does not change it",
    "ssim_i_masked_image": "SSIM_I as the paper measures it (mask-SSIM): whole-image SSIM of both images multiplied by the face-box mask; near 1 for a small face in a large frame whatever happens in the box",
    "ssim_i_mask_mean": "SSIM_I, mask-mean variant: the SSIM map of the two images averaged over the face box only (stricter)",
    "psnr": "PSNR (dB) of the (degraded) adversarial image against the clean one inside the face box; 'inf' when identical",
    "ssim_w": "SSIM_W (the tables use this one): the DeepFake of the clean image (target's clean landmarks) against the DeepFake of the (degraded) adversarial image (target's landmarks on it), both resampled into the face-swap alignment crop of the clean landmarks at the swap model's resolution (64 px for the built-in model), the SSIM map weighted by the union of the two blend masks; 0 (the worst) for a face whose adversarial DeepFake cannot be made (reason in per_face.failure)",
    "ssim_w_masked_image": "SSIM_W as the paper measures it (whole-image mask-SSIM of the face box), literal, for comparison",
    "swap_failures": "faces whose adversarial DeepFake could not be made (degenerate alignment, fake outside the frame): scored 0 in ssim_w",
    "ssim_w_clean_landmarks": "control: SSIM_W with the adversarial image synthesised using the clean landmarks (what the perturbed pixels alone do)",
    "ssim_w_clean_pixels": "control: SSIM_W with the clean image synthesised using the adversarial landmarks (what the broken landmarks alone do, no perturbed pixel; the complement of ssim_w_clean_landmarks)",
    "ssim_identity": "control: identity round trip (align, no autoencoder, warp back) of the clean image with clean landmarks vs of the adversarial image with its landmarks",
    "ssim_alignment": "control: ideal model - the adversarial image cropped with the clean alignment but warped back with the adversarial landmarks (what broken alignment alone does)",
    "alignment_shift_iod": "mean shift of the alignment template points between clean and adversarial landmarks, over the inter-ocular distance",
}


# --------------------------------------------------------------------------- the run


@attrs.define(eq=False)
class _Batch:
    images: list[int]
    faces: list[int]
    face_index: list[int]  # image of each face, within the batch


def _batches(images: Sequence[EvalImage], faces: Sequence[EvalFace], size: int) -> list[_Batch]:
    """Same-sized images of one group (a video keeps its frames in order), ``size`` at a time."""
    per_image: dict[int, list[int]] = {}
    for f, face in enumerate(faces):
        per_image.setdefault(face.image, []).append(f)
    groups: dict[tuple[str, tuple[int, ...]], list[int]] = {}
    for i, img in enumerate(images):
        groups.setdefault((img.group, img.rgb.shape), []).append(i)
    out: list[_Batch] = []
    for idx in groups.values():
        for start in range(0, len(idx), max(1, size)):
            chunk = idx[start : start + max(1, size)]
            fs = [f for i in chunk for f in per_image.get(i, [])]
            pos = {i: k for k, i in enumerate(chunk)}
            out.append(_Batch(chunk, fs, [pos[faces[f].image] for f in fs]))
    return out


class BatchedFaces:
    """Batches of same-sized images with their faces, and an extractor's clean predictions on them:
    what ``lb evaluate`` and ``lb transfer`` share. Needs ``images``, ``faces``, ``batches``,
    ``torch`` and ``device`` on the instance."""

    images: list[Any]
    faces: list[Any]
    batches: list[Any]
    torch: Any
    device: Any

    def tensor(self, batch: Any) -> Any:
        arr = np.stack([self.images[i].rgb for i in batch.images])
        return self.torch.from_numpy(arr).permute(0, 3, 1, 2).float()

    def faces_of(self, batch: Any) -> Any:
        from lbcore.types import Faces

        boxes = self.torch.tensor(np.stack([self.faces[f].box for f in batch.faces]), dtype=self.torch.float32)
        return Faces(boxes, self.torch.tensor(batch.face_index, dtype=self.torch.long))

    def predict(self, ext: Any, x: Any, faces: Any) -> np.ndarray:
        """Landmarks in image pixels; extractors answering by queries may return numpy."""
        with self.torch.no_grad():
            out = ext.predict(x.to(self.device), faces.to(self.device))
        return np.asarray(out.detach().cpu().numpy() if hasattr(out, "detach") else out, dtype=np.float64)

    def _predict_clean(self, ext: Any) -> list[np.ndarray]:
        out: list[np.ndarray] = [np.zeros((0, 2))] * len(self.faces)
        for b in self.batches:
            pred = self.predict(ext, self.tensor(b), self.faces_of(b))
            for k, f in enumerate(b.faces):
                out[f] = pred[k]
        return out


class _Evaluation(BatchedFaces):
    """State of one ``evaluate`` run: models, ground truth, the synthesiser."""

    def __init__(self, options: EvaluateOptions, images: list[EvalImage], faces: list[EvalFace],
                 out_dir: Path, pm: Any, notes: list[str], log: Callable[[str], None]) -> None:
        import torch

        from lbcore.engine import performance_for, resolve_device

        self.o, self.images, self.faces, self.out, self.pm = options, images, faces, out_dir, pm
        self.notes, self.log, self.torch = notes, log, torch
        self.device = resolve_device(options.device)
        self.performance = performance_for(self.device, options.amp, options.compile)
        self.specs = parse_extractor_specs(options.extractors)
        self.extractors = {k: self._build(k, s) for k, s in self.specs.items()}
        self.reference_label, self.reference_spec = self._reference()
        self.degradations = {spec: pm.build_degradation(spec) for spec in options.degradations}
        self.batches = _batches(images, faces, options.batch_size)
        self.log(f"{len(images)} image(s), {len(faces)} face(s), {len(self.batches)} batch(es) on {self.device}")
        self.clean = {k: self._predict_clean(e) for k, e in self.extractors.items()}
        if self.reference_label in self.clean:
            self.reference_pred = self.clean[self.reference_label]
        else:
            self.reference_pred = self._predict_clean(self._build("reference", self.reference_spec))
        self.gt, self.gt_source = self._ground_truth()
        self.swapper, self.synth_info = self._synthesiser()

    # -- models --------------------------------------------------------------------------
    def _build(self, label: str, spec: str) -> Any:
        try:
            ext = self.pm.build("extractors", spec)
        except LBError as err:
            raise type(err)(f"extractor {label} ({spec}): {err}") from None
        return ext.to(self.device).eval()

    def _reference(self) -> tuple[str, str]:
        ref = self.o.reference
        if ref is None:
            names = {k: s.partition(":")[0] for k, s in self.specs.items()}
            label = next((k for k, n in names.items() if n == "hrnet"), next(iter(self.specs)))
            return label, self.specs[label]
        if ref in self.specs:
            return ref, self.specs[ref]
        return "reference", ref

    # -- ground truth ----------------------------------------------------------------------
    def _ground_truth(self) -> tuple[dict[str, list[np.ndarray]], dict[str, list[str]]]:
        gt: dict[str, list[np.ndarray]] = {}
        src: dict[str, list[str]] = {}
        for label, ext in self.extractors.items():
            k = int(ext.scheme.num_points)
            gt[label], src[label] = [], []
            for f, face in enumerate(self.faces):
                ann = face.landmarks
                usable = ann is not None and _comparable(k, ann.shape[0]) and np.isfinite(ann).all()
                if self.o.ground_truth == "annotations" and not usable:
                    raise InputError(
                        f"{self.images[face.image].name}: face {f} has no annotation comparable with "
                        f"{label}'s {k} points (--ground-truth annotations)")
                if usable and self.o.ground_truth != "reference":
                    assert ann is not None
                    gt[label].append(ann)
                    src[label].append("annotation")
                else:
                    ref = self.reference_pred[f]
                    if not _comparable(k, ref.shape[0]):
                        raise SpecError(f"reference {self.reference_spec} gives {ref.shape[0]} points; "
                                        f"{label} gives {k}: they cannot be compared")
                    gt[label].append(ref)
                    src[label].append("reference")
        return gt, src

    # -- DeepFake synthesis (SSIM_W) --------------------------------------------------------
    def _landmarks68(self, f: int) -> np.ndarray | None:
        ann = self.faces[f].landmarks
        for cand in (ann, self.reference_pred[f]):
            if cand is not None and cand.shape[0] in (68, 98) and np.isfinite(cand).all():
                return cand
        return None

    def _synthesiser(self) -> tuple[Any, dict[str, Any]]:
        from lbcore.apps.synthesis import FaceSwapper, train_autoencoder

        mode = self.o.synth
        if mode == "none":
            self.notes.append("SSIM_W skipped (--synth none): its columns are n/a")
            return None, {"mode": "none"}
        if mode != "auto":
            swapper = FaceSwapper.load(mode, device=self.device)
            d = Path(mode)
            ident = {"mode": "dir", "path": str(d), "config": json.loads((d / "config.json").read_text()),
                     "weights_bytes": (d / "weights.pt").stat().st_size}
            return swapper, ident
        pairs = [(self.images[face.image].rgb, lm) for f, face in enumerate(self.faces)
                 if (lm := self._landmarks68(f)) is not None]
        if not pairs:
            self.notes.append("SSIM_W skipped: --synth auto needs 68/98-point annotations or a 68/98-point "
                              "reference extractor to align faces")
            return None, {"mode": "none"}
        ident = {"mode": "auto", "steps": self.o.synth_steps, "seed": self.o.seed, "faces": len(pairs),
                 "data": self.data_hash()}
        cache = self.out / "synth-auto"
        stamp = cache / "settings.json"
        try:
            if json.loads(stamp.read_text()) == _json_safe(ident):
                self.log(f"face-swap model reused from {cache}")
                return FaceSwapper.load(cache, device=self.device), ident
        except (OSError, ValueError, LBError):
            pass
        # A stand-in for the paper's Celeb-DF DeepFake model: the two "identities" are the
        # evaluation faces split in two (all of them when there is one face).
        a, b = (pairs[0::2], pairs[1::2]) if len(pairs) > 1 else (pairs, pairs)
        self.log(f"training a small face-swap model on {len(pairs)} face(s), {self.o.synth_steps} steps (--synth auto)")
        try:
            swapper = train_autoencoder(a, b, steps=self.o.synth_steps, seed=self.o.seed, device=self.device)
        except LBError as err:
            self.notes.append(f"SSIM_W skipped: the face-swap model could not be trained ({err})")
            return None, {"mode": "none"}
        with contextlib.suppress(OSError):
            stamp.unlink()  # the stamp vouches for the weights: never leave it beside others
        swapper.save(cache)
        stamp.write_text(json.dumps(_json_safe(ident), indent=1))
        self.notes.append(f"SSIM_W uses a small face-swap model trained here on the evaluation faces "
                          f"({self.o.synth_steps} steps, saved in {cache}), not the paper's Celeb-DF model")
        return swapper, ident

    def data_hash(self) -> str:
        h = hashlib.sha256()
        for img in self.images:
            h.update(img.name.encode("utf-8", "surrogateescape"))
            h.update(hashlib.sha256(np.ascontiguousarray(img.rgb).tobytes()).digest())
        for face in self.faces:
            h.update(np.asarray(face.box, np.float64).tobytes())
            if face.landmarks is not None:
                h.update(np.asarray(face.landmarks, np.float64).tobytes())
        return h.hexdigest()[:16]

    # -- one unit ------------------------------------------------------------------------------
    def settings(self) -> dict[str, Any]:
        """What shapes a unit's rows (resume compares its hash)."""
        return {
            "extractors": self.specs, "reference": self.reference_spec, "ground_truth": self.o.ground_truth,
            "eps": self.o.eps, "steps": self.o.steps, "seed": self.o.seed,
            "degradations": list(self.o.degradations), "synth": self.synth_info, "data": self.data_hash(),
            "amp": self.performance.amp, "ssim": "face-crop-256/aligned-model-size/clean-pixels",
        }

    def degradations_for(self, unit: Unit) -> list[str]:
        # Fig. 4's ablations are measured on the adversarial images as they are.
        return ["none"] if unit.ablate is not None else list(self.degradations)

    def run_unit(self, unit: Unit, tick: Callable[[], None]) -> list[dict[str, Any]]:
        from lbcore.engine import attack
        from lbcore.metrics import psnr

        torch = self.torch
        degs = self.degradations_for(unit)
        config = None if unit.attack == "none" else attack_config(unit.attack, self.o, unit.ablate)
        # per (degradation, target) per face
        per: dict[tuple[str, str], dict[str, list[float]]] = {}
        img_metrics: dict[str, dict[str, list[float]]] = {
            d: {"ssim_i": [], "ssim_i_masked_image": [], "ssim_i_mask_mean": [], "psnr": []} for d in degs}
        order: dict[str, list[int]] = {d: [] for d in degs}
        for b in self.batches:
            x = self.tensor(b)
            fc = self.faces_of(b)
            if config is None:
                adv = x
            else:
                assert unit.source is not None
                adv = attack(x, fc, self.extractors[unit.source], config, device=self.device,
                             plugin_manager=self.pm, performance=self.performance).adversarial.cpu()
            for d in degs:
                deg = self.degradations[d] if d in self.degradations else self.pm.build_degradation(d)
                xd = adv if d == "none" else deg(adv.clone())
                xd = torch.as_tensor(xd).detach().cpu().float().round().clamp(0, 255)
                rgb = xd.permute(0, 2, 3, 1).to(torch.uint8).numpy()
                preds = {k: self.predict(e, xd, fc) for k, e in self.extractors.items()}
                for k, f in enumerate(b.faces):
                    face = self.faces[f]
                    clean_rgb = self.images[face.image].rgb
                    now = rgb[b.face_index[k]]
                    m = img_metrics[d]
                    m["ssim_i"].append(crop_ssim(clean_rgb, now, box_matrix(face.box)))
                    m["ssim_i_masked_image"].append(region_mask_ssim(clean_rgb, now, face.box))
                    try:
                        m["ssim_i_mask_mean"].append(region_mask_ssim(clean_rgb, now, face.box, "mask-mean"))
                    except LBError:
                        m["ssim_i_mask_mean"].append(float("nan"))
                    m["psnr"].append(float(psnr(clean_rgb, now, mask=face.box)))
                    order[d].append(f)
                    for label, ext in self.extractors.items():
                        cell = per.setdefault((d, label), {})
                        pred = preds[label][k]
                        cell.setdefault("nme", []).append(_face_nme(pred, self.gt[label][f], ext.scheme))
                        for key, val in self._ssim_w(clean_rgb, now, self.clean[label][f], pred, face.box).items():
                            cell.setdefault(key, []).append(val)  # type: ignore[arg-type]
            tick()
        rows = []
        for d in degs:
            for label in self.extractors:
                rows.append(self._row(unit, d, label, per.get((d, label), {}), img_metrics[d], order[d]))
        return rows

    def _ssim_w(self, clean: np.ndarray, adv: np.ndarray, lm_clean: np.ndarray, lm_adv: np.ndarray,
                box: np.ndarray) -> dict[str, float | str | None]:
        nan: dict[str, float | str | None] = {k: float("nan") for k in SSIM_W_KEYS}
        if self.swapper is None or lm_clean.shape[0] not in (68, 98):
            return {**nan, "failure": None}
        if np.array_equal(lm_clean, lm_adv) and np.array_equal(clean, adv):
            # the same image and landmarks synthesise the same DeepFake (the clean rows)
            return {**{k: 1.0 for k in SSIM_W_KEYS}, "alignment_shift_iod": 0.0, "failure": None}
        try:
            r = fast_ssim_w(clean, adv, lm_clean, lm_adv, self.swapper, box)
        except (LBError, np.linalg.LinAlgError, ValueError) as err:
            # the clean landmarks themselves cannot align (nothing to compare with)
            return {**nan, "failure": f"clean landmarks: {err}"}
        return {**{k: float(r[k]) for k in SSIM_W_KEYS}, "failure": r["failure"]}

    def _row(self, unit: Unit, degradation: str, target: str, cell: dict[str, list[float]],
             img: dict[str, list[float]], order: list[int]) -> dict[str, Any]:
        from lbcore.metrics import FAILURE_THRESHOLDS, failure_rate

        nmes = np.asarray(cell.get("nme", []), dtype=np.float64)
        valid = nmes[~np.isnan(nmes)]
        row: dict[str, Any] = {
            "source": unit.source,
            "attack": unit.attack,
            "target": target,
            "degradation": degradation,
            "ablate": None if unit.ablate is None else {"param": unit.ablate[0], "value": unit.ablate[1]},
            "white_box": unit.source == target,
            "n_faces": len(order),
            "n_nme": int(valid.size),
            "nme": _nan_mean(nmes.tolist()),
        }
        for t in FAILURE_THRESHOLDS:
            row[f"failure_rate_{t:.2f}"] = failure_rate(valid, t)
        row["ssim_i"] = _nan_mean(img["ssim_i"])
        row["ssim_i_masked_image"] = _nan_mean(img["ssim_i_masked_image"])
        row["ssim_i_mask_mean"] = _nan_mean(img["ssim_i_mask_mean"])
        ps = np.asarray(img["psnr"], dtype=np.float64)
        row["psnr"] = float(ps.mean()) if ps.size else float("nan")
        for key in SSIM_W_KEYS:
            row[key] = _nan_mean(cell.get(key, []))
        failures: list[Any] = cell.get("failure", [])
        row["swap_failures"] = sum(f is not None for f in failures)
        row["per_face"] = {"face": order, "nme": cell.get("nme", []), "ssim_i": img["ssim_i"],
                           "ssim_i_masked_image": img["ssim_i_masked_image"], "ssim_w": cell.get("ssim_w", []),
                           "ssim_w_masked_image": cell.get("ssim_w_masked_image", []),
                           "alignment_shift_iod": cell.get("alignment_shift_iod", []),
                           "ssim_w_clean_landmarks": cell.get("ssim_w_clean_landmarks", []),
                           "ssim_alignment": cell.get("ssim_alignment", []),
                           "ssim_w_clean_pixels": cell.get("ssim_w_clean_pixels", []), "failure": failures}
        return row


def evaluate(
    data: Sequence[str | os.PathLike[str]],
    out_dir: str | os.PathLike[str],
    options: EvaluateOptions | None = None,
    *,
    progress: bool = False,
    log: Callable[[str], None] | None = None,
    shard: tuple[int, int] | None = None,
    finalize: bool = True,
    **kwargs: Any,
) -> dict[str, Any]:
    """Run the paper's evaluation on ``data`` and write ``results.json`` and ``report.md``.

    Args:
        data: annotation files, image folders and videos (see :func:`load_dataset`).
        out_dir: output folder; ``partial/`` inside it holds finished units (resume).
        options: an :class:`EvaluateOptions`; keyword arguments override its fields.
        progress: show a progress bar on stderr.
        log: called with a line of text at each stage.
        shard: ``(rank, world)``: run only units ``rank, rank + world, ...`` (one worker of a
            group; see ``lb distributed evaluate``). Finished units of any worker are reused.
        finalize: build ``results.json``/``report.md`` (a worker of a group leaves that to
            rank 0, which runs again with every unit found in ``partial/``).

    Returns:
        The content of ``results.json`` (``rows``, ``config``, ``seed``, ``versions``,
        ``device``, ``data``, ``faces``, ``metrics``, ``notes``, ``report``).
    """
    from tqdm import tqdm

    from lbcore.apps.report import write_report
    from lbcore.io import write_bytes_atomic
    from lbcore.plugins import get_plugin_manager

    options = attrs.evolve(options or EvaluateOptions(), **kwargs)
    if options.ground_truth not in ("auto", "annotations", "reference"):
        raise SpecError(f"--ground-truth {options.ground_truth!r}: use auto, annotations or reference")
    say = log or (lambda s: None)
    t0 = time.monotonic()
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    pm = get_plugin_manager()
    labels = list(parse_extractor_specs(options.extractors))
    units = plan_units(options, labels)
    detector = None
    try:
        detector = pm.build("detectors", options.detector)
    except LBError as err:
        say(f"no face detector ({err}); only annotated faces can be used")
    images, faces, notes = load_dataset(data, options, detector)
    run = _Evaluation(options, images, faces, out, pm, notes, say)
    settings = run.settings()
    settings_hash = _hash(settings)
    partial = out / "partial"
    partial.mkdir(exist_ok=True)
    for stale in [*partial.glob(".*.lbtmp-*"), *out.glob(".results.lbtmp-*"), *out.glob(".report.lbtmp-*"),
                  *out.glob(".fig[34].lbtmp-*")]:
        # a temporary file left by a killed run (finished units are renamed into place whole)
        with contextlib.suppress(OSError):
            stale.unlink()
    rows: list[dict[str, Any]] = []
    resumed = 0
    bar = tqdm(total=len(units) * len(run.batches), desc="lb evaluate", unit="batch", disable=not progress,
               dynamic_ncols=True)
    try:
        for index, unit in enumerate(units):
            if shard is not None and index % shard[1] != shard[0]:
                bar.update(len(run.batches))
                continue  # another worker's unit
            path = partial / f"{_hash([settings_hash, unit.key()])}.json"
            if not options.force and path.is_file():
                try:
                    saved = json.loads(path.read_text(encoding="utf-8"))
                    if saved.get("settings_hash") == settings_hash and saved.get("unit") == _json_safe(unit.key()):
                        rows.extend(saved["rows"])
                        resumed += 1
                        bar.update(len(run.batches))
                        continue
                except (OSError, ValueError, KeyError):
                    pass  # unreadable: redo it
            bar.set_postfix_str(unit.title())
            t1 = time.monotonic()
            unit_rows = _json_safe(run.run_unit(unit, lambda: bar.update(1)))
            record = {"settings_hash": settings_hash, "unit": _json_safe(unit.key()), "rows": unit_rows,
                      "seconds": round(time.monotonic() - t1, 2)}
            write_bytes_atomic(path, json.dumps(record, indent=1).encode())
            rows.extend(unit_rows)
            say(f"{unit.title()}: done in {record['seconds']} s")
    finally:
        bar.close()
    if not finalize:
        return {"units": len(units), "resumed": resumed, "rows": rows, "notes": notes}
    if resumed:
        notes.append(f"{resumed} of {len(units)} unit(s) resumed from {partial}")
    configs = {a: attack_config(a, options).describe() for a in options.attacks if a != "none"}
    gt_counts = {k: {s: v.count(s) for s in ("annotation", "reference")} for k, v in run.gt_source.items()}
    results: dict[str, Any] = {
        "format": 1,
        "rows": rows,
        "config": {
            "options": options.describe(),
            "data": [str(p) for p in data],
            "extractors": run.specs,
            "reference": {"label": run.reference_label, "spec": run.reference_spec},
            "attacks": configs,
            "ablations": [dict(zip(("param", "values"), parse_ablation(t), strict=True)) for t in options.ablate],
            "ablate_attack": options.ablate_attack if options.ablate else None,
            "degradations": list(options.degradations),
            "synth": run.synth_info,
            "ssim_i_in_tables": "ssim_i on the face box resampled to 256 px, ssim_w on the aligned crop at the "
                                "swap model's resolution; the paper's "
                                "whole-image mask-SSIM is ssim_i_masked_image / ssim_w_masked_image",
            "settings_hash": settings_hash,
        },
        "seed": options.seed,
        "versions": _versions(pm),
        "device": _device_info(run.device),
        "data": {"images": len(images), "faces": len(faces), "ground_truth": gt_counts},
        "faces": [{"image": images[f.image].name, "box": f.box.tolist(), "annotated": f.landmarks is not None}
                  for f in faces],
        "metrics": METRIC_DOCS,
        "notes": notes,
        "seconds": round(time.monotonic() - t0, 2),
    }
    results = _json_safe(results)
    results["report"] = [str(p) for p in write_report(results, out)]
    write_bytes_atomic(out / "results.json", json.dumps(results, indent=1).encode())
    return results
