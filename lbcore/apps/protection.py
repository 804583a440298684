"""Protecting photos and videos: the end-user path behind ``lb protect``.

``protect(inputs, out_dir)`` finds the faces in every image and video frame, runs the paper's
LB attack against every installed extractor at once (an ensemble), writes the protected files
(atomically, never over an input, skipping what a previous run finished) and returns a report
that says, per file and face, how far each extractor's landmarks moved (NME between its clean
and protected predictions), the image quality (SSIM in the face box, PSNR) and whether the face
crossed the "broken" threshold - also after real JPEG and video re-compression.
"""

from __future__ import annotations

import json
import os
import sys
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from fractions import Fraction
from pathlib import Path
from typing import Any

import attrs
import numpy as np

from lbcore.apps.propagation import box_iou
from lbcore.errors import InputError, LBError, SpecError

__all__ = ["STRENGTHS", "Member", "ProtectOptions", "protect", "default_extractor_specs", "held_out_extractors",
           "plan_default_ensemble"]

_PERCEPTUAL = {"optimizer": "mifgsm-l2:alpha=1,decay=0.5", "mask": "face", "texture": 0.5, "steps": 30}
STRENGTHS: dict[str, dict[str, Any]] = {
    "low": {**_PERCEPTUAL, "eps": 16.0, "ssim_min": 0.98, "psnr_min": 42.0, "hinge": 0.15},
    "medium": {**_PERCEPTUAL, "eps": 16.0, "ssim_min": 0.95, "psnr_min": 38.0, "double": 0.05, "hinge": 0.15,
               "box_jitter": 0.1},
    "high": {**_PERCEPTUAL, "eps": 24.0, "ssim_min": 0.90, "psnr_min": 0.0, "double": 0.05, "hinge": 0.3},
    "paper": {"eps": 15.0, "steps": 20},
}
"""``--strength``: what people may see, as a floor on the SSIM and PSNR inside every face box
(:mod:`lbcore.perceptual`), with a soft face mask and texture masking; ``eps`` is only the
L-inf cap; ``medium`` and ``high`` start the attack from a faint double image (``double``: each
face plus a copy of itself moved by 5 % of its width, scaled into the floor) rather than from the
clean photo, where Eq. 1 is at its maximum and the first gradient is rounding noise (measured: more
effect at both; at ``low`` no gain, so not there). Every strength has a ``hinge``: a member
that already moves a face's landmarks past it (0.15, at ``high`` 0.3) stops pulling on that face,
so the face's budget goes to the members not yet broken (measured: more faces broken by every
attacked extractor at once, on the saved file and after JPEG Q75; with ``box_jitter`` the members
are measured in jittered boxes, where the hinge does not act). ``medium`` jitters every member's face
box each step (``box_jitter``: scaled by up to 10 %, moved by up to 5 % of its size): a face-swap
tool crops its own detector's box, and a perturbation fitted to one exact crop loses half its effect
when the box moves half a pixel (measured: face-api.js's own pipeline, with its own detector, moved
0.078 instead of 0.038, 14 faces of 44 past 0.1 instead of 4; README). ``paper`` is the paper's setting
(L-inf 15, 20 steps, no perceptual budget).
Chosen from ``benchmarks/quality_curve.py`` (see the README)."""

FORMATS = ("auto", "png", "jpeg", "webp")
"""``--format``: ``auto`` keeps the input's family (JPEG stays JPEG, WebP stays WebP, the rest PNG)."""

ROBUST_EOT = ("diffjpeg:quality_range=50:90",)
"""What ``--robust`` optimises through: a differentiable JPEG at a random quality each step."""

COMPRESSION_CHECKS = ("jpeg:quality=75", "jpeg:quality=50", "c2")
"""Real re-compressions applied to each protected image for the report."""


UNDEFINED_NME = ("NME undefined: the extractor put both outer eye corners of the unprotected face on one "
                 "point (not a usable face for it)")
"""The report's note for a face whose clean landmarks cannot normalise the NME."""


@attrs.define
class ProtectOptions:
    """Settings of a protect run (see ``lb protect --help``)."""

    extractors: tuple[str, ...] = ()
    held_out: tuple[str, ...] = ("auto",)
    attack: str = "lb"
    strength: str = "medium"
    eps: float | None = None
    steps: int | None = None
    robust: bool = False
    device: str = "auto"
    detector: str = "auto"
    boxes: tuple[tuple[float, float, float, float], ...] = ()
    min_face: int = 40
    threshold: float = 0.1
    codec: str = "ffv1"
    crf: int = 18
    force: bool = False
    preview: bool = False
    batch_size: int = 8
    photo_batch: int = 1
    seed: int = 0
    check_compression: bool = True
    max_pixels: int | None = None
    max_frames: int | None = None
    start: float = 0.0
    duration: float | None = None
    report_every: int = 10
    amp: str = "auto"
    compile: bool = False
    overlap: bool = True
    detect_every: int = 1
    format: str = "auto"
    quality: int | None = None
    key_interval: int = 1  # (`lb protect` passes its own default; 1 keeps the per-frame path for the API)
    propagated_steps: int = 4
    stop_nme: float = 0.1
    stop_margin: float = 3.5
    cut_error: float = 15.0

    def settings(self) -> dict[str, Any]:
        """What shapes an output (for resume): not the report-only options."""
        keep = ("extractors", "attack", "strength", "eps", "steps", "robust", "detector", "boxes",
                "min_face", "codec", "crf", "seed", "amp", "detect_every", "start", "duration", "format", "quality",
                "key_interval", "propagated_steps", "stop_nme", "stop_margin", "cut_error")
        d = attrs.asdict(self)
        return {k: d[k] for k in keep}


def strength_settings(options: ProtectOptions) -> dict[str, Any]:
    """The :class:`~lbcore.attacks.AttackConfig` fields ``--strength`` (and ``--eps`` /
    ``--steps``) set; keys the ``--attack`` spec gives itself (``lb:ssim_min=0.97``) win."""
    import math

    from lbcore.spec import parse_spec

    if options.strength not in STRENGTHS:
        raise SpecError(f"unknown strength {options.strength!r} (valid: {', '.join(STRENGTHS)})")
    for name in ("eps",):
        v = getattr(options, name)
        if v is not None and (not math.isfinite(float(v)) or float(v) < 0):
            raise SpecError(f"--{name} {v} must be a finite number >= 0")
        if v is not None and not 0 < float(v) <= 255:
            raise SpecError(f"--{name} {v} must be in (0, 255] (the 0..255 pixel scale)")
    if options.steps is not None and options.steps < 0:
        raise SpecError(f"--steps {options.steps} must be >= 0")
    _, given = parse_spec(options.attack)
    out = {k: v for k, v in STRENGTHS[options.strength].items() if k not in given}
    if options.eps is not None:
        out["eps"] = float(options.eps)
    if options.steps is not None:
        out["steps"] = int(options.steps)
    return out


def held_out_extractors(pm: Any, options: ProtectOptions, notes: list[str],
                        attacked: Any = ()) -> dict[str, Any]:
    """The extractors the report measures without attacking them (``--held-out``).

    ``auto`` (the default, also when empty): every installed extractor registered with ``measure=True`` (real
    models cheap to run, such as dlib's 68-point predictor) that is not attacked (named with
    ``--extractor``, or ``attacked``: the names of the default ensemble's members); one that cannot
    be built is left out with a note. ``none``: no held-out column. Anything else: those specs,
    which must build.
    """
    from lbcore.spec import parse_spec

    requested = tuple(options.held_out) or ("auto",)
    if requested == ("none",):
        return {}
    if requested != ("auto",):
        if "auto" in requested or "none" in requested:
            raise SpecError("--held-out auto and none stand alone (not beside extractor specs)")
        return {s: pm.build("extractors", s) for s in requested}
    names = {parse_spec(s)[0] for s in options.extractors} | set(attacked)
    out: dict[str, Any] = {}
    for name, comp in pm.components("extractors").items():
        if not comp.metadata.get("measure") or name in names:
            continue
        try:
            out[name] = pm.build("extractors", name)
        except (LBError, OSError, ImportError, RuntimeError, ValueError) as e:
            notes.append(f"held-out {name} left out of the report: {str(e).splitlines()[0] if str(e) else type(e).__name__}")
    return out


def check_output_options(options: ProtectOptions) -> None:
    """One-line :class:`SpecError` for an unknown ``--format`` or a ``--quality`` outside 1..100."""
    if options.format not in FORMATS:
        raise SpecError(f"unknown output format {options.format!r} (valid: {', '.join(FORMATS)})")
    if options.quality is not None and not 1 <= int(options.quality) <= 100:
        raise SpecError(f"--quality {options.quality} must be in 1..100")


def check_video_options(options: ProtectOptions) -> None:
    """One-line :class:`SpecError` for video key-frame options out of their ranges."""
    import math

    if not 1 <= int(options.key_interval) <= 1000:
        raise SpecError(f"--key-interval {options.key_interval} must be in 1..1000 (1: every frame gets the full attack)")
    if not 0 <= int(options.propagated_steps) <= 1000:
        raise SpecError(f"--propagated-steps {options.propagated_steps} must be in 0..1000")
    if not math.isfinite(float(options.stop_nme)) or not 0 <= float(options.stop_nme) <= 10:
        raise SpecError(f"--stop-nme {options.stop_nme} must be in 0..10 (0: off)")
    if not math.isfinite(float(options.stop_margin)) or not 1 <= float(options.stop_margin) <= 100:
        raise SpecError(f"--stop-margin {options.stop_margin} must be in 1..100")
    if not math.isfinite(float(options.cut_error)) or not 0 < float(options.cut_error) <= 255:
        raise SpecError(f"--cut-error {options.cut_error} must be in (0, 255] (grey levels)")


