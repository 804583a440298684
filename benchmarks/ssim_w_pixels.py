"""Where does an attack's SSIM_W come from: broken landmarks, or the perturbed pixels themselves?

For Base1 (FGSM, one step of size eps), Base2 and LB (and LB ablations, ``lb@steps=5``,
``lb@alpha=0.25``) on ``fan-demo``, per face, it prints the NME, SSIM_W and its controls
(``ssim_w_clean_landmarks``: the adversarial image synthesised with the clean landmarks - pixels
only; ``ssim_w_clean_pixels``: the clean image synthesised with the adversarial landmarks -
landmarks only; ``ssim_alignment``: an ideal model with broken alignment), then follows the pixels-only control through the face-swap pipeline stage by stage, all on
the clean alignment crop at the swap model's resolution, weighted by the clean blend mask:

* ``crop_in``   - the aligned input crops (what the autoencoder is given);
* ``net``       - the autoencoder outputs (decoder B), before colour transfer;
* ``net_col``   - after the colour transfer to each crop's own statistics;
* ``pasted``    - the full DeepFakes (= ``ssim_w_clean_landmarks``);
* ``border``    - the clean image's synthesised face pasted into the adversarial image: the part of
  ``pasted`` that is the adversarial pixels showing through the feathered blend border, not the
  network;

and two figures of the perturbation in the face box: ``|d|`` (mean absolute change, grey levels)
and ``hf`` (share of its energy above a Gaussian low-pass of sigma 2 px: 1 = pure pixel noise).

    python benchmarks/ssim_w_pixels.py ../shared/data/dlib_faces/testing_with_face_landmarks.xml \\
        --synth SYNTH_DIR --limit 9

SYNTH_DIR: the face-swap model ``lb evaluate --synth auto`` trained (``OUT/synth-auto``) or one from
``lb synth train``. Minutes on a CPU (LB and Base2 run 20 steps). Not part of the test run.
"""

from __future__ import annotations

import argparse
import sys
from typing import Any

import numpy as np


def stages(swapper: Any, clean: np.ndarray, adv: np.ndarray, lm: np.ndarray) -> dict[str, float]:
    """SSIM of clean vs adversarial at each stage of the synthesis with the clean landmarks."""
    from lbcore.apps.synthesis import align_face, aligned_ssim, colour_transfer, face_mask
    from lbcore.metrics import crop_ssim

    size = swapper.size
    eye = np.array([[1.0, 0.0, 0.0], [0.0, 1.0, 0.0]])
    crop_c, m = align_face(clean, lm, size, swapper.padding)
    crop_a, _ = align_face(adv, lm, size, swapper.padding)
    mask = face_mask(lm, m, size)
    out_c, out_a = swapper.autoencode(crop_c), swapper.autoencode(crop_a)
    col_c, col_a = colour_transfer(out_c, crop_c, mask), colour_transfer(out_a, crop_a, mask)
    fake_c, mask_c = swapper._paste(clean, col_c, mask, m)
    fake_a, mask_a = swapper._paste(adv, col_a, mask, m)
    border, _ = swapper._paste(adv, col_c, mask, m)

    return {
        "crop_in": crop_ssim(crop_c, crop_a, eye, size, mask),
        "net": crop_ssim(out_c, out_a, eye, size, mask),
        "net_col": crop_ssim(col_c, col_a, eye, size, mask),
        "pasted": aligned_ssim(fake_c, fake_a, lm, (mask_c, mask_a), swapper.padding, size),
        "border": aligned_ssim(fake_c, border, lm, (mask_c, mask_c), swapper.padding, size),
    }


