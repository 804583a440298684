"""Tests for lbcore.io: every input is generated in tmp_path (no committed binaries)."""

from __future__ import annotations

import hashlib
import io as pyio
import os
import struct
import tempfile
import tracemalloc
import zlib
from fractions import Fraction
from pathlib import Path

import cv2
import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from lbcore import io as lio
from lbcore.errors import InputError, LBError

av = pytest.importorskip("av")

RNG = np.random.default_rng(1234)


def _noise(h: int, w: int, c: int = 3, dtype=np.uint8) -> np.ndarray:
    hi = 256 if dtype == np.uint8 else 65536
    shape = (h, w) if c == 1 else (h, w, c)
    return RNG.integers(0, hi, shape, dtype=np.int64).astype(dtype)


def _encode(arr: np.ndarray, ext: str, params: list[int] | None = None) -> bytes:
    ok, buf = cv2.imencode(ext, arr, params or [])
    assert ok
    return buf.tobytes()


def _write(path: Path, data: bytes) -> Path:
    path.write_bytes(data)
    return path


def _png_chunk(kind: bytes, payload: bytes) -> bytes:
    return struct.pack(">I", len(payload)) + kind + payload + struct.pack(">I", zlib.crc32(kind + payload))


def _exif_block(orientation: int, endian: str = "MM") -> bytes:
    """A minimal TIFF structure holding one Orientation (0x0112) SHORT tag."""
    e = ">" if endian == "MM" else "<"
    return (
        endian.encode()
        + struct.pack(e + "HI", 42, 8)
        + struct.pack(e + "H", 1)
        + struct.pack(e + "HHI", 0x0112, 3, 1)
        + struct.pack(e + "HH", orientation, 0)
        + struct.pack(e + "I", 0)
    )


def _jpeg_with_orientation(jpeg: bytes, orientation: int, endian: str = "MM") -> bytes:
    body = b"Exif\x00\x00" + _exif_block(orientation, endian)
    app1 = b"\xff\xe1" + struct.pack(">H", len(body) + 2) + body
    return jpeg[:2] + app1 + jpeg[2:]


def _png_with_orientation(png: bytes, orientation: int) -> bytes:
    ihdr_end = 8 + 25  # signature + IHDR chunk
    return png[:ihdr_end] + _png_chunk(b"eXIf", _exif_block(orientation)) + png[ihdr_end:]


# ------------------------------------------------------------------------------ bad still inputs


def _assert_input_error(path: Path, *needles: str, **kw) -> InputError:
    with pytest.raises(InputError) as ei:
        lio.read_image(path, **kw)
    msg = str(ei.value)
    assert msg.startswith(lio.display_path(path) + ": "), msg
    assert "\n" not in msg
    for n in needles:
        assert n in msg, msg
    return ei.value


def test_zero_byte_file(tmp_path):
    _assert_input_error(_write(tmp_path / "empty.png", b""), "empty file")


def test_missing_file_and_folder(tmp_path):
    _assert_input_error(tmp_path / "nope.png", "no such file")
    _assert_input_error(tmp_path, "folder")


@pytest.mark.parametrize("ext", [".jpg", ".png", ".webp", ".bmp", ".tif", ".ppm"])
@pytest.mark.parametrize("keep", [0.5, 0.9])
def test_truncated_images(tmp_path, ext, keep):
    data = _encode(_noise(40, 60), ext)
    path = _write(tmp_path / f"cut{ext}", data[: int(len(data) * keep)])
    _assert_input_error(path)


def test_non_image_with_image_extension(tmp_path):
    _assert_input_error(_write(tmp_path / "notes.jpg", b"hello, I am text\n" * 10), "not an image")
    _assert_input_error(_write(tmp_path / "anim.png", b"GIF89a" + bytes(100)), "GIF")


def _png_bomb(width: int, height: int) -> bytes:
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    idat = zlib.compress(bytes(4096))
    return b"\x89PNG\r\n\x1a\n" + _png_chunk(b"IHDR", ihdr) + _png_chunk(b"IDAT", idat) + _png_chunk(b"IEND", b"")


def test_png_decompression_bomb_refused_before_decoding(tmp_path):
    path = _write(tmp_path / "bomb.png", _png_bomb(100_000, 100_000))
    err = _assert_input_error(path, "100000x100000", "10000.0 megapixels", "100.0 megapixels", "--max-pixels")
    assert err.exit_code == 1


def test_jpeg_bomb_header(tmp_path):
    data = bytearray(_encode(_noise(16, 16), ".jpg"))
    sof = data.find(b"\xff\xc0")
    assert sof > 0
    data[sof + 5 : sof + 9] = struct.pack(">HH", 65000, 65000)  # height, width
    _assert_input_error(_write(tmp_path / "bomb.jpg", bytes(data)), "65000x65000", "--max-pixels")


def test_pixel_limit_is_a_flag(tmp_path):
    path = _write(tmp_path / "a.png", _encode(_noise(50, 40), ".png"))
    _assert_input_error(path, "40x50", "--max-pixels", max_pixels=1999)
    assert lio.read_image(path, max_pixels=2000).rgb.shape == (50, 40, 3)
    assert lio.read_image(path, max_pixels=None).rgb.shape == (50, 40, 3)