def output_format(options: ProtectOptions, input_format: str) -> str:
    """``png``, ``jpeg`` or ``webp``: ``--format``, or with ``auto`` the input's family."""
    if options.format != "auto":
        return options.format
    return input_format if input_format in ("jpeg", "webp") else "png"


JPEG_QUALITY_RANGE = (85, 98)
"""Default JPEG output quality: the input's own (estimated from its tables), within this range;
95 for a non-JPEG input."""


@attrs.frozen
class Member:
    """One extractor of the default ensemble.

    Attributes:
        label: what the report and the page call it: ``fan (2dfan4)`` for a weights file,
            the extractor's name otherwise.
        spec: the spec it is built from (``fan:modules=4,landmarks=68,weights=2dfan4``).
        weights: the weights file's name, or None.
        named: the user named this file (``--weights NAME=PATH``): it must be used.
        demo: a demonstration model.
        family: for a demonstration model, the extractor whose published weights replace it
            (``fan`` for ``fan-demo``); None: any other member replaces it.
        missing: the extractor needs a weights file and none is present (not built).
    """

    label: str
    spec: str
    weights: str | None = None
    named: bool = False
    demo: bool = False
    family: str | None = None
    missing: bool = False


def plan_default_ensemble(pm: Any = None, strength: str = "medium") -> list[Member]:
    """The default ensemble's candidates at ``strength``, built from the weights files that are present.

    Every known published file that is found (``--weights NAME=PATH``, ``$LB_WEIGHTS_DIR``, the
    cache folder) joins once, with the architecture it fits (``2dfan4`` ->
    ``fan:modules=4,landmarks=68``). An extractor that declares no weights file joins with its
    ``default_spec`` metadata (``dlib68:blur=1.5``), or its name; one whose declared files are all
    absent is marked ``missing``. Extractors registered with ``default=False`` never join; one
    registered with a tuple of strengths (``default=("high",)``) joins only at those. A demonstration model (``demo=True``) joins
    unless published weights of its own network are present (``fan-demo`` gives way to a FAN
    checkpoint such as 2D-FAN4, not to another network); one that names no network joins only
    when nothing else can be built.
    """
    from lbcore.errors import WeightsError
    from lbcore.plugins import get_plugin_manager
    from lbcore.spec import format_spec, parse_spec
    from lbcore.weights import explicit_weights, resolve_weights

    pm = pm or get_plugin_manager()
    named = explicit_weights()
    members: list[Member] = []
    demos: list[Member] = []
    for name, comp in pm.components("extractors").items():
        default = comp.metadata.get("default", True)
        if default is not True and (default is False or strength not in
                                    ((default,) if isinstance(default, str) else tuple(default))):
            continue
        if comp.metadata.get("demo"):
            spec = comp.metadata.get("spec")
            demos.append(Member(name, name, demo=True, family=parse_spec(spec)[0] if spec else None))
            continue
        declared = [e for e in comp.metadata.get("weights", []) or [] if parse_spec(e.fits)[0] == name]
        present = []
        for entry in declared:
            _, params = parse_spec(entry.fits)
            try:
                resolve_weights(entry)
            except WeightsError:
                if entry.name not in named:
                    continue  # absent; a named but missing file fails when built, below
            present.append(Member(f"{name} ({entry.name})", format_spec(name, {**params, "weights": entry.name}),
                                  entry.name, entry.name in named))
        if present:
            members.extend(present)
        else:
            members.append(Member(name, str(comp.metadata.get("default_spec") or name), missing=bool(declared)))
    return members + demos


def default_extractor_specs(pm: Any = None, strength: str = "medium") -> tuple[dict[str, Any], list[str]]:
    """Build the default ensemble at ``strength`` (see :func:`plan_default_ensemble`).

    A member that cannot be built is left out with a one-line note naming why (a corrupt file,
    ...), unless the user named its file with ``--weights NAME=PATH``: that is an error (exit 3).
    A ``--weights`` name no extractor knows is an error too. Extractors without any weights file
    present are named in one note.

    Returns ``(usable, notes)``: the built extractors by label, and why others were left out.
    """
    from lbcore.errors import WeightsError
    from lbcore.plugins import get_plugin_manager
    from lbcore.spec import parse_spec
    from lbcore.weights import explicit_weights

    pm = pm or get_plugin_manager()
    _check_named_weights(pm, explicit_weights())
    plan = plan_default_ensemble(pm, strength)
    usable: dict[str, Any] = {}
    built_from: set[str] = set()
    notes: list[str] = []

    def build(m: Member) -> None:
        try:
            usable[m.label] = pm.build("extractors", m.spec)
            built_from.add(parse_spec(m.spec)[0])
        except LBError as err:
            if m.named:
                raise WeightsError(f"--weights {m.weights}: {_one_line(err)}") from None
            notes.append(f"{m.label}: not used ({_one_line(err)})")
        except Exception as err:  # a plugin bug must not stop the others
            notes.append(f"{m.label}: not used ({type(err).__name__}: {_one_line(err)})")

    for m in plan:
        if not m.demo and not m.missing:
            build(m)
    missing = [m.label for m in plan if m.missing]
    if missing:
        notes.append(f"no weights file present for {', '.join(missing)}: not used (see `lb weights list`)")
    others = bool(usable)
    for m in plan:
        if not m.demo:
            continue
        if m.family in built_from or (m.family is None and others):
            notes.append(f"demonstration model {m.label} not used: published weights take over")
            continue
        build(m)
        if m.label in usable:
            notes.append(f"using the demonstration model {m.label}"
                         + (f" (no published {m.family} weights found; see `lb weights list`)" if m.family else
                            " (no published weights found; see `lb weights list`)"))
    return usable, notes


def _one_line(err: object) -> str:
    return " ".join(str(err).split())


def _check_named_weights(pm: Any, named: dict[str, str]) -> None:
    """Every ``--weights NAME=PATH`` must name a known file of an installed extractor."""
    from lbcore.errors import WeightsError

    known = set()
    for comp in pm.components("extractors").values():
        for entry in [*(comp.metadata.get("weights") or []), *(comp.metadata.get("demo_weights") or [])]:
            known.add(entry.name)
    unknown = sorted(set(named) - known)
    if unknown:
        raise WeightsError(f"--weights {unknown[0]}={named[unknown[0]]}: no installed extractor uses weights "
                           f"named {unknown[0]!r} (known: {', '.join(sorted(known)) or 'none'}; see `lb weights list`)")


@attrs.define(eq=False)
class _PhotoJob:
    """A photo read, its faces found, waiting for its attack (see :meth:`_Run.prepare_image`)."""

    entry: Any
    out: Path
    record: dict[str, Any]
    loaded: Any
    x: Any
    faces: Any
    keep: list[list[float]]
    plan: dict[str, Any]


def _shown(path: Path) -> str:
    from lbcore.io import display_path

    return display_path(path)


