"""Tables III and IV of ``lb evaluate`` runs beside the paper's figures, as Markdown.

    python benchmarks/paper_tables.py --table3 T3/results.json --table4 T4/results.json \\
        [--fan fan-demo]

(an output folder instead of a results.json reads the units an unfinished run has finished).

``--fan`` names the run's extractor that stands for the paper's FAN (its column is set beside the
paper's FAN column); the other extractors have no counterpart in the paper and are shown alone.
The paper's numbers are those printed in Sun et al., WIFS 2020, Tables I, III and IV (FAN column,
and the HRNet / AVS-SAN columns of Table III). Measured SSIM_I / SSIM_W are this project's
aligned-crop figures (see the README); the paper used whole-image mask-SSIM.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

# Paper, Table III: source -> attack -> (NME FAN, HRNet, AVS-SAN), (SSIM_I, SSIM_W FAN, HRNet, AVS-SAN)
PAPER_T3: dict[str, dict[str, tuple[tuple[float, ...], tuple[float, ...]]]] = {
    "FAN": {"lbtrans": ((0.22, 0.03, 0.09), (0.91, 0.88, 0.94, 0.94)),
            "lbmix": ((0.24, 0.04, 0.09), (0.90, 0.86, 0.94, 0.93))},
    "HRNet": {"lbtrans": ((0.04, 0.10, 0.09), (0.92, 0.95, 0.94, 0.95)),
              "lbmix": ((0.04, 0.14, 0.09), (0.90, 0.95, 0.91, 0.94))},
    "AVS-SAN": {"lbtrans": ((0.04, 0.03, 0.55), (0.89, 0.94, 0.93, 0.82)),
                "lbmix": ((0.05, 0.03, 0.56), (0.88, 0.93, 0.93, 0.81))},
}
# Paper, Table I (LB) and the None row
PAPER_T1 = {"none": (0.03, 0.00, 0.09), "FAN": ((0.87, 0.05, 0.09), (0.81, 0.68, 0.89, 0.89))}
# Paper, Table IV, FAN column: degradation -> attack -> (NME, SSIM_I, SSIM_W)
PAPER_T4_FAN: dict[str, dict[str, tuple[float, float, float]]] = {
    "none": {"base1": (0.05, 0.52, 0.73), "base2": (0.85, 0.88, 0.71), "lb": (0.87, 0.81, 0.68)},
    "jpeg:quality=75": {"base1": (0.05, 0.56, 0.75), "base2": (0.64, 0.90, 0.74), "lb": (0.77, 0.84, 0.70)},
    "jpeg:quality=50": {"base1": (0.05, 0.59, 0.76), "base2": (0.50, 0.89, 0.76), "lb": (0.70, 0.84, 0.71)},
    "c": {"base1": (0.05, 0.57, 0.76), "base2": (0.44, 0.90, 0.78), "lb": (0.72, 0.84, 0.71)},
    "c2": {"base1": (0.05, 0.58, 0.76), "base2": (0.26, 0.91, 0.85), "lb": (0.60, 0.85, 0.73)},
}
DEG = {"none": "None", "jpeg:quality=75": "IC Q75", "jpeg:quality=50": "IC Q50", "c": "VC C", "c2": "VC C2"}
ATT = {"none": "None (clean)", "base1": "Base1", "base2": "Base2", "lb": "LB", "lbtrans": "LBtrans", "lbmix": "LBmix"}


def _partial(folder: Path) -> dict[str, Any]:
    """What results.json would hold, from the finished units of an unfinished run (OUT/partial)."""
    rows = [r for f in sorted(folder.glob("partial/*.json")) for r in json.loads(f.read_text())["rows"]]
    labels = list(dict.fromkeys(r["target"] for r in rows))
    degs = list(dict.fromkeys(r["degradation"] for r in rows))
    return {"rows": rows, "config": {"extractors": dict.fromkeys(labels), "degradations": degs},
            "data": {"faces": max((r["n_faces"] for r in rows), default=0)}}


def _index(path: str) -> tuple[dict[tuple[Any, ...], dict[str, Any]], list[str], dict[str, Any]]:
    """Rows of a results.json, or of the finished units of a run's output folder."""
    results = _partial(Path(path)) if Path(path).is_dir() else json.loads(Path(path).read_text())
    rows = {(r["source"], r["attack"], r["target"], r["degradation"]): r for r in results["rows"] if not r["ablate"]}
    return rows, list(results["config"]["extractors"]), results


