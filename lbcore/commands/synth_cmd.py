"""``lb synth``: train and run the DeepFake face-swap model that SSIM_W is measured with.

``lb synth train`` aligns the faces of two subjects (A and B) to the mean-face template and
trains the shared-encoder / two-decoder autoencoder of :mod:`lbcore.apps.synthesis`. Faces come
from annotation files (``.pts`` beside images, dlib XML, WFLW lists; read by
:func:`lbcore.io.annotations.load_annotations`) or, for unannotated images and videos, from a landmark
extractor on the faces a detector finds - as a DeepFake tool would get them.

torch is imported inside the commands only.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import click

from lbcore.errors import InputError, SpecError

ANNOTATION_SUFFIXES = (".pts", ".xml", ".txt")


def _annotated_faces(path: Path) -> list[tuple[Any, Any]]:
    """``(image, landmarks)`` pairs from annotations: a file, or a folder of images with
    ``.pts`` beside them plus any dlib XML files in it."""
    from lbcore.io import read_image
    from lbcore.io.annotations import load_annotations

    records: list[Any] = []
    if path.is_dir():
        records += [r for r in load_annotations(path) if r.landmarks is not None]
        for xml in sorted(path.glob("*.xml")):
            records += load_annotations(xml, "dlib-xml")
    else:
        records = list(load_annotations(path))
    pairs: list[tuple[Any, Any]] = []
    images: dict[Path, Any] = {}
    for r in records:
        if r.landmarks is None or r.image_path is None:
            continue
        if len(r.landmarks) not in (68, 98):
            raise InputError(f"{r.source or path}: {len(r.landmarks)} landmarks; face swapping needs 68 or 98")
        if r.image_path not in images:
            images[r.image_path] = read_image(r.image_path).rgb
        pairs.append((images[r.image_path], r.landmarks))
    return pairs


def _frames(path: Path, every: int, max_frames: int) -> Iterator[Any]:
    """RGB frames of a video (every ``every``-th), or the images of a folder, or one image."""
    from lbcore.io import IMAGE_SUFFIXES, VIDEO_SUFFIXES, iter_video_frames, read_image

    if path.is_dir():
        for f in sorted(path.iterdir()):
            if f.suffix.lower() in IMAGE_SUFFIXES:
                yield read_image(f).rgb
    elif path.suffix.lower() in VIDEO_SUFFIXES:
        for i, rgb in enumerate(iter_video_frames(path, max_frames)):
            if i % every == 0:
                yield rgb
    else:
        yield read_image(path).rgb


def _extracted_faces(path: Path, extractor: Any, detector: Any, device: Any, every: int,
                     max_frames: int) -> list[tuple[Any, Any]]:
    """``(image, landmarks)`` of the best-scoring detected face of every image/frame."""
    import torch

    from lbcore.types import Faces

    pairs = []
    for rgb in _frames(path, every, max_frames):
        boxes = detector(rgb)
        if len(boxes) == 0:
            continue
        x = torch.from_numpy(rgb).permute(2, 0, 1)[None].float().to(device)
        faces = Faces.from_lists([[boxes[0][:4]]], device=device)
        lm = extractor.predict(x, faces)[0].cpu().numpy()
        pairs.append((rgb, lm))
    return pairs


def _collect(path: Path, what: str, landmarks: str, extractor: Any, detector: Any, device: Any,
             every: int, max_frames: int) -> list[tuple[Any, Any]]:
    if not path.exists():
        raise InputError(f"{path}: no such file or folder (--{what})")
    if landmarks == "annotations":
        pairs = _annotated_faces(path)
        hint = "no annotated faces (.pts beside the images, dlib XML or WFLW list); use --landmarks SPEC"
    else:
        pairs = _extracted_faces(path, extractor, detector, device, every, max_frames)
        hint = "no face found by the detector"
    if not pairs:
        raise InputError(f"{path}: {hint} (--{what})")
    return pairs


@click.group("synth")
def synth() -> None:
    """DeepFake synthesis (face swap) used to measure SSIM_W."""


@synth.command("train")
@click.option("--a", "path_a", required=True, type=click.Path(path_type=Path),
              help="Subject A: a folder of images, an annotation file, or a video.")
@click.option("--b", "path_b", required=True, type=click.Path(path_type=Path),
              help="Subject B (the identity faces are swapped into), as --a.")
@click.option("--landmarks", default="annotations", show_default=True, metavar="annotations|SPEC",
              help="Where the training landmarks come from: annotation files, or an extractor spec "
                   "(e.g. fan) run on the faces --detector finds.")
@click.option("--detector", default="haar", show_default=True, metavar="SPEC",
              help="Face detector for --landmarks SPEC.")
@click.option("--out", "out", required=True, type=click.Path(file_okay=False, path_type=Path),
              help="Folder for weights.pt and config.json.")
@click.option("--steps", type=click.IntRange(min=0), default=2000, show_default=True, help="Training steps.")
@click.option("--size", type=int, default=64, show_default=True, help="Aligned crop side (multiple of 16).")
@click.option("--width", type=click.IntRange(min=1), default=32, show_default=True,
              help="Channels of the first encoder layer (the classic model: 128).")
@click.option("--bottleneck", type=click.IntRange(min=1), default=256, show_default=True,
              help="Units of the dense bottleneck (the classic model: 1024).")
@click.option("--batch-size", type=click.IntRange(min=1), default=16, show_default=True)
@click.option("--lr", type=float, default=5e-4, show_default=True, help="Adam learning rate.")
@click.option("--every", type=click.IntRange(min=1), default=5, show_default=True,
              help="Videos: use every N-th frame.")
@click.option("--max-frames", type=click.IntRange(min=1), default=3000, show_default=True,
              help="Videos: refuse longer ones.")
@click.option("--device", default="auto", show_default=True, help="auto, cpu, cuda or cuda:N.")
@click.option("--seed", type=int, default=0, show_default=True, help="Seeds weights, batches and augmentation.")
def train(path_a: Path, path_b: Path, landmarks: str, detector: str, out: Path, steps: int, size: int,
          width: int, bottleneck: int, batch_size: int, lr: float, every: int, max_frames: int,
          device: str, seed: int) -> None:
    """Train the face-swap autoencoder on the faces of subjects A and B."""
    from lbcore.apps.synthesis import train_autoencoder
    from lbcore.engine import resolve_device

    if size % 16 or size < 16:
        raise SpecError(f"bad --size {size}: must be a positive multiple of 16")
    dev = resolve_device(device)
    ext = det = None
    if landmarks != "annotations":
        from lbcore.plugins import get_plugin_manager

        pm = get_plugin_manager()
        ext = pm.build("extractors", landmarks).to(dev).eval()
        det = pm.build("detectors", detector)
    faces_a = _collect(path_a, "a", landmarks, ext, det, dev, every, max_frames)
    faces_b = _collect(path_b, "b", landmarks, ext, det, dev, every, max_frames)
    click.echo(f"faces: A {len(faces_a)}, B {len(faces_b)}; training {steps} steps on {dev}", err=True)
    report_every = max(steps // 10, 1)

    def progress(step: int, loss: float) -> None:
        if (step + 1) % report_every == 0 or step + 1 == steps:
            click.echo(f"step {step + 1}/{steps}: loss {loss:.4f}", err=True)

    swapper = train_autoencoder(faces_a, faces_b, steps=steps, size=size, width=width, seed=seed,
                                device=dev, bottleneck=bottleneck, batch_size=batch_size, lr=lr,
                                progress=progress)
    swapper.config["landmarks"] = landmarks
    swapper.save(out)
    summary = {"out": str(out), "faces_a": len(faces_a), "faces_b": len(faces_b), "steps": steps,
               "final_loss": swapper.history[-1] if swapper.history else None}
    click.echo(json.dumps(summary))


COMMANDS = [synth]