@pytest.mark.parametrize("ext", [".png", ".jpg", ".webp", ".bmp", ".tif", ".ppm", ".pgm"])
def test_header_sizes_match_decoded(ext):
    img = _noise(37, 53, 1 if ext == ".pgm" else 3)
    h = lio.read_image_header(_encode(img, ext))
    assert (h.width, h.height, h.orientation) == (53, 37, 1)


# ------------------------------------------------------------------------------ modes


def test_one_by_one(tmp_path):
    px = np.array([[[10, 20, 30]]], np.uint8)  # BGR
    img = lio.read_image(_write(tmp_path / "1.png", _encode(px, ".png")))
    assert img.rgb.tolist() == [[[30, 20, 10]]]
    out = lio.write_image_atomic(tmp_path / "o.png", img.rgb, img)
    assert cv2.imread(str(out), cv2.IMREAD_UNCHANGED).tolist() == [[[10, 20, 30]]]


def test_rgb_channel_order(tmp_path):
    bgr = _noise(8, 9)
    img = lio.read_image(_write(tmp_path / "c.png", _encode(bgr, ".png")))
    np.testing.assert_array_equal(img.rgb, bgr[:, :, ::-1])
    assert (img.bit_depth, img.grey, img.alpha, img.format) == (8, False, None, "png")


def test_cmyk_jpeg_converted_like_pillow(tmp_path):
    Image = pytest.importorskip("PIL.Image")
    rgb = np.zeros((32, 48, 3), np.uint8)
    rgb[:, :16] = (200, 30, 40)
    rgb[:, 16:32] = (20, 180, 60)
    rgb[:, 32:] = (30, 50, 220)
    buf = pyio.BytesIO()
    Image.fromarray(rgb).convert("CMYK").save(buf, "JPEG", quality=95)
    path = _write(tmp_path / "cmyk.jpg", buf.getvalue())
    img = lio.read_image(path)
    ref = np.asarray(Image.open(path).convert("RGB")).astype(int)
    assert img.rgb.shape == (32, 48, 3) and not img.grey
    assert np.abs(img.rgb.astype(int) - ref).mean() < 3
    assert np.abs(img.rgb.astype(int) - rgb).mean() < 8  # colours, not inverted or swapped


def test_16bit_png_kept_and_perturbation_scaled(tmp_path):
    bgr16 = _noise(20, 30, dtype=np.uint16)
    path = _write(tmp_path / "deep.png", _encode(bgr16, ".png"))
    img = lio.read_image(path)
    assert img.bit_depth == 16 and img.rgb.dtype == np.uint8
    np.testing.assert_array_equal(img.rgb16, bgr16[:, :, ::-1])
    np.testing.assert_array_equal(img.rgb, np.rint(bgr16[:, :, ::-1] / 257).astype(np.uint8))

    # unchanged result -> the exact original 16-bit samples
    same = cv2.imread(str(lio.write_image_atomic(tmp_path / "same.png", img.rgb, img)), cv2.IMREAD_UNCHANGED)
    assert same.dtype == np.uint16
    np.testing.assert_array_equal(same, bgr16)

    # +3 on red at one pixel -> +3*257 on that 16-bit sample (clipped), nothing else moves
    res = img.rgb.astype(np.int32)
    res[5, 7, 0] += 3
    res = np.clip(res, 0, 255).astype(np.uint8)
    out = cv2.imread(str(lio.write_image_atomic(tmp_path / "pert.png", res, img)), cv2.IMREAD_UNCHANGED)
    want = bgr16.astype(np.int64)
    want[5, 7, 2] = min(65535, want[5, 7, 2] + 257 * (int(res[5, 7, 0]) - int(img.rgb[5, 7, 0])))
    np.testing.assert_array_equal(out, want)

    # an 8-bit-only format gets the 8-bit result
    jpg = lio.write_image_atomic(tmp_path / "q.webp", img.rgb, img)
    assert cv2.imread(str(jpg), cv2.IMREAD_UNCHANGED).dtype == np.uint8


def test_rgba_alpha_kept(tmp_path):
    bgra = _noise(12, 14, 4)
    img = lio.read_image(_write(tmp_path / "a.png", _encode(bgra, ".png")))
    np.testing.assert_array_equal(img.alpha, bgra[:, :, 3])
    np.testing.assert_array_equal(img.rgb, bgra[:, :, 2::-1])
    for ext in (".png", ".webp", ".tif"):
        back = cv2.imread(str(lio.write_image_atomic(tmp_path / f"o{ext}", img.rgb, img)), cv2.IMREAD_UNCHANGED)
        np.testing.assert_array_equal(back, bgra)
    with pytest.raises(lio.OutputError, match="alpha"):
        lio.write_image_atomic(tmp_path / "o.jpg", img.rgb, img)
    assert not (tmp_path / "o.jpg").exists()


def test_16bit_rgba(tmp_path):
    bgra16 = _noise(6, 5, 4, np.uint16)
    img = lio.read_image(_write(tmp_path / "a16.png", _encode(bgra16, ".png")))
    assert img.bit_depth == 16 and img.alpha.dtype == np.uint16
    back = cv2.imread(str(lio.write_image_atomic(tmp_path / "o.png", img.rgb, img)), cv2.IMREAD_UNCHANGED)
    np.testing.assert_array_equal(back, bgra16)


