"""Leave-one-out transfer of the protection to extractors it never attacked: ``lb transfer``.

For every extractor ``X`` of the list, the ensemble of all the *others* is attacked and ``X`` is
measured on the result (held-out, the transfer figure); the ensemble of all of them is attacked
too (white-box, every member measured) and extractors that cannot be attacked (``measure_only``,
or an extractor whose ``differentiable`` attribute is false) are held out of every ensemble.
Each adversarial image is then degraded (``none``, JPEG Q75, ...) and shown to every extractor.

The figure is the movement of each extractor's own landmarks: the NME between its landmarks on
the (degraded) adversarial image and on the clean image, normalised by the outer-eye-corner
distance of the clean ones (:func:`lbcore.metrics.nme`) - what breaks a face-swap tool's
alignment, whatever the ground truth. Controls on the same faces: ``clean`` (no perturbation;
with JPEG it is the codec's own effect) and ``noise`` (uniform integer noise in ``[-eps, eps]``
on every pixel). Invisibility is measured with it: in-box SSIM (the SSIM map averaged over the
face box) and PSNR in the box, of the (degraded) image against the clean one.

Work is split into units ``(attack, held-out extractor)``; each unit's figures are written to
``OUT/partial/<hash>.json`` when it finishes, and a rerun with the same settings reuses them.
"""

from __future__ import annotations

import contextlib
import json
import os
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import attrs
import numpy as np

from lbcore.apps.evaluation import BatchedFaces
from lbcore.errors import LBError, SpecError

__all__ = ["TransferOptions", "BROKEN", "parse_attack", "transfer", "write_transfer_report"]

BROKEN = 0.1
"""A face counts as broken for an extractor when its landmarks moved by more than this NME."""


@attrs.define
class TransferOptions:
    """Settings of a leave-one-out run (see ``lb transfer --help``).

    Attributes:
        extractors: ``SPEC`` or ``LABEL=SPEC`` strings (attacked and measured).
        measure_only: specs that are measured but never attacked (non-differentiable tools).
        attacks: ``[LABEL=]PRESET[:field=value,...]`` - a preset of :data:`lbcore.engine.PRESETS`
            with :class:`~lbcore.engine.AttackConfig` fields overridden (see :func:`parse_attack`).
        degradations: applied to every adversarial image before measuring (``none`` = as is).
        white_box: also attack the ensemble of every attackable extractor (the diagonal).
        controls: also measure the ``clean`` and ``noise`` controls.
        eps, steps: override every attack's budget / iterations (an attack's own fields win).
        limit: use at most this many faces (in data order).
        context: images are cropped to their faces' surroundings before anything runs (each box
            grown by this multiple of its size on every side; the crop's corner on the 16-pixel
            grid of the full image, so JPEG blocks stay aligned); 0 keeps whole images. Only
            speed changes, as long as the extractors' crops stay inside (FAN-style crops reach
            about 0.6 box sizes beyond the box).
    """

    extractors: tuple[str, ...] = ()
    measure_only: tuple[str, ...] = ()
    attacks: tuple[str, ...] = ("lb",)
    degradations: tuple[str, ...] = ("none", "jpeg:quality=75")
    white_box: bool = True
    controls: bool = True
    eps: float | None = None
    steps: int | None = None
    seed: int = 0
    device: str = "auto"
    detector: str = "auto"
    min_face: int = 40
    limit: int | None = None
    context: float = 1.0
    batch_size: int = 8
    annotation_format: str = "auto"
    image_root: str | None = None
    force: bool = False
    amp: str = "auto"
    compile: bool = False

    def describe(self) -> dict[str, Any]:
        return attrs.asdict(self)


def _convert(field: str, default: Any, value: str, text: str) -> Any:
    try:
        if isinstance(default, bool):
            if value.lower() not in ("1", "0", "true", "false", "yes", "no", "on", "off"):
                raise ValueError(value)
            return value.lower() in ("1", "true", "yes", "on")
        if isinstance(default, int):
            return int(value)
        if isinstance(default, float):
            return float(value)
        if isinstance(default, tuple):
            return tuple(v for v in value.split("+") if v)
    except ValueError:
        raise SpecError(f"--attack {text!r}: {field}={value!r} is not a {type(default).__name__}") from None
    return value


