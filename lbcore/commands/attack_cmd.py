"""``lb attack``: adversarial PNGs for given images, extractors and attack (research entry)."""

from __future__ import annotations

import functools
import json
from pathlib import Path
from typing import Any

import click

from lbcore.errors import InputError, SpecError


def parse_box(text: str) -> tuple[float, float, float, float]:
    try:
        vals = [float(v) for v in text.split(",")]
    except ValueError:
        raise SpecError(f"bad --box {text!r}: expected x1,y1,x2,y2") from None
    if len(vals) != 4 or vals[2] <= vals[0] or vals[3] <= vals[1]:
        raise SpecError(f"bad --box {text!r}: expected x1,y1,x2,y2 with x2>x1 and y2>y1")
    return (vals[0], vals[1], vals[2], vals[3])


def performance_options() -> list[Any]:
    """``--amp`` and ``--compile`` (lb attack, lb evaluate; lb protect words its own help)."""
    return [
        click.option("--amp", type=click.Choice(["auto", "bf16", "fp16", "none"]), default="auto", show_default=True,
                     help="Autocast of the extractors' forward and backward (auto: bf16 on GPUs, none on the CPU); "
                          "the perturbation and its budget stay float32. none: float32 everywhere."),
        click.option("--compile", "compile_", is_flag=True, help="torch.compile the extractors' networks."),
    ]


def attack_options(f: Any) -> Any:
    """Options shared by the commands that run the attack engine."""
    opts = [
        click.option("--extractor", "extractors", multiple=True, metavar="SPEC",
                     help="Extractor spec (repeat for an ensemble), e.g. fan or hrnet:weights=HR18-WFLW.pth."),
        click.option("--attack", "attack_name", default=None, metavar="SPEC",
                     help="Attack: a registered name with optional keys, e.g. lb (default), base1, base2, "
                          "lbtrans, lbmix or lb:steps=30 (see `lb list attacks`)."),
        click.option("--loss", default=None, metavar="SPEC", help="Loss spec (default heatmap-cosine, Eq. 1)."),
        click.option("--optimizer", default=None, metavar="SPEC", help="Update rule spec, e.g. mifgsm:alpha=1,decay=0.5."),
        click.option("--eps", type=float, default=None, help="L-inf budget on the 0..255 scale (default 15)."),
        click.option("--steps", type=int, default=None, help="Iterations T (default 20)."),
        click.option("--eot", multiple=True, metavar="SPEC", help="Differentiable degradation to attack through (repeatable)."),
        click.option("--random-start", "random_start", type=float, default=None, metavar="R",
                     help="Start from uniform noise in [-R, R] (0..255 scale; needed by distance losses such "
                          "as landmark-displacement, whose gradient is zero at the clean image). Default 0."),
        click.option("--seed", type=int, default=0, show_default=True, help="Seeds every random draw."),
        click.option("--device", default="auto", show_default=True, help="auto, cpu, cuda or cuda:N."),
        *performance_options(),
        click.option("--weights", "weights", multiple=True, metavar="NAME=PATH",
                     help="Use this file for the named weights (see `lb weights list`)."),
    ]
    for o in reversed(opts):
        f = o(f)
    return f


def build_config(attack_name: str | None, loss: str | None, optimizer: str | None,
                 eps: float | None, steps: int | None, eot: tuple[str, ...], seed: int,
                 random_start: float | None = None) -> Any:
    from lbcore.attacks import preset

    overrides: dict[str, Any] = {"eps": eps, "steps": steps, "seed": seed, "random_start": random_start}
    if loss:
        overrides["loss"] = loss
    if optimizer:
        overrides["optimizer"] = optimizer
    if eot:
        overrides["eot"] = tuple(eot)
    return preset(attack_name or "lb", **overrides)


def apply_weights_option(pairs: tuple[str, ...]) -> None:
    """Register ``--weights NAME=PATH`` pairs; a name no extractor knows or a missing file is an
    error (exit 3), never silently ignored."""
    from lbcore.errors import WeightsError
    from lbcore.weights import register_explicit_weights

    mapping = {}
    for p in pairs:
        name, eq, path = p.partition("=")
        if not eq or not name or not path:
            raise SpecError(f"bad --weights {p!r}: expected NAME=PATH")
        if not Path(path).expanduser().is_file():
            raise WeightsError(f"{Path(path).expanduser()}: weights file not found (given as --weights {name}=...)")
        mapping[name] = path
    if mapping:
        from lbcore.plugins import get_plugin_manager

        known = {w.name for comp in get_plugin_manager().components("extractors").values()
                 for key in ("weights", "demo_weights") for w in comp.metadata.get(key, []) or []}
        for name in mapping:
            if name not in known:
                raise WeightsError(f"--weights {name}=...: no installed extractor uses weights named {name!r} "
                                   f"(known: {', '.join(sorted(known)) or 'none'}; see `lb weights list`)")
    register_explicit_weights(mapping)


