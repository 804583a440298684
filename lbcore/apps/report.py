"""The report of ``lb evaluate``: the paper's Tables I-IV in Markdown and Figs. 3-4 as PNG.

Input is the ``results.json`` content written by :func:`lbcore.apps.evaluation.evaluate` (rows keyed
by source extractor, attack, target extractor, degradation and ablation value). Tables use the
paper's layout:

* Table I - LB: NME of every source x target pair (white-box on the diagonal) with the ``None``
  row (clean image), and SSIM_I per source with SSIM_W per target.
* Table II - the attacks None / Base1 / Base2 / LB, white-box.
* Table III - the transfer attacks LBtrans / LBmix from every source to every target.
* Table IV - Base1 / Base2 / LB white-box after each degradation (IC Q75/Q50, VC C/C2, ...).

plus failure rates, PSNR and the mask-mean SSIM_I, the SSIM_W controls, the paper's whole-image
mask-SSIM for comparison, the per-face figures of the white-box LB attack and the ablations.
SSIM_I and SSIM_W in the tables are measured on the face resampled to a fixed size (``ssim_i``: the
box at 256 px; ``ssim_w``: the face-swap alignment crop at the swap model's resolution); the paper's whole-image mask-SSIM (``*_masked_image``) is a separate table. Figures need matplotlib
(``pip install 'lbcore[report]'``); without it the plot data are written as CSV only (always
written) and the report says so.
"""

from __future__ import annotations

import csv
import io
from collections.abc import Sequence
from pathlib import Path
from typing import Any

__all__ = ["write_report", "render_markdown", "DEGRADATION_LABELS", "ATTACK_LABELS"]

ATTACK_LABELS = {"none": "None", "base1": "Base1", "base2": "Base2", "lb": "LB", "lbtrans": "LBtrans",
                 "lbmix": "LBmix"}
DEGRADATION_LABELS = {"none": "None", "jpeg:quality=75": "IC Q75", "jpeg:quality=50": "IC Q50",
                      "c": "VC C", "c2": "VC C2"}
NA = "n/a"


def _attack(a: str) -> str:
    return ATTACK_LABELS.get(a, a)


def _deg(d: str) -> str:
    return DEGRADATION_LABELS.get(d, d)


def _fmt(v: Any, digits: int = 2) -> str:
    if v is None:
        return NA
    if isinstance(v, str):
        return v
    return f"{float(v):.{digits}f}"


class _Index:
    """Rows looked up by ``(source, attack, target, degradation)`` (no ablation) and the
    ablation rows separately."""

    def __init__(self, rows: Sequence[dict[str, Any]]) -> None:
        self.main: dict[tuple[Any, str, str, str], dict[str, Any]] = {}
        self.ablation: list[dict[str, Any]] = []
        for r in rows:
            if r.get("ablate"):
                self.ablation.append(r)
            else:
                self.main[(r["source"], r["attack"], r["target"], r["degradation"])] = r

    def get(self, source: Any, attack: str, target: str, degradation: str = "none") -> dict[str, Any] | None:
        if attack == "none":
            source = None
        return self.main.get((source, attack, target, degradation))

    def value(self, key: str, source: Any, attack: str, target: str, degradation: str = "none") -> Any:
        r = self.get(source, attack, target, degradation)
        return None if r is None else r.get(key)


def _table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> list[str]:
    out = ["| " + " | ".join(header) + " |", "|" + "|".join(" --- " for _ in header) + "|"]
    out += ["| " + " | ".join(r) + " |" for r in rows]
    return out + [""]