def parse_attack(text: str, eps: float | None = None, steps: int | None = None, seed: int = 0) -> tuple[str, Any]:
    """``(label, AttackConfig)`` from ``[LABEL=]PRESET[:field=value,...]``.

    Fields are :class:`~lbcore.engine.AttackConfig`'s; an item whose key is not a field continues
    the value before it, so component specs keep their commas:
    ``lb:optimizer=mifgsm:alpha=2,decay=1,ti_sigma=3`` sets ``optimizer`` to
    ``mifgsm:alpha=2,decay=1``. Several ``eot`` specs are joined with ``+``. ``eps``/``steps``
    (the run's overrides) apply unless the attack sets them itself.

    Raises:
        SpecError: an unknown preset or field, or an ill-typed value.
    """
    from lbcore.engine import PRESETS, AttackConfig, preset

    raw = text.strip()
    head, eq, rest = raw.partition("=")
    label = None
    if eq and ":" not in head and "," not in head and rest.strip():
        label, raw = head.strip(), rest.strip()
    name, _, params = raw.partition(":")
    name = name.strip()
    if name not in PRESETS:
        raise SpecError(f"--attack {text!r}: unknown preset {name!r} (valid: {', '.join(PRESETS)})")
    fields = {f.name: f.default for f in attrs.fields(AttackConfig)}
    items: list[list[str]] = []
    for piece in params.split(",") if params.strip() else []:
        key, has, value = piece.partition("=")
        key = key.strip()
        if has and key in fields:
            items.append([key, value.strip()])
        elif items:
            items[-1][1] += "," + piece.strip()
        else:
            raise SpecError(f"--attack {text!r}: {key!r} is not an attack field "
                            f"(valid: {', '.join(k for k in fields if k != 'seed')})")
    overrides = {k: _convert(k, fields[k], v, text) for k, v in items}
    base = {"eps": eps, "steps": steps, "seed": seed}
    cfg = preset(name, **{k: v for k, v in base.items() if v is not None and k not in overrides})
    try:
        cfg = attrs.evolve(cfg, **overrides)
    except TypeError as err:
        raise SpecError(f"--attack {text!r}: {err}") from None
    if label is None:
        label = raw
    if not label or any(c in label for c in "/\\|"):
        raise SpecError(f"--attack {text!r}: bad label {label!r}")
    return label, cfg


# --------------------------------------------------------------------------- units


@attrs.frozen
class _Unit:
    attack: str  # an attack label, or "clean" / "noise" (controls)
    held_out: str | None  # None: every attackable extractor is attacked

    def key(self) -> dict[str, Any]:
        return {"attack": self.attack, "held_out": self.held_out}

    def row_name(self) -> str:
        if self.attack in ("clean", "noise"):
            return self.attack
        return "all" if self.held_out is None else f"all but {self.held_out}"


def _mean(values: Sequence[float]) -> float:
    a = np.asarray(values, dtype=np.float64)
    a = a[np.isfinite(a)]
    return float(a.mean()) if a.size else float("nan")


def _median(values: Sequence[float]) -> float:
    a = np.asarray(values, dtype=np.float64)
    a = a[np.isfinite(a)]
    return float(np.median(a)) if a.size else float("nan")


def _share(values: Sequence[float], threshold: float = BROKEN) -> float:
    a = np.asarray(values, dtype=np.float64)
    a = a[np.isfinite(a)]
    return float((a > threshold).mean()) if a.size else float("nan")


