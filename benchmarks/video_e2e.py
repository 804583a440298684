"""End-to-end video protection time: a synthetic clip through ``lbcore.protect`` (decode,
attack, encode), as the issue's "1-minute 720p single-face video in under 15 s" target.

    python benchmarks/video_e2e.py --frames 1800 --size 1280x720 --device cuda   # the target
    python benchmarks/video_e2e.py --frames 16 --size 320x180 --extractor fan:weights=none,width=16,landmarks=68,resolution=64

The face is given as a fixed box (no detector), the report's re-compression checks are off;
prints seconds, frames per second and the time a 1,800-frame clip would take at that rate.

Old path against key-frame propagation on a real clip, the same frames in one run (issue 19):

    python benchmarks/video_e2e.py --clip ../shared/data/video/short_hamilton_clip.mp4 --extractor fan-demo \
        --key-interval 1 8 --measure-every 5

protects the clip once per ``--key-interval`` (1 is the per-frame attack) and prints, per run, the
extractor passes per face, faces/s, wall time, and - on every ``--measure-every``-th frame, faces
found by the same detector on the clean frame - the mean NME of each attacked extractor between
its landmarks on the clean and the protected frame and the share of faces past ``--threshold``,
also after the paper's C2 re-compression (MPEG-4 then H.264) of the whole protected video.
``--rss`` prints the process's peak resident memory (VmHWM) at the end (run once per clip length).
"""

from __future__ import annotations

import argparse
import json
import shutil
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--frames", type=int, default=1800)
    ap.add_argument("--size", default="1280x720", help="WxH")
    ap.add_argument("--extractor", default="hrnet:weights=none")
    ap.add_argument("--device", default="auto")
    ap.add_argument("--batch-size", type=int, default=8, help="video frames attacked together (lb protect's default: 8)")
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--codec", default="h264", choices=["ffv1", "h264"])
    ap.add_argument("--amp", default="auto", choices=["auto", "bf16", "fp16", "none"])
    ap.add_argument("--compile", action="store_true")
    ap.add_argument("--compare-overlap", action="store_true",
                    help="also run with decode/attack/encode one after another (overlap=False)")
    ap.add_argument("--keep", action="store_true", help="keep the temporary input and output")
    ap.add_argument("--clip", type=Path, help="a real video: compare --key-interval values on it")
    ap.add_argument("--key-interval", type=int, nargs="+", default=[16],
                    help="key-frame intervals to run (1: the per-frame attack)")
    ap.add_argument("--propagated-steps", type=int, default=4)
    ap.add_argument("--stop-nme", type=float, default=0.1)
    ap.add_argument("--stop-margin", type=float, default=3.5)
    ap.add_argument("--cut-error", type=float, default=15.0, help="lb protect --cut-error (grey levels)")
    ap.add_argument("--max-frames", type=int, default=None, help="--clip: protect and measure only its first N frames")
    ap.add_argument("--detector", default="dlib-hog")
    ap.add_argument("--detect-every", type=int, default=5)
    ap.add_argument("--measure-every", type=int, default=5)
    ap.add_argument("--threshold", type=float, default=0.1)
    ap.add_argument("--strength", default="medium")
    ap.add_argument("--no-c2", action="store_true", help="skip the C2 re-compression measurement")
    ap.add_argument("--rss", action="store_true", help="print the peak resident memory (VmHWM) at the end")
    ap.add_argument("--json", type=Path, help="--clip: write the rows here")
    ap.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: torch's default)")
    args = ap.parse_args()
    if args.threads > 0:
        import torch

        torch.set_num_threads(args.threads)
    if args.clip is not None:
        compare_on_clip(args)
        return
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
        for k in args.key_interval:
            t0 = time.perf_counter()
            report = protect([src], work / f"out-{overlap}-{k}", extractors=(args.extractor,), boxes=(box,),
                             check_compression=False, device=args.device, batch_size=args.batch_size, steps=args.steps,
                             codec=args.codec, amp=args.amp, compile=args.compile, overlap=overlap, key_interval=k,
                             strength=args.strength,
                             propagated_steps=args.propagated_steps, stop_nme=args.stop_nme,
                             stop_margin=args.stop_margin)
            secs = time.perf_counter() - t0
            rec = report["files"][0]
            print(json.dumps({"frames": rec.get("frames"), "size": args.size, "extractor": args.extractor,
                              "device": report["settings"]["device"], "amp": args.amp, "compile": args.compile,
                              "overlap": overlap, "key_interval": k, "key_frames": rec.get("key_frames"), "key_frame_reasons": rec.get("key_frame_reasons"),
                              "passes_per_face": rec.get("passes_per_face"), "status": rec["status"],
                              "seconds": round(secs, 2), "frames_per_s": round(args.frames / secs, 2),
                              "one_minute_30fps_seconds": round(1800 * secs / args.frames, 1)}, indent=1), flush=True)
    if not args.keep:
        shutil.rmtree(work, ignore_errors=True)
    if args.rss:
        print_rss()