def render_markdown(results: dict[str, Any], figures: Sequence[str] = (), figure_note: str = "") -> str:
    """The Markdown report of a results dictionary (see the module docstring)."""
    cfg = results["config"]
    ext = list(cfg["extractors"])
    attacks = [a for a in cfg["options"]["attacks"]]
    degs = list(cfg["degradations"])
    idx = _Index(results["rows"])
    data = results.get("data", {})
    lines = ["# Landmark Breaker evaluation", ""]
    lines += [
        f"Data: {', '.join(cfg.get('data', []))} - {data.get('images')} image(s), {data.get('faces')} face(s). "
        f"Extractors: " + ", ".join(f"`{k}` = `{v}`" for k, v in cfg["extractors"].items()) + ".",
        "",
        f"Ground truth: annotations where present and comparable, else the clean predictions of the reference "
        f"extractor `{cfg['reference']['label']}` (`{cfg['reference']['spec']}`), as the paper used HRNet "
        f"(mode `{cfg['options']['ground_truth']}`). Faces per source: "
        + "; ".join(f"{k}: {v.get('annotation', 0)} annotated, {v.get('reference', 0)} reference"
                    for k, v in data.get("ground_truth", {}).items()) + ".",
        "",
        f"Device: {results.get('device', {}).get('device')} ({results.get('device', {}).get('name')}); "
        f"seed {results.get('seed')}; lbcore {results.get('versions', {}).get('lbcore')}.",
        "",
        "NME is normalised by the ground truth's outer-eye-corner distance (higher = landmarks more broken). "
        "SSIM_I and SSIM_W in the tables are measured where a DeepFake pipeline looks, on the face "
        "resampled to a fixed size, so a face's size in the frame does not change them: SSIM_I on the face "
        "box at 256 x 256 px (clean vs adversarial image), SSIM_W on the face-swap alignment crop of the "
        "clean landmarks at the swap model's resolution (the DeepFake synthesised from the clean image vs "
        "the one synthesised from the (degraded) adversarial image with the landmarks found on it; a finer "
        "grid would only add interpolated smoothness), the SSIM map weighted by the union of the two "
        "blend masks. A face whose adversarial DeepFake cannot be made (degenerate alignment, fake outside "
        "the frame) scores 0, the worst. The paper's mask-SSIM (both images multiplied by the face-box mask, "
        "whole-image SSIM) is given separately for comparison only: every pixel outside the box is an "
        "identical zero in both images, so on a small face in a large frame it stays near 1 whatever "
        "happens to the face. Degradations are applied after the attack. "
        f"`{NA}` = not measured.",
        "",
    ]
    synth = cfg.get("synth", {})
    if synth.get("mode") == "none":
        lines += ["SSIM_W: not measured (no face-swap model).", ""]
    elif synth.get("mode") == "auto":
        lines += [f"SSIM_W: small face-swap model trained on the evaluation faces ({synth.get('steps')} steps), "
                  "a stand-in for the paper's Celeb-DF DeepFake model.", ""]
    else:
        lines += [f"SSIM_W: face-swap model from `{synth.get('path')}`.", ""]

    has = {a: a in attacks for a in ATTACK_LABELS}
    # -- Table I
    if has["lb"]:
        lines += ["## Table I - Landmark Breaker, every source (rows) x target (columns)", "", "NME (higher is better for the attack)", ""]
        rows = []
        if has["none"]:
            rows.append(["None", *[_fmt(idx.value("nme", None, "none", t)) for t in ext]])
        rows += [[s, *[_fmt(idx.value("nme", s, "lb", t)) for t in ext]] for s in ext]
        lines += _table(["Attacks", *ext], rows)
        lines += ["SSIM", ""]
        rows = [[s, _fmt(idx.value("ssim_i", s, "lb", s)), *[_fmt(idx.value("ssim_w", s, "lb", t)) for t in ext]] for s in ext]
        lines += _table(["Attacks", "SSIM_I", *[f"SSIM_W {t}" for t in ext]], rows)
    # -- Table II
    base = [a for a in ("none", "base1", "base2", "lb") if has[a]]
    if base:
        lines += ["## Table II - attacking methods, white-box (source = target)", "", "NME", ""]
        lines += _table(["Attacks", *ext], [[_attack(a), *[_fmt(idx.value("nme", t, a, t)) for t in ext]] for a in base])
        lines += ["SSIM_I / SSIM_W", ""]
        lines += _table(["Attacks", *ext], [
            [_attack(a), *[f"{_fmt(idx.value('ssim_i', t, a, t))}/{_fmt(idx.value('ssim_w', t, a, t))}" for t in ext]]
            for a in base if a != "none"])
    # -- Table III
    trans = [a for a in ("lbtrans", "lbmix") if has[a]]
    if trans:
        lines += ["## Table III - black-box (transfer) attacks, every source x target", "", "NME", ""]
        rows = []
        if has["none"]:
            rows.append(["None", "", *[_fmt(idx.value("nme", None, "none", t)) for t in ext]])
        rows += [[s, _attack(a), *[_fmt(idx.value("nme", s, a, t)) for t in ext]] for s in ext for a in trans]
        lines += _table(["Source", "Attacks", *ext], rows)
        lines += ["SSIM", ""]
        rows = [[s, _attack(a), _fmt(idx.value("ssim_i", s, a, s)), *[_fmt(idx.value("ssim_w", s, a, t)) for t in ext]]
                for s in ext for a in trans]
        lines += _table(["Source", "Attacks", "SSIM_I", *[f"SSIM_W {t}" for t in ext]], rows)
    # -- Table IV
    comp = [a for a in ("none", "base1", "base2", "lb") if has[a]]
    if comp and len(degs) > 1:
        lines += ["## Table IV - robustness to image (IC) and video (VC) compression, white-box", "",
                  "The None rows are the clean image after the same compression.", "", "NME", ""]
        rows = [[_deg(d), _attack(a), *[_fmt(idx.value("nme", t, a, t, d)) for t in ext]] for d in degs for a in comp]
        lines += _table(["Compression", "Attacks", *ext], rows)
        lines += ["SSIM_I / SSIM_W", ""]
        rows = [[_deg(d), _attack(a), *[f"{_fmt(idx.value('ssim_i', t, a, t, d))}/{_fmt(idx.value('ssim_w', t, a, t, d))}"
                                        for t in ext]] for d in degs for a in comp if a != "none"]
        lines += _table(["Compression", "Attacks", *ext], rows)
    # -- supplementary
    lines += ["## Failure rates (white-box): fraction of faces with NME > 0.08 / > 0.10", ""]
    rows = [[_deg(d), _attack(a), *[f"{_fmt(idx.value('failure_rate_0.08', t, a, t, d))}/"
                                    f"{_fmt(idx.value('failure_rate_0.10', t, a, t, d))}" for t in ext]]
            for d in degs for a in attacks]
    lines += _table(["Degradation", "Attacks", *ext], rows)
    lines += ["## Image quality (white-box): PSNR in the face box (dB) and SSIM_I mask-mean variant", ""]
    rows = [[_deg(d), _attack(a), *[f"{_fmt(idx.value('psnr', t, a, t, d), 1)} / {_fmt(idx.value('ssim_i_mask_mean', t, a, t, d))}"
                                    for t in ext]] for d in degs for a in attacks]
    lines += _table(["Degradation", "Attacks", *ext], rows)
    lines += ["## SSIM_W controls (white-box, no degradation)", "",
              "Identity round trip: align, no autoencoder, warp back (clean vs adversarial); "
              "adv + clean landmarks: the adversarial image synthesised with the clean landmarks (pixels only); "
              "clean + adv landmarks: the clean image synthesised with the adversarial landmarks (landmarks "
              "only); ideal alignment: the damage broken alignment alone does.", ""]
    rows = [[_attack(a), *[" / ".join(_fmt(idx.value(k, t, a, t)) for k in
                                      ("ssim_w", "ssim_identity", "ssim_w_clean_landmarks", "ssim_w_clean_pixels",
                                       "ssim_alignment"))
                           for t in ext]] for a in attacks]
    lines += _table(["Attacks", *[f"{t}: SSIM_W / identity / adv+clean lm / clean+adv lm / ideal alignment"
                                  for t in ext]], rows)
    lines += ["## The paper's whole-image mask-SSIM, for comparison (white-box, no degradation)", "",
              "SSIM_I / SSIM_W as the paper computes them (face-box mask, whole-image SSIM); not the headline "
              "(see above). Faces whose adversarial DeepFake could not be made are counted in the last figure.", ""]
    rows = [[_attack(a), *[f"{_fmt(idx.value('ssim_i_masked_image', t, a, t))} / "
                           f"{_fmt(idx.value('ssim_w_masked_image', t, a, t))} / "
                           f"{_fmt(idx.value('swap_failures', t, a, t), 0)}" for t in ext]] for a in attacks]
    lines += _table(["Attacks", *[f"{t}: SSIM_I / SSIM_W (paper) / swaps not made" for t in ext]], rows)
    if has["lb"]:
        lines += _per_face(results, idx, ext)
    # -- ablations
    for param in _ablation_params(idx.ablation):
        lines += [f"## Ablation of {param} ({_attack(cfg.get('ablate_attack') or 'lb')}, white-box, no degradation)", "",
                  "NME / SSIM_I / SSIM_W", ""]
        values = sorted({float(r["ablate"]["value"]) for r in idx.ablation if r["ablate"]["param"] == param})
        table = []
        for v in values:
            cells = []
            for t in ext:
                r = next((r for r in idx.ablation if r["ablate"]["param"] == param and float(r["ablate"]["value"]) == v
                          and r["source"] == t and r["target"] == t), None)
                cells.append(NA if r is None else f"{_fmt(r['nme'])} / {_fmt(r['ssim_i'])} / {_fmt(r['ssim_w'])}")
            table.append([f"{v:g}", *cells])
        lines += _table([param, *ext], table)
    lines += ["## Figures", ""]
    if figure_note:
        lines += [figure_note, ""]
    lines += [f"![{Path(f).stem}]({Path(f).name})" for f in figures if f.endswith(".png")]
    lines += [""]
    if results.get("notes"):
        lines += ["## Notes", "", *[f"- {n}" for n in results["notes"]], ""]
    return "\n".join(lines)