class _Run(BatchedFaces):
    """Models, faces and clean predictions of one transfer run."""

    def __init__(self, options: TransferOptions, images: list[Any], faces: list[Any], pm: Any,
                 extra: dict[str, Any], notes: list[str], log: Callable[[str], None]) -> None:
        import torch

        from lbcore.apps.evaluation import _batches, parse_extractor_specs
        from lbcore.engine import performance_for, resolve_device

        self.o, self.images, self.faces, self.pm, self.notes, self.log = options, images, faces, pm, notes, log
        self.torch = torch
        self.device = resolve_device(options.device)
        self.performance = performance_for(self.device, options.amp, options.compile)
        specs = parse_extractor_specs(options.extractors) if options.extractors else {}
        measure = parse_extractor_specs(options.measure_only) if options.measure_only else {}
        for label in measure:
            if label in specs:
                raise SpecError(f"--measure-only: label {label!r} is also in --extractors")
        for label in extra:
            if label in specs or label in measure:
                raise SpecError(f"extractor label {label!r} given twice")
        self.specs = {**specs, **measure, **{k: f"(python object {type(v).__name__})" for k, v in extra.items()}}
        self.extractors: dict[str, Any] = {k: self._build(k, s) for k, s in {**specs, **measure}.items()}
        self.extractors.update(extra)
        self.attackable = [k for k in specs if getattr(self.extractors[k], "differentiable", True)]
        for k in specs:
            if k not in self.attackable:
                notes.append(f"{k} is not differentiable: measured only, never attacked")
        if not self.attackable:
            raise SpecError("--extractors: no extractor that can be attacked")
        self.degradations = {d: pm.build_degradation(d) for d in options.degradations}
        self.batches = _batches(images, faces, options.batch_size)
        log(f"{len(images)} image(s), {len(faces)} face(s), {len(self.batches)} batch(es) on {self.device}")
        self.clean = {k: self._predict_clean(e) for k, e in self.extractors.items()}

    def _build(self, label: str, spec: str) -> Any:
        try:
            ext = self.pm.build("extractors", spec)
        except LBError as err:
            raise type(err)(f"extractor {label} ({spec}): {err}") from None
        return ext.to(self.device).eval() if hasattr(ext, "to") else ext

    def data_hash(self) -> str:
        import hashlib

        h = hashlib.sha256()
        for img in self.images:
            h.update(img.name.encode("utf-8", "surrogateescape"))
            h.update(hashlib.sha256(np.ascontiguousarray(img.rgb).tobytes()).digest())
        for face in self.faces:
            h.update(np.asarray(face.box, np.float64).tobytes())
        return h.hexdigest()[:16]

    def units(self, attacks: dict[str, Any]) -> list[_Unit]:
        out = [_Unit("clean", None), _Unit("noise", None)] if self.o.controls else []
        measured_only = [k for k in self.extractors if k not in self.attackable]
        for a in attacks:
            if len(self.attackable) > 1:
                out.extend(_Unit(a, k) for k in self.attackable)
            if self.o.white_box or measured_only or len(self.attackable) == 1:
                out.append(_Unit(a, None))
        return out

    def _nme(self, pred: np.ndarray, clean: np.ndarray, scheme: Any) -> float:
        from lbcore.metrics import nme

        try:
            return float(nme(pred, clean, scheme))
        except LBError:
            return float("nan")

    def run_unit(self, unit: _Unit, config: Any, tick: Callable[[], None]) -> dict[str, Any]:
        """Per-face figures of one unit: ``{degradation: {"nme": {target: [...]}, "ssim": [...], ...}}``."""
        from lbcore.apps.evaluation import region_mask_ssim
        from lbcore.engine import attack
        from lbcore.metrics import psnr

        torch = self.torch
        members = [k for k in self.attackable if k != unit.held_out]
        eps = float(self.o.eps if self.o.eps is not None else 15.0)
        gen = torch.Generator().manual_seed(int(self.o.seed))
        out: dict[str, Any] = {d: {"nme": {k: [] for k in self.extractors}, "ssim": [], "psnr": [], "linf": []}
                               for d in self.degradations}
        for b in self.batches:
            x = self.tensor(b)
            fc = self.faces_of(b)
            if unit.attack == "clean":
                adv = x
            elif unit.attack == "noise":
                noise = (torch.rand(x.shape, generator=gen) * 2 - 1) * eps
                adv = (x + noise).round().clamp(0, 255)
            else:
                adv = attack(x, fc, [self.extractors[k] for k in members], config, device=self.device,
                             plugin_manager=self.pm, performance=self.performance).adversarial.detach().cpu()
            for d, deg in self.degradations.items():
                xd = adv if d == "none" else deg(adv.clone())
                xd = torch.as_tensor(xd).detach().cpu().float().round().clamp(0, 255)
                rgb = xd.permute(0, 2, 3, 1).to(torch.uint8).numpy()
                cell = out[d]
                for label, ext in self.extractors.items():
                    pred = self.predict(ext, xd, fc)
                    for k, f in enumerate(b.faces):
                        cell["nme"][label].append(self._nme(pred[k], self.clean[label][f], ext.scheme))
                for k, f in enumerate(b.faces):
                    face = self.faces[f]
                    clean_rgb = self.images[face.image].rgb
                    now = rgb[b.face_index[k]]
                    try:
                        cell["ssim"].append(region_mask_ssim(clean_rgb, now, face.box, "mask-mean"))
                    except LBError:
                        cell["ssim"].append(float("nan"))
                    # the face box's pixels (as lbcore.metrics.face_mask selects them), cropped:
                    # the same PSNR as psnr(..., mask=box) without converting the whole image
                    h, w = clean_rgb.shape[:2]
                    x0, y0, x1, y1 = (int(np.ceil(v)) for v in face.box)
                    sl = (slice(max(y0, 0), max(min(y1, h), 0)), slice(max(x0, 0), max(min(x1, w), 0)))
                    a, c = clean_rgb[sl], now[sl]
                    cell["psnr"].append(float(psnr(a, c)) if a.size else float("nan"))
                    cell["linf"].append(float(np.abs(c.astype(np.int16) - a.astype(np.int16)).max()) if a.size else 0.0)
            tick()
        return {"members": members, "figures": out}


