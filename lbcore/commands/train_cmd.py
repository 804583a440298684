"""``lb train SPEC``: train a heat-map extractor on annotated (or pseudo-labelled) faces."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import click

FORMATS = ["pts", "wflw", "dlib-xml"]
IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".ppm", ".bmp", ".webp", ".tif", ".tiff"}


def load_faces(path: str, fmt: Any, image_root: str | None = None) -> list[Any]:
    """Annotated faces from ``path`` through :func:`lbcore.io.annotations.load_annotations`
    (records without landmarks are dropped)."""
    from lbcore.io.annotations import load_annotations

    return [r for r in load_annotations(path, fmt, image_root=image_root) if r.landmarks is not None]


def _with_weights(spec: str, weights: str) -> str:
    """``spec`` with ``weights=...`` set, unless the spec already names weights."""
    from lbcore.spec import format_spec, parse_spec

    name, params = parse_spec(spec)
    params.setdefault("weights", weights)
    return format_spec(name, params)


def _images_in(folder: str) -> list[str]:
    p = Path(folder)
    return sorted(str(f) for f in p.rglob("*") if f.suffix.lower() in IMAGE_SUFFIXES)


@click.command("train")
@click.argument("spec")
@click.option("--data", "data", required=True, help="Training annotations: a folder (pts) or file (wflw list, dlib XML).")
@click.option("--format", "fmt", type=click.Choice(FORMATS), required=True, help="Annotation format of --data.")
@click.option("--out", "out", required=True, type=click.Path(dir_okay=False), help="Checkpoint to write (resumable; loads as weights=PATH).")
@click.option("--image-root", default=None, help="WFLW: folder the list's image paths are relative to.")
@click.option("--val", "val", default=None, help="Validation annotations (NME each epoch).")
@click.option("--val-format", type=click.Choice(FORMATS), default=None, help="Format of --val (default: --format).")
@click.option("--epochs", type=int, default=None, help="Epochs (default: the paper's).")
@click.option("--batch-size", type=int, default=None)
@click.option("--lr", type=float, default=None, help="Learning rate (default: the paper's).")
@click.option("--optimizer", type=click.Choice(["rmsprop", "adam", "sgd"]), default=None)
@click.option("--sigma", type=float, default=None, help="Gaussian target sigma in heat-map pixels.")
@click.option("--recipe", default=None, help="Preset recipe name (fan, hrnet, avssan, generic).")
@click.option("--steps-per-epoch", type=int, default=None, help="Batches per epoch (default: one pass).")
@click.option("--adv-eps", type=click.FloatRange(0, 255), default=None,
              help="Adversarial training: each batch moved to its worst case within this L-inf radius (0..255).")
@click.option("--adv-steps", type=click.IntRange(1, 100), default=None, help="Steps of the --adv-eps adversary (1: fast FGSM).")
@click.option("--seed", type=int, default=0, show_default=True)
@click.option("--device", default="auto", show_default=True, help="cpu, cuda, cuda:N or auto.")
@click.option("--resume", type=click.Path(exists=True, dir_okay=False), default=None, help="Continue from a checkpoint written by lb train.")
@click.option("--init", "init", type=click.Path(exists=True, dir_okay=False), default=None, help="Start from these weights (fine-tuning); default: random initialisation.")
@click.option("--teacher", default=None, help="Pseudo-label --unlabelled images with 'dlib' or an extractor SPEC.")
@click.option("--unlabelled", default=None, type=click.Path(exists=True, file_okay=False), help="Folder of unannotated images for --teacher.")
@click.option("--detector", default="haar", show_default=True, help="Face detector for an extractor teacher.")
@click.option("--no-progress", is_flag=True, help="No progress bar.")
def train_cmd(spec: str, data: str, fmt: str, out: str, image_root: str | None, val: str | None, val_format: str | None,
              epochs: int | None, batch_size: int | None, lr: float | None, optimizer: str | None,
              sigma: float | None, recipe: str | None, steps_per_epoch: int | None,
              adv_eps: float | None, adv_steps: int | None, seed: int,
              device: str, resume: str | None, init: str | None, teacher: str | None,
              unlabelled: str | None, detector: str, no_progress: bool) -> None:
    """Train the extractor SPEC (e.g. ``fan:modules=1,landmarks=98``) on heat-map targets.

    Uses the extractor's own crop rule, random scale/rotation/translation/flip and colour/blur
    augmentation, and the original paper's loss and optimiser unless overridden; checkpoints
    after every epoch in the published layout, so ``SPEC,weights=OUT`` loads the result.
    """
    import torch

    from lbcore.apps.training import (
        PAPER_RECIPES,
        dlib_teacher,
        extractor_teacher,
        prepare_samples,
        pseudo_label,
        recipe_for,
        train,
    )
    from lbcore.engine import resolve_device
    from lbcore.errors import SpecError
    from lbcore.plugins import get_plugin_manager
    from lbcore.spec import parse_spec

    pm = get_plugin_manager()
    dev = resolve_device(device)
    name, _ = parse_spec(spec)
    # the extractor starts from random weights (or --init/--resume); resume restores itself
    build_spec = _with_weights(spec, init or "none")
    extractor = pm.build("extractors", build_spec)
    if not hasattr(extractor, "forward_crops"):
        raise SpecError(f"{name}: only heat-map extractors can be trained")
    if recipe is not None and recipe not in PAPER_RECIPES:
        raise SpecError(f"unknown recipe {recipe!r} (valid: {', '.join(PAPER_RECIPES)})")
    base = PAPER_RECIPES[recipe] if recipe else recipe_for(extractor, name)
    rec = base.replace(epochs=epochs, batch_size=batch_size, lr=lr, optimizer=optimizer, sigma=sigma,
                        adv_eps=adv_eps, adv_steps=adv_steps)

    faces = load_faces(data, fmt, image_root)
    if teacher:
        if not unlabelled:
            raise SpecError("--teacher needs --unlabelled FOLDER")
        if teacher == "dlib":
            label = dlib_teacher()
        else:
            label = extractor_teacher(pm.build("extractors", teacher), pm.build("detectors", detector), dev)
        extra = pseudo_label(_images_in(unlabelled), label)
        click.echo(f"teacher {teacher}: {len(extra)} pseudo-labelled faces from {unlabelled}", err=True)
        faces.extend(extra)
    val_faces = load_faces(val, val_format or fmt, image_root) if val else []
    train_s = prepare_samples(faces)
    val_s = prepare_samples(val_faces)
    click.echo(f"training {spec} on {len(train_s)} faces ({len(val_s)} validation) on {dev}; "
               f"recipe: {rec.optimizer} lr={rec.lr} sigma={rec.sigma} epochs={rec.epochs}"
               + (f" adversarial eps={rec.adv_eps} steps={rec.adv_steps}" if rec.adv_eps > 0 else ""), err=True)
    torch.manual_seed(seed)
    res = train(
        extractor, train_s, recipe=rec, val_samples=val_s, out=out, spec=spec, seed=seed,
        device=dev, resume=resume, steps_per_epoch=steps_per_epoch, progress=not no_progress,
        log=lambda m: click.echo(m, err=True),
        metadata={"data": data, "format": fmt, "val": val, "teacher": teacher},
    )
    click.echo(json.dumps({
        "checkpoint": str(res.checkpoint), "epochs": res.epochs_done,
        "final_loss": res.losses[-1] if res.losses else None,
        "val_nme": res.val_nme[-1] if res.val_nme else None,
        "load_with": _with_weights(spec, str(out)),
    }))


COMMANDS = [train_cmd]