@pytest.mark.parametrize("dtype", [np.uint8, np.uint16])
def test_greyscale_stays_greyscale(tmp_path, dtype):
    g = _noise(10, 11, 1, dtype)
    img = lio.read_image(_write(tmp_path / "g.png", _encode(g, ".png")))
    assert img.grey
    assert (img.rgb[:, :, 0] == img.rgb[:, :, 1]).all() and (img.rgb[:, :, 1] == img.rgb[:, :, 2]).all()
    back = cv2.imread(str(lio.write_image_atomic(tmp_path / "o.png", img.rgb, img)), cv2.IMREAD_UNCHANGED)
    assert back.ndim == 2 and back.dtype == dtype
    np.testing.assert_array_equal(back, g)
    # a perturbation applied identically on the three channels survives exactly
    delta = RNG.integers(-2, 3, (10, 11, 1))
    res = np.clip(img.rgb.astype(int) + delta, 0, 255).astype(np.uint8)
    back = cv2.imread(str(lio.write_image_atomic(tmp_path / "p.png", res, img)), cv2.IMREAD_UNCHANGED)
    scale = 257 if dtype == np.uint16 else 1
    want = np.clip(g.astype(int) + (res[:, :, 0].astype(int) - img.rgb[:, :, 0]) * scale, 0, 65535)
    np.testing.assert_array_equal(back, want)


@pytest.mark.parametrize("ext", [".png", ".ppm"])
def test_a_grey_photo_stored_as_rgb_stays_grey(tmp_path, ext):
    """Three equal colour channels (a grey photo saved as RGB, like faces68/takeo.ppm): the result
    keeps three channels, but a colour perturbation is averaged into grey instead of tinting it."""
    rgb_grey = np.repeat(_noise(10, 11, 1)[:, :, None], 3, axis=2)
    img = lio.read_image(_write(tmp_path / f"g{ext}", _encode(rgb_grey, ext)))
    assert img.grey_content and not img.grey
    res = img.rgb.astype(int)
    res[..., 1] += 3  # green only
    res = np.clip(res, 0, 255).astype(np.uint8)
    back = cv2.imread(str(lio.write_image_atomic(tmp_path / f"o{ext}", res, img)), cv2.IMREAD_UNCHANGED)
    assert back.shape == (10, 11, 3)
    assert (back[:, :, 0] == back[:, :, 1]).all() and (back[:, :, 1] == back[:, :, 2]).all()
    np.testing.assert_array_equal(back[:, :, 0], np.rint(res.astype(float).mean(axis=2)).astype(np.uint8))
    # a colour photo is not touched by this
    colour = lio.read_image(_write(tmp_path / f"c{ext}", _encode(_noise(10, 11, 3), ext)))
    assert not colour.grey_content
    back = cv2.imread(str(lio.write_image_atomic(tmp_path / f"oc{ext}", res, colour)), cv2.IMREAD_UNCHANGED)
    np.testing.assert_array_equal(back, res[:, :, ::-1])


@pytest.mark.parametrize("depth", [8, 16])
def test_grey_alpha_png_stays_grey(tmp_path, depth):
    dtype = np.uint8 if depth == 8 else np.uint16
    la = _noise(4, 5, 2, dtype)
    raw = b"".join(b"\x00" + la[y].astype(">u2" if depth == 16 else np.uint8).tobytes() for y in range(4))
    png = (
        b"\x89PNG\r\n\x1a\n"
        + _png_chunk(b"IHDR", struct.pack(">IIBBBBB", 5, 4, depth, 4, 0, 0, 0))
        + _png_chunk(b"IDAT", zlib.compress(raw))
        + _png_chunk(b"IEND", b"")
    )
    img = lio.read_image(_write(tmp_path / "la.png", png))
    assert img.grey and img.bit_depth == depth
    np.testing.assert_array_equal(img.alpha, la[:, :, 1])
    want_rgb = la[:, :, 0] if depth == 8 else np.rint(la[:, :, 0] / 257).astype(np.uint8)
    np.testing.assert_array_equal(img.rgb, np.repeat(want_rgb[:, :, None], 3, axis=2))
    res = img.rgb.astype(int)
    res[..., 0] += 2  # a colour-only perturbation is averaged away: the file stays grey
    res = np.clip(res, 0, 255).astype(np.uint8)
    back = cv2.imread(str(lio.write_image_atomic(tmp_path / "o.png", res, img)), cv2.IMREAD_UNCHANGED)
    assert back.shape == (4, 5, 4)
    assert (back[..., 0] == back[..., 1]).all() and (back[..., 1] == back[..., 2]).all()
    np.testing.assert_array_equal(back[..., 3], la[:, :, 1])


@pytest.mark.parametrize("orientation", range(1, 9))
def test_exif_orientation_jpeg_matches_opencv(tmp_path, orientation):
    bgr = np.zeros((24, 40, 3), np.uint8)
    bgr[:8, :12] = (0, 0, 255)  # a red block in the stored top-left corner
    bgr[-4:, :, 1] = 255
    jpeg = _jpeg_with_orientation(_encode(bgr, ".jpg", [cv2.IMWRITE_JPEG_QUALITY, 100]), orientation,
                                  "II" if orientation % 2 else "MM")
    path = _write(tmp_path / "o.jpg", jpeg)
    img = lio.read_image(path)
    assert img.orientation == orientation
    ref = cv2.imdecode(np.frombuffer(jpeg, np.uint8), cv2.IMREAD_COLOR)  # OpenCV applies EXIF here
    np.testing.assert_array_equal(img.rgb, ref[:, :, ::-1])
    assert img.rgb.shape[:2] == ((24, 40) if orientation <= 4 else (40, 24))