def perturbation(clean: np.ndarray, adv: np.ndarray, box: np.ndarray) -> tuple[float, float]:
    import cv2

    x0, y0, x1, y1 = (int(round(v)) for v in box)
    h, w = clean.shape[:2]
    x0, y0, x1, y1 = max(x0, 0), max(y0, 0), min(x1, w), min(y1, h)
    d = adv.astype(np.float64) - clean.astype(np.float64)
    low = cv2.GaussianBlur(d, (0, 0), 2.0)
    d, low = d[y0:y1, x0:x1], low[y0:y1, x0:x1]
    energy = float((d**2).sum())
    return float(np.abs(d).mean()), float(((d - low) ** 2).sum() / energy) if energy > 0 else float("nan")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("data", nargs="+", help="annotation files or folders (as lb evaluate)")
    ap.add_argument("--synth", required=True, help="face-swap model folder")
    ap.add_argument("--extractor", default="fan-demo")
    ap.add_argument("--attacks", default="base1,base2,lb",
                    help="comma-separated presets; PRESET@PARAM=VALUE for an ablation (alpha, steps, eps, decay)")
    ap.add_argument("--limit", type=int, default=9)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()

    import torch

    from lbcore.apps.evaluation import (
        EvaluateOptions,
        _batches,
        attack_config,
        fast_ssim_w,
        load_dataset,
    )
    from lbcore.apps.synthesis import FaceSwapper
    from lbcore.engine import attack
    from lbcore.metrics import nme
    from lbcore.plugins import get_plugin_manager
    from lbcore.types import Faces

    pm = get_plugin_manager()
    ext = pm.build("extractors", args.extractor).eval()
    swapper = FaceSwapper.load(args.synth)
    images, faces, _ = load_dataset(args.data, EvaluateOptions(limit=args.limit))
    cols = ("nme", "ssim_w", "ssim_w_clean_landmarks", "ssim_w_clean_pixels", "ssim_alignment", "crop_in", "net", "net_col",
            "pasted", "border", "|d|", "hf")
    print("| attack | face | " + " | ".join(cols) + " |")
    print("|---|---|" + "---|" * len(cols))
    means: dict[str, list[list[float]]] = {}
    for name in args.attacks.split(","):
        preset_name, _, ablate = name.partition("@")
        param, _, value = ablate.partition("=")
        config = attack_config(preset_name, EvaluateOptions(seed=args.seed),
                               (param, float(value)) if ablate else None)
        for b in _batches(images, faces, 8):
            x = torch.from_numpy(np.stack([images[i].rgb for i in b.images])).permute(0, 3, 1, 2).float()
            boxes = torch.tensor(np.stack([faces[f].box for f in b.faces]), dtype=torch.float32)
            fc = Faces(boxes, torch.tensor(b.face_index, dtype=torch.long))
            adv = attack(x, fc, ext, config, plugin_manager=pm).adversarial.round().clamp(0, 255)
            with torch.no_grad():
                p_clean = ext.predict(x, fc).numpy().astype(np.float64)
                p_adv = ext.predict(adv, fc).numpy().astype(np.float64)
            adv_rgb = adv.permute(0, 2, 3, 1).to(torch.uint8).numpy()
            for k, f in enumerate(b.faces):
                face = faces[f]
                clean = images[face.image].rgb
                a = adv_rgb[b.face_index[k]]
                gt = face.landmarks if face.landmarks is not None else p_clean[k]
                r = fast_ssim_w(clean, a, p_clean[k], p_adv[k], swapper, face.box)
                s = stages(swapper, clean, a, p_clean[k])
                mag, hf = perturbation(clean, a, face.box)
                vals = [float(nme(p_adv[k], gt, ext.scheme)), r["ssim_w"], r["ssim_w_clean_landmarks"],
                        r["ssim_w_clean_pixels"], r["ssim_alignment"], *s.values(), mag, hf]
                means.setdefault(name, []).append(vals)
                print(f"| {name} | {f} | " + " | ".join(f"{v:.3f}" for v in vals) + " |", flush=True)
    for name, rows in means.items():
        m = np.nanmean(np.asarray(rows), axis=0)
        print(f"| {name} | mean of {len(rows)} | " + " | ".join(f"{v:.3f}" for v in m) + " |")


if __name__ == "__main__":
    sys.exit(main())