# --------------------------------------------------------------------------- the run


def _crop_to_faces(images: list[Any], faces: list[Any], context: float) -> None:
    """Crop every image (in place) to its faces' boxes grown by ``context`` box sizes, with the
    crop's corner on the image's 16-pixel grid; the boxes move with it."""
    per: dict[int, list[Any]] = {}
    for f in faces:
        per.setdefault(f.image, []).append(f)
    for i, fs in per.items():
        h, w = images[i].rgb.shape[:2]
        x0 = y0 = float("inf")
        x1 = y1 = float("-inf")
        for f in fs:
            b = np.asarray(f.box, np.float64)
            m = context * max(b[2] - b[0], b[3] - b[1])
            x0, y0, x1, y1 = min(x0, b[0] - m), min(y0, b[1] - m), max(x1, b[2] + m), max(y1, b[3] + m)
        cx0 = max(0, int(np.floor(x0 / 16)) * 16)
        cy0 = max(0, int(np.floor(y0 / 16)) * 16)
        cx1, cy1 = min(w, int(np.ceil(x1))), min(h, int(np.ceil(y1)))
        if cx1 - cx0 < 16 or cy1 - cy0 < 16:
            continue
        images[i].rgb = np.ascontiguousarray(images[i].rgb[cy0:cy1, cx0:cx1])
        for f in fs:
            f.box = np.asarray(f.box, np.float64) - [cx0, cy0, cx0, cy0]


