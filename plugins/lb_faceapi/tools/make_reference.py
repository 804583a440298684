"""Write ``tests/data/tfjs_reference.npz``: face-api.js's own landmarks (TensorFlow.js) on three crops.

The crops are made by :func:`reference_crops` (the test makes the same ones): two squares of
scikit-image's astronaut photo resized to 112 x 112 with OpenCV's area filter, and uniform noise
from numpy's seeded generator. Needs node and the npm packages named in ``tfjs_reference.mjs``.

Usage: ``python tools/make_reference.py NPM_FOLDER [MODEL_DIR]`` (``MODEL_DIR``: where the weight
files are; default: the weights cache).
"""

from __future__ import annotations

import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent


def reference_crops() -> np.ndarray:
    """``(3, 112, 112, 3)`` float32 RGB crops in [0, 255]."""
    import cv2
    from skimage import data

    img = data.astronaut()
    crops = []
    for x0, y0, side in ((160, 20, 180), (140, 0, 230)):
        crops.append(cv2.resize(img[y0:y0 + side, x0:x0 + side], (112, 112), interpolation=cv2.INTER_AREA))
    crops.append((np.random.default_rng(0).random((112, 112, 3)) * 255).astype(np.uint8))
    return np.stack(crops).astype(np.float32)


def main(argv: list[str]) -> int:
    npm = Path(argv[0]).resolve()
    if len(argv) > 1:
        models = Path(argv[1]).resolve()
    else:
        from lbcore.weights import cache_dir

        models = cache_dir()
    crops = reference_crops()
    out = {}
    with tempfile.TemporaryDirectory() as tmp:
        (Path(tmp) / "crops.f32").write_bytes(crops.tobytes())
        for which in ("full", "tiny"):
            res = Path(tmp) / f"{which}.f32"
            # node resolves the packages from the script's folder: run a copy inside NPM_FOLDER
            script = npm / "tfjs_reference.mjs"
            script.write_bytes((HERE / "tfjs_reference.mjs").read_bytes())
            subprocess.run(["node", str(script), which, str(models), str(Path(tmp) / "crops.f32"),
                            str(len(crops)), str(res)], cwd=npm, check=True)
            out[which] = np.fromfile(res, dtype=np.float32).reshape(len(crops), 68, 2)
    np.savez_compressed(HERE.parent / "tests" / "data" / "tfjs_reference.npz", **out)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