def _per_face(results: dict[str, Any], idx: _Index, ext: Sequence[str]) -> list[str]:
    """Per-face NME and SSIMs of the white-box LB attack (no degradation)."""
    faces = results.get("faces", [])
    lines = ["## Per face: LB, white-box, no degradation", "",
             "NME, SSIM_I, SSIM_W (headline), SSIM_W as the paper computes it, the alignment shift in eye "
             "distances, and why a swap was not made.", ""]
    for t in ext:
        r = idx.get(t, "lb", t)
        pf = (r or {}).get("per_face") or {}
        if not pf.get("face"):
            continue
        rows = []
        for k, f in enumerate(pf["face"]):
            def at(key: str, k: int = k, pf: dict[str, Any] = pf) -> Any:
                vals = pf.get(key) or []
                return vals[k] if k < len(vals) else None
            name = Path(faces[f]["image"]).name if f < len(faces) else str(f)
            rows.append([f"{f}", name, _fmt(at("nme"), 3), _fmt(at("ssim_i"), 3), _fmt(at("ssim_w"), 3),
                         _fmt(at("ssim_w_masked_image"), 3), _fmt(at("alignment_shift_iod"), 2), at("failure") or ""])
        lines += [f"`{t}`", ""]
        lines += _table(["Face", "Image", "NME", "SSIM_I", "SSIM_W", "SSIM_W (paper)", "shift (IOD)", "swap not made"],
                        rows)
    return lines


