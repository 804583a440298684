"""face-api.js's whole landmark pipeline on original and protected photos, run by face-api.js itself:
its SSD MobileNet v1 face detector on each image, then its 68-point landmark network, in TensorFlow.js
(node, CPU backend). NME (outer eye corners of the original's landmarks) between the pipeline's
landmarks on the two images, each face of the original matched to the protected image's detection with
the largest box overlap.

    python benchmarks/faceapi_pipeline.py PROTECTED_DIR ORIGINALS_DIR --npm NPM_DIR

PROTECTED_DIR is an ``lb protect -o`` folder; each protected file is matched to the original of the
same relative path and stem. This is the end-to-end check that ``faceapi68``'s column in
``lb protect``'s report (the project's torch copy of the network on the project's face box) stands
for what a face-api.js app sees. Needs node and, in NPM_DIR, ``npm install @vladmandic/face-api@1.7.15
@tensorflow/tfjs@4.22.0 @tensorflow/tfjs-backend-wasm@4.22.0`` (the detector's weights are read from
that package's ``model/`` folder).
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

import cv2
import numpy as np

SUFFIXES = {".jpg", ".jpeg", ".png", ".ppm", ".bmp", ".webp", ".tif", ".tiff"}
HERE = Path(__file__).resolve().parent


def _rgb(path: Path) -> np.ndarray:
    bgr = cv2.imread(str(path), cv2.IMREAD_COLOR)
    if bgr is None:
        raise SystemExit(f"{path}: not a readable image")
    return np.ascontiguousarray(cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB))


def run_faceapi(images: list[np.ndarray], npm: Path) -> list[list[dict]]:
    """face-api.js's detections with landmarks for each image (see faceapi_pipeline.mjs)."""
    with tempfile.TemporaryDirectory() as tmp:
        jobs = {"models": str(npm / "node_modules" / "@vladmandic" / "face-api" / "model"), "images": []}
        for i, img in enumerate(images):
            raw = Path(tmp) / f"{i}.rgb"
            raw.write_bytes(img.tobytes())
            jobs["images"].append({"raw": str(raw), "height": img.shape[0], "width": img.shape[1]})
        (Path(tmp) / "jobs.json").write_text(json.dumps(jobs))
        script = npm / "faceapi_pipeline.mjs"  # node resolves the packages from the script's folder
        script.write_bytes((HERE / "faceapi_pipeline.mjs").read_bytes())
        subprocess.run(["node", str(script), str(Path(tmp) / "jobs.json"), str(Path(tmp) / "out.json")],
                       cwd=npm, check=True, capture_output=True)
        return json.loads((Path(tmp) / "out.json").read_text())


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    ap.add_argument("protected", type=Path)
    ap.add_argument("originals", type=Path)
    ap.add_argument("--npm", type=Path, required=True, help="folder with the npm packages installed")
    args = ap.parse_args(argv)
    from lbcore.apps.propagation import box_iou as _iou

    pairs = []
    for prot in sorted(p for p in args.protected.rglob("*") if p.suffix.lower() in SUFFIXES):
        rel = prot.relative_to(args.protected)
        cands = [c for c in (args.originals / rel.parent).glob(f"{prot.stem}.*") if c.suffix.lower() in SUFFIXES]
        if not cands:
            print(f"{rel}: no original beside {args.originals / rel.parent}", file=sys.stderr)
            continue
        pairs.append((str(rel), _rgb(cands[0]), _rgb(prot)))
    if not pairs:
        raise SystemExit(f"{args.protected}: no protected image with an original")
    found = run_faceapi([im for _, c, a in pairs for im in (c, a)], args.npm.resolve())
    rows = []
    for k, (name, _c, _a) in enumerate(pairs):
        clean, adv = found[2 * k], found[2 * k + 1]
        for face in clean:
            ref = np.asarray(face["landmarks"], dtype=float)
            iod = float(np.linalg.norm(ref[36] - ref[45]))
            match = max(adv, key=lambda q, f=face: _iou(q["box"], f["box"]), default=None)
            if iod <= 0:
                continue
            if match is None or _iou(match["box"], face["box"]) < 0.3:
                rows.append((name, None))
                continue
            rows.append((name, float(np.linalg.norm(np.asarray(match["landmarks"]) - ref, axis=1).mean()) / iod))
    print("| photo | faces found in the original | NME per face (protected vs original) |")
    print("|---|---|---|")
    for name in dict.fromkeys(r[0] for r in rows):
        vals = [r[1] for r in rows if r[0] == name]
        print(f"| {name} | {len(vals)} | {', '.join('lost' if v is None else f'{v:.3f}' for v in vals)} |")
    nmes = [r[1] for r in rows if r[1] is not None]
    lost = sum(r[1] is None for r in rows)
    print(f"\n{len(rows)} faces found by face-api.js's detector in the originals: median NME "
          f"{statistics.median(nmes) if nmes else float('nan'):.3f}, {sum(x > 0.1 for x in nmes)} past 0.1, "
          f"{lost} not found again on the protected image")
    return 0


if __name__ == "__main__":
    sys.exit(main())
