"""``lb evaluate``: the paper's Tables I-IV and Figs. 3-4 on your own data, in one command."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import click

from lbcore.commands.attack_cmd import performance_options


def _split(values: tuple[str, ...]) -> tuple[str, ...]:
    """Comma- or repeat-separated simple lists (attack names)."""
    return tuple(v.strip() for item in values for v in item.split(",") if v.strip())


def _split_degradations(values: tuple[str, ...]) -> tuple[str, ...]:
    """Degradation specs: separated by commas, except that a ``key=value`` item continues the
    spec before it (``jpeg:quality=75,subsampling=444`` stays one spec); ``;`` always separates."""
    out: list[str] = []
    for item in values:
        for part in item.split(";"):
            for piece in part.split(","):
                piece = piece.strip()
                if not piece:
                    continue
                head = piece.split("=", 1)[0]
                if "=" in piece and ":" not in head and out and ":" in out[-1].split("+")[-1]:
                    out[-1] += "," + piece
                else:
                    out.append(piece)
    return tuple(out)


_performance = performance_options()


def dataset_run_options(f: Any) -> Any:
    """The options lb evaluate and lb transfer share: annotations, batching, device and speed,
    seed, resume, weights and output."""
    opts = [
        click.option("--format", "annotation_format", type=click.Choice(["auto", "pts", "wflw", "dlib-xml"]),
                     default="auto", show_default=True, help="Annotation file format."),
        click.option("--image-root", default=None, help="WFLW lists: folder the image paths are relative to."),
        click.option("--batch-size", type=int, default=8, show_default=True, help="Images attacked together."),
        click.option("--device", default="auto", show_default=True, help="auto, cpu, cuda or cuda:N."),
        *_performance,
        click.option("--seed", type=int, default=0, show_default=True),
        click.option("--force", is_flag=True, help="Recompute units a previous run finished."),
        click.option("--weights", "weights", multiple=True, metavar="NAME=PATH", help="Use this weights file."),
        click.option("-q", "--quiet", is_flag=True, help="No progress bar or log."),
        click.option("--json", "as_json", is_flag=True, help="Print results.json."),
    ]
    for o in reversed(opts):
        f = o(f)
    return f


@click.command("evaluate")
@click.argument("data", nargs=-1, required=True, type=click.Path(path_type=Path))
@click.option("-o", "--out", "outdir", required=True, type=click.Path(path_type=Path),
              help="Output folder: results.json, report.md, fig3/fig4 .png/.csv, partial/ (resume).")
@click.option("--extractors", "extractors", multiple=True, required=True, metavar="[LABEL=]SPEC;...",
              help="Extractors (each is attacked and measured). Separate specs with ';' or repeat the "
                   "option (specs contain commas): --extractors 'fan=fan:width=64,weights=f.pth;hrnet'.")
@click.option("--attacks", multiple=True, default=("none,base1,base2,lb,lbtrans,lbmix",), show_default=True,
              help="Comma-separated: none and registered attacks (see `lb list attacks`).")
@click.option("--degradations", multiple=True, default=("none,jpeg:quality=75,jpeg:quality=50,c,c2",),
              show_default=True, help="Comma-separated degradation specs applied after the attack (none = as is).")
@click.option("--ablate", multiple=True, metavar="PARAM=START:STOP:STEP",
              help="Fig. 4 sweep (repeatable): alpha=0.5:1.5:0.25, steps=14:28:2 (also eps, decay; or V1,V2,..).")
@click.option("--ablate-attack", default="lb", show_default=True, help="Preset the ablations vary.")
@click.option("--reference", default=None, metavar="LABEL|SPEC",
              help="Ground-truth extractor for faces without annotations (default: hrnet if listed, else the first).")
@click.option("--ground-truth", "ground_truth", type=click.Choice(["auto", "annotations", "reference"]),
              default="auto", show_default=True,
              help="auto: annotations where present and comparable, else the reference's clean predictions.")
@click.option("--eps", type=float, default=None, help="Override every attack's L-inf budget (0..255; paper 15).")
@click.option("--steps", type=int, default=None, help="Override every attack's iterations T (paper 20).")
@click.option("--synth", default="auto", show_default=True, metavar="auto|none|DIR",
              help="Face-swap model for SSIM_W: a folder from `lb synth train`, auto (train a small one on "
                   "the evaluation faces) or none (SSIM_W n/a).")
@click.option("--synth-steps", type=int, default=300, show_default=True, help="Training steps for --synth auto.")
@click.option("--detector", default="auto", show_default=True, metavar="SPEC",
              help="Face detector for images and videos without annotations.")
@click.option("--min-face", type=int, default=40, show_default=True, help="Smaller detections are skipped (pixels).")
@click.option("--every", type=int, default=1, show_default=True, help="Videos: keep every K-th frame.")
@click.option("--key-frames", is_flag=True, help="Videos: keep only the key frames (as the paper).")
@click.option("--max-frames", type=int, default=None, help="Longest accepted video (frames).")
@click.option("--limit", type=int, default=None, help="Evaluate at most this many faces.")
@dataset_run_options
def evaluate_cmd(data: tuple[Path, ...], outdir: Path, extractors: tuple[str, ...], attacks: tuple[str, ...],
                 degradations: tuple[str, ...], ablate: tuple[str, ...], ablate_attack: str,
                 reference: str | None, ground_truth: str, eps: float | None, steps: int | None, synth: str,
                 synth_steps: int, detector: str, min_face: int, every: int, key_frames: bool,
                 max_frames: int | None, limit: int | None, annotation_format: str, image_root: str | None,
                 batch_size: int, device: str, amp: str, compile_: bool, seed: int, force: bool,
                 weights: tuple[str, ...], quiet: bool, as_json: bool) -> None:
    """Evaluate attacks on DATA as the paper does (Tables I-IV, Figs. 3-4).

    DATA: image folders (with or without iBUG .pts files; dlib XML and WFLW list files inside a
    folder are used too, and the run notes which file annotated what), WFLW list files, dlib XML
    files and videos. Every source x target extractor pair is measured (white-box on the diagonal,
    transfer off it), after each degradation. An interrupted run resumes from what is finished.
    """
    from lbcore.apps.evaluation import evaluate
    from lbcore.commands.attack_cmd import apply_weights_option

    apply_weights_option(weights)
    options = options_from_cli(locals())
    log = None if quiet or as_json else (lambda s: click.echo(s, err=True))
    results = evaluate(list(data), outdir, options, progress=not (quiet or as_json), log=log)
    print_results(results, outdir, quiet, as_json)


def options_from_cli(p: dict[str, Any]) -> Any:
    """``lb evaluate``'s parsed parameters -> :class:`~lbcore.apps.evaluation.EvaluateOptions`."""
    from lbcore.apps.evaluation import EvaluateOptions

    return EvaluateOptions(
        extractors=p["extractors"], attacks=_split(p["attacks"]), degradations=_split_degradations(p["degradations"]),
        ablate=p["ablate"], ablate_attack=p["ablate_attack"], reference=p["reference"], ground_truth=p["ground_truth"],
        eps=p["eps"], steps=p["steps"], seed=p["seed"], device=p["device"], synth=p["synth"],
        synth_steps=p["synth_steps"], detector=p["detector"], min_face=p["min_face"], every=p["every"],
        key_frames=p["key_frames"], max_frames=p["max_frames"], limit=p["limit"], batch_size=p["batch_size"],
        annotation_format=p["annotation_format"], image_root=p["image_root"], force=p["force"],
        amp=p.get("amp", "auto"), compile=p.get("compile_", False),
    )


def print_results(results: dict[str, Any], outdir: Path, quiet: bool, as_json: bool) -> None:
    if as_json:
        click.echo(json.dumps(results, indent=1))
    elif not quiet:
        for note in results["notes"]:
            click.echo(f"note: {note}", err=True)
        click.echo(f"{len(results['rows'])} rows; report: {outdir / 'report.md'}; results: {outdir / 'results.json'}")


COMMANDS = [evaluate_cmd]