class _Run:
    """State shared by the files of one protect run."""

    def __init__(self, options: ProtectOptions, out_dir: Path, inputs: Sequence[Path],
                 progress: Callable[[str], None] | None) -> None:
        import torch

        from lbcore.attacks import preset
        from lbcore.engine import performance_for, resolve_device
        from lbcore.io import ResultStore
        from lbcore.plugins import get_plugin_manager

        self.o = options
        self.out_dir = out_dir
        self.inputs = list(inputs)
        self.pm = get_plugin_manager()
        self.notes: list[str] = []
        self.log = progress or (lambda s: None)
        self.bars = False
        if options.extractors:
            from lbcore.weights import explicit_weights

            _check_named_weights(self.pm, explicit_weights())
            self.attacked = {s: self.pm.build("extractors", s) for s in options.extractors}
        else:
            self.attacked, notes = default_extractor_specs(self.pm, options.strength)
            self.notes += notes
            if not self.attacked:
                raise LBError("no usable landmark extractor: install a plugin (lb-fan, lb-hrnet, lb-avssan) "
                              "and its weights (see `lb weights list`)")
        specs = list(self.attacked)
        if options.strength not in STRENGTHS:
            raise SpecError(f"unknown strength {options.strength!r} (valid: {', '.join(STRENGTHS)})")
        self.device = resolve_device(options.device)
        # the fast path on GPUs (bf16 autocast, NHWC); fp32 on the CPU unless asked (--amp bf16)
        self.performance = performance_for(self.device, options.amp, options.compile)
        # a default member's label is its extractor's name, or "name (weights file)"
        self.held = held_out_extractors(self.pm, options, self.notes,
                                        attacked={label.split(" (")[0] for label in self.attacked})
        for e in [*self.attacked.values(), *self.held.values()]:
            e.to(self.device).eval()
        check_output_options(options)
        check_video_options(options)
        self.passes_spent = 0  # extractor passes (forward+backward per face and extractor) of every attack
        self.config = preset(options.attack, **strength_settings(options), seed=options.seed,
                             eot=ROBUST_EOT if options.robust else None)
        self.detector = None if options.boxes else self.pm.build("detectors", options.detector)
        note = getattr(self.detector, "note", None)  # `auto` fell back to a weaker detector
        if note:
            self.notes.append(str(note))
        self.store = ResultStore({**options.settings(), "extractors": specs}, force=options.force)
        self.checks: dict[str, Any] = {}
        if options.check_compression:
            for spec in COMPRESSION_CHECKS:
                try:
                    self.checks[spec] = self.pm.build_degradation(spec)
                except LBError as err:
                    self.notes.append(f"compression check {spec} skipped ({err})")
        self.torch = torch

    # -- faces -------------------------------------------------------------------------
    def find_faces(self, rgb: np.ndarray,
                   found: list[list[float]] | None = None) -> tuple[list[list[float]], list[list[float]]]:
        """``(faces to protect, faces too small)`` as x1,y1,x2,y2 lists.

        ``found``: boxes already known for this image (video frames between detections); by
        default the ``--box`` list or the detector's boxes. The size test uses the part of the
        box inside the image: a ``--box`` given for every input can miss a smaller image entirely
        (nothing there to protect).
        """
        if found is None:
            found = self.detect(rgb)
        h, w = rgb.shape[:2]
        keep: list[list[float]] = []
        small: list[list[float]] = []
        for b in found:
            side = min(min(b[2], w) - max(b[0], 0.0), min(b[3], h) - max(b[1], 0.0))
            (keep if side >= self.o.min_face else small).append(b)
        return keep, small

    def detect(self, rgb: np.ndarray) -> list[list[float]]:
        """The ``--box`` list, or the detector's boxes for this image."""
        if self.o.boxes:
            return [list(b) for b in self.o.boxes]
        assert self.detector is not None
        return [[float(v) for v in b[:4]] for b in self.detector(rgb)]

    def find_faces_in_frames(self, frames: list[np.ndarray], first: int,
                             previous: list[list[float]] | None = None) -> tuple[list[Any], list[list[float]]]:
        """:meth:`find_faces` for consecutive video frames ``first, first + 1, ...``.

        With ``detect_every`` N > 1 the detector runs on every N-th frame of the video and on
        the last frame of the batch only; the frames between take boxes interpolated between the
        two nearest detections (:func:`interpolate_boxes`), ``previous`` being the boxes of the
        frame before ``first`` (the last of the previous batch). Returns the per-frame
        ``(keep, small)`` and the last frame's boxes (the next batch's ``previous``).
        """
        every = max(1, self.o.detect_every)
        if self.o.boxes or every == 1:
            found = [self.detect(f) for f in frames]
        else:
            keys = {i: self.detect(f) for i, f in enumerate(frames)
                    if (first + i) % every == 0 or i == len(frames) - 1}
            if previous is not None:
                keys[-1] = previous
            found = interpolate_boxes(keys, len(frames))
        return [self.find_faces(f, b) for f, b in zip(frames, found, strict=True)], found[-1]

    # -- measuring ---------------------------------------------------------------------
    def predict_all(self, x: Any, faces: Any) -> dict[str, Any]:
        with self.torch.no_grad():
            return {s: e.predict(x.to(self.device), faces.to(self.device)).cpu()
                    for s, e in [*self.attacked.items(), *self.held.items()]}

    def measure(self, clean: Any, adv: Any, faces: Any, boxes: list[list[float]],
                with_checks: bool) -> list[dict[str, Any]]:
        """Per-face report rows for a batch of frames/images (tensors (B,3,H,W) 0..255)."""
        from lbcore.metrics import nme, psnr, region_mask_ssim

        before = self.predict_all(clean, faces)
        after = self.predict_all(adv, faces)
        after_checks: dict[str, dict[str, Any]] = {}
        if with_checks:
            for spec, deg in self.checks.items():
                try:
                    degraded = deg(adv.clone())
                except LBError as err:
                    self.notes.append(f"compression check {spec} failed ({err})")
                    continue
                after_checks[spec] = self.predict_all(degraded, faces)
        rows = []
        clean_np = clean.permute(0, 2, 3, 1).to(self.torch.uint8).numpy()
        adv_np = adv.permute(0, 2, 3, 1).to(self.torch.uint8).numpy()
        for i in range(len(faces)):
            img = int(faces.image_index[i])
            row: dict[str, Any] = {"box": [round(v, 1) for v in boxes[i]], "extractors": {}}
            for spec in [*self.attacked, *self.held]:
                scheme = (self.attacked.get(spec) or self.held[spec]).scheme
                ref = before[spec][i].numpy()
                entry: dict[str, Any] = {"attacked": spec in self.attacked}
                try:
                    n = float(nme(after[spec][i].numpy(), ref, scheme))
                except InputError:  # the clean landmarks put both outer eye corners on one point
                    # the output is written already: report the face as unmeasured, keep the file
                    entry.update(nme=None, broken=None, note=UNDEFINED_NME)
                    row["extractors"][spec] = entry
                    continue
                entry.update(nme=round(n, 4), broken=bool(n > self.o.threshold))
                if after_checks:
                    entry["after_compression"] = {
                        c: round(float(nme(v[spec][i].numpy(), ref, scheme)), 4) for c, v in after_checks.items()
                    }
                row["extractors"][spec] = entry
            # SSIM_I as the paper computes it (both images masked, whole-image SSIM) and the
            # stricter SSIM averaged over the face box only (independent of the face's size).
            # (computed on the box's neighbourhood: exact, and fast on large photos)
            row["ssim"] = round(region_mask_ssim(clean_np[img], adv_np[img], np.asarray(boxes[i])), 4)
            row["ssim_box"] = round(region_mask_ssim(clean_np[img], adv_np[img], np.asarray(boxes[i]),
                                                     variant="mask-mean"), 4)
            row["psnr"] = round(float(psnr(clean_np[img], adv_np[img], mask=boxes[i])), 2)
            rows.append(row)
        return rows

    def attack(self, x: Any, faces: Any, init: Any = None, config: Any = None) -> Any:
        """Protected images on the CPU (float, integer values) for images ``x`` anywhere."""
        adv = self.attack_on_device(x, faces, init, config)
        return adv.to(self.torch.uint8).cpu().float()  # integer pixels: uint8 moves a quarter of the bytes

    def attack_on_device(self, x: Any, faces: Any, init: Any = None, config: Any = None) -> Any:
        """Protected images left on the attack's device (video: the next warm start is made there)."""
        from lbcore.engine import attack

        res = attack(x, faces, list(self.attacked.values()), config or self.config, device=self.device,
                     plugin_manager=self.pm, init=init, performance=self.performance)
        if res.passes is not None:
            self.passes_spent += int(res.passes.sum())
        return res.adversarial

    def attack_planned(self, x: Any, boxes: list[list[list[float]]], plans: list[Any], deltas: dict[int, Any]) -> Any:
        """Video key frames (``--key-interval`` > 1): key frames get the full attack, propagated
        frames start from their key frame's perturbation warped along the flow and run at most
        ``--propagated-steps`` steps with the stop rule. ``deltas``: the key frames'
        perturbations (frame number -> ``(3, H, W)`` on the device); the latest key is kept."""
        import attrs as _attrs

        from lbcore.apps.propagation import warp
        from lbcore.types import Faces

        torch = self.torch
        prop_config = _attrs.evolve(self.config, steps=min(int(self.o.propagated_steps), int(self.config.steps)),
                                    stop_nme=float(self.o.stop_nme), stop_margin=float(self.o.stop_margin))
        adv = x.clone()
        for kind, config in (("key", self.config), ("propagated", prop_config)):
            group = [j for j, p in enumerate(plans) if p.kind == kind]
            if not group:
                continue
            init = x[group].clone()
            inherit = [n for n, j in enumerate(group) if plans[j].ref in deltas and plans[j].flow is not None]
            if inherit:
                ref = torch.stack([deltas[plans[group[n]].ref] for n in inherit])
                flow = torch.from_numpy(np.stack([plans[group[n]].flow for n in inherit]))
                init[inherit] = init[inherit] + warp(ref, flow)
            adv[group] = self.attack_on_device(x[group], Faces.from_lists([boxes[j] for j in group]), init=init,
                                               config=config)
            if kind == "key":
                for j in group:
                    deltas[plans[j].index] = (adv[j] - x[j]).detach()
        for old in sorted(deltas)[:-1]:  # only the latest key frame can be referenced from now on
            del deltas[old]
        return adv

    def encode_within_budget(self, loaded: Any, x: Any, adv: Any, faces: Any,
                             plan: dict[str, Any]) -> tuple[np.ndarray, bytes]:
        """Encode the protected image as planned; for a lossy format, decode it again and, where a
        face box of the decoded file misses the attack's SSIM/PSNR floor, shrink that face's
        perturbation (its own factor, as :class:`lbcore.perceptual.QualityGuard` does) to the
        largest that meets the floor after the re-encode (bisection), so one face does not hold
        back the others and none gives up more than it must. Returns the decoded pixels
        (H, W, 3 uint8 RGB) and the bytes."""
        from lbcore.io import display_path
        from lbcore.io.images import encode_image
        from lbcore.perceptual import QualityGuard

        torch = self.torch
        cfg = plan["config"]
        kw = {"quality": plan["quality"], "subsampling": plan["subsampling"], "icc_profile": plan["icc_profile"]}
        webp_lossy = plan["suffix"] == ".webp" and plan["quality"] is not None
        lossy = plan["suffix"] in (".jpg", ".jpeg") or webp_lossy
        reference = x.double()
        if webp_lossy:
            # lossy WebP (always 4:2:0) by itself costs more than the floors allow (lenna at quality 95:
            # in-box SSIM 0.936): the floor is held against the unprotected photo saved the same way,
            # so it bounds what the protection adds to what the person would have published anyway
            clean_rgb = x.round().clamp(0, 255)[0].permute(1, 2, 0).to(torch.uint8).numpy()
            clean_file = _decode_rgb(encode_image(clean_rgb, loaded, plan["suffix"], **kw), loaded)
            reference = torch.from_numpy(clean_file).permute(2, 0, 1)[None].double()
            if cfg.ssim_min > 0 or cfg.psnr_min > 0:
                self.notes.append(f"{display_path(loaded.path)}: lossy WebP (quality {plan['quality']}): the similarity "
                                  "budget is held against the photo saved unprotected at that quality; the report's "
                                  "SSIM and PSNR compare with the original and include the codec's own loss")
        guard = QualityGuard(reference, faces, cfg.ssim_min, cfg.psnr_min)
        delta = adv - x

        last: list[Any] = []  # the latest encoding: (decoded pixels, bytes)

        def encode(scale: Any) -> Any:
            """Per face: does the file encoded with these factors meet the floor once decoded?"""
            cand = adv if scale is None else x + guard.scale_map(scale).to(delta.dtype) * delta
            rgb = cand.round().clamp(0, 255)[0].permute(1, 2, 0).to(torch.uint8).numpy()
            data = encode_image(rgb, loaded, plan["suffix"], **kw)
            decoded = _decode_rgb(data, loaded) if lossy else rgb
            last[:] = [decoded, data]
            if not lossy or not guard.active:
                return None
            return guard._face_ok(torch.from_numpy(decoded).permute(2, 0, 1)[None].double())

        n = len(guard.regions)
        ok = encode(torch.ones(n, dtype=torch.float64) if n else None)
        if ok is None or bool(ok.all()):
            return last[0], last[1]
        # per face: the largest factor that holds after the re-encode (to 1/64), then the faces
        # whose regions share JPEG blocks checked together
        lo = guard.bisect(encode, torch.where(ok, 1.0, 0.0).double(), torch.ones(n, dtype=torch.float64), ~ok, 6)
        _, ok = guard.settle(encode, lo, shrink=0.7, tries=8)
        if bool(ok.all()):
            return last[0], last[1]
        self.notes.append(f"{display_path(loaded.path)}: {plan['suffix'].lstrip('.')} quality {plan['quality']}: the re-encode alone costs more "
                          f"similarity than the budget (SSIM {cfg.ssim_min}, PSNR {cfg.psnr_min} dB) allows; "
                          "use a higher --quality or --format png")
        return last[0], last[1]

    def output_path(self, entry: Any) -> Path:
        """Where an input's protected file goes (the input's relative path under the output folder)."""
        from lbcore.io import DEFAULT_VIDEO_SUFFIX

        out = self.out_dir / entry.rel
        if entry.kind == "video":
            return out.with_suffix(DEFAULT_VIDEO_SUFFIX[self.o.codec])
        suffix = out.suffix.lower()
        family = {".jpg": "jpeg", ".jpeg": "jpeg", ".webp": "webp"}.get(suffix, "png")
        fmt = output_format(self.o, family)
        if fmt == "jpeg":
            return out if suffix in (".jpg", ".jpeg") else out.with_suffix(".jpg")
        if fmt == "webp":
            return out.with_suffix(".webp")
        if suffix in (".jpg", ".jpeg", ".webp", ".bmp", ".ppm", ".pgm", ".pnm"):
            out = out.with_suffix(".png")
        return out

    def save_plan(self, out: Path, loaded: Any) -> dict[str, Any]:
        """How an image output is encoded: ``suffix``, ``quality``, ``subsampling`` (JPEG), the
        input's ICC profile, and the attack config (JPEG: optimised through a differentiable JPEG
        at the quality and subsampling the file is saved with)."""
        from lbcore.io.images import jpeg_settings

        suffix = out.suffix.lower()
        plan: dict[str, Any] = {"suffix": suffix, "quality": self.o.quality, "subsampling": None,
                                "icc_profile": loaded.icc_profile, "config": self.config}
        if suffix in (".jpg", ".jpeg"):
            js = jpeg_settings(loaded.path) if loaded.format == "jpeg" else None
            if plan["quality"] is None:
                lo, hi = JPEG_QUALITY_RANGE
                plan["quality"] = min(max(js.quality, lo), hi) if js is not None else 95
            plan["subsampling"] = js.subsampling if js is not None else "420"
            if loaded.grey:
                plan["subsampling"] = "444"  # one channel: nothing to subsample
            spec = f"diffjpeg:quality={plan['quality']},subsampling={plan['subsampling']}"
            plan["config"] = attrs.evolve(self.config, eot=(spec, *self.config.eot))
        return plan

    # -- one image ---------------------------------------------------------------------
    def image(self, entry: Any) -> dict[str, Any]:
        """Protect one photo; return its report record (:meth:`prepare_image`, the attack,
        :meth:`finish_image`)."""
        job = self.prepare_image(entry)
        if not isinstance(job, _PhotoJob):
            return job
        return self.finish_image(job, self.attack_photo(job))

    def prepare_image(self, entry: Any) -> dict[str, Any] | _PhotoJob:
        """Read a photo and find its faces: its finished record (done earlier, or written
        unchanged without a face) or the :class:`_PhotoJob` to attack."""
        from lbcore.io import read_image, write_image_atomic
        from lbcore.types import Faces

        out = self.output_path(entry)
        record: dict[str, Any] = {"input": str(entry.path), "output": str(out), "kind": "image"}
        if self.store.is_finished(entry.path, out):
            return self._resumed(out, record)
        kwargs = {} if self.o.max_pixels is None else {"max_pixels": self.o.max_pixels}
        loaded = read_image(entry.path, **kwargs)
        keep, small = self.find_faces(loaded.rgb)
        record["skipped_small_faces"] = [[round(v, 1) for v in b] for b in small]
        if not keep:
            write_image_atomic(out, loaded.rgb, like=loaded, inputs=self.inputs)
            record.update(status="unchanged", faces=[], note="no face found: written unchanged")
            self.store.mark_finished(entry.path, out, report=record)
            return record
        x = self.torch.from_numpy(loaded.rgb).permute(2, 0, 1)[None].float()
        return _PhotoJob(entry, out, record, loaded, x, Faces.from_lists([keep]), keep, self.save_plan(out, loaded))

    def attack_photo(self, job: _PhotoJob, on_step: Callable[[int, int], None] | None = None) -> Any:
        """The protected pixels of one photo (float, integer values, on the CPU)."""
        if on_step is None and self.bars:
            self.log(f"{_shown(job.entry.path)}: {len(job.keep)} face(s) found; protecting "
                     f"({self.config.steps} attack steps)")
            bar = self.step_bar(f"{_shown(job.entry.path)}: {len(job.keep)} face(s)")
            with bar:
                return self.attack_photo(job, lambda k, n: bar.update(1))
        if on_step is None:
            self.log(f"{_shown(job.entry.path)}: {len(job.keep)} face(s) found; protecting "
                     f"({self.config.steps} attack steps)")
        if self.batchable(job):
            # a batch of one: the network calls exactly as in a batch of several
            (res,) = self.attack_photos([job], on_step=on_step, announce=False)
            if isinstance(res, BaseException):
                raise res
            return res
        return self.attack_job(job, on_step)

    def attack_job(self, job: _PhotoJob, on_step: Callable[[int, int], None] | None) -> Any:
        """The engine on the photo's :meth:`attack_window` (the whole photo where none), the
        result pasted back: the protected pixels (float, integer values, on the CPU)."""
        from lbcore.engine import attack
        from lbcore.types import Faces

        win = self.attack_window(job)
        x, faces = job.x, job.faces
        if win is not None:
            x0, y0, x1, y1 = win
            x = x[:, :, y0:y1, x0:x1]
            faces = Faces(faces.boxes - faces.boxes.new_tensor([x0, y0, x0, y0]), faces.image_index)
        res = attack(x, faces, list(self.attacked.values()), job.plan["config"], device=self.device,
                     plugin_manager=self.pm, performance=self.performance, on_step=on_step)
        adv = res.adversarial.to(self.torch.uint8).cpu().float()
        if win is None:
            return adv
        full = job.x.clone()
        full[:, :, y0:y1, x0:x1] = adv
        return full

    def attack_window(self, job: _PhotoJob) -> tuple[int, int, int, int] | None:
        """``(x0, y0, x1, y1)``: the part of the photo its attack needs, or ``None`` for all of it.

        Every attacked extractor sees only its crop of each face, and with the default settings
        nothing else in the attack reaches further than a few pixels (the budget maps' blur, the
        differentiable JPEG's 16-pixel blocks and its chroma upsampling): the window holds every
        crop of every face plus ``32`` pixels and the stages' reach, its corner on the JPEG block
        grid (the blocks are the file's blocks). Attacking it instead of a large photo gives the
        same perturbation at a fraction of the cost (the whole-image work of every step: the
        differentiable JPEG, the crops' backward, the update rule, the budget). Settings that
        transform the whole image (input diversity, rotation, the coarse grid, TI smoothing), stages
        without a known reach, and extractors without a crop rule (``crop_theta`` and ``input_size``,
        a side or ``(h, w)``) attack the whole photo. With ``box_jitter`` the window holds the crops
        of the farthest jittered boxes (each box scaled by ``1 +- j`` and moved by ``+-j/2`` of its
        size: the crop rules are affine in the box, so the extremes are these eight)."""
        import math

        torch = self.torch
        cfg = job.plan["config"]
        if cfg.diversity_prob > 0 or cfg.rotate > 0 or cfg.coarse > 0 or cfg.ti_sigma > 0 or cfg.ti_rel > 0:
            return None
        reach = 0
        for spec in cfg.eot:
            r = getattr(self.pm.build("degradations", spec), "local_radius", None)
            if r is None:
                return None
            reach = max(reach, int(r))
        boxes = job.faces.boxes.float().cpu()
        j = float(cfg.box_jitter)
        if j > 0:
            c, size = (boxes[:, :2] + boxes[:, 2:]) / 2, boxes[:, 2:] - boxes[:, :2]
            boxes = torch.cat([torch.cat([c + sx * (j / 2) * size - size * (1 + sj * j) / 2,
                                          c + sx * (j / 2) * size + size * (1 + sj * j) / 2], 1)
                               for sj in (-1, 1) for sx in (torch.tensor([-1.0, -1.0]), torch.tensor([-1.0, 1.0]),
                                                             torch.tensor([1.0, -1.0]), torch.tensor([1.0, 1.0]))])
        lo = torch.full((2,), math.inf)
        hi = torch.full((2,), -math.inf)
        for ext in self.attacked.values():
            size = getattr(ext, "input_size", None)
            if not hasattr(ext, "crop_theta") or size is None:
                return None
            ch, cw = (int(size), int(size)) if isinstance(size, (int, float)) else (int(size[0]), int(size[1]))
            theta = ext.crop_theta(boxes).float()
            if tuple(theta.shape) != (len(boxes), 2, 3):
                return None
            corners = torch.tensor([[-0.5, -0.5, 1.0], [cw - 0.5, -0.5, 1.0], [-0.5, ch - 0.5, 1.0],
                                    [cw - 0.5, ch - 0.5, 1.0]])
            pts = torch.einsum("fij,kj->fki", theta, corners).reshape(-1, 2)
            lo = torch.minimum(lo, pts.min(0).values)
            hi = torch.maximum(hi, pts.max(0).values)
        h, w = int(job.x.shape[2]), int(job.x.shape[3])
        margin = 32 + reach
        x0 = max(0, int(math.floor((float(lo[0]) - margin) / 16)) * 16)
        y0 = max(0, int(math.floor((float(lo[1]) - margin) / 16)) * 16)
        x1 = min(w, int(math.ceil(float(hi[0]) + margin)))
        y1 = min(h, int(math.ceil(float(hi[1]) + margin)))
        if x1 <= x0 or y1 <= y0 or (x1 - x0) * (y1 - y0) > 0.8 * h * w:
            return None
        return x0, y0, x1, y1

    def step_bar(self, desc: str, total: int | None = None) -> Any:
        """A terminal progress bar of attack steps (cleared when done)."""
        from tqdm import tqdm

        return tqdm(total=total or self.config.steps, unit="step", desc=desc, leave=False, file=sys.stderr,
                    mininterval=0, miniters=1)

    def batchable(self, job: _PhotoJob) -> bool:
        """Whether a photo's attack may share network calls with others without changing it:
        an extractor whose calls can be shared (``Extractor.shares_crops``: heat-map networks and
        MediaPipe's; others run in each photo's thread unshared), randomness only from the
        per-photo generator, no hooks or compile (:func:`lbcore.apps.photo_batch.shareable`)."""
        return self.o.photo_batch > 1 and bool(self.shared_members(job))

    def shared_members(self, job: _PhotoJob) -> list[Any]:
        """The attacked extractors whose calls this photo's attack may share with others'."""
        from lbcore.apps.photo_batch import shareable

        return shareable(list(self.attacked.values()), job.plan["config"], self.pm, self.performance.compile)

    def attack_photos(self, jobs: Sequence[_PhotoJob], on_step: Callable[[int, int], None] | None = None,
                      announce: bool = True) -> list[Any]:
        """:meth:`attack_photo` of several photos, their network calls batched across photos
        (:mod:`lbcore.apps.photo_batch`); each result is the protected pixels or the exception
        that photo's attack raised. The same pixels as one by one."""
        from lbcore.apps.photo_batch import CrossFileBatcher

        together = [j for j in jobs if self.batchable(j)]
        results: dict[int, Any] = {}
        if together and (len(together) > 1 or not announce):
            bar = None
            lock = __import__("threading").Lock()
            for j in together if announce else ():
                self.log(f"{_shown(j.entry.path)}: {len(j.keep)} face(s) found; protecting "
                         f"({self.config.steps} attack steps, {len(together)} photos together)")
            if self.bars and announce:
                faces = sum(len(j.keep) for j in together)
                bar = self.step_bar(f"{len(together)} photos, {faces} face(s)", self.config.steps * len(together))

            def tick(k: int, n: int) -> None:
                if on_step is not None:
                    on_step(k, n)
                if bar is not None:
                    with lock:
                        bar.update(1)

            def job_fn(j: _PhotoJob) -> Callable[[], Any]:
                def fn() -> Any:
                    return self.attack_job(j, tick)
                return fn

            # (CPU: the shared network calls run kernels whose results do not depend on the batch)
            self.batcher = CrossFileBatcher(self.shared_members(together[0]), invariant=self.device.type == "cpu")
            try:
                out = self.batcher.run([job_fn(j) for j in together])
            finally:
                if bar is not None:
                    bar.close()
            results = {id(j): r for j, r in zip(together, out, strict=True)}
        for j in jobs:
            if id(j) not in results:
                try:
                    results[id(j)] = self.attack_photo(j)
                except KeyboardInterrupt:
                    raise
                except Exception as err:
                    results[id(j)] = err
        return [results[id(j)] for j in jobs]

    def finish_image(self, job: _PhotoJob, adv: Any) -> dict[str, Any]:
        """Encode (within the perceptual budget), write, measure and record a protected photo."""
        from lbcore.io import write_image_atomic

        entry, out, record, loaded, x, faces, plan = job.entry, job.out, job.record, job.loaded, job.x, job.faces, job.plan
        adv_rgb, data = self.encode_within_budget(loaded, x, adv, faces, plan)
        write_image_atomic(out, adv_rgb, like=loaded, inputs=self.inputs, data=data)
        # measured on the file as saved (decoded again): what is protected is what is published
        adv = self.torch.from_numpy(adv_rgb).permute(2, 0, 1)[None].float()
        record.update(status="protected", faces=self.measure(x, adv, faces, job.keep, with_checks=True),
                      format=plan["suffix"].lstrip("."), quality=plan["quality"],
                      bytes=len(data), input_bytes=entry.path.stat().st_size)
        if self.o.preview:
            record["preview"] = str(self.preview(entry.rel, loaded.rgb, adv_rgb, faces, x, adv))
        self.store.mark_finished(entry.path, out, report=record)
        return record

    def _resumed(self, out: Path, record: dict[str, Any]) -> dict[str, Any]:
        from lbcore.io import sidecar_path

        try:
            saved = json.loads(sidecar_path(out).read_text(encoding="utf-8")).get("report", {})
        except (OSError, ValueError):
            saved = {}
        return {**saved, **record, "status": "done earlier", "resumed": True,
                "previous_status": saved.get("status")}

    def preview(self, rel: Path, clean: np.ndarray, adv: np.ndarray, faces: Any, x: Any, xa: Any,
                suffix: str = ".png") -> Path:
        """Side-by-side PNG: clean with clean landmarks (green), protected with its own (red);
        below, the first face at 1:1 pixels: clean, protected, and the difference x8 on grey."""
        import cv2

        from lbcore.io import write_image_atomic

        first = next(iter(self.attacked))
        before = self.predict_all(x, faces)[first]
        after = self.predict_all(xa, faces)[first]
        left, right = clean.copy(), adv.copy()
        r = max(1, round(max(clean.shape[:2]) / 300))
        for pts, img, colour in ((before, left, (0, 255, 0)), (after, right, (255, 0, 0))):
            for face in pts.numpy():
                for px, py in face:
                    if np.isfinite(px) and np.isfinite(py):
                        cv2.circle(img, (round(float(px)), round(float(py))), r, colour, -1, cv2.LINE_AA)
        side = np.concatenate([left, right], axis=1)
        box = faces.boxes[0].tolist()
        side = _stack_rows(side, face_crops_1to1(clean, adv, box))
        path = self.out_dir / "previews" / Path(rel).with_suffix(suffix)
        path.parent.mkdir(parents=True, exist_ok=True)
        write_image_atomic(path, side, inputs=self.inputs)
        return path

    # -- one video ---------------------------------------------------------------------
    def video(self, entry: Any, *, span: tuple[int, int | None] | None = None, out: Path | None = None,
              raw: dict[str, Any] | None = None) -> dict[str, Any]:
        """Protect one video; return its report record.

        ``lb distributed protect`` protects a long video in frame ranges: with ``span=(start,
        stop)`` only frames ``[start, stop)`` are protected (stop None: to the end), written to
        ``out`` losslessly (FFV1, no audio; merged later), not recorded in the result store; its
        raw per-face measurements, counts and frame times go into ``raw``.
        """
        from lbcore.io import VideoWriter, display_path, iter_video_frames_timed, probe_video
        from lbcore.types import Faces

        segment = span is not None
        out = self.output_path(entry) if out is None else out
        record: dict[str, Any] = {"input": str(entry.path), "output": str(out), "kind": "video"}
        if not segment and self.store.is_finished(entry.path, out):
            return self._resumed(out, record)
        kwargs: dict[str, Any] = {} if self.o.max_frames is None else {"max_frames": self.o.max_frames}
        part = not segment and (self.o.start > 0 or self.o.duration is not None)
        if part:
            # --start/--duration: protect that part; --max-frames limits the part, not the file
            info = probe_video(entry.path, max_frames=None)
            span = self.part_span(entry.path, info)
            kwargs = {"max_frames": None}
            record.update(start=self.o.start, part_frames=[span[0], span[1]])
        else:
            info = probe_video(entry.path, **kwargs)
        out.parent.mkdir(parents=True, exist_ok=True)
        stats: dict[str, list[float]] = {}
        n_frames = n_faces = n_small = 0
        # Ctrl-C keeps the frames done (lossless FFV1 only) as a hidden partial beside the output,
        # which the next run copies and continues from
        resumable = not segment and self.o.codec == "ffv1"
        interrupted = False
        partial = self.load_partial(entry, out) if resumable else None
        written_times: list[Any] = []
        first_time: list[Any] = []  # a part starts at time 0 in its own file
        if partial is not None:
            stats = partial["stats"]
            n_frames, n_faces, n_small = partial["frames"], partial["faces_protected"], partial["skipped_small_faces"]
            first_time = [Fraction(t) for t in partial["first_time"]]
            base = 0 if span is None else span[0]
            span = (base + n_frames, None if span is None else span[1])
            self.log(f"{display_path(entry.path)}: continuing after the {n_frames} frames an interrupted run finished")
        prev_delta = None
        measured_batches = 0
        # --preview: the first measured frame with a face, the first from the middle on, the last
        picks: dict[str, tuple[int, Any, Any, list[list[float]]]] = {}

        def keep_preview_frame(number: int, clean: Any, adv: Any, boxes: list[list[float]]) -> None:
            pick = (number, clean.clone(), adv.clone(), boxes)
            picks.setdefault("first", pick)
            if number >= total // 2:
                picks.setdefault("middle", pick)
            picks["last"] = pick
        from tqdm import tqdm

        from lbcore.apps.pipeline import BackgroundWriter, prefetch, stage_frames

        def batches() -> Iterator[tuple[list[Any], Any, list[Any], list[Any] | None]]:
            # background thread: decode, detect faces, stage the frames on the device
            chunk: list[tuple[np.ndarray, Any]] = []
            frames = iter_video_frames_timed(entry.path, **kwargs, **_span_kwargs(span))
            try:
                for item in frames:
                    chunk.append(item)
                    if len(chunk) >= self.o.batch_size:
                        yield prepare(chunk)
                        chunk = []
                if chunk:
                    yield prepare(chunk)
            finally:
                getattr(frames, "close", lambda: None)()  # the video file, now, even when stopped early

        def prepare(chunk: list[tuple[np.ndarray, Any]]) -> tuple[list[Any], Any, list[Any], list[Any] | None]:
            per_frame, last_boxes[0] = self.find_faces_in_frames([f for f, _ in chunk], done_frames[0], last_boxes[0])
            plans = None
            if planner is not None:  # key frames and flows (--key-interval > 1), here in the background thread
                plans = [planner.plan(done_frames[0] + j, f, keep)
                         for j, ((f, _), (keep, _)) in enumerate(zip(chunk, per_frame, strict=True))]
            done_frames[0] += len(chunk)
            return [t for _, t in chunk], stage_frames([f for f, _ in chunk], self.device), per_frame, plans

        planner = None
        if self.o.key_interval > 1:
            from lbcore.apps.propagation import KeyFramePlanner

            planner = KeyFramePlanner(self.o.key_interval, cut_error=self.o.cut_error)
        deltas: dict[int, Any] = {}
        passes_before = self.passes_spent
        key_reasons: dict[str, int] = {}  # key frames with faces, by reason

        # (the background thread's running state: frame number, the last frame's face boxes)
        done_frames = [0 if span is None else span[0]]
        last_boxes: list[list[list[float]] | None] = [None]

        total = info.frame_count if span is None else min(span[1] or info.frame_count, info.frame_count) - span[0]
        total += n_frames  # (frames a previous, interrupted run finished)
        frames_bar = tqdm(total=total, unit="frame", desc=display_path(entry.path.name),
                          leave=False, disable=not self.bars, file=sys.stderr)
        with frames_bar, VideoWriter(out, info.fps, codec="ffv1" if segment else self.o.codec, crf=self.o.crf,
                                     audio_from=entry.path if info.has_audio and not segment and not part else None,
                                     inputs=self.inputs) as writer:

            def encode(item: tuple[list[Any], np.ndarray]) -> None:  # background thread
                for t, frame in zip(item[0], item[1], strict=True):
                    if part and t is not None:
                        if not first_time:
                            first_time.append(t)
                        t = t - first_time[0]
                    writer.write(frame, t)
                    written_times.append(t)

            if partial is not None:
                from lbcore.io import iter_video_frames_timed as frames_of

                saved = [None if t is None else Fraction(t) for t in partial["times"]]
                for k, (rgb, _) in enumerate(frames_of(_partial_path(out), max_frames=None)):
                    if k < len(saved):
                        writer.write(rgb, saved[k])
                        written_times.append(saved[k])
                frames_bar.update(n_frames)

            # overlap=False: the same steps one after another (to measure what overlapping wins)
            with BackgroundWriter(encode, threaded=self.o.overlap) as encoder:
                try:
                    for times, staged, per_frame, plans in (prefetch(batches()) if self.o.overlap else batches()):
                        # frames, perturbation and warm start stay on the attack's device; only the
                        # protected uint8 frames come back (and float copies for measured batches)
                        x = staged.device
                        n_small += sum(len(s) for _, s in per_frame)
                        boxes = [k for k, _ in per_frame]
                        adv = x
                        measured = None
                        if any(boxes):
                            faces = Faces.from_lists(boxes)
                            init = None
                            if plans is not None:
                                adv = self.attack_planned(x, boxes, plans, deltas)
                                for p, bs in zip(plans, boxes, strict=True):
                                    if p.kind == "key" and bs:  # (a key frame with no face costs nothing)
                                        key_reasons[p.reason] = key_reasons.get(p.reason, 0) + 1
                            else:
                                if prev_delta is not None and prev_delta.shape == x.shape[1:]:
                                    init = x + prev_delta  # warm start from the previous frame's perturbation
                                adv = self.attack_on_device(x, faces, init=init)
                            flat = [b for bs in boxes for b in bs]
                            n_faces += len(flat)
                            # measure a subsample: the first batch with faces, then every report_every-th
                            if measured_batches % max(1, self.o.report_every) == 0:
                                measured = (faces, flat)
                            measured_batches += 1
                        prev_delta = (adv - x)[-1]
                        adv_u8 = adv.permute(0, 2, 3, 1).to(self.torch.uint8).contiguous().cpu()
                        encoder.put((times, adv_u8.numpy()))
                        if measured is not None:
                            adv_host = adv_u8.permute(0, 3, 1, 2).float()
                            if self.o.preview and not segment:
                                j = next(k for k, bs in enumerate(boxes) if bs)
                                keep_preview_frame(n_frames + j, staged.host[j:j + 1], adv_host[j:j + 1], boxes[j])
                            for row in self.measure(staged.host, adv_host, *measured, with_checks=False):
                                for spec, e in row["extractors"].items():
                                    if e["nme"] is not None:
                                        stats.setdefault(spec, []).append(e["nme"])
                                stats.setdefault("_ssim", []).append(row["ssim"])
                                stats.setdefault("_psnr", []).append(row["psnr"])
                        n_frames += len(times)
                        if raw is not None:
                            raw.setdefault("times", []).extend(times)
                        frames_bar.update(len(times))
                        if not self.bars:
                            self.log(f"{display_path(entry.path)}: {n_frames}/{total} frames")
                except KeyboardInterrupt:
                    if not resumable:
                        raise
                    interrupted = True  # Ctrl-C: the frames handed to the encoder are finished below
        if picks and not interrupted:
            record["previews"] = [str(self.preview(entry.rel, *pick)) for pick in self.video_previews(picks)]
        if interrupted:
            self.keep_partial(entry, out, writer.frames_written, written_times, first_time, stats,
                              n_faces, n_small)
            raise KeyboardInterrupt
        if partial is not None:
            _partial_path(out).unlink(missing_ok=True)
            _partial_path(out, ".json").unlink(missing_ok=True)
        audio = writer.audio_note or ("copied" if info.has_audio and not segment and not part else "none")
        if part and info.has_audio:
            audio = "not copied (a part of the video was protected)"
        self.video_record(record, stats, n_frames, n_faces, n_small, info.fps, audio)
        spent = self.passes_spent - passes_before
        record.update(extractor_passes=spent, passes_per_face=round(spent / n_faces, 2) if n_faces else None,
                      key_interval=self.o.key_interval, key_frames=sum(key_reasons.values()) if planner is not None else None,
                      key_frame_reasons=dict(sorted(key_reasons.items())) if planner is not None else None)
        if raw is not None:
            raw.update(frames=n_frames, faces_protected=n_faces, skipped_small_faces=n_small, stats=stats)
        if not segment:
            self.store.mark_finished(entry.path, out, report=record)
        return record

    def video_previews(self, picks: dict[str, tuple[int, Any, Any, list[list[float]]]]) -> Iterator[tuple[Any, ...]]:
        """The arguments of :meth:`preview` (after ``rel``) for each distinct picked frame:
        previews/NAME.frameN.png, N counted from the first frame protected in this run."""
        from lbcore.types import Faces

        seen = set()
        for number, x, xa, boxes in sorted(picks.values(), key=lambda p: p[0]):
            if number in seen:
                continue
            seen.add(number)
            clean = x[0].permute(1, 2, 0).round().clamp(0, 255).to(self.torch.uint8).numpy()
            adv = xa[0].permute(1, 2, 0).round().clamp(0, 255).to(self.torch.uint8).numpy()
            yield clean, adv, Faces.from_lists([boxes]), x, xa, f".frame{number}.png"

    def keep_partial(self, entry: Any, out: Path, frames: int, times: list[Any], first_time: list[Any],
                     stats: dict[str, list[float]], n_faces: int, n_small: int) -> None:
        """After Ctrl-C: the finished video ``out`` (its first ``frames`` frames) becomes the hidden
        partial ``.NAME.partial.mkv`` with a sidecar that lets the next run continue."""
        from lbcore.io import input_fingerprint, write_bytes_atomic

        if frames == 0 or not out.exists():
            out.unlink(missing_ok=True)
            return
        os.replace(out, _partial_path(out))
        from lbcore.io import display_path

        self.log(f"{display_path(entry.path)}: the {frames} frames done are kept; the next run continues from there")
        side = {"input": input_fingerprint(entry.path), "settings_hash": self.store.settings_hash,
                "frames": frames, "times": [None if t is None else str(t) for t in times[:frames]],
                "first_time": [str(t) for t in first_time], "stats": stats, "faces_protected": n_faces,
                "skipped_small_faces": n_small}
        write_bytes_atomic(_partial_path(out, ".json"), json.dumps(side).encode(), self.inputs)

    def load_partial(self, entry: Any, out: Path) -> dict[str, Any] | None:
        """The partial an interrupted run left for ``out``, when it fits this input and these
        settings (else it is deleted: redone from the start)."""
        from lbcore.io import input_fingerprint

        side, video = _partial_path(out, ".json"), _partial_path(out)
        if not side.exists() or not video.exists():
            return None
        try:
            data: dict[str, Any] = json.loads(side.read_text(encoding="utf-8"))
            fits = (not self.o.force and data["settings_hash"] == self.store.settings_hash
                    and data["input"]["sha256"] == input_fingerprint(entry.path)["sha256"]
                    and data["input"]["size"] == entry.path.stat().st_size
                    and len(data["times"]) == data["frames"] > 0)
        except (OSError, ValueError, KeyError, TypeError):
            fits = False
        if not fits:
            video.unlink(missing_ok=True)
            side.unlink(missing_ok=True)
            return None
        return data

    def part_span(self, path: Path, info: Any) -> tuple[int, int | None]:
        """Frames ``[first, stop)`` of ``--start``/``--duration`` (seconds), checked against the
        video's length and ``--max-frames``."""
        from lbcore.io import display_path
        from lbcore.io.video import readable_duration

        fps = float(info.fps)
        first = round(self.o.start * fps)
        if first >= info.frame_count:
            raise InputError(f"{display_path(path)}: --start {self.o.start:g} s is past the end of the video "
                             f"({readable_duration(info.duration)})")
        stop = None if self.o.duration is None else first + max(1, round(self.o.duration * fps))
        n = min(stop or info.frame_count, info.frame_count) - first
        if self.o.max_frames is not None and n > self.o.max_frames:
            raise InputError(f"{display_path(path)}: the part has {n} frames ({readable_duration(n / fps)}), over "
                             f"the limit of {self.o.max_frames} frames "
                             f"({readable_duration(self.o.max_frames / fps)}; raise it with --max-frames)")
        return first, stop

    def video_record(self, record: dict[str, Any], stats: dict[str, list[float]], n_frames: int, n_faces: int,
                     n_small: int, fps: Any, audio: str) -> dict[str, Any]:
        """Fill a video's report record from its per-face measurements (``stats``) and counts."""
        summary: dict[str, Any] = {}
        for spec in [*self.attacked, *self.held]:
            vals = stats.get(spec, [])
            if vals:
                summary[spec] = {"attacked": spec in self.attacked, "nme_mean": round(float(np.mean(vals)), 4),
                                 "broken_fraction": round(float(np.mean([v > self.o.threshold for v in vals])), 4),
                                 "faces_measured": len(vals)}
        record.update(status="protected" if n_faces else "unchanged", frames=n_frames, fps=str(fps),
                      faces_protected=n_faces, skipped_small_faces=n_small, extractors=summary,
                      ssim_mean=round(float(np.mean(stats["_ssim"])), 4) if stats.get("_ssim") else None,
                      psnr_mean=round(float(np.mean(stats["_psnr"])), 2) if stats.get("_psnr") else None,
                      audio=audio)
        return record