def transfer(
    data: Sequence[str | os.PathLike[str]],
    out_dir: str | os.PathLike[str],
    options: TransferOptions | None = None,
    *,
    extra_extractors: dict[str, Any] | None = None,
    progress: bool = False,
    log: Callable[[str], None] | None = None,
    **kwargs: Any,
) -> dict[str, Any]:
    """Run the leave-one-out transfer measurement and write ``results.json`` and ``report.md``.

    Args:
        data: annotation files, image folders and videos (as ``lb evaluate``; faces from the
            annotations, else from the detector).
        out_dir: output folder; ``partial/`` inside holds finished units (resume).
        options: a :class:`TransferOptions`; keyword arguments override its fields.
        extra_extractors: ``{label: object}`` extra extractors measured only (an object with
            ``predict(images, faces)`` and ``scheme``, e.g. a wrapper of a non-torch tool).
        progress: show a progress bar on stderr.
        log: called with a line of text at each stage.

    Returns:
        The content of ``results.json``.
    """
    from tqdm import tqdm

    from lbcore.apps.evaluation import (
        EvaluateOptions,
        _device_info,
        _hash,
        _json_safe,
        _versions,
        load_dataset,
    )
    from lbcore.io import write_bytes_atomic
    from lbcore.plugins import get_plugin_manager

    o = attrs.evolve(options or TransferOptions(), **kwargs)
    say = log or (lambda s: None)
    t0 = time.monotonic()
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    pm = get_plugin_manager()
    attacks: dict[str, Any] = {}
    for text in o.attacks:
        label, cfg = parse_attack(text, o.eps, o.steps, o.seed)
        if label in attacks or label in ("clean", "noise"):
            raise SpecError(f"--attack: label {label!r} given twice or reserved")
        attacks[label] = cfg
    built: list[Any] = []

    def detector(rgb: np.ndarray) -> Any:  # built on first use: annotated data needs none
        if not built:
            built.append(pm.build("detectors", o.detector))
        return built[0](rgb)

    load_opts = EvaluateOptions(limit=o.limit, min_face=o.min_face, annotation_format=o.annotation_format,
                                image_root=o.image_root)
    images, faces, notes = load_dataset(data, load_opts, detector)
    if o.context > 0:
        _crop_to_faces(images, faces, o.context)
    run = _Run(o, images, faces, pm, dict(extra_extractors or {}), notes, say)
    settings = {"extractors": run.specs, "attackable": run.attackable, "degradations": list(o.degradations),
                "eps": o.eps, "seed": o.seed, "data": run.data_hash(), "amp": run.performance.amp}
    settings_hash = _hash(settings)
    partial = out / "partial"
    partial.mkdir(exist_ok=True)
    for stale in partial.glob(".*.lbtmp-*"):
        with contextlib.suppress(OSError):
            stale.unlink()
    units = run.units(attacks)
    done: dict[_Unit, dict[str, Any]] = {}
    resumed = 0
    bar = tqdm(total=len(units) * len(run.batches), desc="lb transfer", unit="batch", disable=not progress,
               dynamic_ncols=True)
    try:
        for unit in units:
            config = attacks.get(unit.attack)
            key = {"unit": unit.key(), "config": None if config is None else config.describe()}
            path = partial / f"{_hash([settings_hash, key])}.json"
            if not o.force and path.is_file():
                try:
                    saved = json.loads(path.read_text(encoding="utf-8"))
                    if saved.get("settings_hash") == settings_hash and saved.get("key") == _json_safe(key):
                        done[unit] = saved
                        resumed += 1
                        bar.update(len(run.batches))
                        continue
                except (OSError, ValueError):
                    pass  # unreadable: redo it
            bar.set_postfix_str(f"{unit.attack}: {unit.row_name()}")
            t1 = time.monotonic()
            result = run.run_unit(unit, config, lambda: bar.update(1))
            record = {"settings_hash": settings_hash, "key": _json_safe(key), **_json_safe(result),
                      "seconds": round(time.monotonic() - t1, 2)}
            write_bytes_atomic(path, json.dumps(record).encode())
            done[unit] = record
            say(f"{unit.attack}: {unit.row_name()} done in {record['seconds']} s")
    finally:
        bar.close()
    if resumed:
        notes.append(f"{resumed} of {len(units)} unit(s) resumed from {partial}")
    results = _aggregate(run, attacks, units, done)
    results.update({
        "format": 1,
        "config": {"options": o.describe(), "data": [str(p) for p in data], "extractors": run.specs,
                   "attackable": run.attackable, "attacks": {k: v.describe() for k, v in attacks.items()},
                   "broken_threshold": BROKEN, "settings_hash": settings_hash},
        "versions": _versions(pm),
        "device": _device_info(run.device),
        "data": {"images": len(images), "faces": len(faces)},
        "faces": [{"image": images[f.image].name, "box": f.box.tolist()} for f in faces],
        "notes": notes,
        "seconds": round(time.monotonic() - t0, 2),
    })
    results = _json_safe(results)
    write_transfer_report(results, out / "report.md")
    results["report"] = str(out / "report.md")
    write_bytes_atomic(out / "results.json", json.dumps(results, indent=1).encode())
    return dict(results)


