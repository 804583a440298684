"""Table of the finished units of an ``lb transfer`` output folder (read from ``OUT/partial``).

    python benchmarks/transfer_partials.py OUT

One row per unit and degradation: the median NME of every extractor (``*`` marks the ones the
unit attacked, the others are held out - including measure-only ones such as dlib in every
unit), mean in-box SSIM and PSNR. Useful while a run is unfinished or after
``benchmarks/transfer_one_unit.py``.
"""

from __future__ import annotations

import json
import statistics
import sys
from pathlib import Path


def main(out: Path) -> None:
    recs = [json.loads(p.read_text(encoding="utf-8")) for p in sorted((out / "partial").glob("*.json"))]
    recs.sort(key=lambda r: (r["key"]["unit"]["attack"], str(r["key"]["unit"]["held_out"])))
    names: list[str] = []
    for r in recs:
        for fig in r["figures"].values():
            names += [n for n in fig["nme"] if n not in names]
    print("| attack | unit | degradation | " + " | ".join(names) + " | SSIM box | PSNR box | faces | s |")
    print("|" + "---|" * (len(names) + 7))
    for r in recs:
        u = r["key"]["unit"]
        unit = u["attack"] if u["attack"] in ("clean", "noise") else (
            "all" if u["held_out"] is None else f"all but {u['held_out']}")
        for d, fig in r["figures"].items():
            cells = []
            for n in names:
                v = [x for x in fig["nme"].get(n, []) if x is not None]
                star = "*" if n in r.get("members", []) and u["attack"] not in ("clean", "noise") else ""
                cells.append(f"{statistics.median(v):.3f}{star}" if v else "n/a")
            ssim = statistics.fmean(x for x in fig["ssim"] if x is not None)
            psnr = [float(x) for x in fig["psnr"] if isinstance(x, int | float) and abs(x) != float("inf")]
            p = f"{statistics.fmean(psnr):.1f}" if psnr else "n/a"
            print(f"| {u['attack']} | {unit} | {d} | " + " | ".join(cells)
                  + f" | {ssim:.3f} | {p} | {len(fig['ssim'])} | {r.get('seconds', 0):.0f} |")


if __name__ == "__main__":
    main(Path(sys.argv[1]))