def face_crops_1to1(clean: np.ndarray, adv: np.ndarray, box: Sequence[float], margin: float = 0.15) -> np.ndarray:
    """One row: the face (box plus ``margin``) of the clean and the protected image at 1:1 pixels,
    and their difference amplified 8x around mid grey, so people judge visibility themselves."""
    h, w = clean.shape[:2]
    x1, y1, x2, y2 = box
    mx, my = (x2 - x1) * margin, (y2 - y1) * margin
    a, b = max(int(x1 - mx), 0), max(int(y1 - my), 0)
    c, d = min(int(np.ceil(x2 + mx)), w), min(int(np.ceil(y2 + my)), h)
    if c <= a or d <= b:
        return np.zeros((0, 0, 3), np.uint8)
    cc, ac = clean[b:d, a:c], adv[b:d, a:c]
    diff = np.clip(128 + 8 * (ac.astype(np.int32) - cc.astype(np.int32)), 0, 255).astype(np.uint8)
    gap = np.full((cc.shape[0], 4, 3), 255, np.uint8)
    return np.concatenate([cc, gap, ac, gap, diff], axis=1)


def _stack_rows(top: np.ndarray, bottom: np.ndarray) -> np.ndarray:
    """``top`` above ``bottom`` on a white canvas as wide as ``top`` (the row is cut at 1:1
    where it is wider: the difference panel goes first)."""
    if bottom.size == 0:
        return top
    width = top.shape[1]
    bottom = bottom[:, :width]
    canvas = np.full((top.shape[0] + 4 + bottom.shape[0], width, 3), 255, np.uint8)
    canvas[:top.shape[0], :top.shape[1]] = top
    canvas[top.shape[0] + 4:, :bottom.shape[1]] = bottom
    return canvas


