"""Per-face NME / SSIM_I / SSIM_W from ``lb evaluate`` results.json files, as Markdown tables.

    python benchmarks/ssim_w_per_face.py BEFORE/results.json AFTER/results.json
    python benchmarks/ssim_w_per_face.py --attacks base1,base2,lb RESULTS.json

The first form puts the white-box LB row (no degradation) of two runs side by side (faces matched
by image and box); it was written to compare SSIM_W before and after issue 20 (the paper's
whole-image mask-SSIM against the aligned-crop figure); a results.json from before that change has
no failure column. The second form lists, per face, the white-box rows of several attacks of one
run with SSIM_W's two controls: ``px`` = the adversarial image synthesised with the clean
landmarks (pixels only), ``lm`` = the clean image synthesised with the adversarial landmarks
(landmarks only; results.json files from before that control have none).
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

COLUMNS = ("nme", "ssim_i", "ssim_w", "failure", "ssim_w_clean_landmarks", "ssim_w_clean_pixels")
Key = tuple[str, tuple[int, ...]]


def load(path: str, attack: str = "lb", degradation: str = "none") -> tuple[dict[str, Any], dict[Key, dict[str, Any]]]:
    results = json.loads(Path(path).read_text())
    row = next(x for x in results["rows"]
               if x["attack"] == attack and x["degradation"] == degradation and not x["ablate"] and x["white_box"])
    per_face = row["per_face"]
    faces: dict[Key, dict[str, Any]] = {}
    for k, f in enumerate(per_face["face"]):
        face = results["faces"][f]
        key = (Path(face["image"]).name, tuple(round(v) for v in face["box"]))
        faces[key] = {c: (per_face.get(c) or [None] * (k + 1))[k] for c in COLUMNS}
    return row, faces


def fmt(v: Any) -> str:
    return "-" if v is None else f"{v:.3f}"


def main(before_path: str, after_path: str) -> None:
    b_row, before = load(before_path)
    a_row, after = load(after_path)
    print("| face (image, box) | NME before | NME after | SSIM_I before | SSIM_I after | SSIM_W before "
          "| SSIM_W after | swap not made |")
    print("|---|---|---|---|---|---|---|---|")
    for key, b in before.items():
        a = after.get(key, {})
        print(f"| {key[0]} {list(key[1])} | {fmt(b['nme'])} | {fmt(a.get('nme'))} | {fmt(b['ssim_i'])} "
              f"| {fmt(a.get('ssim_i'))} | {fmt(b['ssim_w'])} | {fmt(a.get('ssim_w'))} | {a.get('failure') or ''} |")
    print(f"| mean | {fmt(b_row['nme'])} | {fmt(a_row['nme'])} | {fmt(b_row['ssim_i'])} | {fmt(a_row['ssim_i'])} "
          f"| {fmt(b_row['ssim_w'])} | {fmt(a_row['ssim_w'])} | {a_row.get('swap_failures', '')} |")


def by_attack(path: str, attacks: list[str], degradation: str = "none") -> None:
    loaded = [load(path, a, degradation) for a in attacks]
    fields = ("nme", "ssim_w", "ssim_w_clean_landmarks", "ssim_w_clean_pixels")
    short = {"nme": "NME", "ssim_w": "SSIM_W", "ssim_w_clean_landmarks": "px", "ssim_w_clean_pixels": "lm"}
    head = [f"{a} {short[c]}" for a in attacks for c in fields]
    print("| face (image, box) | " + " | ".join(head) + " |")
    print("|---|" + "---|" * len(head))
    for key in loaded[0][1]:
        cells = [fmt(faces.get(key, {}).get(c)) for _, faces in loaded for c in fields]
        print(f"| {key[0]} {list(key[1])} | " + " | ".join(cells) + " |")
    print("| mean | " + " | ".join(fmt(row.get(c)) for row, _ in loaded for c in fields) + " |")


if __name__ == "__main__":
    argv = sys.argv[1:]
    if len(argv) == 3 and argv[0] == "--attacks":
        by_attack(argv[2], argv[1].split(","))
    elif len(argv) == 2 and not argv[0].startswith("-"):
        main(argv[0], argv[1])
    else:
        sys.exit("usage: python benchmarks/ssim_w_per_face.py BEFORE/results.json AFTER/results.json\n"
                 "       python benchmarks/ssim_w_per_face.py --attacks base1,base2,lb RESULTS.json")