def _ablation_params(rows: Sequence[dict[str, Any]]) -> list[str]:
    seen: list[str] = []
    for r in rows:
        p = r["ablate"]["param"]
        if p not in seen:
            seen.append(p)
    return seen


def _num(v: Any) -> float:
    if v is None:
        return float("nan")
    if isinstance(v, str):
        return float(v)
    return float(v)


METRICS = (("nme", "NME"), ("ssim_i", "SSIM_I"), ("ssim_w", "SSIM_W"))


def fig3_data(results: dict[str, Any]) -> list[dict[str, Any]]:
    """Fig. 3's points: white-box metric per (extractor, attack, degradation)."""
    idx = _Index(results["rows"])
    cfg = results["config"]
    out = []
    for t in cfg["extractors"]:
        for a in cfg["options"]["attacks"]:
            for d in cfg["degradations"]:
                r = idx.get(t, a, t, d)
                if r is not None:
                    out.append({"extractor": t, "attack": a, "degradation": d,
                                **{k: r.get(k) for k, _ in METRICS}})
    return out


def fig4_data(results: dict[str, Any]) -> list[dict[str, Any]]:
    """Fig. 4's points: white-box metric per (parameter, value, extractor)."""
    idx = _Index(results["rows"])
    out = [{"param": r["ablate"]["param"], "value": r["ablate"]["value"], "extractor": r["target"],
            **{k: r.get(k) for k, _ in METRICS}}
           for r in idx.ablation if r["source"] == r["target"] and r["degradation"] == "none"]
    return sorted(out, key=lambda p: (p["param"], p["extractor"], float(p["value"])))


