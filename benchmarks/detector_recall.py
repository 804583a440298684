"""Face-detector recall and false alarms on the shared real photos (../shared/data).

    python benchmarks/detector_recall.py [--data DIR] [--detectors haar,dlib-hog,...] [--json FILE]

Ground truth:

* ``faces68/``: one human-annotated face per photo, its box spanning the 68 ``.pts`` points;
* ``dlib_faces/``: the 43 face boxes of the two XML files (dlib-made pseudo ground truth);
* ``photos/`` (no annotations) and the faces the annotations leave out (einstein's seated
  man, breakingbad's man on the left): the boxes in :data:`BY_EYE`, marked by looking at
  the photos and at crops of every detector's boxes. ``required`` ones count in "found";
  ``optional`` ones (a face mostly hidden or cut by the frame) are neither required nor
  false alarms.

Matching rule: a detection finds a face when their IoU is at least 0.3 or the face's centre
(the mean of its landmarks; the box centre for faces marked by eye) lies inside the
detection. Faces are matched greedily, best detection first, each face and each detection
at most once; a detection that finds no face, a second one on an already found face
included, is a false alarm. Seconds per photo time the detector call alone (no decoding):
wall-clock, and the process's CPU time (all threads), which a busy shared machine inflates
less.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path
from typing import Any

import cv2
import numpy as np

HERE = Path(__file__).resolve().parent
DEFAULT_DATA = Path(os.environ.get("LB_SHARED_DIR", HERE.parent.parent / "shared")) / "data"
DETECTORS = ["haar", "dlib-hog", "dlib-cnn", "hog-cnn", "auto"]
FOLDERS = ["faces68", "dlib_faces", "photos"]

# Faces no annotation file marks, x1 y1 x2 y2 in image pixels, checked by eye.
_REQUIRED = "required"
_OPTIONAL = "optional"
BY_EYE: dict[str, list[tuple[str, tuple[int, int, int, int]]]] = {
    "faces68/einstein.jpg": [(_REQUIRED, (135, 625, 187, 677))],  # the man seated on the left
    "faces68/breakingbad.jpg": [(_REQUIRED, (617, 201, 884, 468))],  # the man on the left
    "photos/bald_guys.jpg": [(_REQUIRED, b) for b in [  # a collage: 24 faces of 5 men
        (1457, 1343, 1586, 1472), (1067, 1295, 1253, 1481), (56, 77, 242, 263),
        (1047, 758, 1232, 944), (551, 428, 737, 614), (1823, 438, 1931, 546),
        (35, 1274, 221, 1460), (786, 821, 941, 976), (64, 700, 218, 855), (64, 391, 218, 546),
        (322, 442, 476, 597), (1658, 703, 1748, 793), (340, 1232, 563, 1455),
        (861, 407, 1047, 593), (67, 999, 196, 1128), (390, 811, 613, 1034),
        (342, 56, 450, 163), (786, 1251, 941, 1406), (545, 116, 700, 270),
        (1113, 1079, 1268, 1234), (311, 225, 440, 354), (1790, 1274, 1975, 1460),
        (1418, 99, 1739, 420), (872, 116, 1027, 270)]],
    "photos/biden.jpg": [(_REQUIRED, (419, 241, 740, 562))],
    "photos/group_t1.jpg": [(_REQUIRED, b) for b in [
        (1118, 283, 1226, 390), (67, 283, 175, 390), (724, 367, 832, 474),
        (450, 295, 557, 402), (870, 67, 999, 196), (275, 176, 364, 265)]],
    "photos/kit_with_rose.jpg": [(_REQUIRED, (79, 130, 154, 204)), (_REQUIRED, (247, 92, 354, 199))],
    "photos/lin-manuel-miranda.png": [(_REQUIRED, (241, 170, 562, 491))],
    "photos/obama-240p.jpg": [(_REQUIRED, (190, 32, 252, 94))],
    "photos/obama.jpg": [(_REQUIRED, (349, 142, 617, 409))],
    "photos/obama_and_biden.jpg": [
        (_REQUIRED, (737, 449, 923, 634)), (_REQUIRED, (1133, 390, 1356, 613)),
        (_OPTIONAL, (1594, 1062, 1749, 1216)),  # the girl looking down, hair over her face
        (_OPTIONAL, (1900, 560, 2000, 820)),  # the woman cut by the right edge
    ],
    "photos/two_people.jpg": [(_REQUIRED, (778, 57, 964, 242)), (_REQUIRED, (253, 47, 408, 202))],
}


class Face:
    def __init__(self, box: Any, centre: Any, kind: str) -> None:
        self.box = np.asarray(box, dtype=np.float64)
        self.centre = np.asarray(centre, dtype=np.float64)
        self.kind = kind  # "annotated", "required" or "optional"


def iou(a: np.ndarray, b: np.ndarray) -> float:
    ix = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    iy = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = ix * iy
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
    return float(inter / union) if union > 0 else 0.0


def finds(det: np.ndarray, face: Face) -> bool:
    cx, cy = face.centre
    return iou(det, face.box) >= 0.3 or bool(det[0] <= cx <= det[2] and det[1] <= cy <= det[3])


def load_truth(data: Path) -> dict[str, list[Face]]:
    """``folder/name`` -> faces, for every photo of the three folders."""
    from lbcore.io.annotations import read_dlib_xml, read_pts

    truth: dict[str, list[Face]] = {}
    for pts in sorted((data / "faces68").glob("*.pts")):
        image = next(p for p in sorted(pts.parent.glob(pts.stem + ".*")) if p.suffix != ".pts")
        lm = read_pts(pts)
        truth[f"faces68/{image.name}"] = [Face([*lm.min(0), *lm.max(0)], lm.mean(0), "annotated")]
    for xml in sorted((data / "dlib_faces").glob("*.xml")):
        for rec in read_dlib_xml(xml):
            assert rec.image_path is not None and rec.box is not None
            centre = rec.landmarks.mean(0) if rec.landmarks is not None else (rec.box[:2] + rec.box[2:]) / 2
            truth.setdefault(f"dlib_faces/{rec.image_path.name}", []).append(Face(rec.box, centre, "annotated"))
    for image in sorted((data / "photos").iterdir()):
        truth.setdefault(f"photos/{image.name}", [])
    for key, faces in BY_EYE.items():
        for kind, box in faces:
            b = np.asarray(box, dtype=np.float64)
            truth[key].append(Face(b, (b[:2] + b[2:]) / 2, kind))
    return truth


def score(dets: np.ndarray, faces: list[Face]) -> tuple[dict[str, int], int]:
    """(found faces by kind, false alarms) under the module's matching rule."""
    taken = [False] * len(faces)
    found = {"annotated": 0, _REQUIRED: 0, _OPTIONAL: 0}
    false = 0
    for d in dets:  # best first
        hit = next((i for i, f in enumerate(faces) if not taken[i] and finds(d, f)), None)
        if hit is None:
            false += 1
        else:
            taken[hit] = True
            found[faces[hit].kind] += 1
    return found, false