def _f(v: Any) -> str:
    return "n/a" if v is None else f"{float(v):.2f}"


def table3(path: str, fan: str) -> None:
    rows, labels, res = _index(path)
    print(f"Measured on {res['data']['faces']} faces; sources = rows, targets = columns; "
          "NME | SSIM_I of the source's image | SSIM_W per target (off the diagonal = transfer).\n")
    head = [f"NME {t}" for t in labels] + ["SSIM_I"] + [f"SSIM_W {t}" for t in labels]
    print("| source | attack | " + " | ".join(head) + " |")
    print("|---|---|" + "---|" * len(head))
    none = [rows.get((None, "none", t, "none"), {}) for t in labels]
    print("| - | None | " + " | ".join(_f(r.get("nme")) for r in none) + " | 1.00 | "
          + " | ".join(_f(r.get("ssim_w")) for r in none) + " |")
    for s in labels:
        for a in ("lb", "lbtrans", "lbmix"):
            cells = [rows.get((s, a, t, "none")) for t in labels]
            if not any(cells):
                continue
            ssim_i = next((c["ssim_i"] for c in cells if c), None)
            print(f"| {s} | {ATT[a]} | " + " | ".join(_f(c and c["nme"]) for c in cells) + f" | {_f(ssim_i)} | "
                  + " | ".join(_f(c and c["ssim_w"]) for c in cells) + " |")
    print("\nPaper (Tables I and III), FAN / HRNet / AVS-SAN:\n")
    print("| source | attack | NME FAN | NME HRNet | NME AVS-SAN | SSIM_I | SSIM_W FAN | SSIM_W HRNet | SSIM_W AVS-SAN |")
    print("|---|---|---|---|---|---|---|---|---|")
    print("| - | None | " + " | ".join(_f(v) for v in PAPER_T1["none"]) + " | - | - | - | - |")
    nme1, ssim1 = PAPER_T1["FAN"]
    print("| FAN | LB | " + " | ".join(_f(v) for v in (*nme1, *ssim1)) + " |")
    for s, attacks in PAPER_T3.items():
        for a, (n, ss) in attacks.items():
            print(f"| {s} | {ATT[a]} | " + " | ".join(_f(v) for v in (*n, *ss)) + " |")
    print()


def table4(path: str, fan: str) -> None:
    rows, labels, res = _index(path)
    degs = list(res["config"]["degradations"])
    print(f"Measured on {res['data']['faces']} faces, white-box on {fan}; paper = its FAN column. "
          "NME / SSIM_I / SSIM_W.\n")
    print("| degradation | attack | measured NME | paper NME | measured SSIM_I / SSIM_W | paper SSIM_I / SSIM_W |")
    print("|---|---|---|---|---|---|")
    for d in degs:
        for a in ("none", "base1", "base2", "lb"):
            r = rows.get((None if a == "none" else fan, a, fan, d))
            if r is None:
                continue
            p = PAPER_T4_FAN.get(d, {}).get(a)
            print(f"| {DEG.get(d, d)} | {ATT[a]} | {_f(r['nme'])} | {_f(p[0]) if p else '-'} | "
                  f"{_f(r['ssim_i'])} / {_f(r['ssim_w'])} | {f'{_f(p[1])} / {_f(p[2])}' if p else '-'} |")
    print()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--table3", help="results.json of a run with lbtrans/lbmix and two or more extractors")
    ap.add_argument("--table4", help="results.json of a run with base1/base2/lb and the degradations")
    ap.add_argument("--fan", default="fan-demo", help="the run's label standing for the paper's FAN")
    args = ap.parse_args()
    if args.table3:
        table3(args.table3, args.fan)
    if args.table4:
        table4(args.table4, args.fan)
    if not (args.table3 or args.table4):
        ap.error("give --table3 and/or --table4")


if __name__ == "__main__":
    main()