def test_exif_orientation_png_exif_chunk(tmp_path):
    bgr = _noise(6, 10)
    path = _write(tmp_path / "r.png", _png_with_orientation(_encode(bgr, ".png"), 6))
    img = lio.read_image(path)
    # 6 = the stored picture must be rotated 90 degrees clockwise to be upright
    np.testing.assert_array_equal(img.rgb, np.rot90(bgr[:, :, ::-1], -1))
    out = lio.write_image_atomic(tmp_path / "up.png", img.rgb, img)
    assert lio.read_image(out).orientation == 1  # stored upright, no tag


def test_apply_orientation_is_invertible():
    a = np.arange(12).reshape(3, 4)
    inverse = {1: 1, 2: 2, 3: 3, 4: 4, 5: 5, 6: 8, 7: 7, 8: 6}
    for o in range(1, 9):
        np.testing.assert_array_equal(lio.apply_orientation(lio.apply_orientation(a, o), inverse[o]), a)


# ------------------------------------------------------------------------------ fuzzing


@settings(max_examples=200, deadline=None)
@given(st.binary(max_size=300))
def test_header_parser_only_raises_valueerror(data):
    try:
        h = lio.read_image_header(data)
    except ValueError:
        return
    assert h.width >= 0 and h.height >= 0


_SAMPLES = {ext: _encode(_noise(9, 7), ext) for ext in (".png", ".jpg", ".webp", ".bmp", ".tif")}


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(ext=st.sampled_from(sorted(_SAMPLES)), cut=st.floats(0, 1), flip=st.integers(0, 10_000))
def test_damaged_images_give_input_error_or_image(tmp_path, ext, cut, flip):
    data = bytearray(_SAMPLES[ext][: max(1, int(len(_SAMPLES[ext]) * cut))])
    data[flip % len(data)] ^= 0x5A
    path = _write(tmp_path / f"x{ext}", bytes(data))
    try:
        img = lio.read_image(path)
    except InputError as err:
        assert str(err).startswith(str(path))
    else:
        assert img.rgb.dtype == np.uint8 and img.rgb.ndim == 3


# ------------------------------------------------------------------------------ atomic writes


def _leftovers(folder: Path) -> list[str]:
    return [n for n in os.listdir(folder) if lio._TMP_TAG in n]


def test_atomic_write_leaves_nothing_when_writer_raises(tmp_path):
    final = tmp_path / "out" / "x.bin"
    with pytest.raises(RuntimeError), lio.atomic_path(final) as tmp:
        tmp.write_bytes(b"half a file")
        raise RuntimeError("writer died midway")
    assert not final.exists()
    assert _leftovers(final.parent) == []


def test_atomic_write_keeps_old_output_on_failure(tmp_path, monkeypatch):
    final = tmp_path / "x.png"
    lio.write_image_atomic(final, _noise(4, 4))
    before = final.read_bytes()

    def boom(*a, **k):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(os, "fsync", boom)
    with pytest.raises(lio.OutputError, match="No space left"):
        lio.write_image_atomic(final, _noise(4, 4))
    assert final.read_bytes() == before
    assert _leftovers(tmp_path) == []


def test_never_overwrites_inputs(tmp_path):
    src = _write(tmp_path / "in.png", _encode(_noise(4, 4), ".png"))
    img = lio.read_image(src)
    with pytest.raises(lio.OutputError, match="refusing to write over the input"):
        lio.write_image_atomic(src, img.rgb, img)
    link = tmp_path / "link.png"
    link.symlink_to(src)
    with pytest.raises(lio.OutputError):
        lio.write_image_atomic(link, img.rgb, img)
    hard = tmp_path / "hard.png"
    os.link(src, hard)
    with pytest.raises(lio.OutputError):
        lio.ensure_not_input(hard, [src])
    lio.ensure_not_input(tmp_path / "other.png", [src])  # fine


def test_unknown_output_format(tmp_path):
    with pytest.raises(LBError, match="gif"):
        lio.write_image_atomic(tmp_path / "x.gif", _noise(4, 4))


# ------------------------------------------------------------------------------ walking inputs


def _touch(p: Path, data: bytes = b"x") -> Path:
    p.parent.mkdir(parents=True, exist_ok=True)
    p.write_bytes(data)
    return p


def test_iter_inputs_mirrors_nested_folders(tmp_path):
    root = tmp_path / "in"
    for rel in ["b.png", "a.JPG", "sub/c.webp", "sub/deeper/d.mp4", "sub/notes.txt", ".hidden/e.png", "z/.f.png"]:
        _touch(root / rel)
    entries = list(lio.iter_inputs([root]))
    assert [(str(e.rel), e.kind) for e in entries] == [
        ("a.JPG", "image"),
        ("b.png", "image"),
        ("sub/c.webp", "image"),
        ("sub/deeper/d.mp4", "video"),
    ]
    assert all(e.path == root / e.rel for e in entries)
    flat = list(lio.iter_inputs([root], recursive=False))
    assert [str(e.rel) for e in flat] == ["a.JPG", "b.png"]
    assert lio.mirror_path(tmp_path / "out", entries[2].rel, ".png") == tmp_path / "out/sub/c.png"


