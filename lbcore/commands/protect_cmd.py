"""``lb protect``: protect the faces in photos, folders and videos (the main job)."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

import click

from lbcore.commands.attack_cmd import apply_weights_option, parse_box


def _table(report: dict[str, Any]) -> list[str]:
    from lbcore.io import display_path

    lines = []
    thr = report["settings"]["threshold"]
    for rec in report["files"]:
        name = display_path(rec.get("input", "?"))  # printable even when the name is not UTF-8
        status = rec["status"]
        if status == "error":
            lines.append(f"{name}: ERROR {rec.get('error')}")
            continue
        if status in ("interrupted", "not started"):
            lines.append(f"{name}: {status}")
            continue
        if status == "skipped":
            lines.append(f"{name}: skipped ({rec.get('error')})")
            continue
        if rec.get("kind") == "video" and status in ("protected", "done earlier") and rec.get("extractors"):
            parts = [f"{k} NME {v['nme_mean']:.2f}{'' if v['attacked'] else ' (held out)'}"
                     for k, v in rec["extractors"].items()]
            lines.append(f"{name}: {status}, {rec.get('frames')} frames, {rec.get('faces_protected')} faces; "
                         f"{'; '.join(parts)}; SSIM {rec.get('ssim_mean')}")
            continue
        faces = rec.get("faces") or []
        if not faces:
            lines.append(f"{name}: {status}" + (f" ({rec['note']})" if rec.get("note") else ""))
            continue
        lines.append(f"{name}: {status}, {len(faces)} face(s)")
        for i, f in enumerate(faces):
            parts = []
            for k, e in f["extractors"].items():
                tag = "" if e["attacked"] else " held-out"
                if e["nme"] is None:
                    parts.append(f"{k}{tag} NME undefined (eye corners coincide on the original)")
                    continue
                verdict = "broken" if e["broken"] else "NOT broken"
                after = e.get("after_compression")
                extra = ""
                if after:
                    extra = " [after " + ", ".join(f"{c} {v:.2f}" for c, v in after.items()) + "]"
                parts.append(f"{k}{tag} NME {e['nme']:.2f} {verdict}{extra}")
            lines.append(f"  face {i + 1}: " + "; ".join(parts) + f"; SSIM_I {f['ssim']:.3f} (in-box {f['ssim_box']:.3f}), PSNR {f['psnr']:.1f} dB")
    s = report["summary"]
    photo_faces = s.get("photo_faces", s["faces"])
    if s.get("video_faces"):
        lines.append(f"{s['faces']} face(s) protected ({photo_faces} in photos, {s['video_faces']} in video "
                     f"frames); {s['faces_broken_all_attacked']} of the {photo_faces} photo face(s) broken for "
                     f"every attacked extractor (NME > {thr}), videos as above; "
                     f"report: {report.get('report_path', '')}")
    else:
        lines.append(f"{s['faces']} face(s) protected, {s['faces_broken_all_attacked']} broken for every attacked "
                     f"extractor (NME > {thr}); report: {report.get('report_path', '')}")
    return lines


@click.command("protect")
@click.argument("inputs", nargs=-1, required=False, type=click.Path(path_type=Path))
@click.option("-o", "--out", "outdir", required=True, type=click.Path(path_type=Path),
              help="Output folder (structure of input folders is mirrored).")
@click.option("--extractor", "extractors", multiple=True, metavar="SPEC",
              help="Extractor to attack (repeatable). Default: every installed extractor with weights.")
@click.option("--held-out", "held_out", multiple=True, metavar="SPEC",
              help="Extractor measured in the report but not attacked (repeatable; tests transfer). Default "
                   "auto: the installed real models registered for it (dlib68 with lb-dlib, mtcnn-onet with lb-onnx); none: no such column.")
@click.option("--attack", "attack_name", default="lb", show_default=True, metavar="SPEC",
              help="Attack: a registered name with optional keys (lb, base1, base2, lbtrans, lbmix, lb:steps=30; "
                   "see `lb list attacks`).")
@click.option("--strength", default="medium", show_default=True,
              type=click.Choice(["low", "medium", "high", "paper"]),
              help="What people may see, as a floor on similarity inside every face box: low SSIM 0.98 / "
                   "PSNR 42 dB, medium 0.95 / 38 dB, high SSIM 0.90 (no PSNR floor, L-inf cap 24) (soft face "
                   "mask, change hidden in texture); paper: the paper's L-inf 15, 20 steps, no perceptual "
                   "budget (visible).")
@click.option("--eps", type=float, default=None,
              help="Research: override the strength's L-inf cap (0..255, finite, >= 0).")
@click.option("--steps", type=click.IntRange(1, 10_000), default=None, help="Override the strength's iteration count.")
@click.option("--format", "fmt", default="auto", show_default=True, metavar="auto|png|jpeg|webp",
              help="Image output format; auto keeps the input's family (JPEG stays JPEG at its own quality, "
                   "WebP stays WebP, the rest PNG). JPEG output is attacked through the JPEG it is saved with.")
@click.option("--quality", type=int, default=None,
              help="JPEG/WebP quality 1..100 (default: JPEG the input's own, 85..98; WebP lossless).")
@click.option("--robust", is_flag=True,
              help="Optimise through a differentiable JPEG so protection survives re-compression (slower).")
@click.option("--device", default="auto", show_default=True, help="auto, cpu, cuda or cuda:N.")
@click.option("--detector", default="auto", show_default=True, metavar="SPEC", help="Face detector.")
@click.option("--box", "boxes", multiple=True, metavar="x1,y1,x2,y2",
              help="Protect this face box instead of detecting faces (repeatable, every input).")
@click.option("--min-face", type=click.IntRange(min=1), default=40, show_default=True,
              help="Faces smaller than this (pixels) are reported and skipped.")
@click.option("--threshold", type=click.FloatRange(min=0, min_open=True), default=0.1, show_default=True,
              help="NME above which a face's landmarks count as broken.")
@click.option("--codec", type=click.Choice(["ffv1", "h264", "png"]), default="ffv1", show_default=True,
              help="Video output: lossless FFV1/MKV, H.264 MP4 at --crf, or a folder of PNG frames.")
@click.option("--crf", type=click.IntRange(0, 51), default=18, show_default=True, help="H.264 quality (lower is better).")
@click.option("--batch-size", type=click.IntRange(min=1), default=8, show_default=True, help="Video frames attacked together.")
@click.option("--photo-batch", type=click.IntRange(min=1), default=1, show_default=True,
              help="Photos attacked together (their network calls shared). 2 or more: each photo's output is the "
                   "same whatever it is grouped with (last bits differ from 1, which keeps oneDNN's kernels).")
@click.option("--preview", is_flag=True, help="Write side-by-side previews with landmarks before/after.")
@click.option("--force", is_flag=True, help="Redo files a previous run finished.")
@click.option("--seed", type=click.IntRange(min=0), default=0, show_default=True)
@click.option("--max-pixels", type=click.IntRange(min=1), default=None, help="Largest image accepted (pixels).")
@click.option("--max-frames", type=click.IntRange(min=1), default=None,
              help="Longest video (or part, with --start/--duration) accepted, in frames.")
@click.option("--start", type=click.FloatRange(min=0), default=0.0, metavar="SECONDS",
              help="Videos: protect from this time on (the output holds only the protected part; no audio).")
@click.option("--duration", type=click.FloatRange(min=0, min_open=True), default=None, metavar="SECONDS",
              help="Videos: protect this many seconds (from --start).")
@click.option("--no-compression-check", is_flag=True, help="Skip the JPEG/C2 re-compression checks in the report.")
@click.option("--amp", type=click.Choice(["auto", "bf16", "fp16", "none"]), default="auto", show_default=True,
              help="Autocast of the extractors (auto: bf16 on GPUs, none on the CPU; on CPUs with AVX512-BF16/AMX "
                   "bf16 ran published-size networks 1.6-2.2x faster here).")
@click.option("--compile", "compile_", is_flag=True, help="torch.compile the extractors (pays off on long videos).")
@click.option("--detect-every", type=click.IntRange(min=1), default=1, show_default=True,
              help="Videos: run the face detector on every N-th frame and interpolate the boxes in between "
                   "(the detector can cost more than the attack on large frames).")
@click.option("--weights", "weights", multiple=True, metavar="NAME=PATH", help="Use this weights file.")
@click.option("--key-interval", type=click.IntRange(1, 1000), default=16, show_default=True,
              help="Videos: the full attack on every N-th frame (and at scene cuts and new faces); the frames "
                   "between start from its perturbation warped along the optical flow (1: every frame, the old path).")
@click.option("--propagated-steps", type=click.IntRange(0, 1000), default=4, show_default=True,
              help="Videos: most attack steps of a frame between key frames.")
@click.option("--stop-nme", type=click.FloatRange(0, 10), default=0.1, show_default=True,
              help="Videos: a face between key frames stops once every attacked extractor's NME exceeds "
                   "this times --stop-margin (0: off).")
@click.option("--stop-margin", type=click.FloatRange(1, 100), default=3.5, show_default=True,
              help="Videos: factor on --stop-nme.")
@click.option("--cut-error", type=click.FloatRange(0, 255, min_open=True), default=15.0, show_default=True,
              help="Videos: mean grey-level error between a frame and the previous one warped onto it along the flow "
                   "above which there is a scene cut (a new key frame, nothing inherited); a frame whose key frame, "
                   "warped onto it, is off by twice this becomes a warm-started key frame.")
@click.option("--require-broken", is_flag=True,
              help="Exit with status 4 when any measured face stays below --threshold for an attacked "
                   "extractor (the files are still written).")
@click.option("--example", is_flag=True, help="Protect a bundled sample photo (scikit-image's astronaut).")
@click.option("-q", "--quiet", is_flag=True, help="No progress or table.")
@click.option("--json", "as_json", is_flag=True, help="Print the report as JSON.")
def protect_cmd(inputs: tuple[Path, ...], outdir: Path, extractors: tuple[str, ...], held_out: tuple[str, ...],
                attack_name: str, strength: str, eps: float | None, steps: int | None, fmt: str,
                quality: int | None, robust: bool,
                device: str, detector: str, boxes: tuple[str, ...], min_face: int, threshold: float,
                codec: str, crf: int, batch_size: int, photo_batch: int, preview: bool, force: bool, seed: int,
                max_pixels: int | None, max_frames: int | None, no_compression_check: bool, amp: str,
                compile_: bool, detect_every: int, weights: tuple[str, ...], example: bool, quiet: bool, as_json: bool,
                require_broken: bool = False, start: float = 0.0, duration: float | None = None,
                key_interval: int = 16, propagated_steps: int = 4, stop_nme: float = 0.1, stop_margin: float = 3.5,
                cut_error: float = 15.0) -> None:
    """Protect every face in INPUTS (images, folders, videos) against DeepFake face-swapping.

    Adds a perturbation that breaks facial landmark extraction (Landmark Breaker, WIFS 2020),
    kept within a similarity budget inside each face (--strength), writes the protected files
    to OUT (the input's format by default; inputs are never overwritten; a rerun skips finished
    files) and reports per face how far each extractor's landmarks moved.
    Exit status: 0 all done, 1 some inputs failed, 2 bad usage, 3 missing weights/plugins,
    4 some face not broken (only with --require-broken), 130 interrupted (Ctrl-C; the report
    lists what finished, a rerun continues).
    """
    from lbcore.apps.protection import ProtectOptions, protect
    from lbcore.errors import SpecError

    apply_weights_option(weights)
    paths = list(inputs)
    if example:
        paths.append(_example_photo(outdir))
    if not paths:
        raise SpecError("give at least one input (image, folder or video), or --example")
    options = ProtectOptions(
        extractors=extractors, held_out=held_out or ("auto",), attack=attack_name, strength=strength, eps=eps,
        steps=steps, format=fmt, quality=quality, robust=robust, device=device, detector=detector,
        boxes=tuple(parse_box(b) for b in boxes), min_face=min_face, threshold=threshold, codec=codec,
        crf=crf, force=force, preview=preview, batch_size=batch_size, photo_batch=photo_batch, seed=seed,
        check_compression=not no_compression_check, max_pixels=max_pixels, max_frames=max_frames,
        amp=amp, compile=compile_, detect_every=detect_every, start=start, duration=duration,
        key_interval=key_interval, propagated_steps=propagated_steps, stop_nme=stop_nme, stop_margin=stop_margin,
        cut_error=cut_error,
    )
    log = None if quiet or as_json else (lambda s: click.echo(s, err=True))
    # bars only for a person watching a terminal; logs and pipes get plain lines
    bars = not (quiet or as_json) and sys.stderr.isatty()
    try:
        report = protect(paths, outdir, options, progress=log, progress_bar=bars)
    except KeyboardInterrupt:  # while loading the models, before the first file
        click.echo("lb: interrupted before any file was protected", err=True)
        raise SystemExit(130) from None
    print_report(report, outdir, quiet, as_json, require_broken=require_broken)


def print_report(report: dict[str, Any], outdir: Path, quiet: bool, as_json: bool, *,
                 require_broken: bool = False, start: float = 0.0, duration: float | None = None) -> None:
    """The end of `lb protect` (also `lb distributed protect`): JSON or notes + table; exit 130
    when interrupted, 1 when any input failed, 4 (with ``require_broken``) when a face was not
    broken."""
    report["report_path"] = str(outdir / "report.json")
    if as_json:
        click.echo(json.dumps(report, indent=2, default=str))
    elif not quiet:
        for note in report["notes"]:
            click.echo(f"note: {note}", err=True)
        for line in _table(report):
            click.echo(line)
    if report.get("interrupted"):
        click.echo("lb: interrupted: finished files are kept and listed in the report; run the same "
                   "command again to continue", err=True)
        raise SystemExit(130)
    if any(r["status"] == "error" for r in report["files"]):
        raise SystemExit(1)
    if require_broken and report["summary"].get("faces_not_broken"):
        n = report["summary"]["faces_not_broken"]
        click.echo(f"lb: {n} measured face(s) not broken (NME <= {report['settings']['threshold']} for an "
                   "attacked extractor): exit 4 (--require-broken)", err=True)
        raise SystemExit(4)


def _example_photo(outdir: Path) -> Path:
    """scikit-image's public-domain astronaut photo, written once into the user's cache folder
    (``$XDG_CACHE_HOME/landmark-breaker/example``), never into the current folder."""
    import os

    from skimage import data

    from lbcore.io import write_image_atomic

    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    src = Path(base) / "landmark-breaker" / "example" / "astronaut.png"
    click.echo(f"example input: {src}", err=True)
    if not src.exists():
        src.parent.mkdir(parents=True, exist_ok=True)
        write_image_atomic(src, data.astronaut())
    return src


COMMANDS = [protect_cmd]
