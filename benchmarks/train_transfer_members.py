"""Train small landmark extractors that differ from ``fan-demo``, for the leave-one-out matrix.

Transfer can only be measured with several extractors; offline, the project has one trained
model (``fan-demo``). This script trains others in minutes on the CPU, each with a different
architecture, seed and data mix, so that the members of an attacked ensemble really differ:

* data ``packaged``: the faces the ``fan-demo`` recipe uses (photos shipped inside registry
  packages, dlib 68-point pseudo labels; see ``scripts/train_default_model.py``);
* data ``dlib-xml``: the faces of ``../shared/data/dlib_faces`` (dlib's own example set,
  training + testing XML);
* data ``both``: both.

The held-out evaluation faces (``faces68``, ``photos``) are never trained on.

Example (HRNet with width 8, 68 points, 1,500 steps)::

    python benchmarks/train_transfer_members.py --spec hrnet:landmarks=68,width=8 \\
        --data both --steps 1500 --seed 1 --out /tmp/lb-models/hrnet8.pth
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]


def _recipe_module() -> object:
    spec = importlib.util.spec_from_file_location("train_default_model", ROOT / "scripts" / "train_default_model.py")
    assert spec is not None and spec.loader is not None
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--spec", required=True, help="extractor spec to train (weights=none is added)")
    ap.add_argument("--data", choices=["packaged", "dlib-xml", "both"], default="both")
    ap.add_argument("--out", required=True)
    ap.add_argument("--steps", type=int, default=1500, help="training batches in all")
    ap.add_argument("--batch-size", type=int, default=8)
    ap.add_argument("--lr", type=float, default=2e-3)
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--cache", default=str(Path.home() / ".cache" / "landmark-breaker" / "recipe"))
    ap.add_argument("--shared", default=str(ROOT.parent / "shared"))
    args = ap.parse_args()
    torch.set_num_threads(args.threads)

    from lbcore.apps.training import (
        PAPER_RECIPES,
        Augment,
        LabelledFace,
        dlib_teacher,
        evaluate_nme,
        export_weights,
        prepare_samples,
        pseudo_label,
        train,
    )
    from lbcore.io.annotations import load_annotations
    from lbcore.plugins import get_plugin_manager
    from lbcore.spec import format_spec, parse_spec

    torch.manual_seed(args.seed)
    labelled: list[object] = []
    if args.data in ("packaged", "both"):
        recipe_mod = _recipe_module()
        label = dlib_teacher()
        for name, rgb, boxes in recipe_mod.packaged_faces(Path(args.cache)):  # type: ignore[attr-defined]
            labelled.extend(pseudo_label([(name, rgb)], lambda im, b=boxes: label(im, b)))
    if args.data in ("dlib-xml", "both"):
        for xml in ("training_with_face_landmarks.xml", "testing_with_face_landmarks.xml"):
            for r in load_annotations(Path(args.shared) / "data" / "dlib_faces" / xml, "dlib-xml"):
                if r.landmarks is not None and r.image_path is not None:
                    labelled.append(LabelledFace(str(r.image_path), r.box, r.landmarks))
    print(f"{len(labelled)} training faces ({args.data})", file=sys.stderr)
    samples = prepare_samples(labelled)  # type: ignore[arg-type]
    name, params = parse_spec(args.spec)
    params["weights"] = "none"
    extractor = get_plugin_manager().build("extractors", format_spec(name, params))
    steps_per_epoch = 100
    epochs = max(1, args.steps // steps_per_epoch)
    recipe = PAPER_RECIPES["generic"].replace(
        lr=args.lr, sigma=1.5, fg_weight=10.0, batch_size=args.batch_size, epochs=epochs,
        milestones=(int(epochs * 0.7),), gamma=0.2,
        augment=Augment(scale=0.25, rotation=30.0, translation=0.08, flip=0.5, colour=0.4,
                        grey=0.3, blur=0.3, noise=4.0),
        source="benchmarks/train_transfer_members.py",
    )
    ckpt = Path(args.out).with_suffix(".train.pth")
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    t0 = time.time()
    train(extractor, samples, recipe=recipe, out=ckpt, spec=args.spec, seed=args.seed, device="cpu",
          steps_per_epoch=steps_per_epoch, log=lambda m: print(m, file=sys.stderr, flush=True))
    report = {"spec": args.spec, "data": args.data, "seed": args.seed, "steps": epochs * steps_per_epoch,
              "train_minutes": round((time.time() - t0) / 60, 1), "n_training_faces": len(labelled),
              "nme_training_faces": round(evaluate_nme(extractor, samples, "cpu"), 4)}
    faces68 = Path(args.shared) / "data" / "faces68"
    if faces68.is_dir():
        held = prepare_samples(list(load_annotations(faces68, "pts")))
        report["nme_faces68_held_out"] = round(evaluate_nme(extractor, held, "cpu"), 4)
    out = export_weights(ckpt, args.out, half=False)
    Path(str(out) + ".json").write_text(json.dumps(report, indent=2) + "\n")
    ckpt.unlink()
    Path(str(ckpt) + ".json").unlink(missing_ok=True)
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
