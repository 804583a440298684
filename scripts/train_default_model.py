"""Recipe of the embedded demonstration FAN (the ``fan-demo`` extractor).

No FAN trained on WFLW was ever published, and published checkpoints cannot be downloaded on
an offline machine, so the project ships a *small demonstration model* it trains itself:

* **Data** - only faces that ship inside package-registry packages: scikit-image's
  ``astronaut`` (public domain) and the 100 face crops of ``lfw_subset`` (LFW, 25x25, upscaled
  8x); matplotlib's ``grace_hopper.jpg`` sample; the test photos inside the PyPI source
  distributions of ``face_recognition`` 1.3.0 (``tests/test_images``) and ``insightface`` 2.1
  (``insightface/data/images``), fetched with ``pip download --no-binary :all:``. The
  human-annotated faces in ``../shared/data/faces68`` are **never** trained on: they are the
  held-out test.
* **Labels** - pseudo labels from dlib's 68-point shape predictor (``pip install
  'lbcore[teacher]'``) on dlib's HOG detections (LFW crops: the crop's own frame).
* **Training** - :func:`lbcore.apps.training.train` (the machinery of ``lb train``): FAN with one
  hourglass, width 32, 68 points, 128 px crops, Adam, heavy augmentation, fixed seed.
* **Output** - a float16 plain state dict (the 2D-FAN release layout) and a JSON sidecar with
  the recipe and the measured NME on the training faces and on faces68.

Usage::

    python scripts/train_default_model.py --out plugins/lb_fan/lb_fan/data/fan-demo.pth
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import subprocess
import sys
import tarfile
import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
SPEC = "fan:modules=1,landmarks=68,width=32,resolution=128"
SDISTS = {
    "face_recognition==1.3.0": ("tests/test_images/", ("biden.jpg", "obama.jpg", "obama2.jpg", "obama3.jpg")),
    "insightface==2.1": ("insightface/data/images/", ("t1.jpg", "Tom_Hanks_54745.png")),
}


def sdist_photos(cache: Path) -> list[tuple[str, np.ndarray]]:
    """Photos inside registry source distributions (downloaded once into ``cache``)."""
    import cv2

    out = []
    for req, (folder, names) in SDISTS.items():
        name, _, version = req.partition("==")
        dest = cache / name
        archives = sorted(dest.glob("*.tar.gz")) if dest.is_dir() else []
        if not archives:
            subprocess.run([sys.executable, "-m", "pip", "download", "-q", "--no-deps", "--no-binary", ":all:",
                            req, "-d", str(dest)], check=True)
            archives = sorted(dest.glob("*.tar.gz"))
        with tarfile.open(archives[0]) as tar:
            for member in tar.getmembers():
                if member.isfile() and "/" + folder in "/" + member.name and member.name.rsplit("/", 1)[-1] in names:
                    f = tar.extractfile(member)
                    assert f is not None
                    buf = np.frombuffer(f.read(), dtype=np.uint8)
                    bgr = cv2.imdecode(buf, cv2.IMREAD_COLOR)
                    out.append((f"pypi:{req}:{member.name.rsplit('/', 1)[-1]}", cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB)))
    return out


def packaged_faces(cache: Path) -> list[tuple[str, np.ndarray, list[list[float]] | None]]:
    """``(name, rgb, boxes or None for detection)`` of the faces shipped by registry packages."""
    import cv2
    import skimage.data

    out: list[tuple[str, np.ndarray, list[list[float]] | None]] = [
        ("skimage:astronaut", skimage.data.astronaut(), None)
    ]
    spec = importlib.util.find_spec("matplotlib")
    if spec is None or spec.origin is None:
        sys.exit("the recipe needs matplotlib's sample photo: pip install --no-deps matplotlib")
    hopper = Path(spec.origin).parent / "mpl-data" / "sample_data" / "grace_hopper.jpg"
    out.append(("matplotlib:grace_hopper", cv2.cvtColor(cv2.imread(str(hopper)), cv2.COLOR_BGR2RGB), None))
    out += [(name, rgb, None) for name, rgb in sdist_photos(cache)]
    lfw = skimage.data.lfw_subset()[:100]  # the first 100 are faces, the rest non-faces
    for i, face in enumerate(lfw):
        big = cv2.resize((face * 255).astype(np.uint8), (200, 200), interpolation=cv2.INTER_CUBIC)
        # LFW crops are tight on the face: the frame (inset) is the face box
        out.append((f"skimage:lfw_subset[{i}]", np.repeat(big[..., None], 3, axis=2), [[8, 8, 192, 192]]))
    return out


def faces68(shared: Path) -> list[object]:
    """The held-out human-annotated faces (``.pts``), boxes from the landmarks."""
    from lbcore.io.annotations import load_annotations

    return list(load_annotations(shared / "data" / "faces68", "pts"))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", default=str(ROOT / "plugins/lb_fan/lb_fan/data/fan-demo.pth"))
    ap.add_argument("--cache", default=str(Path.home() / ".cache" / "landmark-breaker" / "recipe"))
    ap.add_argument("--epochs", type=int, default=50)
    ap.add_argument("--steps-per-epoch", type=int, default=100)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--shared", default=str(ROOT.parent / "shared"))
    ap.add_argument("--adv-eps", type=float, default=0.0,
                    help="adversarial training within this L-inf radius (0..255; 0: none, the shipped model)")
    ap.add_argument("--adv-steps", type=int, default=1)
    args = ap.parse_args()

    from lbcore.apps.training import (
        PAPER_RECIPES,
        Augment,
        dlib_teacher,
        evaluate_nme,
        export_weights,
        prepare_samples,
        pseudo_label,
        train,
    )
    from lbcore.plugins import get_plugin_manager

    torch.manual_seed(args.seed)
    label = dlib_teacher()
    labelled = []
    for name, rgb, boxes in packaged_faces(Path(args.cache)):
        got = pseudo_label([(name, rgb)], lambda im, b=boxes: label(im, b))
        labelled.extend(got)  # every face dlib finds (group photos give several)
    print(f"{len(labelled)} pseudo-labelled faces from packaged photos", file=sys.stderr)
    samples = prepare_samples(labelled)
    extractor = get_plugin_manager().build("extractors", SPEC + ",weights=none")
    recipe = PAPER_RECIPES["generic"].replace(
        lr=2e-3, sigma=1.5, fg_weight=10.0, batch_size=8, epochs=args.epochs,
        milestones=(int(args.epochs * 0.7),), gamma=0.2,
        augment=Augment(scale=0.25, rotation=30.0, translation=0.08, flip=0.5, colour=0.4,
                        grey=0.3, blur=0.3, noise=4.0),
        adv_eps=args.adv_eps, adv_steps=args.adv_steps,
        source="Landmark Breaker demonstration recipe (scripts/train_default_model.py)",
    )
    ckpt = Path(args.out).with_suffix(".train.pth")
    t0 = time.time()
    train(extractor, samples, recipe=recipe, out=ckpt, spec=SPEC, seed=args.seed,
          device=args.device, steps_per_epoch=args.steps_per_epoch,
          log=lambda m: print(m, file=sys.stderr, flush=True))
    minutes = (time.time() - t0) / 60
    train_nme = evaluate_nme(extractor, samples, args.device)
    report = {
        "spec": SPEC, "seed": args.seed, "recipe": recipe.describe(), "train_minutes": round(minutes, 1),
        "training_faces": [str(f.image_path) for f in labelled], "labels": "dlib 68-point pseudo labels",
        "nme_training_faces": round(train_nme, 4), "n_training_faces": len(labelled),
    }
    shared = Path(args.shared)
    if (shared / "data" / "faces68").is_dir():
        held = prepare_samples(faces68(shared))
        report["nme_faces68_held_out"] = round(evaluate_nme(extractor, held, args.device), 4)
    out = export_weights(ckpt, args.out, half=True)
    Path(str(out) + ".json").write_text(json.dumps(report, indent=2) + "\n")
    ckpt.unlink()
    Path(str(ckpt) + ".json").unlink(missing_ok=True)
    print(json.dumps({k: v for k, v in report.items() if k != "training_faces"}, indent=2))


if __name__ == "__main__":
    main()