def _decode_rgb(data: bytes, loaded: Any) -> np.ndarray:
    """Decode encoded image bytes to (H, W, 3) uint8 RGB (grey repeated), as :func:`read_image`."""
    import io

    from PIL import Image

    with Image.open(io.BytesIO(data)) as im:
        arr = np.array(im.convert("L").convert("RGB") if loaded.grey else im.convert("RGB"))  # (a writable copy)
    return arr


def interpolate_boxes(keys: dict[int, list[list[float]]], n: int, min_iou: float = 0.3) -> list[list[list[float]]]:
    """Face boxes for frames ``0 .. n-1`` from detections on some of them (``keys``: frame ->
    boxes; must include the last frame, ``n - 1``).

    A frame between two detected frames gets, for each face matched across them (greedily by
    IoU >= ``min_iou``), the box interpolated linearly in time; faces seen on only one side come
    from the nearer detected frame (so a face appearing or leaving does so half-way). Frames
    before the first detection take its boxes.
    """
    order = sorted(keys)  # (-1: the frame before the first, e.g. the previous batch's last)
    if not order or order[-1] != n - 1:
        raise ValueError("interpolate_boxes needs a detection on the last frame")
    out: list[list[list[float]]] = []
    for i in range(n):
        if i in keys:
            out.append([list(b) for b in keys[i]])
            continue
        after = next(k for k in order if k > i)
        before = max((k for k in order if k < i), default=None)
        if before is None:
            out.append([list(b) for b in keys[after]])
            continue
        a, b = keys[before], keys[after]
        w = (i - before) / (after - before)
        pairs = _match(a, b, min_iou)
        boxes = [[(1 - w) * p + w * q for p, q in zip(a[ia], b[ib], strict=True)] for ia, ib in pairs]
        near, near_matched = (a, {ia for ia, _ in pairs}) if w <= 0.5 else (b, {ib for _, ib in pairs})
        boxes += [list(box) for j, box in enumerate(near) if j not in near_matched]
        out.append(boxes)
    return out


