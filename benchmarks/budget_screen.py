"""Screen attack variants at one perceptual budget (default ``--strength medium``) on the default
ensemble: where should the SSIM/PSNR budget go to buy the most NME?

One process: the members (MediaPipe Face Mesh and fan-demo unless ``--extractor`` is given),
the held-out extractors (dlib68, mtcnn-onet) and the face boxes are loaded once; every variant
attacks every face with ``lb protect``'s own code path (``_Run.attack``, ``_Run.measure``) and
appends one JSON line per face to ``--jsonl`` (NME per member on the 8-bit result, i.e. PNG
output, and after a real JPEG Q75 re-compression; in-box SSIM and PSNR; seconds). ``--report``
prints the summary of a JSONL file::

    python benchmarks/budget_screen.py --jsonl s.jsonl --variants base,luma3,eot75 PHOTOS...
    python benchmarks/budget_screen.py --report s.jsonl

Minutes per variant and photo on a loaded CPU; not part of the test run.
"""

from __future__ import annotations

import argparse
import collections
import json
import statistics as st
import sys
import time
from pathlib import Path

VARIANTS: dict[str, tuple[str, object]] = {
    # name: (--attack spec, EOT: False / True (--robust) / a degradation spec)
    "base": ("lb", False),
    "luma3": ("lb:luma_weight=3", False),
    "grad": ("lb:balance=grad", False),
    "gamma": ("lb:optimizer=mifgsm-l2:gamma=0.95", False),
    "robust": ("lb", True),
    "eot75": ("lb", "diffjpeg:quality=75"),
    "luma3-eot75": ("lb:luma_weight=3", "diffjpeg:quality=75"),
    "steps60": ("lb:steps=60", False),
    "loss": ("lb:balance=loss", False),
    "target": ("lb:loss=shape-target", False),
    "c32": ("lb:coarse=32", False),
    "c64": ("lb:coarse=64", False),
}


def screen(jsonl: Path, variants: list[str], files: list[Path], strength: str, extractors: tuple[str, ...]) -> None:
    import attrs
    import torch

    from lbcore.apps.protection import ROBUST_EOT, ProtectOptions, _Run, strength_settings
    from lbcore.attacks import preset
    from lbcore.io import read_image
    from lbcore.types import Faces

    torch.set_num_threads(1)
    opts = ProtectOptions(extractors=extractors, held_out=("dlib68", "mtcnn-onet"), device="cpu", strength=strength)
    run = _Run(opts, Path("unused"), files, None)
    run.checks = {k: v for k, v in run.checks.items() if k == "jpeg:quality=75"}
    images = []
    for f in files:
        loaded = read_image(f)
        keep, _ = run.find_faces(loaded.rgb)
        if keep:
            images.append((f, torch.from_numpy(loaded.rgb).permute(2, 0, 1)[None].float(), keep))
    with jsonl.open("a") as out:
        for name in variants:
            spec, eot = VARIANTS[name]
            eots = ROBUST_EOT if eot is True else ((str(eot),) if eot else None)
            cfg = preset(spec, **strength_settings(attrs.evolve(opts, attack=spec)), seed=0, eot=eots)
            for f, x, keep in images:
                faces = Faces.from_lists([keep])
                t0 = time.monotonic()
                adv = run.attack(x, faces, config=cfg)
                dt = time.monotonic() - t0
                rows = run.measure(x, adv, faces, keep, with_checks=True)
                for r in rows:
                    out.write(json.dumps({"variant": name, "file": str(f), "secs": dt / len(rows), **r}) + "\n")
                out.flush()
                print(name, f, f"{dt:.1f} s", file=sys.stderr, flush=True)


def report(paths: list[Path]) -> None:
    rows = [json.loads(line) for p in paths for line in p.open()]
    by: dict[str, list[dict]] = collections.defaultdict(list)
    for r in rows:
        by[r["variant"]].append(r)
    for v, rs in by.items():
        ss, ps = [r["ssim_box"] for r in rs], [r["psnr"] for r in rs]
        print(f"{v}: {len(rs)} faces, {st.mean(r['secs'] for r in rs):.0f} s/face, in-box SSIM min {min(ss):.4f} "
              f"mean {st.mean(ss):.4f}, PSNR min {min(ps):.2f} dB")
        for m, e0 in rs[0]["extractors"].items():
            e = [r["extractors"][m] for r in rs]
            n = [x["nme"] for x in e if x["nme"] is not None]
            j = [x["after_compression"]["jpeg:quality=75"] for x in e if x.get("after_compression")]
            tag = "attacked" if e0["attacked"] else "held out"
            print(f"  {m} ({tag}): median NME {st.median(n):.3f}, broken {sum(a > 0.1 for a in n)}/{len(n)}; "
                  f"after JPEG Q75 {st.median(j):.3f}, {sum(a > 0.1 for a in j)}/{len(j)}")
        both = [min(x["nme"] for x in r["extractors"].values() if x["attacked"]) for r in rs]
        print(f"  every attacked member broken: {sum(a > 0.1 for a in both)}/{len(both)}")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("files", nargs="*", type=Path)
    p.add_argument("--jsonl", type=Path)
    p.add_argument("--variants", default="base")
    p.add_argument("--strength", default="medium")
    p.add_argument("--extractor", action="append", default=[])
    p.add_argument("--report", type=Path, nargs="+")
    a = p.parse_args()
    if a.report:
        report(a.report)
        return
    if not a.jsonl or not a.files:
        p.error("give --jsonl and photos (or --report JSONL)")
    unknown = [v for v in a.variants.split(",") if v not in VARIANTS]
    if unknown:
        p.error(f"unknown variants {unknown} (valid: {', '.join(VARIANTS)})")
    screen(a.jsonl, a.variants.split(","), a.files, a.strength, tuple(a.extractor))


if __name__ == "__main__":
    main()