def print_rss() -> None:
    """The process's peak resident set size (VmHWM from /proc/self/status; getrusage elsewhere)."""
    import resource

    try:
        line = next(ln for ln in Path("/proc/self/status").read_text().splitlines() if ln.startswith("VmHWM"))
        kib = int(line.split()[1])
    except (OSError, StopIteration):
        kib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    print(json.dumps({"peak_rss_mib": round(kib / 1024, 1)}), flush=True)


def compare_on_clip(args: argparse.Namespace) -> None:
    """Protect ``args.clip`` once per key interval, then measure every run on the same frames."""
    from lbcore.apps.protection import protect
    from lbcore.io import probe_video

    fps = float(probe_video(args.clip, max_frames=None).fps)
    # a prefix: --duration covering exactly --max-frames frames
    part = {} if args.max_frames is None else {"duration": args.max_frames / fps}
    work = Path(tempfile.mkdtemp(prefix="lb-video-cmp-"))
    runs = []
    try:
        for k in args.key_interval:
            t0 = time.perf_counter()
            report = protect([args.clip], work / f"k{k}", extractors=(args.extractor,), detector=args.detector,
                             detect_every=args.detect_every, check_compression=False, device=args.device,
                             batch_size=args.batch_size, steps=args.steps, amp=args.amp, compile=args.compile,
                             codec="ffv1", strength=args.strength, report_every=10**9, **part,
                             key_interval=k, propagated_steps=args.propagated_steps, stop_nme=args.stop_nme,
                             stop_margin=args.stop_margin, threshold=args.threshold, cut_error=args.cut_error)
            secs = time.perf_counter() - t0
            rec = report["files"][0]
            if rec["status"] not in ("protected", "unchanged"):
                raise SystemExit(f"video_e2e: key interval {k}: {rec.get('error', rec['status'])}")
            runs.append({"key_interval": k, "output": rec["output"], "frames": rec["frames"],
                         "faces": rec["faces_protected"], "key_frames": rec.get("key_frames"), "key_frame_reasons": rec.get("key_frame_reasons"),
                         "passes_per_face": rec["passes_per_face"], "seconds": round(secs, 1),
                         "faces_per_s": round(rec["faces_protected"] / secs, 2)})
            print(json.dumps(runs[-1]), flush=True)
        measure_runs(args, runs)
        for r in runs:
            r.pop("output")
        base = runs[0]
        for r in runs:
            r["passes_ratio"] = round(base["passes_per_face"] / r["passes_per_face"], 2) if r["passes_per_face"] else None
            r["time_ratio"] = round(base["seconds"] / r["seconds"], 2)
        print(json.dumps({"clip": str(args.clip), "extractor": args.extractor, "strength": args.strength,
                          "detector": args.detector, "detect_every": args.detect_every,
                          "measure_every": args.measure_every, "max_frames": args.max_frames, "runs": runs}, indent=1))
        if args.json:
            args.json.write_text(json.dumps(runs, indent=1))
        _table(runs)
    finally:
        if not args.keep:
            shutil.rmtree(work, ignore_errors=True)
        else:
            print(f"kept {work}")