def _match(a: list[list[float]], b: list[list[float]], min_iou: float) -> list[tuple[int, int]]:
    """Greedy one-to-one matching of boxes by IoU (highest first)."""
    cand = sorted(((box_iou(p, q), i, j) for i, p in enumerate(a) for j, q in enumerate(b)), reverse=True)
    used_a: set[int] = set()
    used_b: set[int] = set()
    pairs = []
    for iou, i, j in cand:
        if iou < min_iou or i in used_a or j in used_b:
            continue
        used_a.add(i)
        used_b.add(j)
        pairs.append((i, j))
    return pairs


def _partial_path(out: Path, suffix: str = ".mkv") -> Path:
    """Where an interrupted video's finished frames wait (hidden: never walked as an input)."""
    return out.with_name(f".{out.name}.partial{suffix}")


def _span_kwargs(span: tuple[int, int | None] | None) -> dict[str, Any]:
    return {} if span is None else {"start": span[0], "stop": span[1]}


def protect(
    inputs: Iterable[str | os.PathLike[str]],
    out_dir: str | os.PathLike[str],
    options: ProtectOptions | None = None,
    *,
    progress: Callable[[str], None] | None = None,
    progress_bar: bool = False,
    **kwargs: Any,
) -> dict[str, Any]:
    """Protect every face in the given images, folders and videos; return the report.

    Args:
        inputs: image files, video files and folders (walked recursively; structure mirrored).
        out_dir: output folder (must not be one of the input folders).
        options: a :class:`ProtectOptions`; keyword arguments override its fields.
        progress: called with a line of text as work advances.
        progress_bar: show tqdm progress bars (files, and frames of each video) on stderr.

    Returns:
        The report (also written to ``out_dir/report.json``): ``settings``, ``notes``, ``files``
        (one record per input with ``status`` protected / unchanged / done earlier / error) and
        ``summary``.
    """
    from lbcore.io import display_path, iter_inputs, write_bytes_atomic

    options = attrs.evolve(options or ProtectOptions(), **kwargs)
    check_output_options(options)  # bad settings: one line, before any model loads
    strength_settings(options)
    paths = [Path(p) for p in inputs]
    out = Path(out_dir)
    if out.exists() and not out.is_dir():
        from lbcore.io import display_path

        raise SpecError(f"{display_path(out)}: -o/--out names the output folder, and this is a file "
                        "(give a folder, e.g. -o protected/; inputs are never overwritten)")
    for p in paths:
        if p.is_dir() and (os.path.realpath(p) == os.path.realpath(out)
                           or os.path.realpath(out).startswith(os.path.realpath(p) + os.sep)):
            raise SpecError(f"{out}: the output folder must not be (inside) the input folder {p}")
    entries = list(iter_inputs(paths, exclude=[out]))
    files = [e.path for e in entries if e.kind in ("image", "video")]
    from tqdm import tqdm

    bar = tqdm(total=len(entries), unit="file", desc="protect", disable=not progress_bar, file=sys.stderr)
    if progress_bar and progress is not None:
        user_log = progress

        def progress(line: str) -> None:
            bar.clear()
            user_log(line)
            bar.refresh()

    run = _Run(options, out, files, progress)
    run.bars = progress_bar
    out.mkdir(parents=True, exist_ok=True)
    records: list[dict[str, Any]] = []
    t0 = time.monotonic()
    claimed: dict[Path, Path] = {}
    interrupted = False
    # photos wait in `pending` (read, faces found) until --photo-batch of them can be attacked
    # together (their records keep their place in `records`); a video or the end flushes them
    pending: list[tuple[int, Any]] = []
    current: list[Any] = []  # the slot and entry being read or protected

    def failed(entry: Any, err: BaseException) -> dict[str, Any]:
        name = display_path(entry.path)
        if isinstance(err, LBError):
            msg = str(err)
            if name not in msg:  # every error line names its file
                msg = f"{name}: {msg}"
            return {"input": str(entry.path), "kind": entry.kind, "status": "error", "error": msg}
        import traceback

        run.log("".join(traceback.format_exception(err)).rstrip())
        return {"input": str(entry.path), "kind": entry.kind, "status": "error",
                "error": f"{name}: internal error ({type(err).__name__}: {' '.join(str(err).split())}); "
                         "please report this"}

    def stopped(entry: Any) -> dict[str, Any]:
        return {"input": str(entry.path), "kind": entry.kind, "status": "interrupted",
                "error": f"{display_path(entry.path)}: interrupted (Ctrl-C) before it finished; run the same "
                         "command again to finish it (finished files are skipped)"}

    def settle(slot: int, entry: Any, rec: dict[str, Any]) -> None:
        records[slot] = rec
        run.log(f"{display_path(entry.path)}: {rec['status']}")
        bar.update(1)

    def flush() -> None:
        """Attack the pending photos together, then write them one by one (each finished file
        is recorded as done before the next: a crash keeps them)."""
        jobs = list(pending)
        pending.clear()
        if not jobs:
            return
        try:
            advs = run.attack_photos([j for _, j in jobs])
        except KeyboardInterrupt:
            for slot, job in jobs:
                records[slot] = stopped(job.entry)
            raise
        for k, ((slot, job), adv) in enumerate(zip(jobs, advs, strict=True)):
            try:
                if isinstance(adv, BaseException):
                    raise adv
                rec = run.finish_image(job, adv)
            except KeyboardInterrupt:
                for s2, j2 in jobs[k:]:
                    records[s2] = stopped(j2.entry)
                raise
            except Exception as err:  # a bug on one file must not lose the rest of the batch
                rec = failed(job.entry, err)
            settle(slot, job.entry, rec)

    try:
        for entry in entries:
            if entry.kind in ("error", "skip"):
                records.append({"input": str(entry.path), "status": "error" if entry.kind == "error" else "skipped",
                                "error": entry.error})
                bar.update(1)
                continue
            name = display_path(entry.path)
            target = run.output_path(entry)
            if target in claimed:
                # photo.jpg and photo.png (or clip.mp4 and clip.mkv) both become photo.png: the
                # second must not silently replace the first's result
                rec = {"input": str(entry.path), "kind": entry.kind, "status": "error",
                       "error": f"{name}: would be written to the same output {display_path(target)} as "
                                f"{display_path(claimed[target])}; skipped (rename one of them)"}
                records.append(rec)
                run.log(f"{name}: {rec['status']}")
                bar.update(1)
                continue
            claimed[target] = entry.path
            slot = len(records)
            records.append({"input": str(entry.path), "kind": entry.kind, "status": "not started"})
            current[:] = [slot, entry]
            try:
                if entry.kind == "image":
                    job = run.prepare_image(entry)
                    if isinstance(job, _PhotoJob):
                        pending.append((slot, job))
                        if len(pending) >= max(1, options.photo_batch):
                            flush()
                        continue
                    rec = job
                else:
                    flush()
                    rec = run.video(entry)
            except KeyboardInterrupt:
                raise
            except Exception as err:
                rec = failed(entry, err)
            settle(slot, entry, rec)
        flush()
    except KeyboardInterrupt:
        # Ctrl-C: stop now, keep what is finished, and still write the report of it
        interrupted = True
        for slot, job in pending:
            records[slot] = stopped(job.entry)
        if current and records[current[0]].get("status") == "not started":
            records[current[0]] = stopped(current[1])
    bar.close()
    if interrupted:
        done = {r["input"] for r in records}
        records += [{"input": str(e.path), "kind": e.kind, "status": "not started"}
                    for e in entries if str(e.path) not in done]
    report = {
        "settings": {**options.settings(), "extractors": list(run.attacked), "held_out": list(run.held),
                     "eps": run.config.eps, "steps": run.config.steps, "threshold": options.threshold,
                     "ssim_min": run.config.ssim_min, "psnr_min": run.config.psnr_min, "mask": run.config.mask,
                     "texture": run.config.texture,
                     "device": str(run.device)},
        "notes": run.notes,
        "files": records,
        "summary": _summary(records, options.threshold),
        "seconds": round(time.monotonic() - t0, 2),
    }
    if interrupted:
        report["interrupted"] = True
    write_bytes_atomic(out / "report.json", json.dumps(report, indent=2, default=str).encode(), files)
    return report


