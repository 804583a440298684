"""Per-face NME / SSIM_I / SSIM_W of the white-box LB row (no degradation) of two ``lb evaluate``
results.json files, side by side (faces matched by image and box), as a Markdown table.

    python benchmarks/ssim_w_per_face.py BEFORE/results.json AFTER/results.json

Written to compare SSIM_W before and after issue 20 (the paper's whole-image mask-SSIM against
the aligned-crop figure); a results.json from before that change has no failure column.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

COLUMNS = ("nme", "ssim_i", "ssim_w", "failure")


def load(path: str) -> tuple[dict[str, Any], dict[tuple[str, tuple[int, ...]], dict[str, Any]]]:
    results = json.loads(Path(path).read_text())
    row = next(x for x in results["rows"]
               if x["attack"] == "lb" and x["degradation"] == "none" and not x["ablate"] and x["white_box"])
    per_face = row["per_face"]
    faces: dict[tuple[str, tuple[int, ...]], dict[str, Any]] = {}
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


if __name__ == "__main__":
    if len(sys.argv) != 3:
        sys.exit("usage: python benchmarks/ssim_w_per_face.py BEFORE/results.json AFTER/results.json")
    main(sys.argv[1], sys.argv[2])