def _aggregate(run: _Run, attacks: dict[str, Any], units: list[_Unit], done: dict[_Unit, Any]) -> dict[str, Any]:
    """Rows (one per unit x degradation x target), image rows, and the held-out summary."""
    rows: list[dict[str, Any]] = []
    image_rows: list[dict[str, Any]] = []
    summary: dict[str, Any] = {}
    targets = list(run.extractors)
    for unit in units:
        rec = done[unit]
        for d, fig in rec["figures"].items():
            members = rec["members"] if unit.attack not in ("clean", "noise") else []
            image_rows.append({"attack": unit.attack, "attacked": unit.row_name(), "degradation": d,
                               "ssim_box": _mean(_nums(fig["ssim"])), "ssim_box_min": _min(fig["ssim"]),
                               "psnr_box": _mean(_nums(fig["psnr"])), "linf_box_max": _max(fig["linf"])})
            for t in targets:
                v = _nums(fig["nme"][t])
                if unit.attack in ("clean", "noise"):
                    role = "control"
                else:
                    role = "white-box" if t in members else "held-out"
                rows.append({"attack": unit.attack, "attacked": unit.row_name(), "held_out": unit.held_out,
                             "members": members, "degradation": d, "target": t, "role": role,
                             "n_faces": len(v), "nme_median": _median(v), "nme_mean": _mean(v),
                             "broken_share": _share(v), "per_face_nme": v})
    index = {(r["attack"], r["attacked"], r["degradation"], r["target"]): r for r in rows}
    images = {(r["attack"], r["attacked"], r["degradation"]): r for r in image_rows}
    degs = list(run.degradations)
    for a in [*attacks, *(["noise", "clean"] if run.o.controls else [])]:
        summary[a] = {}
        for d in degs:
            held: dict[str, Any] = {}
            white: dict[str, Any] = {}
            for t in targets:
                if a in ("noise", "clean"):
                    r = index.get((a, a, d, t))
                elif t in run.attackable:
                    # (one attackable extractor: nothing else to attack, no held-out figure)
                    r = index.get((a, f"all but {t}", d, t)) if len(run.attackable) > 1 else None
                else:
                    r = index.get((a, "all", d, t))
                if r is not None:
                    held[t] = {k: r[k] for k in ("nme_median", "nme_mean", "broken_share")}
                w = index.get((a, "all", d, t))
                if w is not None and w["role"] == "white-box":
                    white[t] = {k: w[k] for k in ("nme_median", "nme_mean", "broken_share")}
            meds = [v["nme_median"] for v in held.values()]
            # invisibility: over the units of this attack (the leave-one-out rows and "all")
            imgs = [r for (aa, _, dd), r in images.items() if aa == a and dd == d]
            summary[a][d] = {
                "held_out": held, "white_box": white,
                "held_out_median_mean": _mean(meds), "held_out_median_min": _min(meds),
                "ssim_box": _mean([r["ssim_box"] for r in imgs]), "psnr_box": _mean([r["psnr_box"] for r in imgs]),
            }
    return {"rows": rows, "images": image_rows, "summary": summary}


def _nums(values: Sequence[Any]) -> list[float]:
    return [float("nan") if v is None else float(v) for v in values]


def _min(values: Sequence[Any]) -> float:
    a = np.asarray(_nums(values), dtype=np.float64)
    a = a[np.isfinite(a)]
    return float(a.min()) if a.size else float("nan")