def test_iter_inputs_symlink_loop_and_broken_links(tmp_path):
    root = tmp_path / "in"
    _touch(root / "sub/a.png")
    (root / "sub/loop").symlink_to(root)  # back to the top
    (root / "sub/self.png").symlink_to(root / "sub/self.png")  # ELOOP
    (root / "gone.png").symlink_to(root / "missing.png")
    (root / "alias.png").symlink_to(root / "sub/a.png")
    entries = list(lio.iter_inputs([root]))
    by_rel = {str(e.rel): e for e in entries}
    assert by_rel["sub/a.png"].kind == "image"
    assert by_rel["alias.png"].kind == "image"
    assert by_rel["sub/loop"].kind == "skip"
    assert by_rel["gone.png"].kind == "error" and "broken symbolic link" in by_rel["gone.png"].error
    assert by_rel["sub/self.png"].kind == "error" and "loop" in by_rel["sub/self.png"].error
    assert len(entries) == 5


def test_iter_inputs_explicit_files_and_errors(tmp_path):
    a = _touch(tmp_path / "x/a.png")
    b = _touch(tmp_path / "y/a.png")
    t = _touch(tmp_path / "readme.txt")
    entries = list(lio.iter_inputs([a, b, t, tmp_path / "nope.png"]))
    assert [e.kind for e in entries] == ["image", "error", "error", "error"]
    assert "same output" in entries[1].error
    assert "unsupported extension" in entries[2].error
    assert "no such file" in entries[3].error


def test_iter_inputs_excludes_output_folder(tmp_path):
    _touch(tmp_path / "a.png")
    _touch(tmp_path / "out/a.png")
    entries = list(lio.iter_inputs([tmp_path], exclude=[tmp_path / "out"]))
    assert [(str(e.rel), e.kind) for e in entries] == [("a.png", "image"), ("out", "skip")]


def _root_bypasses_permissions(path: Path) -> bool:
    return os.access(path, os.R_OK)


def test_iter_inputs_unreadable_file_and_folder(tmp_path):
    f = _touch(tmp_path / "in/locked.png")
    d = tmp_path / "in/closed"
    _touch(d / "x.png")
    f.chmod(0)
    d.chmod(0)
    try:
        if _root_bypasses_permissions(f):
            pytest.skip("running as root: permission bits do not stop reads here")
        entries = {str(e.rel): e for e in lio.iter_inputs([tmp_path / "in"])}
        assert entries["locked.png"].kind == "error" and "permission" in entries["locked.png"].error
        assert entries["closed"].kind == "error" and "cannot list folder" in entries["closed"].error
        with pytest.raises(InputError, match="locked.png"):
            lio.read_image(f)
    finally:
        d.chmod(0o755)
        f.chmod(0o644)


def test_iter_inputs_permission_errors_simulated(tmp_path, monkeypatch):
    """The same paths as above, forced even as root by faking the OS answers."""
    locked = _touch(tmp_path / "in/locked.png")
    _touch(tmp_path / "in/ok.png")
    _touch(tmp_path / "in/closed/x.png")
    real_access, real_scandir = os.access, os.scandir

    def access(path, mode, *a, **k):
        return False if Path(path) == locked else real_access(path, mode, *a, **k)

    def scandir(path="."):
        if Path(path).name == "closed":
            raise PermissionError(13, "Permission denied", str(path))
        return real_scandir(path)

    monkeypatch.setattr(os, "access", access)
    monkeypatch.setattr(os, "scandir", scandir)
    entries = [(str(e.rel), e.kind, e.error) for e in lio.iter_inputs([tmp_path / "in"])]
    assert [(r, k) for r, k, _ in entries] == [("closed", "error"), ("locked.png", "error"), ("ok.png", "image")]
    assert "cannot list folder: not readable (permission denied)" in entries[0][2]
    assert entries[1][2] == f"{locked}: not readable (permission denied)"


def test_non_utf8_names_round_trip(tmp_path):
    raw_dir = os.fsencode(tmp_path / "in") + b"/caf\xe9"
    os.makedirs(raw_dir)
    raw_file = raw_dir + b"/\xff\xfeimg.png"
    with open(raw_file, "wb") as fh:
        fh.write(_encode(_noise(5, 6), ".png"))
    (entry,) = lio.iter_inputs([tmp_path / "in"])
    assert entry.kind == "image"
    assert os.fsencode(entry.rel) == b"caf\xe9/\xff\xfeimg.png"
    img = lio.read_image(entry.path)
    out = lio.write_image_atomic(lio.mirror_path(tmp_path / "out", entry.rel), img.rgb, img)
    assert os.path.exists(os.fsencode(tmp_path / "out") + b"/caf\xe9/\xff\xfeimg.png")
    shown = lio.display_path(out)
    shown.encode("utf-8")  # printable
    assert "\\xe9" in shown and "\\xff\\xfe" in shown
    with pytest.raises(InputError) as ei:
        lio.read_image(os.fsdecode(raw_dir + b"/missing\xff.png"))
    str(ei.value).encode("utf-8")


