"""End-to-end video protection time: a synthetic clip through ``lbcore.protect`` (decode,
attack, encode), as the issue's "1-minute 720p single-face video in under 15 s" target.

    python benchmarks/video_e2e.py --frames 1800 --size 1280x720 --device cuda   # the target
    python benchmarks/video_e2e.py --frames 16 --size 320x180 --extractor fan:weights=none,width=16,landmarks=68,resolution=64

The face is given as a fixed box (no detector), the report's re-compression checks are off;
prints seconds, frames per second and the time a 1,800-frame clip would take at that rate.
"""

from __future__ import annotations

import argparse
import json
import shutil
import tempfile
import time
from pathlib import Path

import numpy as np


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--frames", type=int, default=1800)
    ap.add_argument("--size", default="1280x720", help="WxH")
    ap.add_argument("--extractor", default="hrnet:weights=none")
    ap.add_argument("--device", default="auto")
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--codec", default="h264", choices=["ffv1", "h264"])
    ap.add_argument("--amp", default="auto", choices=["auto", "bf16", "fp16", "none"])
    ap.add_argument("--compile", action="store_true")
    ap.add_argument("--compare-overlap", action="store_true",
                    help="also run with decode/attack/encode one after another (overlap=False)")
    ap.add_argument("--keep", action="store_true", help="keep the temporary input and output")
    args = ap.parse_args()
    from lbcore.apps.protection import protect
    from lbcore.io import VideoWriter

    w, h = (int(v) for v in args.size.split("x"))
    work = Path(tempfile.mkdtemp(prefix="lb-video-e2e-"))
    src = work / "in" / "clip.mp4"
    src.parent.mkdir(parents=True)
    rng = np.random.default_rng(0)
    base = (rng.random((h // 8, w // 8, 3)) * 255).astype(np.uint8).repeat(8, 0).repeat(8, 1)
    with VideoWriter(src, 30, codec="h264", crf=18) as vw:
        for i in range(args.frames):
            vw.write(np.roll(base, i % 16, axis=1))
    side = min(w, h) * 0.45
    box = ((w - side) / 2, (h - side) / 2, (w + side) / 2, (h + side) / 2)
    for overlap in (True, False) if args.compare_overlap else (True,):
        t0 = time.perf_counter()
        report = protect([src], work / f"out-{overlap}", extractors=(args.extractor,), boxes=(box,),
                         check_compression=False, device=args.device, batch_size=args.batch_size, steps=args.steps,
                         codec=args.codec, amp=args.amp, compile=args.compile, overlap=overlap)
        secs = time.perf_counter() - t0
        rec = report["files"][0]
        print(json.dumps({"frames": rec.get("frames"), "size": args.size, "extractor": args.extractor,
                          "device": report["settings"]["device"], "amp": args.amp, "compile": args.compile,
                          "overlap": overlap, "status": rec["status"], "seconds": round(secs, 2),
                          "frames_per_s": round(args.frames / secs, 2),
                          "one_minute_30fps_seconds": round(1800 * secs / args.frames, 1)}, indent=1), flush=True)
    if not args.keep:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