def _max(values: Sequence[Any]) -> float:
    a = np.asarray(_nums(values), dtype=np.float64)
    a = a[np.isfinite(a)]
    return float(a.max()) if a.size else float("nan")


def _f(v: Any, digits: int = 3) -> str:
    if v is None or (isinstance(v, float) and not np.isfinite(v)):
        return "n/a"
    if isinstance(v, str):
        return v
    return f"{float(v):.{digits}f}"


def summary_table(results: dict[str, Any]) -> list[str]:
    """Markdown lines: held-out median NME per extractor for every attack x degradation."""
    targets = list(results["config"]["extractors"])
    head = ["attack", "degradation", *targets, "mean of medians", "worst", "SSIM box", "PSNR box"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for a, per in results["summary"].items():
        for d, s in per.items():
            cells = [_f(s["held_out"].get(t, {}).get("nme_median")) for t in targets]
            lines.append("| " + " | ".join([a, d, *cells, _f(s["held_out_median_mean"]), _f(s["held_out_median_min"]),
                                            _f(s["ssim_box"]), _f(s["psnr_box"], 1)]) + " |")
    return lines


def write_transfer_report(results: dict[str, Any], path: Path) -> None:
    """``report.md``: the held-out summary, then one matrix per attack and degradation."""
    from lbcore.io import write_bytes_atomic

    targets = list(results["config"]["extractors"])
    cfg = results["config"]
    lines = [
        "# Leave-one-out transfer",
        "",
        f"{results['data']['faces']} face(s) in {results['data']['images']} image(s) of "
        f"{', '.join(cfg['data'])}; attacked extractors: {', '.join(cfg['attackable'])}; measured: "
        f"{', '.join(targets)}.",
        "",
        "NME = movement of the extractor's own landmarks (adversarial vs clean image), over the clean "
        f"outer-eye-corner distance. Broken = NME > {cfg['broken_threshold']}. SSIM box = SSIM map averaged "
        "over the face box; PSNR box in dB; both against the clean image, after the degradation.",
        "",
        "## Held-out median NME",
        "",
        "Each extractor measured on the ensemble of all the others (an extractor that is never "
        "attacked: on the ensemble of all); controls on the same faces.",
        "",
        *summary_table(results),
        "",
    ]
    rows = results["rows"]
    images = {(r["attack"], r["attacked"], r["degradation"]): r for r in results["images"]}
    for a in results["summary"]:
        if a in ("clean", "noise"):
            continue
        lines += [f"## {a}", "", "```", json.dumps(cfg["attacks"][a], sort_keys=True), "```", ""]
        for d in results["summary"][a]:
            lines += [f"### after {d}", "",
                      "cells: median / mean NME / share broken; **held out** (never attacked by that row)", ""]
            head = ["attacked", *targets, "SSIM box", "PSNR box"]
            lines += ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
            names = list(dict.fromkeys(r["attacked"] for r in rows if r["attack"] == a))
            for name, att in [*((n, a) for n in names), *((c, c) for c in ("noise", "clean"))]:
                cells = []
                for t in targets:
                    r = next((r for r in rows if r["attack"] == att and r["attacked"] == name
                              and r["degradation"] == d and r["target"] == t), None)
                    if r is None:
                        cells.append("")
                        continue
                    c = f"{_f(r['nme_median'])} / {_f(r['nme_mean'])} / {_f(100 * (r['broken_share'] or 0), 0)}%"
                    cells.append(f"**{c}**" if r["role"] == "held-out" else c)
                im = images.get((att, name, d))
                if im is None:
                    continue
                lines.append("| " + " | ".join([name, *cells, _f(im["ssim_box"]), _f(im["psnr_box"], 1)]) + " |")
            lines.append("")
    if results.get("notes"):
        lines += ["## Notes", "", *[f"- {n}" for n in results["notes"]], ""]
    write_bytes_atomic(path, "\n".join(lines).encode())