_name = st.text(alphabet="abcXYZ09_- é", min_size=1, max_size=6).filter(lambda s: not s.startswith(".") and s.strip() == s)


@settings(max_examples=25, deadline=None)
@given(st.sets(st.lists(_name, min_size=1, max_size=3).map(tuple), min_size=1, max_size=6))
def test_relative_paths_mirror_structure(parts_set):
    # names that are prefixes of each other's folders would make a file and a folder share a name
    files = {p + ("f.png",) for p in parts_set}
    with tempfile.TemporaryDirectory() as d:
        root = Path(d) / "in"
        for parts in files:
            _touch(root.joinpath(*parts))
        entries = list(lio.iter_inputs([root]))
        assert {e.rel.parts for e in entries} == files
        assert all(e.kind == "image" and e.path == root / e.rel for e in entries)
        keys = [os.fsencode(str(e.rel)) for e in entries]
        assert len(set(keys)) == len(keys)
        out = Path(d) / "out"
        for e in entries:
            assert lio.mirror_path(out, e.rel).relative_to(out) == e.rel


# ------------------------------------------------------------------------------ video


def _make_video(
    path: Path,
    n: int = 20,
    size: tuple[int, int] = (64, 48),
    fps: Fraction = Fraction(30000, 1001),
    codec: str = "libx264",
    audio: str | None = "aac",
    times_ms: list[int] | None = None,
    faststart: bool = False,
) -> list[np.ndarray]:
    """Write a test video with a moving pattern (and a 440 Hz tone); returns its RGB frames."""
    w, h = size
    options = {"movflags": "+faststart"} if faststart else {}
    frames = []
    with av.open(str(path), "w", options=options) as out:
        vs = out.add_stream(codec, rate=fps)
        vs.width, vs.height = w, h
        vs.pix_fmt = "yuv420p" if codec == "libx264" else "bgr0"
        if codec == "libx264":
            vs.options = {"preset": "ultrafast", "crf": "20"}
        vs.codec_context.time_base = Fraction(1, 1000) if times_ms else 1 / fps
        a_s = None
        if audio:
            a_s = out.add_stream(audio, rate=48000, layout="mono")
        yy, xx = np.mgrid[0:h, 0:w]
        for i in range(n):
            rgb = np.stack([(xx * 4 + i * 8) % 256, (yy * 4) % 256, np.full_like(xx, (i * 37) % 256)], -1).astype(np.uint8)
            frames.append(rgb)
            f = av.VideoFrame.from_ndarray(rgb, format="rgb24")
            f.pts = times_ms[i] if times_ms else i
            for p in vs.encode(f):
                out.mux(p)
        for p in vs.encode(None):
            out.mux(p)
        if a_s is not None:
            total = int(48000 * n / float(fps))
            t = np.arange(total) / 48000
            tone = (0.3 * np.sin(2 * np.pi * 440 * t)).astype(np.float32)
            fmt = a_s.codec_context.format.name
            step = 960
            for k in range(0, total, step):
                chunk = tone[k : k + step][None, :]
                if fmt == "s16":
                    chunk = (chunk * 32767).astype(np.int16)
                af = av.AudioFrame.from_ndarray(chunk, format=fmt, layout="mono")
                af.sample_rate = 48000
                af.pts = k
                for p in a_s.encode(af):
                    out.mux(p)
            for p in a_s.encode(None):
                out.mux(p)
    return frames


def test_probe_and_roundtrip_keeps_frames_fps_audio(tmp_path):
    src = tmp_path / "in.mp4"
    frames = _make_video(src, n=20)
    info = lio.probe_video(src)
    assert (info.frame_count, info.fps, info.width, info.height) == (20, Fraction(30000, 1001), 64, 48)
    assert info.has_audio and info.audio_codec == "aac" and info.frame_count_exact
    assert info.duration == pytest.approx(20 * 1001 / 30000, abs=0.01)

    decoded = list(lio.iter_video_frames(src))
    assert len(decoded) == 20 and decoded[0].shape == (48, 64, 3) and decoded[0].dtype == np.uint8
    assert np.abs(decoded[3].astype(int) - frames[3]).mean() < 6  # lossy h264 source

    out = tmp_path / "out.mkv"
    with lio.VideoWriter(out, info.fps, audio_from=src) as w:
        for rgb, t in lio.iter_video_frames_timed(src):
            w.write(rgb, t)
    assert w.audio_note is None and w.frames_written == 20
    back = lio.probe_video(out)
    assert (back.frame_count, back.fps, back.width, back.height) == (20, info.fps, 64, 48)
    assert back.has_audio and back.audio_codec == "aac"
    # ffv1 is lossless: what we wrote is what we read
    for a, b in zip(decoded, lio.iter_video_frames(out), strict=True):
        np.testing.assert_array_equal(a, b)
    # the audio packets were copied, not re-encoded
    with av.open(str(src)) as c1, av.open(str(out)) as c2:
        p1 = [bytes(p) for p in c1.demux(c1.streams.audio[0]) if p.size]
        p2 = [bytes(p) for p in c2.demux(c2.streams.audio[0]) if p.size]
    assert p1 == p2 and len(p1) > 10
    assert not out.with_name("out").exists() and _leftovers(tmp_path) == []


