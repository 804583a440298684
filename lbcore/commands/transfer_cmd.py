"""``lb transfer``: leave-one-out transfer of the protection to extractors it never attacked."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import click

from lbcore.commands.evaluate_cmd import _split_degradations, dataset_run_options


@click.command("transfer")
@click.argument("data", nargs=-1, required=True, type=click.Path(path_type=Path))
@click.option("-o", "--out", "outdir", required=True, type=click.Path(path_type=Path),
              help="Output folder: results.json, report.md, partial/ (resume).")
@click.option("--extractors", "extractors", multiple=True, required=True, metavar="[LABEL=]SPEC;...",
              help="Extractors attacked and measured; separate specs with ';' or repeat the option: "
                   "--extractors 'fan-demo;b=fan:modules=2,landmarks=68,width=16,resolution=64,weights=b.pth'.")
@click.option("--measure-only", "measure_only", multiple=True, metavar="[LABEL=]SPEC;...",
              help="Extractors measured but never attacked (held out of every ensemble).")
@click.option("--attack", "attacks", multiple=True, default=("lb",), show_default=True,
              metavar="[LABEL=]PRESET[:FIELD=VALUE,...]",
              help="Attack (repeatable: one matrix each): a preset with AttackConfig fields overridden, e.g. "
                   "'lb:ti_sigma=3,diversity_prob=0.7,balance=grad'. Component specs keep their commas: "
                   "'lb:optimizer=mifgsm:alpha=2,decay=1'.")
@click.option("--degradations", multiple=True, default=("none,jpeg:quality=75",), show_default=True,
              help="Comma-separated degradation specs applied to every adversarial image (none = as is).")
@click.option("--no-white-box", "no_white_box", is_flag=True,
              help="Skip the attack on all extractors (the diagonal), unless a measure-only extractor needs it.")
@click.option("--no-controls", "no_controls", is_flag=True, help="Skip the clean and uniform-noise controls.")
@click.option("--eps", type=float, default=None, help="Every attack's L-inf budget (0..255; default 15) and the noise's.")
@click.option("--steps", type=int, default=None, help="Every attack's iterations T (an attack's steps= wins).")
@click.option("--detector", default="auto", show_default=True, metavar="SPEC",
              help="Face detector for images without annotations.")
@click.option("--min-face", type=int, default=40, show_default=True, help="Smaller detections are skipped (pixels).")
@click.option("--limit", type=int, default=None, help="Use at most this many faces.")
@click.option("--context", type=float, default=1.0, show_default=True,
              help="Crop images to their faces grown by this many box sizes (speed only; 0 = whole images).")
@dataset_run_options
def transfer_cmd(data: tuple[Path, ...], outdir: Path, extractors: tuple[str, ...], measure_only: tuple[str, ...],
                 attacks: tuple[str, ...], degradations: tuple[str, ...], no_white_box: bool, no_controls: bool,
                 eps: float | None, steps: int | None, detector: str, min_face: int, limit: int | None, context: float,
                 annotation_format: str, image_root: str | None, batch_size: int, device: str, amp: str,
                 compile_: bool, seed: int, force: bool, weights: tuple[str, ...], quiet: bool,
                 as_json: bool) -> None:
    """Leave-one-out transfer on DATA: for every extractor, attack all the others and measure it.

    Also the white-box diagonal (attack all, measure each) and the controls (clean, uniform
    noise of +-eps), each after every degradation. Figures: median and mean NME of each
    extractor's landmarks against its own clean ones, the share of faces past 0.1, and the
    in-box SSIM and PSNR of the images. An interrupted run resumes from what is finished.
    """
    from lbcore.apps.transfer import TransferOptions, summary_table, transfer
    from lbcore.commands.attack_cmd import apply_weights_option

    apply_weights_option(weights)
    options = TransferOptions(
        extractors=extractors, measure_only=measure_only, attacks=attacks,
        degradations=_split_degradations(degradations), white_box=not no_white_box, controls=not no_controls,
        eps=eps, steps=steps, seed=seed, device=device, detector=detector, min_face=min_face, limit=limit, context=context,
        batch_size=batch_size, annotation_format=annotation_format, image_root=image_root, force=force,
        amp=amp, compile=compile_,
    )
    log = None if quiet or as_json else (lambda s: click.echo(s, err=True))
    results: dict[str, Any] = transfer(list(data), outdir, options, progress=not (quiet or as_json), log=log)
    if as_json:
        click.echo(json.dumps(results, indent=1))
    elif not quiet:
        for note in results["notes"]:
            click.echo(f"note: {note}", err=True)
        click.echo("\n".join(summary_table(results)))
        click.echo(f"report: {outdir / 'report.md'}; results: {outdir / 'results.json'}")


COMMANDS = [transfer_cmd]