def _frames(path: str, limit: int | None) -> Iterator[np.ndarray]:
    from lbcore.io import iter_video_frames

    for i, f in enumerate(iter_video_frames(path, max_frames=None)):
        if limit is not None and i >= limit:
            return
        yield f


def _c2(path: str, fps: Any, limit: int | None) -> Iterator[np.ndarray]:
    """The frames of ``path`` after the paper's C2 (MPEG-4, then H.264), streamed."""
    from lb_codecs.video import codec_chain, stream_roundtrip

    def chunks() -> Iterator[np.ndarray]:
        buf: list[np.ndarray] = []
        for f in _frames(path, limit):
            buf.append(f)
            if len(buf) == 32:
                yield np.stack(buf)
                buf = []
        if buf:
            yield np.stack(buf)

    for chunk in stream_roundtrip(chunks(), codec_chain("c2"), fps):
        yield from chunk


def measure_runs(args: argparse.Namespace, runs: list[dict[str, Any]]) -> None:
    """NME and broken share of every run on every ``measure_every``-th frame (clean-frame boxes)."""
    import torch

    from lbcore.io import probe_video
    from lbcore.metrics import nme
    from lbcore.plugins import get_plugin_manager
    from lbcore.types import Faces

    pm = get_plugin_manager()
    ext = pm.build("extractors", args.extractor).eval()
    det = pm.build("detectors", args.detector)
    fps = probe_video(args.clip, max_frames=None).fps
    streams = [_frames(str(args.clip), args.max_frames)]
    for r in runs:
        streams.append(_frames(r["output"], None))
        if not args.no_c2:
            streams.append(_c2(r["output"], fps, None))
    per: list[list[float]] = [[] for _ in streams[1:]]
    for i, frames in enumerate(zip(*streams, strict=True)):
        if i % args.measure_every:
            continue
        boxes = [[float(v) for v in b[:4]] for b in det(frames[0])]
        boxes = [b for b in boxes if min(b[2] - b[0], b[3] - b[1]) >= 40]
        if not boxes:
            continue
        faces = Faces.from_lists([boxes])
        with torch.no_grad():
            ref = ext.predict(torch.from_numpy(frames[0]).permute(2, 0, 1)[None].float(), faces).numpy()
            for j, f in enumerate(frames[1:]):
                got = ext.predict(torch.from_numpy(np.ascontiguousarray(f)).permute(2, 0, 1)[None].float(), faces).numpy()
                per[j].extend(float(v) for v in np.atleast_1d(nme(got, ref, ext.scheme)))
    j = 0
    for r in runs:
        for key in ("", "_c2") if not args.no_c2 else ("",):
            vals = np.asarray(per[j])
            r[f"nme{key}"] = round(float(vals.mean()), 4) if vals.size else None
            r[f"broken{key}"] = round(float((vals > args.threshold).mean()), 3) if vals.size else None
            r["faces_measured"] = int(vals.size)
            j += 1


def _table(runs: list[dict[str, Any]]) -> None:
    print("| key interval | key frames | faces | passes/face | wall s | faces/s | NME | broken | NME after C2 | broken after C2 |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    for r in runs:
        print(f"| {r['key_interval']} | {r['key_frames'] if r['key_frames'] is not None else 'all'} | {r['faces']} | "
              f"{r['passes_per_face']} ({r['passes_ratio']}x fewer) | {r['seconds']} ({r['time_ratio']}x) | "
              f"{r['faces_per_s']} | {r['nme']} | {r['broken']} | {r.get('nme_c2')} | {r.get('broken_c2')} |")


if __name__ == "__main__":
    main()