def test_h264_output_pads_odd_sizes(tmp_path):
    src = tmp_path / "odd.mkv"
    _make_video(src, n=6, size=(33, 17), codec="ffv1", audio=None)
    info = lio.probe_video(src)
    assert (info.width, info.height, info.frame_count) == (33, 17, 6)
    frames = list(lio.iter_video_frames(src))
    assert frames[0].shape == (17, 33, 3)
    out = tmp_path / "odd.mp4"
    with lio.VideoWriter(out, info.fps, codec="h264", crf=0) as w:
        for f in frames:
            w.write(f)
    back = lio.probe_video(out)
    assert (back.width, back.height, back.frame_count, back.fps) == (34, 18, 6, info.fps)
    # exact-size ffv1 keeps odd sizes
    with lio.VideoWriter(tmp_path / "odd2.mkv", info.fps) as w:
        for f in frames:
            w.write(f)
    assert (lio.probe_video(tmp_path / "odd2.mkv").width, lio.probe_video(tmp_path / "odd2.mkv").height) == (33, 17)


def test_variable_frame_rate_timestamps_kept(tmp_path):
    src = tmp_path / "vfr.mkv"
    times = [0, 33, 100, 120, 300, 310, 500, 733]
    _make_video(src, n=len(times), codec="ffv1", audio=None, times_ms=times)
    got = [t for _, t in lio.iter_video_frames_timed(src)]
    assert [round(float(t) * 1000) for t in got] == times
    out = tmp_path / "vfr_out.mkv"
    with lio.VideoWriter(out, lio.probe_video(src).fps) as w:
        for rgb, t in lio.iter_video_frames_timed(src):
            w.write(rgb, t)
    assert [round(float(t) * 1000) for _, t in lio.iter_video_frames_timed(out)] == times


def test_audio_reencoded_when_container_cannot_hold_it(tmp_path):
    src = tmp_path / "opus.mkv"
    _make_video(src, n=10, codec="ffv1", audio="libopus")
    assert lio.probe_video(src).audio_codec == "opus"
    out = tmp_path / "out.avi"
    with lio.VideoWriter(out, Fraction(30000, 1001), audio_from=src) as w:
        for f in lio.iter_video_frames(src):
            w.write(f)
    assert w.audio_note is not None and "re-encoded" in w.audio_note and "opus" in w.audio_note
    back = lio.probe_video(out)
    assert back.has_audio and back.audio_codec != "opus" and back.frame_count == 10


def test_png_frames_folder(tmp_path):
    src = tmp_path / "in.mp4"
    _make_video(src, n=5)
    out = tmp_path / "frames"
    with lio.VideoWriter(out, Fraction(30), codec="png", audio_from=src) as w:
        for f in lio.iter_video_frames(src):
            w.write(f)
    assert sorted(os.listdir(out)) == [f"{i:06d}.png" for i in range(5)]
    assert "audio" in w.audio_note
    assert lio.read_image(out / "000002.png").rgb.shape == (48, 64, 3)


def test_video_writer_failure_leaves_no_file(tmp_path):
    src = tmp_path / "in.mp4"
    _make_video(src, n=8)
    out = tmp_path / "out.mkv"
    with pytest.raises(RuntimeError), lio.VideoWriter(out, 30, audio_from=src) as w:
        for i, f in enumerate(lio.iter_video_frames(src)):
            if i == 4:
                raise RuntimeError("attack crashed")
            w.write(f)
    assert not out.exists() and _leftovers(tmp_path) == []


def test_video_writer_refuses_input_and_bad_codec(tmp_path):
    src = tmp_path / "in.mkv"
    _make_video(src, n=2, codec="ffv1", audio=None)
    with pytest.raises(lio.OutputError):
        lio.VideoWriter(src, 30, audio_from=src)
    with pytest.raises(LBError, match="codec"):
        lio.VideoWriter(tmp_path / "x.mkv", 30, codec="vp9")
    with pytest.raises(LBError, match="ffv1"):
        lio.VideoWriter(tmp_path / "x.mp4", 30, codec="ffv1")


