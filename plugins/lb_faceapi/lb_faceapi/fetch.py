"""Put face-api.js's landmark model files into the weights folder (``scripts/setup.sh`` runs this).

The files ship inside the ``@vladmandic/face-api`` 1.7.15 package on the npm registry
(``package/model/``). This downloads that one tarball over HTTPS (npm itself is not needed; the
tarball's sha512 is checked against the registry's published integrity value), takes the two
manifests and their binary files out, checks each file's sha256 and writes them to
``$LB_WEIGHTS_DIR`` or the cache folder of :func:`lbcore.weights.cache_dir`, where
``weights=auto`` finds them. Files already there with the right sha256 are left alone.

Usage: ``python -m lb_faceapi.fetch [--dest DIR] [--tarball PATH]``.
"""

from __future__ import annotations

import argparse
import base64
import hashlib
import io
import os
import sys
import tarfile
import tempfile
import urllib.request
from collections.abc import Callable
from pathlib import Path

from lb_faceapi.plugin import BINARY_SHA256, FULL_WEIGHTS, PACKAGE, TINY_WEIGHTS
from lbcore.errors import WeightsError
from lbcore.weights import sha256sum, weights_dir

__all__ = ["TARBALL_URL", "TARBALL_SHA512", "FILES", "fetch"]

TARBALL_URL = "https://registry.npmjs.org/@vladmandic/face-api/-/face-api-1.7.15.tgz"
TARBALL_SHA512 = "WDMmK3CfNLo8jylWqMoQgf4nIst3M0fzx1dnac96wv/dvMTN4DxC/Pq1DGtduDk1lktCamQ3MIDXFnvrdHTXDw=="
"""The registry's ``dist.integrity`` of the tarball (base64 sha512)."""

FILES: dict[str, str] = {
    FULL_WEIGHTS.filename: str(FULL_WEIGHTS.sha256),
    TINY_WEIGHTS.filename: str(TINY_WEIGHTS.sha256),
    **dict(BINARY_SHA256.values()),
}
"""File name (in ``package/model/`` and in the weights folder) -> sha256."""



def _download(tmp: Path) -> Path:
    dest = tmp / "face-api.tgz"
    try:
        with urllib.request.urlopen(TARBALL_URL, timeout=120) as resp:  # noqa: S310 - a fixed https URL
            dest.write_bytes(resp.read())
    except OSError as err:
        raise WeightsError(f"{TARBALL_URL}: download failed ({err})") from None
    return dest


def fetch(dest: Path | None = None, tarball: Path | None = None, log: Callable[[str], None] = print) -> list[Path]:
    """Make sure every file of :data:`FILES` is in ``dest``; returns their paths.

    Raises:
        WeightsError: the tarball cannot be downloaded or read, its sha512 is not the registry's,
            or a member's sha256 is wrong.
    """
    dest = dest or weights_dir()
    missing = {n: h for n, h in FILES.items() if not ((dest / n).is_file() and sha256sum(dest / n) == h)}
    if not missing:
        log(f"face-api.js model files already in {dest}")
        return [dest / n for n in FILES]
    with tempfile.TemporaryDirectory(prefix="lb-faceapi-") as tmp:
        tgz = tarball or _download(Path(tmp))
        data = tgz.read_bytes()
        if tarball is None and base64.b64encode(hashlib.sha512(data).digest()).decode() != TARBALL_SHA512:
            raise WeightsError(f"{TARBALL_URL}: sha512 is not the registry's published integrity value")
        try:
            with tarfile.open(fileobj=io.BytesIO(data), mode="r:gz") as tar:
                blobs = {}
                for name in missing:
                    member = tar.extractfile(f"package/model/{name}")
                    if member is None:
                        raise KeyError(name)
                    blobs[name] = member.read()
        except (tarfile.TarError, KeyError, OSError) as err:
            raise WeightsError(f"{tgz}: cannot take the model files out of the {PACKAGE} tarball ({err})") from None
    for name, want in missing.items():  # every file checked before any is written
        got = hashlib.sha256(blobs[name]).hexdigest()
        if got != want:
            raise WeightsError(f"{tgz}: package/model/{name} has sha256 {got[:12]}..., not {want[:12]}...")
    dest.mkdir(parents=True, exist_ok=True)
    for name in missing:
        part = dest / (name + ".part")
        part.write_bytes(blobs[name])
        os.replace(part, dest / name)
        log(f"wrote {dest / name} ({len(blobs[name])} bytes, from {PACKAGE})")
    return [dest / n for n in FILES]


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m lb_faceapi.fetch", description=(__doc__ or "").split("\n\n")[0])
    ap.add_argument("--dest", type=Path, default=None, help="folder (default: $LB_WEIGHTS_DIR or the cache folder)")
    ap.add_argument("--tarball", type=Path, default=None, help=f"an already downloaded {PACKAGE} tarball")
    args = ap.parse_args(argv)
    try:
        fetch(args.dest, args.tarball)
    except WeightsError as err:
        print(f"error: {err}", file=sys.stderr)
        return 3
    return 0


if __name__ == "__main__":
    sys.exit(main())
