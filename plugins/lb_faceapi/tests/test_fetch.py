"""``python -m lb_faceapi.fetch``: model files out of an npm tarball into the weights folder, checked."""

from __future__ import annotations

import io
import tarfile
from pathlib import Path

import pytest

from lb_faceapi.fetch import FILES, fetch, main
from lbcore.errors import WeightsError


def _tarball(path: Path, source: Path, corrupt: str | None = None) -> Path:
    with tarfile.open(path, "w:gz") as tar:
        for name in FILES:
            data = (source / name).read_bytes()
            if name == corrupt:
                data = data[:-1] + bytes([data[-1] ^ 1])
            info = tarfile.TarInfo(f"package/model/{name}")
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return path


def test_fetch_takes_the_files_out_of_a_tarball_and_keeps_them(tmp_path, full_path, tiny_path):
    tgz = _tarball(tmp_path / "face-api.tgz", full_path.parent)
    dest = tmp_path / "weights"
    paths = fetch(dest, tgz, log=lambda _m: None)
    assert sorted(p.name for p in paths) == sorted(FILES)
    assert all((dest / n).read_bytes() == (full_path.parent / n).read_bytes() for n in FILES)
    assert not list(dest.glob("*.part"))
    said: list[str] = []
    fetch(dest, tmp_path / "absent.tgz", log=said.append)  # nothing missing: the tarball is not read
    assert said == [f"face-api.js model files already in {dest}"]


def test_a_corrupt_member_is_refused_and_nothing_half_written(tmp_path, full_path, tiny_path):
    tgz = _tarball(tmp_path / "bad.tgz", full_path.parent, corrupt="face_landmark_68_model.bin")
    dest = tmp_path / "weights"
    with pytest.raises(WeightsError, match=r"package/model/face_landmark_68_model.bin has sha256"):
        fetch(dest, tgz, log=lambda _m: None)
    assert not dest.exists()  # checked before anything is written


def test_an_unreadable_tarball_exits_3_with_one_line(tmp_path, capsys):
    bad = tmp_path / "x.tgz"
    bad.write_bytes(b"not a tarball")
    assert main(["--dest", str(tmp_path / "w"), "--tarball", str(bad)]) == 3
    err = capsys.readouterr().err.strip()
    assert err.startswith(f"error: {bad}: cannot take the model files out") and "\n" not in err