def test_truncated_mp4_index_at_end(tmp_path):
    src = tmp_path / "full.mp4"
    _make_video(src, n=30)
    data = src.read_bytes()
    cut = _write(tmp_path / "cut.mp4", data[: len(data) // 2])
    with pytest.raises(InputError, match=r"cut\.mp4: not a readable video"):
        lio.probe_video(cut)


def test_truncated_mp4_index_at_start(tmp_path):
    src = tmp_path / "full.mp4"
    _make_video(src, n=60, size=(96, 64), faststart=True)
    data = src.read_bytes()
    assert data.find(b"moov") < data.find(b"mdat")
    cut = _write(tmp_path / "cut.mp4", data[: int(len(data) * 0.6)])
    assert lio.probe_video(cut).frame_count == 60  # the index still promises every frame
    with pytest.raises(InputError, match=r"cut\.mp4: truncated video.*60 frames"):
        for _ in lio.iter_video_frames(cut):
            pass


def test_video_without_video_stream(tmp_path, write_audio_only):
    path = write_audio_only(tmp_path / "sound.mp4", samples=48000)
    with pytest.raises(InputError, match=r"sound\.mp4: has no video stream \(only audio\)"):
        lio.probe_video(path)


def test_bad_video_files(tmp_path):
    with pytest.raises(InputError, match="empty file"):
        lio.probe_video(_write(tmp_path / "z.mp4", b""))
    with pytest.raises(InputError, match=r"t\.mkv: not a readable video"):
        lio.probe_video(_write(tmp_path / "t.mkv", b"this is not a video at all" * 50))


def test_frame_limit(tmp_path):
    src = tmp_path / "long.mp4"
    _make_video(src, n=20, audio=None)
    with pytest.raises(InputError, match=r"long\.mp4: video has 20 frames \(0\.67 s\), over the limit of 10 frames \(0\.33 s at 29.97 fps; raise it with --max-frames, or protect a part with --start/--duration\)"):
        lio.probe_video(src, max_frames=10)
    mkv = tmp_path / "long.mkv"  # no stored frame count: counted, and counting stops at the limit
    _make_video(mkv, n=20, codec="ffv1", audio=None)
    assert lio.probe_video(mkv).frame_count == 20
    with pytest.raises(InputError, match="more than 10"):
        lio.probe_video(mkv, max_frames=10)
    assert len(list(lio.iter_video_frames(src, max_frames=20))) == 20


def test_streaming_memory_is_bounded(tmp_path):
    src = tmp_path / "long.mkv"
    n, (w, h) = 300, (160, 120)
    _make_video(src, n=n, size=(w, h), codec="ffv1", audio=None)
    full = n * w * h * 3
    tracemalloc.start()
    try:
        count = 0
        checksum = 0
        for rgb in lio.iter_video_frames(src):
            count += 1
            checksum += int(rgb[0, 0, 2])
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert count == n and checksum == sum((i * 37) % 256 for i in range(n))
    assert peak < full / 20, f"peak {peak} bytes for a {full}-byte video"


def test_shared_clip_probe(shared):
    clip = shared / "data/video/short_hamilton_clip.mp4"
    if not clip.exists():
        pytest.skip("shared video clip absent")
    info = lio.probe_video(clip)
    assert (info.frame_count, info.width, info.height) == (275, 640, 360)
    assert float(info.fps) == pytest.approx(29.97, abs=0.01)
    assert info.has_audio and info.audio_codec == "aac"


# ------------------------------------------------------------------------------ resume


def test_result_store_skips_only_matching_work(tmp_path):
    src = _write(tmp_path / "in.png", _encode(_noise(8, 8), ".png"))
    out = tmp_path / "out/in.png"
    store = lio.ResultStore({"attack": "mifgsm", "eps": 15})
    assert not store.is_finished(src, out)
    lio.write_image_atomic(out, lio.read_image(src).rgb)
    assert lio.is_done(out)
    assert not store.is_finished(src, out)  # no sidecar yet
    side = store.mark_finished(src, out, nme=0.5)
    assert side == tmp_path / "out/in.png.lb.json"
    assert store.is_finished(src, out)
    assert lio.ResultStore({"eps": 15, "attack": "mifgsm"}).is_finished(src, out)  # key order
    assert not lio.ResultStore({"attack": "mifgsm", "eps": 8}).is_finished(src, out)
    assert not lio.ResultStore({"attack": "mifgsm", "eps": 15}, force=True).is_finished(src, out)

    st0 = os.stat(src)
    os.utime(src, ns=(st0.st_atime_ns, st0.st_mtime_ns + 10**9))  # touched, same bytes
    assert store.is_finished(src, out)
    data = bytearray(src.read_bytes())
    data[-20] ^= 1  # same size, different content
    src.write_bytes(bytes(data))
    assert not store.is_finished(src, out)
    out.unlink()
    assert not store.is_finished(src, out)


def test_fingerprint_of_large_file_uses_head_and_tail(tmp_path):
    big = tmp_path / "big.bin"
    big.write_bytes(bytes(9 << 20))
    fp = lio.input_fingerprint(big)
    assert fp["size"] == 9 << 20 and fp["sha256_scope"] != "whole" and len(fp["sha256"]) == 64
    small = _write(tmp_path / "s.bin", b"abc")
    # the full digest, as sha256sum prints it (issue 17: it held 16 hex digits)
    assert lio.input_fingerprint(small)["sha256"] == hashlib.sha256(small.read_bytes()).hexdigest()


def test_video_with_non_utf8_name(tmp_path):
    raw = os.fsencode(tmp_path) + b"/vid\xe9o.mkv"
    _make_video(Path(os.fsdecode(raw)), n=4, codec="ffv1", audio=None)
    (entry,) = lio.iter_inputs([tmp_path])
    assert entry.kind == "video" and lio.probe_video(entry.path).frame_count == 4
    out = lio.mirror_path(tmp_path / "out", entry.rel)
    with lio.VideoWriter(out, 25, audio_from=entry.path) as w:
        for f in lio.iter_video_frames(entry.path):
            w.write(f)
    assert os.path.exists(os.fsencode(tmp_path) + b"/out/vid\xe9o.mkv")
    assert lio.probe_video(out).frame_count == 4
