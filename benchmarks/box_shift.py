"""How much of a protected face's NME survives when the extractor crops a slightly different box.

``lb protect``'s report measures every extractor with the face box the attack used. A face-swap tool
runs its own detector, whose box differs from that one by pixels or percent. This re-measures the
protected photos of an ``lb protect -o`` folder (its ``report.json``: inputs, outputs, face boxes) with
each face box moved by a fraction of a pixel to a few pixels, and scaled by a few percent, and prints
per extractor the median NME (protected vs original, both in the moved box) and the faces past 0.1.

    python benchmarks/box_shift.py OUT [--extractors 'faceapi68;mediapipe'] [--threads 1]
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np

VARIANTS = {  # name: (shift x and y in pixels, scale about the centre)
    "as attacked": (0.0, 1.0),
    "shift 0.5 px": (0.5, 1.0),
    "shift 2 px": (2.0, 1.0),
    "scale +3 %": (0.0, 1.03),
    "scale -3 %": (0.0, 0.97),
    "scale +8 %": (0.0, 1.08),
}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    ap.add_argument("out", type=Path, help="an lb protect -o folder")
    ap.add_argument("--extractors", default="faceapi68;mediapipe;mediapipe-attention;fan-demo")
    ap.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    args = ap.parse_args(argv)

    import cv2
    import torch

    from lbcore.metrics import nme
    from lbcore.plugins import get_plugin_manager
    from lbcore.types import Faces

    if args.threads:
        torch.set_num_threads(args.threads)
    report = json.loads((args.out / "report.json").read_text())
    pm = get_plugin_manager()
    exts = {s: pm.build("extractors", s).eval() for s in args.extractors.split(";") if s}

    def rgb(path: str) -> torch.Tensor:
        bgr = cv2.imread(path, cv2.IMREAD_COLOR)
        if bgr is None:
            raise SystemExit(f"{path}: not a readable image")
        return torch.from_numpy(cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB)).permute(2, 0, 1)[None].float()

    res: dict[tuple[str, str], list[float]] = {}
    for f in report["files"]:
        if f.get("kind") != "image" or not f.get("faces"):
            continue
        clean, adv = rgb(f["input"]), rgb(f["output"])
        for face in f["faces"]:
            box = np.asarray(face["box"], dtype=np.float64)
            for vname, (shift, scale) in VARIANTS.items():
                c, half = (box[:2] + box[2:]) / 2 + shift, (box[2:] - box[:2]) / 2 * scale
                faces = Faces.from_lists([[[*(c - half), *(c + half)]]])
                with torch.no_grad():
                    for spec, e in exts.items():
                        ref = e.predict(clean, faces)[0].numpy()
                        res.setdefault((spec, vname), []).append(float(nme(e.predict(adv, faces)[0].numpy(), ref)))
    if not res:
        raise SystemExit(f"{args.out}: no protected photo with faces in report.json")
    print("| extractor | " + " | ".join(VARIANTS) + " |")
    print("|---|" + "---|" * len(VARIANTS))
    for spec in exts:
        cells = []
        for vname in VARIANTS:
            v = np.asarray(res[(spec, vname)])
            cells.append(f"{np.median(v):.3f} ({int((v > 0.1).sum())}/{len(v)})")
        print(f"| {spec} | " + " | ".join(cells) + " |")
    print("\nmedian NME of the protected face against the original, both in the moved box (faces past 0.1)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