def read_rgb(path: Path) -> np.ndarray:
    bgr = cv2.imread(str(path), cv2.IMREAD_COLOR)
    if bgr is None:
        raise SystemExit(f"{path}: cannot read the image")
    return cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--data", type=Path, default=DEFAULT_DATA)
    ap.add_argument("--detectors", default=",".join(DETECTORS), help="detector specs, comma-separated (semicolon-separated when a spec has parameters)")
    ap.add_argument("--json", type=Path, help="also write the table and every box here")
    ap.add_argument("--verbose", action="store_true", help="print each photo's misses and false alarms")
    args = ap.parse_args(argv)
    if not args.data.is_dir():
        print(f"{args.data}: no such folder (the shared real photos)", file=sys.stderr)
        return 3

    from lbcore.plugins import get_plugin_manager

    pm = get_plugin_manager()
    truth = load_truth(args.data)
    images = {key: read_rgb(args.data / key) for key in truth}
    print(f"load average at start: {os.getloadavg()[0]:.1f} on {os.cpu_count()} CPUs")
    rows: list[dict[str, Any]] = []
    boxes: dict[str, dict[str, list[list[float]]]] = {}
    for spec in [s.strip() for s in args.detectors.split(";" if ";" in args.detectors else ",") if s.strip()]:
        det = pm.build("detectors", spec)
        if getattr(det, "note", None):
            print(f"{spec}: {det.note}")
        boxes[spec] = {}
        for folder in FOLDERS:
            keys = [k for k in truth if k.startswith(folder + "/")]
            tot = {"annotated": 0, _REQUIRED: 0, "found_annotated": 0, "found_required": 0, "false": 0}
            secs = cpu = 0.0
            for key in keys:
                t0, c0 = time.perf_counter(), time.process_time()
                dets = np.asarray(det(images[key]), dtype=np.float64).reshape(-1, 5)
                secs += time.perf_counter() - t0
                cpu += time.process_time() - c0
                boxes[spec][key] = [[round(float(v), 2) for v in d] for d in dets]
                found, false = score(dets, truth[key])
                for kind in ("annotated", _REQUIRED):
                    tot[kind] += sum(f.kind == kind for f in truth[key])
                    tot[f"found_{kind}"] += found[kind]
                tot["false"] += false
                if args.verbose and (false or found["annotated"] + found[_REQUIRED]
                                     < sum(f.kind in ("annotated", _REQUIRED) for f in truth[key])):
                    print(f"  [{spec}] {key}: found {found}, false alarms {false}, boxes {boxes[spec][key]}")
            rows.append({"detector": spec, "folder": folder, "photos": len(keys), **tot,
                         "s_per_photo": round(secs / max(len(keys), 1), 3),
                         "cpu_s_per_photo": round(cpu / max(len(keys), 1), 3)})
    print(f"load average at end: {os.getloadavg()[0]:.1f}")
    print("matching: IoU >= 0.3 or the face's centre (landmark mean) inside the detection; "
          "one detection per face, the rest are false alarms")
    head = f"{'detector':<10} {'folder':<11} {'photos':>6} {'annotated':>9} {'found':>5} " \
           f"{'by-eye':>6} {'found':>5} {'false':>5} {'s/photo':>7} {'cpu-s':>5}"
    print(head)
    for r in rows:
        print(f"{r['detector']:<10} {r['folder']:<11} {r['photos']:>6} {r['annotated']:>9} "
              f"{r['found_annotated']:>5} {r['required']:>6} {r['found_required']:>5} "
              f"{r['false']:>5} {r['s_per_photo']:>7.2f} {r['cpu_s_per_photo']:>5.2f}")
    by_det: dict[str, list[dict[str, Any]]] = {}
    for r in rows:
        by_det.setdefault(r["detector"], []).append(r)
    print("totals (all 22 photos):" if len(truth) == 22 else f"totals ({len(truth)} photos):")
    for spec, rs in by_det.items():
        print(f"  {spec}: annotated {sum(r['found_annotated'] for r in rs)}/{sum(r['annotated'] for r in rs)}, "
              f"by eye {sum(r['found_required'] for r in rs)}/{sum(r['required'] for r in rs)}, "
              f"false alarms {sum(r['false'] for r in rs)}")
    if args.json:
        args.json.write_text(json.dumps({"rows": rows, "boxes": boxes}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
