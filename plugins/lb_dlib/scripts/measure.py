"""Measure attacks on dlib68 face by face: NME of dlib68 (and of other extractors: transfer),
queries per face and seconds per face.

    python plugins/lb_dlib/scripts/measure.py IMG_OR_DIR... --extractor dlib68:grad=surrogate \
        --loss landmark-displacement --steps 100 [--also fan-demo] [--max-faces N]
    python plugins/lb_dlib/scripts/measure.py --compare PROTECTED_DIR ORIGINALS_DIR --also dlib68

Faces: dlib's HOG detector (``lb protect``'s default; ``--pts-boxes``: the .pts points' box), every face per image (``--per-image`` caps
it, largest first). Each face is attacked alone on its image; NME is between the extractor's
landmarks on the clean and on the attacked image, over the clean outer-eye-corner distance.
One JSON line per face, then a summary line.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

import numpy as np
import torch

from lbcore.engine import attack, preset
from lbcore.io import read_image
from lbcore.metrics import nme
from lbcore.plugins import get_plugin_manager
from lbcore.types import Faces

SUFFIXES = {".jpg", ".jpeg", ".png", ".ppm", ".bmp"}


def images_in(paths: list[str]) -> list[Path]:
    out: list[Path] = []
    for p in map(Path, paths):
        out += sorted(q for q in p.iterdir() if q.suffix.lower() in SUFFIXES) if p.is_dir() else [p]
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("inputs", nargs="*")
    ap.add_argument("--extractor", default="dlib68:grad=surrogate")
    ap.add_argument("--also", action="append", default=[], help="extra extractors to measure (transfer)")
    ap.add_argument("--loss", default="landmark-displacement")
    ap.add_argument("--attack", default="lb")
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--eps", type=float, default=15.0)
    ap.add_argument("--random-start", type=float, default=2.0)
    ap.add_argument("--per-image", type=int, default=0, help="at most this many faces per image (0: all)")
    ap.add_argument("--compare", nargs=2, metavar=("PROTECTED", "ORIGINALS"),
                    help="no attack: measure --also extractors between protected files and originals")
    ap.add_argument("--pts-boxes", action="store_true",
                    help="images with a .pts file beside them: the ground-truth points' tight box, not the detector's")
    ap.add_argument("--seed", type=int, default=0)
    a = ap.parse_args()
    torch.set_num_threads(1)
    pm = get_plugin_manager()
    det = pm.build("detectors", "auto")
    others = {s: pm.build("extractors", s) for s in a.also}
    rows = []
    pairs: list[tuple[Path | None, Path]]
    if a.compare:
        prot_dir, orig_dir = map(Path, a.compare)
        pairs = [(q, orig_dir / q.name) for q in images_in([str(prot_dir)])]
        found = [(p, next((o.with_suffix(s) for s in SUFFIXES if o.with_suffix(s).exists()), None)) for p, o in pairs]
        pairs = [(p, o) for p, o in found if o is not None]  # protected files of other folders: skipped
    else:
        pairs = [(None, p) for p in images_in(a.inputs)]
        ext = pm.build("extractors", a.extractor)
        config = preset(a.attack, loss=a.loss, steps=a.steps, eps=a.eps, random_start=a.random_start, seed=a.seed)
    for prot, orig in pairs:
        rgb = read_image(orig).rgb
        pts = orig.with_suffix(".pts")
        if a.pts_boxes and pts.exists():
            from lbcore.io.annotations import load_annotations

            found_boxes = [np.concatenate([r.landmarks.min(0), r.landmarks.max(0)]).tolist()
                           for r in load_annotations(pts) if r.landmarks is not None]
        else:
            found_boxes = det(rgb)[:, :4].tolist()
        boxes = sorted(found_boxes, key=lambda b: -(b[2] - b[0]) * (b[3] - b[1]))
        if a.per_image:
            boxes = boxes[: a.per_image]
        x = torch.from_numpy(rgb).permute(2, 0, 1)[None].float()
        adv_all = None if prot is None else torch.from_numpy(read_image(prot).rgb).permute(2, 0, 1)[None].float()
        for k, box in enumerate(boxes):
            faces = Faces.from_lists([[box]])
            row: dict[str, object] = {"image": orig.name, "face": k, "box": [round(v) for v in box]}
            if adv_all is None:
                t0 = time.perf_counter()
                if hasattr(ext, "reset_queries"):
                    ext.reset_queries()
                clean_lm = ext.predict(x, faces)
                adv = attack(x, faces, ext, config).adversarial
                row["seconds"] = round(time.perf_counter() - t0, 1)
                row["queries"] = getattr(ext, "total_queries", None)
                row["nme"] = round(float(nme(ext.predict(adv, faces)[0].numpy(), clean_lm[0].numpy(), ext.scheme)), 4)
                row["linf"] = float((adv - x).abs().max())
            else:
                adv = adv_all
            for s, e in others.items():
                row[f"nme_{s}"] = round(float(nme(e.predict(adv, faces)[0].numpy(), e.predict(x, faces)[0].numpy(),
                                                  e.scheme)), 4)
            rows.append(row)
            print(json.dumps(row), flush=True)
    summary: dict[str, object] = {"faces": len(rows)}
    for key in ["nme", *[f"nme_{s}" for s in others]]:
        vals = [float(r[key]) for r in rows if key in r]  # type: ignore[arg-type]
        if vals:
            summary[f"median_{key}"] = round(statistics.median(vals), 4)
            summary[f"mean_{key}"] = round(statistics.mean(vals), 4)
            summary[f"above_0.3_{key}"] = sum(v >= 0.3 for v in vals)
    for key in ("queries", "seconds"):
        vals = [float(r[key]) for r in rows if r.get(key) is not None]  # type: ignore[arg-type]
        if vals:
            summary[f"mean_{key}"] = round(statistics.mean(vals), 1)
            summary[f"max_{key}"] = max(vals)
    print(json.dumps({"summary": summary, "args": vars(a)}), flush=True)
    sys.exit(0 if rows else 1)


if __name__ == "__main__":
    main()
