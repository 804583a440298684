"""dlib's whole landmark pipeline on original and protected photos: its own face detector on each
image, then its 68-point predictor; NME (outer eye corners of the original's landmarks) between the
pipeline's landmarks on the two, with the protected image's own detection and with the original's box.

    python benchmarks/dlib_pipeline.py PROTECTED_DIR ORIGINALS_DIR [--detector hog|cnn]

PROTECTED_DIR is an ``lb protect -o`` folder; each protected file is matched to the original of the
same relative path and stem (``lb protect`` may change the suffix, e.g. ``.ppm`` -> ``.png``). It
answers whether the leave-one-out matrix, which hands every held-out extractor the clean image's box,
understates what a face-swap tool that detects faces itself sees (docs/transfer.md, round 4). Needs
``dlib`` and ``face-recognition-models`` (``pip install ./plugins/lb_dlib``).
"""

from __future__ import annotations

import argparse
import statistics
import sys
from pathlib import Path

import cv2
import numpy as np

SUFFIXES = {".jpg", ".jpeg", ".png", ".ppm", ".bmp", ".webp", ".tif", ".tiff"}


def _rgb(path: Path) -> np.ndarray:
    bgr = cv2.imread(str(path), cv2.IMREAD_COLOR)
    if bgr is None:
        raise SystemExit(f"{path}: not a readable image")
    return np.ascontiguousarray(cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB))


def _iou(a: object, b: object) -> float:
    """IoU of two dlib rectangles (lbcore's box IoU on their corners)."""
    from lbcore.apps.propagation import box_iou

    def corners(r: object) -> list[float]:
        return [r.left(), r.top(), r.right(), r.bottom()]  # type: ignore[attr-defined]

    return box_iou(corners(a), corners(b))


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("protected", type=Path)
    ap.add_argument("originals", type=Path)
    ap.add_argument("--detector", choices=["hog", "cnn"], default="hog",
                    help="hog: dlib's frontal face detector, upsampled once; cnn: its MMOD CNN detector")
    args = ap.parse_args(argv)

    import dlib

    from lb_dlib.predictor import default_model_path

    models = default_model_path().parent
    predictor = dlib.shape_predictor(str(models / "shape_predictor_68_face_landmarks.dat"))
    if args.detector == "cnn":
        cnn = dlib.cnn_face_detection_model_v1(str(models / "mmod_human_face_detector.dat"))

        def detect(img: np.ndarray) -> list[object]:
            return [d.rect for d in cnn(img, 0)]
    else:
        hog = dlib.get_frontal_face_detector()

        def detect(img: np.ndarray) -> list[object]:
            return list(hog(img, 1))

    def landmarks(img: np.ndarray, rect: object) -> np.ndarray:
        return np.array([(p.x, p.y) for p in predictor(img, rect).parts()], dtype=float)

    rows = []
    for prot in sorted(p for p in args.protected.rglob("*") if p.suffix.lower() in SUFFIXES):
        rel = prot.relative_to(args.protected)
        cands = [c for c in (args.originals / rel.parent).glob(f"{prot.stem}.*") if c.suffix.lower() in SUFFIXES]
        if not cands:
            print(f"{rel}: no original beside {args.originals / rel.parent}", file=sys.stderr)
            continue
        clean, adv = _rgb(cands[0]), _rgb(prot)
        found = detect(adv)
        for rect in detect(clean):
            ref = landmarks(clean, rect)
            iod = float(np.linalg.norm(ref[36] - ref[45]))
            if iod <= 0:
                continue
            fixed = float(np.linalg.norm(landmarks(adv, rect) - ref, axis=1).mean()) / iod
            match = max(found, key=lambda q, r=rect: _iou(q, r), default=None)
            if match is None or _iou(match, rect) < 0.3:
                rows.append((str(rel), fixed, None, None))
                continue
            own = float(np.linalg.norm(landmarks(adv, match) - ref, axis=1).mean()) / iod
            shift = (abs(match.left() - rect.left()) + abs(match.right() - rect.right()) + abs(match.top() - rect.top())
                     + abs(match.bottom() - rect.bottom())) / 4 / rect.width()
            rows.append((str(rel), fixed, own, shift))
    if not rows:
        raise SystemExit("no face found in the originals")
    print("| photo | NME, original's box | NME, own detection | box shift (of its width) |")
    print("|---|---|---|---|")
    for name, fixed, own, shift in rows:
        print(f"| {name} | {fixed:.3f} | {'face lost' if own is None else f'{own:.3f}'} | "
              f"{'-' if shift is None else f'{shift:.3f}'} |")
    fixed_all = [r[1] for r in rows]
    own_all = [r[2] for r in rows if r[2] is not None]
    print(f"\n{len(rows)} faces ({args.detector}): original's box median NME {statistics.median(fixed_all):.3f}, "
          f"{sum(x > 0.1 for x in fixed_all)} past 0.1; own detection median "
          f"{statistics.median(own_all) if own_all else float('nan'):.3f}, {sum(x > 0.1 for x in own_all)} past 0.1; "
          f"faces lost {sum(r[2] is None for r in rows)}; boxes moved {sum(1 for r in rows if r[3])}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