@click.command("attack")
@click.argument("images", nargs=-1, required=True, type=click.Path(path_type=Path))
@click.option("-o", "--out", "outdir", required=True, type=click.Path(path_type=Path), help="Output folder.")
@click.option("--box", "boxes", multiple=True, metavar="x1,y1,x2,y2",
              help="Face box in pixels (repeatable; applies to every image). Default: detect faces.")
@click.option("--detector", default="auto", show_default=True, metavar="SPEC", help="Face detector when no --box.")
@attack_options
@click.option("--batch-size", type=click.IntRange(min=1), default=1, show_default=True,
              help="Attack this many images at a time, sharing the extractors' network calls; each image "
                   "keeps its own attack, and with N >= 2 its output does not depend on what it is grouped "
                   "with (see lb protect --photo-batch).")
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object per image.")
def attack_cmd(images: tuple[Path, ...], outdir: Path, boxes: tuple[str, ...], detector: str,
               extractors: tuple[str, ...], attack_name: str | None, loss: str | None,
               optimizer: str | None, eps: float | None, steps: int | None, eot: tuple[str, ...],
               seed: int, device: str, weights: tuple[str, ...], as_json: bool, batch_size: int = 1,
               random_start: float | None = None, amp: str = "auto", compile_: bool = False) -> None:
    """Write adversarial PNGs of IMAGES to OUT and print each image's loss and L-inf.

    Runs Algorithm 1 of the paper (or a baseline) against one or more extractors. Outputs are
    lossless PNGs named after the inputs; an input is never overwritten.
    """
    import torch

    from lbcore.engine import attack, performance_for, resolve_device
    from lbcore.io import ensure_not_input, read_image, write_image_atomic
    from lbcore.plugins import get_plugin_manager
    from lbcore.types import Faces

    if not extractors:
        raise SpecError("give at least one --extractor SPEC (see `lb list extractors`)")
    apply_weights_option(weights)
    pm = get_plugin_manager()
    config = build_config(attack_name, loss, optimizer, eps, steps, eot, seed, random_start)
    dev = resolve_device(device)
    perf = performance_for(dev, amp, compile_)
    exts = [pm.build("extractors", s) for s in extractors]
    fixed = [parse_box(b) for b in boxes]
    det = None if fixed else pm.build("detectors", detector)
    outdir.mkdir(parents=True, exist_ok=True)
    failures = 0
    from lbcore.apps.photo_batch import CrossFileBatcher, shareable

    shared = shareable(exts, config, pm, compile_) if batch_size > 1 else []
    pending: list[tuple[Path, Any, list[tuple[float, ...]], Any, Any]] = []

    def run_one(x: Any, faces: Any) -> Any:
        try:
            return attack(x, faces, exts, config, device=dev, plugin_manager=pm, performance=perf)
        except InputError as err:  # this image's problem: reported, the others go on
            return err

    def flush() -> None:
        nonlocal failures
        if not pending:
            return
        if shared:
            batcher = CrossFileBatcher(shared, invariant=dev.type == "cpu")
            results = batcher.run([functools.partial(run_one, x, f) for _, _, _, x, f in pending])
        else:
            results = [run_one(x, f) for _, _, _, x, f in pending]
        for (path, loaded, found, _, _), res in zip(pending, results, strict=True):
            if isinstance(res, InputError):
                failures += 1
                click.echo(f"lb: error: {res}", err=True)
                continue
            if isinstance(res, BaseException):
                raise res
            try:
                adv = res.adversarial[0].permute(1, 2, 0).to("cpu", torch.uint8).numpy()
                target = outdir / (path.stem + ".png")
                write_image_atomic(target, adv, like=loaded)
            except InputError as err:
                failures += 1
                click.echo(f"lb: error: {err}", err=True)
                continue
            row = {"image": str(path), "output": str(target), "faces": len(found),
                   "clean_loss": float(res.clean_loss[0]), "loss": float(res.final_loss[0]),
                   "linf": float(res.linf[0]), "steps": int(res.steps_taken[0])}
            if as_json:
                click.echo(json.dumps(row))
            else:
                click.echo(f"{path}: {len(found)} face(s), loss {row['clean_loss']:.3f} -> {row['loss']:.3f}, "
                           f"L-inf {row['linf']:.0f} -> {target}")
        pending.clear()

    for path in images:
        try:
            loaded = read_image(path)
            rgb = loaded.rgb
            found: list[tuple[float, ...]] = list(fixed)
            if det is not None:
                found = [tuple(float(v) for v in b[:4]) for b in det(rgb)]
            if not found:
                raise InputError(f"{path}: no face found (give --box x1,y1,x2,y2)")
            ensure_not_input(outdir / (path.stem + ".png"), images)
        except InputError as err:
            failures += 1
            click.echo(f"lb: error: {err}", err=True)
            continue
        x = torch.from_numpy(rgb).permute(2, 0, 1)[None].float()
        pending.append((path, loaded, found, x, Faces.from_lists([found])))
        if len(pending) >= batch_size:
            flush()
    flush()
    if failures:
        raise SystemExit(1)


COMMANDS = [attack_cmd]