def _csv(points: list[dict[str, Any]]) -> bytes:
    buf = io.StringIO()
    if points:
        w = csv.DictWriter(buf, fieldnames=list(points[0]))
        w.writeheader()
        w.writerows(points)
    return buf.getvalue().encode()


def _plot_fig3(points: list[dict[str, Any]], extractors: Sequence[str], attacks: Sequence[str],
               degs: Sequence[str]) -> bytes:
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(3.2 * max(1, len(extractors)), 2.6 * len(METRICS)))
    FigureCanvasAgg(fig)
    axes = fig.subplots(len(METRICS), max(1, len(extractors)), squeeze=False)
    xs = list(range(len(degs)))
    for col, t in enumerate(extractors):
        for row, (key, name) in enumerate(METRICS):
            ax = axes[row][col]
            for a in attacks:
                ys = [next((_num(p[key]) for p in points if p["extractor"] == t and p["attack"] == a
                            and p["degradation"] == d), float("nan")) for d in degs]
                style = {"linestyle": "--", "color": "grey"} if a == "none" else {}
                ax.plot(xs, ys, marker="o", label=_attack(a), **style)
            ax.set_xticks(xs)
            ax.set_xticklabels([_deg(d) for d in degs], rotation=30, fontsize=7)
            if col == 0:
                ax.set_ylabel(name)
            if row == 0:
                ax.set_title(t)
    axes[0][0].legend(fontsize=7)
    fig.suptitle("Fig. 3: white-box performance under compression")
    return _png(fig)


def _png(fig: Any) -> bytes:
    """A finished figure as PNG bytes."""
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110)
    return buf.getvalue()


def _plot_fig4(points: list[dict[str, Any]], extractors: Sequence[str]) -> bytes:
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    params = list(dict.fromkeys(p["param"] for p in points))
    fig = Figure(figsize=(3.4 * len(params), 2.6 * len(METRICS)))
    FigureCanvasAgg(fig)
    axes = fig.subplots(len(METRICS), len(params), squeeze=False)
    for col, param in enumerate(params):
        for row, (key, name) in enumerate(METRICS):
            ax = axes[row][col]
            for t in extractors:
                pts = [p for p in points if p["param"] == param and p["extractor"] == t]
                ax.plot([float(p["value"]) for p in pts], [_num(p[key]) for p in pts], marker="o", label=t)
            ax.set_xlabel("T (steps)" if param == "steps" else param)
            if col == 0:
                ax.set_ylabel(name)
    axes[0][0].legend(fontsize=7)
    fig.suptitle("Fig. 4: ablation (white-box)")
    return _png(fig)


def write_report(results: dict[str, Any], out_dir: str | Path) -> list[Path]:
    """Write ``report.md``, ``fig3.csv``/``fig4.csv`` and (with matplotlib) ``fig3.png``/
    ``fig4.png`` into ``out_dir``; return the paths written."""
    from lbcore.io import write_bytes_atomic

    out = Path(out_dir)
    cfg = results["config"]
    written: list[Path] = []
    f3, f4 = fig3_data(results), fig4_data(results)
    for name, pts in (("fig3.csv", f3), ("fig4.csv", f4)):
        if pts:
            written.append(write_bytes_atomic(out / name, _csv(pts)))
    note = ""
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        note = ("matplotlib is not installed (pip install 'lbcore[report]'): the figures' data are in "
                "fig3.csv / fig4.csv, no PNG was drawn.")
    else:
        if f3:
            written.append(write_bytes_atomic(out / "fig3.png", _plot_fig3(
                f3, list(cfg["extractors"]), list(cfg["options"]["attacks"]), list(cfg["degradations"]))))
        if f4:
            written.append(write_bytes_atomic(out / "fig4.png", _plot_fig4(f4, list(cfg["extractors"]))))
    md = render_markdown(results, [str(p) for p in written], note)
    written.insert(0, write_bytes_atomic(out / "report.md", md.encode()))
    return written