def _summary(records: list[dict[str, Any]], threshold: float) -> dict[str, Any]:
    faces = [f for r in records for f in r.get("faces", []) or []]
    per_ext: dict[str, list[float]] = {}
    for f in faces:
        for spec, e in f["extractors"].items():
            if e["nme"] is not None:
                per_ext.setdefault(spec, []).append(e["nme"])
    status: dict[str, int] = {}
    for r in records:
        status[r["status"]] = status.get(r["status"], 0) + 1
    videos = [r for r in records if r.get("kind") == "video" and r.get("status") in ("protected", "done earlier")]
    video_faces = sum(int(r.get("faces_protected") or 0) for r in videos)
    broken_photos = sum(all(e["broken"] for e in f["extractors"].values() if e["attacked"]) for f in faces)
    # faces measured and left below the threshold: photo faces not broken for every attacked
    # extractor (or not measurable), and in videos the measured faces the weakest extractor kept
    not_broken = len(faces) - broken_photos
    for r in videos:
        not_broken += max((round((1 - v["broken_fraction"]) * v["faces_measured"])
                           for v in (r.get("extractors") or {}).values() if v.get("attacked")), default=0)
    return {
        "files": status,
        "faces": len(faces) + video_faces,
        "photo_faces": len(faces),
        "video_faces": video_faces,
        "faces_broken_all_attacked": broken_photos,
        "faces_not_broken": not_broken,
        "nme_mean": {k: round(float(np.mean(v)), 4) for k, v in per_ext.items()},
        "ssim_mean": round(float(np.mean([f["ssim"] for f in faces])), 4) if faces else None,
        "threshold": threshold,
    }
