"""The robust file layer behind ``lb attack``, ``lb protect`` and ``lb evaluate``.

Reading
    :func:`read_image` sniffs the format from the file's bytes (never from its name), reads the
    claimed width and height from the header (PNG ``IHDR``, JPEG ``SOFn``, WebP ``VP8/VP8L/VP8X``,
    BMP, TIFF/BigTIFF ``IFD0``, PPM/PGM) and refuses decompression bombs *before* decoding. It
    decodes with ``cv2.IMREAD_UNCHANGED`` (so 16-bit samples, alpha and greyscale survive) and then
    applies the EXIF orientation itself, because ``IMREAD_UNCHANGED`` ignores it (``IMREAD_COLOR``
    would apply it but drops alpha and depth). The result, :class:`LoadedImage`, carries the
    ``rgb`` uint8 array the attack works on plus what is needed to write the result back
    faithfully.

Writing
    :func:`write_image_atomic` encodes in memory, writes to a hidden temporary file in the
    destination folder and renames it into place, so a final name only ever holds a complete file.
    It refuses to write onto an input. The policies that keep colours honest:

    * 16-bit input (PNG, TIFF, PPM/PGM output): the 8-bit perturbation ``result - like.rgb`` is
      scaled by 257 and added to the original 16-bit samples, so untouched pixels keep their exact
      16-bit values and the file stays 16-bit.
    * Alpha: re-attached unchanged. A format without alpha (JPEG, BMP, PPM) raises
      :class:`OutputError` rather than silently flattening.
    * Greyscale input: the attack sees the grey channel replicated on R, G and B; the result is
      written back as a single grey channel, the mean of the three channels (rounded). A greyscale
      file therefore never turns into a colour file, and a perturbation applied identically on the
      three channels survives exactly. (With an alpha channel the grey is written replicated on
      three channels plus alpha, because OpenCV cannot encode grey+alpha.)
    * EXIF orientation: pixels are stored upright and no orientation tag is written, so every
      viewer shows the output as it showed the input.

Folders
    :func:`iter_inputs` walks files and folders recursively in a deterministic (byte-wise) order,
    mirrors the folder structure into relative output paths, follows symbolic links but never
    walks a directory twice (no loops), handles names that are not valid UTF-8 (kept as Python's
    surrogate-escaped ``str`` so they can be written back byte for byte) and yields error records
    for unreadable entries instead of raising.

Video
    :func:`probe_video`, :func:`iter_video_frames` (streamed: one decoded frame at a time) and
    :class:`VideoWriter` (``ffv1`` lossless in ``.mkv``, ``h264`` with a CRF in ``.mp4``, or a folder
    of ``png`` frames), which keeps the input's frame rate, keeps per-frame timestamps when they are
    given (variable frame rate), and copies the audio through.

Resume
    :class:`ResultStore`: a final output name means a finished file (outputs are only ever renamed
    into place complete); a JSON sidecar records the input's size, mtime and a sha256 of its bytes
    and a hash of the settings, so a rerun skips work only when input and settings still match.

Every user-caused problem raises an :class:`~lbcore.errors.InputError` (or :class:`OutputError`)
whose message is one line: ``<path>: <problem>``.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import secrets
import shutil
import stat
import struct
from collections.abc import Iterable, Iterator, Mapping
from fractions import Fraction
from pathlib import Path
from typing import TYPE_CHECKING, Any, NamedTuple

import attrs
import numpy as np

from lbcore.errors import InputError, LBError, SpecError

if TYPE_CHECKING:  # pragma: no cover
    import av.container

PathLike = str | os.PathLike[str]

IMAGE_SUFFIXES = frozenset({".jpg", ".jpeg", ".png", ".webp", ".bmp", ".tif", ".tiff", ".ppm", ".pgm", ".pnm"})
"""Extensions picked up as still images when walking folders (compared case-insensitively)."""

VIDEO_SUFFIXES = frozenset({".mp4", ".mov", ".mkv", ".avi", ".webm", ".m4v"})
"""Extensions picked up as videos when walking folders (compared case-insensitively)."""

DEFAULT_MAX_PIXELS = 100_000_000
"""Largest image accepted by default (100 megapixels); raise it with ``--max-pixels``."""

DEFAULT_MAX_FRAMES = 108_000
"""Longest video accepted by default (108,000 frames = 1 hour at 30 fps); raise it with ``--max-frames``."""

SIDECAR_SUFFIX = ".lb.json"
"""Appended to an output's name to form its resume sidecar (``out.png`` -> ``out.png.lb.json``)."""

_TMP_TAG = ".lbtmp-"


class OutputError(LBError):
    """An output cannot be written (it would overwrite an input, the format cannot hold it, ...)."""

    exit_code = 1


# --------------------------------------------------------------------------------------------
# messages


def display_path(path: PathLike | bytes) -> str:
    """``path`` as printable text: bytes that are not UTF-8 become ``\\xNN`` escapes.

    A name that is not valid UTF-8 lives in Python as a ``str`` with lone surrogates, which cannot
    be printed; this is the form used in every message.
    """
    raw = path if isinstance(path, bytes) else os.fsencode(path)
    return raw.decode("utf-8", "backslashreplace")


def _one_line(text: object) -> str:
    return " ".join(str(text).split())


def _input_error(path: PathLike, problem: object) -> InputError:
    return InputError(f"{display_path(path)}: {_one_line(problem)}")


def _output_error(path: PathLike, problem: object) -> OutputError:
    return OutputError(f"{display_path(path)}: {_one_line(problem)}")


def _megapixels(n: int) -> str:
    return f"{n / 1e6:.1f} megapixels"


# --------------------------------------------------------------------------------------------
# lazy heavy imports (importing lbcore.io stays cheap)


def _cv2() -> Any:
    import cv2

    return cv2


def _av() -> Any:
    import av

    return av


@contextlib.contextmanager
def _quiet_stderr_fd() -> Iterator[None]:
    """Point file descriptor 2 at the null device for a moment.

    libpng prints ``libpng error: ...`` straight to the C ``stderr`` (OpenCV's log level does not
    reach it); our one-line error names the file and replaces that unnamed second line.
    """
    import sys

    try:
        sys.stderr.flush()
        saved = os.dup(2)
    except (OSError, ValueError, AttributeError):  # no usable descriptor 2: nothing to silence
        yield
        return
    try:
        null = os.open(os.devnull, os.O_WRONLY)
        try:
            os.dup2(null, 2)
        finally:
            os.close(null)
        yield
    finally:
        os.dup2(saved, 2)
        os.close(saved)


@contextlib.contextmanager
def _quiet_opencv() -> Iterator[None]:
    """Silence OpenCV's own stderr logging while decoding: our one-line error replaces it."""
    cv2 = _cv2()
    try:
        old = cv2.utils.logging.getLogLevel()
        cv2.utils.logging.setLogLevel(cv2.utils.logging.LOG_LEVEL_SILENT)
    except AttributeError:  # pragma: no cover - very old OpenCV builds
        with _quiet_stderr_fd():
            yield
        return
    try:
        with _quiet_stderr_fd():
            yield
    finally:
        cv2.utils.logging.setLogLevel(old)


# --------------------------------------------------------------------------------------------
# header parsing (dimensions before decoding, EXIF orientation)


class _Corrupt(Exception):
    """A header is malformed; the message says how."""


@attrs.frozen
class ImageHeader:
    """What a still image's header claims, read without decoding its pixels.

    Attributes:
        format: ``"png"``, ``"jpeg"``, ``"webp"``, ``"bmp"``, ``"tiff"`` or ``"pnm"``.
        width: Claimed width in pixels (as stored, before EXIF orientation).
        height: Claimed height in pixels.
        orientation: EXIF/TIFF orientation tag 1..8 (1 = upright, also when absent).
        grey: The header declares a single colour channel (PNG colour types 0 and 4), which
            OpenCV may still expand to BGR(A) when decoding.
    """

    format: str
    width: int
    height: int
    orientation: int = 1
    grey: bool = False


def _u16(b: bytes, off: int, endian: str = ">") -> int:
    return struct.unpack_from(endian + "H", b, off)[0]


def _u32(b: bytes, off: int, endian: str = ">") -> int:
    return struct.unpack_from(endian + "I", b, off)[0]


def _tiff_tags(buf: bytes, wanted: Iterable[int]) -> dict[int, int]:
    """Integer values of the ``wanted`` tags of the first IFD of a TIFF structure (classic or BigTIFF).

    Used both for TIFF files and for the TIFF block inside an EXIF segment.
    """
    wanted = set(wanted)
    if buf[:2] == b"II":
        e = "<"
    elif buf[:2] == b"MM":
        e = ">"
    else:
        raise _Corrupt("bad TIFF byte-order mark")
    version = _u16(buf, 2, e)
    out: dict[int, int] = {}
    try:
        if version == 42:
            off = _u32(buf, 4, e)
            count = _u16(buf, off, e)
            for i in range(count):
                p = off + 2 + 12 * i
                tag, typ, n = struct.unpack_from(e + "HHI", buf, p)
                if tag in wanted and n >= 1:
                    if typ == 3:  # SHORT
                        out[tag] = _u16(buf, p + 8, e)
                    elif typ == 4:  # LONG
                        out[tag] = _u32(buf, p + 8, e)
        elif version == 43:  # BigTIFF: 8-byte offsets, 20-byte entries
            off = struct.unpack_from(e + "Q", buf, 8)[0]
            count = struct.unpack_from(e + "Q", buf, off)[0]
            for i in range(count):
                p = off + 8 + 20 * i
                tag, typ, n = struct.unpack_from(e + "HHQ", buf, p)
                if tag in wanted and n >= 1:
                    if typ == 3:
                        out[tag] = _u16(buf, p + 12, e)
                    elif typ == 4:
                        out[tag] = _u32(buf, p + 12, e)
                    elif typ == 16:  # LONG8
                        out[tag] = struct.unpack_from(e + "Q", buf, p + 12)[0]
        else:
            raise _Corrupt(f"unknown TIFF version {version}")
    except struct.error as err:
        raise _Corrupt("TIFF directory runs past the end of the data (truncated?)") from err
    return out


def _exif_orientation(block: bytes) -> int:
    """Orientation from an EXIF block (with or without the ``Exif\\0\\0`` prefix); 1 when unreadable."""
    if block.startswith(b"Exif\x00\x00"):
        block = block[6:]
    try:
        o = _tiff_tags(block, [274]).get(274, 1)
    except _Corrupt:
        return 1  # a broken EXIF block is no reason to refuse the picture
    return o if 1 <= o <= 8 else 1


_JPEG_SOF = {0xC0, 0xC1, 0xC2, 0xC3, 0xC5, 0xC6, 0xC7, 0xC9, 0xCA, 0xCB, 0xCD, 0xCE, 0xCF}


def _jpeg_header(d: bytes) -> ImageHeader:
    pos = 2
    size: tuple[int, int] | None = None
    orientation = 1
    while True:
        if pos + 4 > len(d):
            raise _Corrupt("JPEG header ends before the image data (truncated)")
        if d[pos] != 0xFF:
            raise _Corrupt(f"corrupt JPEG header (no marker at byte {pos})")
        marker = d[pos + 1]
        if marker == 0xFF:  # fill byte
            pos += 1
            continue
        if marker in (0x01, 0xD8) or 0xD0 <= marker <= 0xD7:  # markers without a length
            pos += 2
            continue
        if marker == 0xD9:
            break
        seglen = _u16(d, pos + 2)
        seg = d[pos + 4 : pos + 2 + seglen]
        if marker in _JPEG_SOF:
            if len(seg) < 5:
                raise _Corrupt("JPEG frame header is truncated")
            height, width = _u16(seg, 1), _u16(seg, 3)
            size = (width, height)
        elif marker == 0xE1 and seg.startswith(b"Exif\x00\x00") and orientation == 1:
            orientation = _exif_orientation(seg)
        elif marker == 0xDA:  # start of scan: the frame header must have come already
            break
        pos += 2 + seglen
    if size is None:
        raise _Corrupt("JPEG has no frame header")
    return ImageHeader("jpeg", size[0], size[1], orientation)


def _png_header(d: bytes) -> ImageHeader:
    if len(d) < 33 or d[12:16] != b"IHDR":
        raise _Corrupt("PNG header is truncated or has no IHDR chunk")
    width, height = _u32(d, 16), _u32(d, 20)
    grey = d[25] in (0, 4)  # colour type: greyscale, greyscale + alpha
    orientation = 1
    pos = 8
    # Walk the chunk headers only (cheap) to find an eXIf chunk anywhere in the file.
    while pos + 8 <= len(d):
        length = _u32(d, pos)
        kind = d[pos + 4 : pos + 8]
        if kind == b"eXIf":
            orientation = _exif_orientation(d[pos + 8 : pos + 8 + length])
            break
        if kind == b"IEND":
            break
        pos += 12 + length
    return ImageHeader("png", width, height, orientation, grey)


def _webp_header(d: bytes) -> ImageHeader:
    pos = 12
    size: tuple[int, int] | None = None
    orientation = 1
    while pos + 8 <= len(d):
        fourcc = d[pos : pos + 4]
        length = _u32(d, pos + 4, "<")
        p = d[pos + 8 : pos + 8 + length]
        if fourcc == b"VP8X" and len(p) >= 10:
            size = (int.from_bytes(p[4:7], "little") + 1, int.from_bytes(p[7:10], "little") + 1)
        elif fourcc == b"VP8 " and size is None:
            if len(p) < 10 or p[3:6] != b"\x9d\x01\x2a":
                raise _Corrupt("corrupt WebP (VP8) header")
            size = (_u16(p, 6, "<") & 0x3FFF, _u16(p, 8, "<") & 0x3FFF)
        elif fourcc == b"VP8L" and size is None:
            if len(p) < 5 or p[0] != 0x2F:
                raise _Corrupt("corrupt WebP (VP8L) header")
            bits = _u32(p, 1, "<")
            size = ((bits & 0x3FFF) + 1, ((bits >> 14) & 0x3FFF) + 1)
        elif fourcc == b"EXIF":
            orientation = _exif_orientation(p)
        pos += 8 + length + (length & 1)
    if size is None:
        raise _Corrupt("WebP has no image chunk (truncated?)")
    return ImageHeader("webp", size[0], size[1], orientation)


def _bmp_header(d: bytes) -> ImageHeader:
    if len(d) < 26:
        raise _Corrupt("BMP header is truncated")
    hdr = _u32(d, 14, "<")
    if hdr == 12:  # OS/2 BITMAPCOREHEADER
        width, height = _u16(d, 18, "<"), _u16(d, 20, "<")
    else:
        width, height = struct.unpack_from("<ii", d, 18)
    return ImageHeader("bmp", abs(width), abs(height))


def _pnm_header(d: bytes) -> ImageHeader:
    tokens: list[int] = []
    pos = 2
    while len(tokens) < 2:
        while pos < len(d) and (d[pos : pos + 1].isspace() or d[pos] == ord("#")):
            if d[pos] == ord("#"):
                while pos < len(d) and d[pos] not in b"\r\n":
                    pos += 1
            else:
                pos += 1
        start = pos
        while pos < len(d) and d[pos : pos + 1].isdigit():
            pos += 1
        if pos == start:
            raise _Corrupt("corrupt PNM header (no width/height)")
        tokens.append(int(d[start:pos]))
    return ImageHeader("pnm", tokens[0], tokens[1])


def _tiff_header(d: bytes) -> ImageHeader:
    tags = _tiff_tags(d, [256, 257, 274])
    if 256 not in tags or 257 not in tags:
        raise _Corrupt("TIFF has no width/height tags (truncated?)")
    o = tags.get(274, 1)
    return ImageHeader("tiff", tags[256], tags[257], o if 1 <= o <= 8 else 1)


def read_image_header(data: bytes) -> ImageHeader:
    """Identify a still image from its bytes and read its claimed size and EXIF orientation.

    Args:
        data: The file's bytes (only the header part is looked at, except for PNG/WebP chunk walks).

    Returns:
        The :class:`ImageHeader`.

    Raises:
        ValueError: Not a supported format or a malformed header; the message says which.
    """
    try:
        if data.startswith(b"\x89PNG\r\n\x1a\n"):
            return _png_header(data)
        if data.startswith(b"\xff\xd8\xff"):
            return _jpeg_header(data)
        if data[:4] == b"RIFF" and data[8:12] == b"WEBP":
            return _webp_header(data)
        if data[:2] == b"BM":
            return _bmp_header(data)
        if data[:4] in (b"II*\x00", b"MM\x00*", b"II+\x00", b"MM\x00+"):
            return _tiff_header(data)
        if len(data) >= 3 and data[:1] == b"P" and data[1:2] in b"123456" and data[2:3].isspace():
            return _pnm_header(data)
    except (_Corrupt, struct.error) as err:
        msg = str(err) if isinstance(err, _Corrupt) else "header is truncated"
        raise ValueError(msg) from err
    if data[:4] in (b"GIF8",):
        raise ValueError("GIF images are not supported (use PNG, JPEG, WebP, BMP, TIFF or PPM/PGM)")
    if data[4:12] in (b"ftypheic", b"ftypheix", b"ftypmif1", b"ftypavif"):
        raise ValueError("HEIF/AVIF images are not supported (use PNG, JPEG, WebP, BMP, TIFF or PPM/PGM)")
    raise ValueError("not an image: the content is not PNG, JPEG, WebP, BMP, TIFF or PPM/PGM")


def apply_orientation(arr: np.ndarray, orientation: int) -> np.ndarray:
    """Turn stored pixels (H, W[, C]) upright according to an EXIF orientation tag 1..8.

    Tag meanings (EXIF 2.3, 0th row / 0th column): 2 mirror, 3 rotate 180, 4 flip, 5 transpose,
    6 rotate 90 clockwise, 7 transverse, 8 rotate 90 counter-clockwise.
    """
    if orientation == 2:
        arr = arr[:, ::-1]
    elif orientation == 3:
        arr = arr[::-1, ::-1]
    elif orientation == 4:
        arr = arr[::-1]
    elif orientation == 5:
        arr = arr.swapaxes(0, 1)
    elif orientation == 6:
        arr = arr.swapaxes(0, 1)[:, ::-1]
    elif orientation == 7:
        arr = arr.swapaxes(0, 1)[::-1, ::-1]
    elif orientation == 8:
        arr = arr.swapaxes(0, 1)[::-1]
    return np.ascontiguousarray(arr)


# --------------------------------------------------------------------------------------------
# still images


@attrs.frozen(eq=False)
class LoadedImage:
    """A decoded still image, upright, with what is needed to write a result back faithfully.

    Attributes:
        path: The file it came from.
        rgb: (H, W, 3) uint8 RGB, what the attack works on. For 16-bit input it is the samples
            rounded to 8 bits; for greyscale input the grey channel repeated three times.
        format: Format sniffed from the content (``"png"``, ``"jpeg"``, ...).
        bit_depth: 8 or 16 (bits per sample of the file).
        grey: The file had a single colour channel (with or without alpha).
        alpha: (H, W) alpha channel in the file's depth (uint8 or uint16), or None.
        rgb16: (H, W, 3) uint16 original samples for 16-bit input, else None.
        orientation: The EXIF orientation that was applied (1 = none).

    Shape:
        ``rgb``: (H, W, 3); ``alpha``: (H, W).
    """

    path: Path
    rgb: np.ndarray
    format: str
    bit_depth: int = 8
    grey: bool = False
    alpha: np.ndarray | None = None
    rgb16: np.ndarray | None = None
    orientation: int = 1

    @property
    def height(self) -> int:
        return int(self.rgb.shape[0])

    @property
    def width(self) -> int:
        return int(self.rgb.shape[1])


def _max_file_bytes(max_pixels: int) -> int:
    # Largest plausible file for an image within the pixel limit: 16-bit RGBA stored
    # uncompressed (8 bytes a pixel) plus room for metadata.
    return max_pixels * 8 + (64 << 20)


def _read_regular_file(path: Path, max_bytes: int | None, what: str = "--max-pixels") -> bytes:
    try:
        st = os.stat(path)
    except FileNotFoundError:
        if os.path.lexists(path):
            raise _input_error(path, "broken symbolic link") from None
        raise _input_error(path, "no such file") from None
    except OSError as err:
        raise _input_error(path, err.strerror or err) from None
    if stat.S_ISDIR(st.st_mode):
        raise _input_error(path, "is a folder, not a file")
    if not stat.S_ISREG(st.st_mode):
        raise _input_error(path, "not a regular file")
    if st.st_size == 0:
        raise _input_error(path, "empty file (0 bytes)")
    if max_bytes is not None and st.st_size > max_bytes:
        raise _input_error(
            path,
            f"file is {st.st_size / 1e9:.1f} GB, larger than any image within the pixel limit "
            f"could be (raise it with {what})",
        )
    try:
        with open(path, "rb") as f:
            return f.read()
    except OSError as err:
        raise _input_error(path, f"cannot read: {err.strerror or err}") from None


def read_image(path: PathLike, max_pixels: int | None = DEFAULT_MAX_PIXELS) -> LoadedImage:
    """Read a still image safely.

    The header is parsed first and an image claiming more than ``max_pixels`` pixels is refused
    before any decoding (decompression bombs). EXIF orientation is applied; 16-bit samples,
    alpha and greyscale are kept on the returned object (see the module docstring for the
    write-back policy).

    Args:
        path: The image file (JPEG, PNG, WebP, BMP, TIFF, PPM/PGM; the content decides, not the
            extension).
        max_pixels: Largest accepted width x height, or None for no limit (``--max-pixels``).

    Returns:
        The :class:`LoadedImage`.

    Raises:
        InputError: ``"<path>: <problem>"`` for a missing, empty, truncated, non-image, too large
            or otherwise undecodable file.
    """
    path = Path(path)
    data = _read_regular_file(path, None if max_pixels is None else _max_file_bytes(max_pixels))
    try:
        header = read_image_header(data)
    except ValueError as err:
        raise _input_error(path, err) from None
    if header.width <= 0 or header.height <= 0:
        raise _input_error(path, f"header claims an empty {header.width}x{header.height} image")
    claimed = header.width * header.height
    if max_pixels is not None and claimed > max_pixels:
        raise _input_error(
            path,
            f"header claims {header.width}x{header.height} = {_megapixels(claimed)}, over the limit of "
            f"{_megapixels(max_pixels)} (raise it with --max-pixels)",
        )
    cv2 = _cv2()
    with _quiet_opencv():
        try:
            arr = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_UNCHANGED)
        except cv2.error as err:
            raise _input_error(path, f"cannot decode {header.format.upper()}: {err}") from None
    del data
    if arr is None or arr.size == 0:
        raise _input_error(path, f"cannot decode {header.format.upper()} data (truncated or corrupt)")
    if arr.shape[0] != header.height or arr.shape[1] != header.width:
        raise _input_error(
            path,
            f"decoded size {arr.shape[1]}x{arr.shape[0]} differs from the header's "
            f"{header.width}x{header.height} (corrupt file)",
        )
    if arr.dtype == np.uint8:
        depth = 8
    elif arr.dtype == np.uint16:
        depth = 16
    else:
        raise _input_error(path, f"unsupported sample type {arr.dtype} (only 8- and 16-bit images are supported)")
    arr = apply_orientation(arr, header.orientation)

    channels = 1 if arr.ndim == 2 else arr.shape[2]
    alpha = None
    if channels == 1:
        grey = True
        samples = np.repeat(arr.reshape(arr.shape[0], arr.shape[1], 1), 3, axis=2)
    elif channels == 2 or (channels == 4 and header.grey):
        # grey + alpha: OpenCV expands a PNG's grey+alpha to BGRA with B = G = R
        grey = True
        samples = np.repeat(arr[:, :, :1], 3, axis=2)
        alpha = np.ascontiguousarray(arr[:, :, -1])
    elif channels in (3, 4):
        grey = False
        samples = arr[:, :, 2::-1]  # BGR(A) -> RGB
        if channels == 4:
            alpha = np.ascontiguousarray(arr[:, :, 3])
    else:
        raise _input_error(path, f"unsupported channel count {channels}")
    samples = np.ascontiguousarray(samples)
    if depth == 16:
        rgb16 = samples
        rgb = np.rint(samples / 257.0).astype(np.uint8)
    else:
        rgb16 = None
        rgb = samples
    return LoadedImage(
        path=path,
        rgb=rgb,
        format=header.format,
        bit_depth=depth,
        grey=grey,
        alpha=alpha,
        rgb16=rgb16,
        orientation=header.orientation,
    )


# what each output format can hold: (alpha, 16-bit)
_WRITE_CAPS: dict[str, tuple[bool, bool]] = {
    ".png": (True, True),
    ".tif": (True, True),
    ".tiff": (True, True),
    ".webp": (True, False),
    ".jpg": (False, False),
    ".jpeg": (False, False),
    ".bmp": (False, False),
    ".ppm": (False, True),
    ".pgm": (False, True),
    ".pnm": (False, True),
}


def compose_output(image: np.ndarray, like: LoadedImage | None, suffix: str = ".png") -> np.ndarray:
    """Turn an attacked RGB result into the array OpenCV writes, restoring depth, alpha and greyscale.

    Args:
        image: (H, W, 3) RGB result, uint8 (float input is rounded and clipped to 0..255).
        like: The :class:`LoadedImage` the result came from, or None for a plain 8-bit RGB file.
        suffix: Output extension (decides whether 16 bits and alpha can be kept).

    Returns:
        (H, W), (H, W, 3) or (H, W, 4) array in OpenCV's BGR(A) order, uint8 or uint16.

    Raises:
        OutputError: The result's size differs from ``like`` or the format cannot hold its alpha.
    """
    suffix = suffix.lower()
    if suffix not in _WRITE_CAPS:
        raise SpecError(f"cannot write images as {suffix!r}: use one of {', '.join(sorted(_WRITE_CAPS))}")
    keeps_alpha, keeps_16 = _WRITE_CAPS[suffix]
    image = np.asarray(image)
    if image.ndim != 3 or image.shape[2] != 3:
        raise ValueError(f"expected an (H, W, 3) RGB array, got shape {image.shape}")
    if image.dtype != np.uint8:
        image = np.clip(np.rint(image), 0, 255).astype(np.uint8)
    if like is None:
        return np.ascontiguousarray(image[:, :, ::-1])
    if image.shape != like.rgb.shape:
        raise _output_error(
            like.path, f"result is {image.shape[1]}x{image.shape[0]}, the input {like.width}x{like.height}"
        )
    if like.alpha is not None and not keeps_alpha:
        raise OutputError(
            f"{display_path(like.path)}: has an alpha channel that {suffix} cannot hold "
            "(write .png, .webp or .tiff instead)"
        )
    if like.bit_depth == 16 and like.rgb16 is not None and keeps_16:
        # Add the 8-bit perturbation, scaled to 16 bits, to the original samples: untouched
        # pixels keep their exact 16-bit values.
        delta = image.astype(np.int32) - like.rgb.astype(np.int32)
        out = np.clip(like.rgb16.astype(np.int32) + delta * 257, 0, 65535).astype(np.uint16)
    else:
        out = image  # 8-bit input, or a 16-bit input written to an 8-bit format (quantised)
    alpha = like.alpha
    if alpha is not None and alpha.dtype != out.dtype:
        if out.dtype == np.uint16:
            alpha = (alpha.astype(np.uint32) * 257).astype(np.uint16)
        else:
            alpha = np.rint(alpha / 257.0).astype(np.uint8)
    if like.grey:
        grey = np.rint(out.astype(np.float64).mean(axis=2)).astype(out.dtype)
        if alpha is None:
            return grey
        out = np.repeat(grey[:, :, None], 3, axis=2)
    bgr = out[:, :, ::-1]
    if alpha is not None:
        bgr = np.dstack([bgr, alpha])
    return np.ascontiguousarray(bgr)


def _encode_params(suffix: str, jpeg_quality: int) -> list[int]:
    cv2 = _cv2()
    if suffix in (".jpg", ".jpeg"):
        return [cv2.IMWRITE_JPEG_QUALITY, int(jpeg_quality)]
    if suffix == ".webp":
        return [cv2.IMWRITE_WEBP_QUALITY, 101]  # > 100 selects lossless WebP
    if suffix == ".png":
        return [cv2.IMWRITE_PNG_COMPRESSION, 3]
    return []


def _temp_name(path: Path) -> Path:
    # Hidden (skipped by iter_inputs), in the destination folder (os.replace stays on one
    # file system), ending with the real suffix (encoders and muxers pick formats by extension).
    return path.with_name(f".{path.stem}{_TMP_TAG}{secrets.token_hex(4)}{path.suffix}")


@contextlib.contextmanager
def atomic_path(path: PathLike) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; rename it onto ``path`` only if the block succeeds.

    On an exception the temporary file or folder is deleted and ``path`` is left untouched, so a
    final name never holds a partial file. Parent folders are created.

    Args:
        path: The final file or folder name.

    Yields:
        The temporary path to write (a file or a folder, the caller decides).
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = _temp_name(path)
    try:
        yield tmp
        if tmp.is_dir() and not tmp.is_symlink():
            _replace_dir(tmp, path)
        else:
            os.replace(tmp, path)
    except BaseException:
        _remove(tmp)
        raise


def _remove(p: Path) -> None:
    with contextlib.suppress(OSError):
        if p.is_dir() and not p.is_symlink():
            shutil.rmtree(p)
        else:
            p.unlink()


def _replace_dir(tmp: Path, path: Path) -> None:
    # os.replace cannot put a folder over a non-empty folder: move the old one aside first.
    if os.path.lexists(path):
        old = path.with_name(f".{path.name}{_TMP_TAG}old-{secrets.token_hex(4)}")
        os.replace(path, old)
        os.replace(tmp, path)
        _remove(old)
    else:
        os.replace(tmp, path)


def write_bytes_atomic(path: PathLike, data: bytes, inputs: Iterable[PathLike] = ()) -> Path:
    """Write ``data`` to ``path`` atomically (temporary file + fsync + rename).

    Raises:
        OutputError: ``path`` is one of ``inputs``, or the file system refuses the write.
    """
    path = Path(path)
    ensure_not_input(path, inputs)
    try:
        with atomic_path(path) as tmp, open(tmp, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
    except OSError as err:
        raise _output_error(path, f"cannot write: {err.strerror or err}") from None
    return path


def write_image_atomic(
    path: PathLike,
    image: np.ndarray,
    like: LoadedImage | None = None,
    *,
    inputs: Iterable[PathLike] = (),
    jpeg_quality: int = 95,
) -> Path:
    """Write an RGB result as an image file, atomically, never over an input.

    The format follows ``path``'s extension; PNG and TIFF are lossless, WebP is written lossless,
    JPEG uses ``jpeg_quality``. With ``like`` the input's bit depth, alpha and greyscale are
    restored (see :func:`compose_output`).

    Args:
        path: Output file.
        image: (H, W, 3) RGB uint8 result (float is rounded and clipped).
        like: The :class:`LoadedImage` the result was made from (its path counts as an input).
        inputs: Further paths that must not be overwritten.
        jpeg_quality: 0..100 for ``.jpg``/``.jpeg`` output.

    Returns:
        ``path``.

    Raises:
        OutputError: Writing would overwrite an input, the format cannot hold the result, or the
            write failed.
    """
    path = Path(path)
    guarded = list(inputs) + ([like.path] if like is not None else [])
    ensure_not_input(path, guarded)
    suffix = path.suffix.lower()
    arr = compose_output(image, like, suffix)
    cv2 = _cv2()
    with _quiet_opencv():
        try:
            ok, buf = cv2.imencode(suffix, arr, _encode_params(suffix, jpeg_quality))
        except cv2.error as err:
            raise _output_error(path, f"cannot encode as {suffix}: {err}") from None
    if not ok:
        raise _output_error(path, f"cannot encode as {suffix}")
    return write_bytes_atomic(path, buf.tobytes(), guarded)


def ensure_not_input(out: PathLike, inputs: Iterable[PathLike]) -> None:
    """Refuse an output path that is (or resolves to, or is a hard link of) one of the inputs.

    Raises:
        OutputError: naming the output and the input it would overwrite.
    """
    out = Path(out)
    out_real = os.path.realpath(out)
    for inp in inputs:
        same = os.path.realpath(inp) == out_real
        if not same and os.path.exists(out) and os.path.exists(inp):
            with contextlib.suppress(OSError):
                same = os.path.samefile(out, inp)
        if same:
            raise OutputError(
                f"{display_path(out)}: refusing to write over the input {display_path(inp)} "
                "(outputs never overwrite inputs; choose another output folder)"
            )


# --------------------------------------------------------------------------------------------
# walking inputs


class InputEntry(NamedTuple):
    """One item found by :func:`iter_inputs`.

    Attributes:
        path: The file as found (under the folder given; symbolic links not resolved).
        rel: Relative output path mirroring the input folder structure (the file name alone for a
            file given directly). Join it to an output folder; names that are not UTF-8 survive.
        kind: ``"image"``, ``"video"``, ``"error"`` (unreadable: report it, the batch goes on) or
            ``"skip"`` (not an input, e.g. a symbolic link back into a folder already walked).
        error: One-line ``"<path>: <problem>"`` for ``"error"`` and ``"skip"``, else None.
    """

    path: Path
    rel: Path
    kind: str
    error: str | None = None


def media_kind(path: PathLike) -> str | None:
    """``"image"`` or ``"video"`` from the extension (case-insensitive), None when neither."""
    suffix = os.path.splitext(os.fspath(path))[1].lower()
    if suffix in IMAGE_SUFFIXES:
        return "image"
    if suffix in VIDEO_SUFFIXES:
        return "video"
    return None


def _bytes_key(name: str) -> bytes:
    return os.fsencode(name)


def iter_inputs(
    paths: Iterable[PathLike],
    recursive: bool = True,
    *,
    exclude: Iterable[PathLike] = (),
    include_hidden: bool = False,
) -> Iterator[InputEntry]:
    """Walk files and folders and yield every image and video with its mirrored output path.

    Folders are walked in byte-wise name order (deterministic on every platform). Symbolic links
    are followed, but a folder already walked (same device and inode) is not walked again, so
    symlink loops end. Hidden entries (names starting with ``.``, which include this module's
    temporary files) are skipped in folders unless ``include_hidden``. Files with other extensions
    inside folders are ignored silently; a file named explicitly with an unknown extension is an
    error record. Problems never raise: they come back as ``kind="error"`` records.

    Args:
        paths: Files and folders as given on the command line.
        recursive: Descend into sub-folders.
        exclude: Folders not to walk (e.g. the output folder when it lies inside an input folder).
        include_hidden: Also yield hidden files and walk hidden folders.

    Yields:
        :class:`InputEntry` records.
    """
    visited: set[tuple[int, int]] = set()
    for ex in exclude:
        with contextlib.suppress(OSError):
            st = os.stat(ex)
            visited.add((st.st_dev, st.st_ino))
    claimed: dict[Path, Path] = {}

    def emit(entry: InputEntry) -> InputEntry:
        if entry.kind in ("image", "video"):
            prev = claimed.get(entry.rel)
            if prev is not None:
                return entry._replace(
                    kind="error",
                    error=f"{display_path(entry.path)}: would be written to the same output "
                    f"{display_path(entry.rel)} as {display_path(prev)}; skipped",
                )
            claimed[entry.rel] = entry.path
        return entry

    for arg in paths:
        root = Path(arg)
        try:
            st = os.stat(root)
        except OSError as err:
            yield _error_entry(root, Path(root.name), err)
            continue
        if stat.S_ISDIR(st.st_mode):
            key = (st.st_dev, st.st_ino)
            if key in visited:
                yield InputEntry(root, Path(), "skip", f"{display_path(root)}: folder already walked or excluded")
                continue
            visited.add(key)
            for entry in _walk(root, Path(), recursive, visited, include_hidden):
                yield emit(entry)
        elif stat.S_ISREG(st.st_mode):
            kind = media_kind(root)
            if kind is None:
                exts = " ".join(sorted(IMAGE_SUFFIXES | VIDEO_SUFFIXES))
                yield InputEntry(
                    root, Path(root.name), "error", f"{display_path(root)}: unsupported extension (expected one of {exts})"
                )
            elif not os.access(root, os.R_OK):
                yield InputEntry(root, Path(root.name), "error", f"{display_path(root)}: not readable (permission denied)")
            else:
                yield emit(InputEntry(root, Path(root.name), kind))
        else:
            yield InputEntry(root, Path(root.name), "error", f"{display_path(root)}: not a regular file or folder")


def _os_problem(path: Path, err: OSError) -> str:
    import errno

    if isinstance(err, FileNotFoundError):
        return "broken symbolic link" if os.path.lexists(path) else "no such file or folder"
    if err.errno == errno.ELOOP:
        return "symbolic link loop"
    if isinstance(err, PermissionError):
        return "not readable (permission denied)"
    return _one_line(err.strerror or err)


def _error_entry(path: Path, rel: Path, err: OSError) -> InputEntry:
    return InputEntry(path, rel, "error", f"{display_path(path)}: {_os_problem(path, err)}")


def _walk(
    folder: Path, rel: Path, recursive: bool, visited: set[tuple[int, int]], include_hidden: bool
) -> Iterator[InputEntry]:
    try:
        with os.scandir(folder) as it:
            names = sorted((e.name for e in it), key=_bytes_key)
    except OSError as err:
        yield InputEntry(folder, rel, "error", f"{display_path(folder)}: cannot list folder: {_os_problem(folder, err)}")
        return
    for name in names:
        if name.startswith(".") and not include_hidden:
            continue
        path = folder / name
        sub = rel / name
        kind = media_kind(name)
        try:
            st = os.stat(path)
        except OSError as err:
            if kind is not None:  # only report what would have been an input
                yield _error_entry(path, sub, err)
            continue
        if stat.S_ISDIR(st.st_mode):
            if not recursive:
                continue
            key = (st.st_dev, st.st_ino)
            if key in visited:
                yield InputEntry(
                    path, sub, "skip", f"{display_path(path)}: folder already walked (symbolic link loop?); skipped"
                )
                continue
            visited.add(key)
            yield from _walk(path, sub, recursive, visited, include_hidden)
        elif kind is None:
            continue
        elif not stat.S_ISREG(st.st_mode):
            yield InputEntry(path, sub, "error", f"{display_path(path)}: not a regular file")
        elif not os.access(path, os.R_OK):
            yield InputEntry(path, sub, "error", f"{display_path(path)}: not readable (permission denied)")
        else:
            yield InputEntry(path, sub, kind)


def mirror_path(out_dir: PathLike, rel: PathLike, suffix: str | None = None) -> Path:
    """The output path for an input's relative path: ``out_dir / rel``, optionally with a new suffix."""
    p = Path(out_dir) / Path(rel)
    return p.with_suffix(suffix) if suffix is not None else p


# --------------------------------------------------------------------------------------------
# video


@attrs.frozen
class VideoInfo:
    """What :func:`probe_video` found.

    Attributes:
        path: The file.
        fps: Frame rate as an exact fraction (the stream's average rate, else its guessed rate).
        frame_count: Number of frames (from the container, else counted from the packets).
        width: Frame width in pixels.
        height: Frame height in pixels.
        has_audio: The file has at least one audio stream.
        duration: Length in seconds.
        codec: Video codec name.
        audio_codec: First audio stream's codec name, or None.
        frame_count_exact: True when the container states the frame count (then decoding fewer
            frames means the file is truncated).
    """

    path: Path
    fps: Fraction
    frame_count: int
    width: int
    height: int
    has_audio: bool
    duration: float
    codec: str
    audio_codec: str | None = None
    frame_count_exact: bool = True


def _open_input_video(path: Path) -> av.container.InputContainer:
    _read_check(path)
    av = _av()
    try:
        return av.open(os.fspath(path), "r")
    except av.error.FFmpegError as err:
        reason = getattr(err, "strerror", None) or str(err)
        raise _input_error(path, f"not a readable video ({reason}; truncated or not a video?)") from None


def _read_check(path: Path) -> None:
    try:
        st = os.stat(path)
    except FileNotFoundError:
        raise _input_error(path, "broken symbolic link" if os.path.lexists(path) else "no such file") from None
    except OSError as err:
        raise _input_error(path, err.strerror or err) from None
    if not stat.S_ISREG(st.st_mode):
        raise _input_error(path, "not a regular file")
    if st.st_size == 0:
        raise _input_error(path, "empty file (0 bytes)")
    if not os.access(path, os.R_OK):
        raise _input_error(path, "not readable (permission denied)")


def _hms(seconds: float) -> str:
    s = round(seconds)
    return f"{s // 3600}:{s // 60 % 60:02d}:{s % 60:02d}"


def _frames_limit_error(path: Path, n: int | str, fps: Fraction, max_frames: int) -> InputError:
    return _input_error(
        path,
        f"video has {n} frames, over the limit of {max_frames} frames "
        f"({_hms(max_frames / float(fps))} at {float(fps):.4g} fps; raise it with --max-frames)",
    )


def probe_video(path: PathLike, max_frames: int | None = DEFAULT_MAX_FRAMES) -> VideoInfo:
    """Read a video's frame rate, frame count, size and audio presence without decoding frames.

    Args:
        path: The video file.
        max_frames: Longest accepted video in frames, or None (``--max-frames``).

    Returns:
        The :class:`VideoInfo`.

    Raises:
        InputError: Unreadable, truncated (container index missing), no video stream, or longer
            than ``max_frames``.
    """
    path = Path(path)
    av = _av()
    with _open_input_video(path) as container:
        if not container.streams.video:
            what = "only audio" if container.streams.audio else "no streams"
            raise _input_error(path, f"has no video stream ({what})")
        vs = container.streams.video[0]
        cc = vs.codec_context
        width, height = int(cc.width or 0), int(cc.height or 0)
        if width <= 0 or height <= 0:
            raise _input_error(path, "video stream has no frame size (corrupt?)")
        rate = vs.average_rate or vs.guessed_rate or vs.base_rate
        fps = Fraction(rate) if rate else Fraction(0)
        if fps <= 0:
            raise _input_error(path, "video stream has no frame rate")
        n = int(vs.frames or 0)
        exact = n > 0
        if not exact:
            # Matroska/WebM do not store a frame count: count the packets (no decoding).
            limit = None if max_frames is None else max_frames + 1
            try:
                for pkt in container.demux(vs):
                    if pkt.size:
                        n += 1
                        if limit is not None and n >= limit:
                            break
            except av.error.FFmpegError as err:
                raise _input_error(path, f"corrupt or truncated video while counting frames ({err})") from None
            if n == 0:
                raise _input_error(path, "video stream has no frames")
        if max_frames is not None and n > max_frames:
            raise _frames_limit_error(path, n if exact else f"more than {max_frames}", fps, max_frames)
        # The video stream's own duration; the container's may include a longer audio track.
        duration = float(vs.duration * vs.time_base) if vs.duration and vs.time_base else n / float(fps)
        audio = container.streams.audio
        return VideoInfo(
            path=path,
            fps=fps,
            frame_count=n,
            width=width,
            height=height,
            has_audio=bool(audio),
            duration=duration,
            codec=cc.name,
            audio_codec=audio[0].codec_context.name if audio else None,
            frame_count_exact=exact,
        )


def iter_video_frames_timed(
    path: PathLike, max_frames: int | None = DEFAULT_MAX_FRAMES, *, start: int = 0, stop: int | None = None
) -> Iterator[tuple[np.ndarray, Fraction | None]]:
    """Stream a video's frames with their presentation times, one at a time (constant memory).

    Args:
        path: The video file.
        max_frames: Longest accepted video in frames, or None (``--max-frames``).
        start: Yield only frames ``start`` (0-based, in decoding order) and later. The frames
            before are decoded and dropped, never seeked over, so frame ``start`` is exactly the
            frame a full pass yields at that position (seeking lands on key frames only).
        stop: Stop before frame ``stop`` (None: the end). Stopping early skips the check that
            the file holds every frame its container promises.

    Yields:
        ``(rgb, time)``: (H, W, 3) uint8 RGB and the frame's time in seconds (None when unknown).

    Raises:
        InputError: As :func:`probe_video`, plus a corrupt stream, or fewer frames than the
            container promises (truncated file).
    """
    path = Path(path)
    info = probe_video(path, max_frames)
    av = _av()
    container = _open_input_video(path)
    n = 0
    try:
        vs = container.streams.video[0]
        vs.thread_type = "AUTO"
        try:
            for frame in container.decode(vs):
                n += 1
                if max_frames is not None and n > max_frames:
                    raise _frames_limit_error(path, f"more than {max_frames}", info.fps, max_frames)
                if n <= start:
                    continue
                t = frame.pts * frame.time_base if frame.pts is not None and frame.time_base else None
                yield frame.to_ndarray(format="rgb24"), t
                if stop is not None and n >= stop:
                    return
        except av.error.FFmpegError as err:
            raise _input_error(path, f"corrupt or truncated video at frame {n + 1} ({err})") from None
        if info.frame_count_exact and n < info.frame_count:
            raise _input_error(
                path, f"truncated video: the container promises {info.frame_count} frames, only {n} could be decoded"
            )
    finally:
        container.close()


def iter_video_frames(path: PathLike, max_frames: int | None = DEFAULT_MAX_FRAMES) -> Iterator[np.ndarray]:
    """Stream a video's frames as (H, W, 3) uint8 RGB arrays, one at a time (constant memory).

    See :func:`iter_video_frames_timed` for the frames' times and the errors raised.
    """
    for rgb, _ in iter_video_frames_timed(path, max_frames):
        yield rgb


VIDEO_CODECS: dict[str, tuple[str, ...]] = {
    "ffv1": (".mkv", ".avi"),
    "h264": (".mp4", ".mov", ".m4v", ".mkv"),
    "png": ("",),
}
"""Codecs :class:`VideoWriter` offers and the output suffixes each accepts (png: a folder)."""

DEFAULT_VIDEO_SUFFIX = {"ffv1": ".mkv", "h264": ".mp4", "png": ""}
"""The suffix to give an output for each codec (``png`` writes a folder of frames)."""

# audio encoders tried, in order, when the source's audio codec cannot go into the container
_AUDIO_FALLBACKS = ("aac", "libopus", "flac", "libmp3lame")


class _AudioCopy:
    """Copies the first audio stream of a source into an output container as video time advances.

    The packets are remuxed unchanged when the container accepts the codec; otherwise the audio is
    decoded and re-encoded with the first encoder in ``_AUDIO_FALLBACKS`` that the container
    accepts, and ``note`` says so. Interleaving with the video keeps the muxer's buffer small.
    """

    def __init__(self, source: Path, out: Any) -> None:
        av = _av()
        self.note: str | None = None
        self.inp: Any = _open_input_video(source)
        self.stream_in: Any = None
        self.stream_out: Any = None
        self.encoder = False
        self._pending: Any = None
        self._packets: Iterator[Any] | None = None
        if self.inp is None or not self.inp.streams.audio:
            if self.inp is not None:
                self.inp.close()
                self.inp = None
            return
        a = self.inp.streams.audio[0]
        self.stream_in = a
        supported = out.supported_codecs
        name = a.codec_context.name
        if name in supported:
            self.stream_out = out.add_stream_from_template(a)
        else:
            for enc in _AUDIO_FALLBACKS:
                try:
                    codec = av.codec.Codec(enc, "w")
                except Exception:  # encoder not built in
                    continue
                if codec.name in supported or enc in supported:
                    rate = a.codec_context.sample_rate or 48000
                    if codec.audio_rates and rate not in codec.audio_rates:
                        rate = 48000 if 48000 in codec.audio_rates else max(codec.audio_rates)
                    self.stream_out = out.add_stream(enc, rate=rate, layout=a.codec_context.layout.name)
                    self.encoder = True
                    self.note = f"audio {name} cannot go into {out.format.name}: re-encoded to {codec.name}"
                    break
            if self.stream_out is None:
                self.note = f"audio {name} cannot go into {out.format.name} and no encoder fits: audio dropped"
                self.inp.close()
                self.inp = None
                return
        self._packets = iter(self.inp.demux(a))

    def pump(self, out: Any, until: float | None) -> None:
        """Mux the source's audio up to ``until`` seconds (everything when None)."""
        if self._packets is None:
            return
        av = _av()
        while True:
            pkt = self._pending
            self._pending = None
            if pkt is None:
                try:
                    pkt = next(self._packets)
                except (StopIteration, av.error.EOFError):
                    self._packets = None
                    break
                except av.error.FFmpegError:
                    self._packets = None  # a damaged audio tail ends the copy; the video is kept
                    break
            if pkt.dts is None:
                continue
            t = float(pkt.dts * pkt.time_base) if pkt.time_base else 0.0
            if until is not None and t > until:
                self._pending = pkt
                return
            if self.encoder:
                for frame in pkt.decode():
                    frame.pts = None  # let the encoder count samples
                    for p in self.stream_out.encode(frame):
                        out.mux(p)
            else:
                pkt.stream = self.stream_out
                out.mux(pkt)
        if self.encoder:
            for p in self.stream_out.encode(None):
                out.mux(p)

    def close(self) -> None:
        if self.inp is not None:
            self.inp.close()
            self.inp = None


class VideoWriter:
    """Write RGB frames to a video file atomically, keeping the frame rate and copying the audio.

    Use as a context manager: frames go to a hidden temporary file beside ``path`` that is renamed
    onto ``path`` only when the block ends without an exception (and deleted otherwise).

    Codecs:
        * ``"ffv1"`` (default): lossless, RGB stored as ``bgr0`` so no colour conversion; any frame
          size; ``.mkv`` or ``.avi``.
        * ``"h264"``: libx264, ``yuv420p``, quality ``crf`` (0..51, lower is better), ``.mp4``,
          ``.mov``, ``.m4v`` or ``.mkv``. 4:2:0 needs an even width and height: an odd-sized
          frame is padded by repeating its last column/row, so the output is one pixel wider or
          taller (documented, never cropped).
        * ``"png"``: ``path`` is a folder of ``000000.png``, ``000001.png``, ... (lossless, any
          size); the audio is not kept (``audio_note`` says so).

    Timing: without times, frame *i* is shown at ``i / fps`` (constant rate). If the first frame
    is written with a time (seconds, e.g. from :func:`iter_video_frames_timed`), every frame keeps
    its own time, so a variable-frame-rate input keeps its timing (to 1/90000 s; Matroska rounds to
    milliseconds); ``fps`` is then only the nominal rate.

    Args:
        path: Output file (or folder for ``png``).
        fps: Frame rate (an exact :class:`~fractions.Fraction` such as 30000/1001 is kept exactly).
        codec: ``"ffv1"``, ``"h264"`` or ``"png"``.
        crf: h264 quality.
        preset: h264 speed preset.
        audio_from: A video whose first audio stream is copied into the output, or None.
        inputs: Paths the output must not overwrite (``audio_from`` is always one).
    """

    def __init__(
        self,
        path: PathLike,
        fps: Fraction | float | int,
        *,
        codec: str = "ffv1",
        crf: int = 18,
        preset: str = "medium",
        audio_from: PathLike | None = None,
        inputs: Iterable[PathLike] = (),
    ) -> None:
        self.path = Path(path)
        if codec not in VIDEO_CODECS:
            raise SpecError(f"unknown video codec {codec!r}: use one of {', '.join(VIDEO_CODECS)}")
        suffix = self.path.suffix.lower() if codec != "png" else ""
        if suffix not in VIDEO_CODECS[codec]:
            allowed = ", ".join(s for s in VIDEO_CODECS[codec])
            raise SpecError(f"{display_path(self.path)}: codec {codec} needs a {allowed} file")
        self.fps = Fraction(fps).limit_denominator(1_000_000) if not isinstance(fps, Fraction) else fps
        if self.fps <= 0:
            raise SpecError(f"{display_path(self.path)}: frame rate must be positive, got {fps}")
        self.codec = codec
        self.crf = int(crf)
        self.preset = preset
        self.audio_from = Path(audio_from) if audio_from is not None else None
        guarded = list(inputs) + ([self.audio_from] if self.audio_from is not None else [])
        ensure_not_input(self.path, guarded)
        self.frames_written = 0
        self.audio_note: str | None = None
        self._atomic: contextlib.AbstractContextManager[Path] | None = None
        self._tmp: Path | None = None
        self._out: Any = None
        self._stream: Any = None
        self._audio: _AudioCopy | None = None
        self._timed: bool | None = None
        self._last_pts = -1
        self._size: tuple[int, int] | None = None

    # -- context manager

    def __enter__(self) -> VideoWriter:
        self._atomic = atomic_path(self.path)
        self._tmp = self._atomic.__enter__()
        if self.codec == "png":
            self._tmp.mkdir()
            if self.audio_from is not None:
                self.audio_note = "a folder of PNG frames cannot hold audio: audio not kept"
        return self

    def __exit__(self, exc_type: Any, exc: Any, tb: Any) -> None:
        assert self._atomic is not None
        try:
            if exc_type is None:
                self._finish()
        except BaseException as err:
            self._abort()
            self._atomic.__exit__(type(err), err, err.__traceback__)
            raise
        if exc_type is not None:
            self._abort()
            self._atomic.__exit__(exc_type, exc, tb)
            return
        self._atomic.__exit__(None, None, None)

    # -- writing

    _TIMED_BASE = Fraction(1, 90000)

    def write(self, rgb: np.ndarray, time: Fraction | float | None = None) -> None:
        """Append one (H, W, 3) uint8 RGB frame, optionally at ``time`` seconds."""
        av = _av()
        if self._tmp is None:
            raise RuntimeError("VideoWriter.write outside its 'with' block")
        rgb = np.asarray(rgb)
        if rgb.ndim != 3 or rgb.shape[2] != 3:
            raise ValueError(f"expected an (H, W, 3) RGB frame, got shape {rgb.shape}")
        if rgb.dtype != np.uint8:
            rgb = np.clip(np.rint(rgb), 0, 255).astype(np.uint8)
        h, w = rgb.shape[:2]
        if self._size is None:
            self._size = (w, h)
        elif self._size != (w, h):
            raise ValueError(f"frame {self.frames_written} is {w}x{h}, earlier frames {self._size[0]}x{self._size[1]}")
        if self.codec == "png":
            self._write_png(rgb)
            return
        if self._out is None:
            self._timed = time is not None
            self._open(w, h)
        if self.codec == "h264" and (w % 2 or h % 2):
            rgb = np.pad(rgb, ((0, h % 2), (0, w % 2), (0, 0)), mode="edge")
        frame = av.VideoFrame.from_ndarray(np.ascontiguousarray(rgb), format="rgb24")
        if self._timed:
            if time is None:
                raise ValueError("once the first frame has a time, every frame needs one")
            pts = round(Fraction(time) / self._TIMED_BASE)
            pts = max(pts, self._last_pts + 1)  # strictly increasing, whatever the rounding
            t_now = float(Fraction(time))
        else:
            pts = self.frames_written
            t_now = float(pts / self.fps)
        frame.pts = pts
        self._last_pts = pts
        try:
            for packet in self._stream.encode(frame):
                self._out.mux(packet)
            if self._audio is not None:
                self._audio.pump(self._out, t_now)
        except av.error.FFmpegError as err:
            raise _output_error(self.path, f"cannot encode frame {self.frames_written}: {err}") from None
        self.frames_written += 1

    def _write_png(self, rgb: np.ndarray) -> None:
        cv2 = _cv2()
        assert self._tmp is not None
        ok, buf = cv2.imencode(".png", np.ascontiguousarray(rgb[:, :, ::-1]), [cv2.IMWRITE_PNG_COMPRESSION, 3])
        if not ok:
            raise _output_error(self.path, f"cannot encode frame {self.frames_written} as PNG")
        (self._tmp / f"{self.frames_written:06d}.png").write_bytes(buf.tobytes())
        self.frames_written += 1

    def _open(self, w: int, h: int) -> None:
        av = _av()
        assert self._tmp is not None
        options = {"movflags": "+faststart"} if self._tmp.suffix.lower() in (".mp4", ".mov", ".m4v") else {}
        try:
            self._out = av.open(os.fspath(self._tmp), "w", options=options)
            if self.codec == "ffv1":
                stream = self._out.add_stream("ffv1", rate=self.fps)
                stream.pix_fmt = "bgr0"
            else:
                stream = self._out.add_stream("libx264", rate=self.fps)
                stream.pix_fmt = "yuv420p"
                stream.options = {"crf": str(self.crf), "preset": self.preset}
                w, h = w + w % 2, h + h % 2
            stream.width, stream.height = w, h
            stream.codec_context.time_base = self._TIMED_BASE if self._timed else 1 / self.fps
            self._stream = stream
            if self.audio_from is not None:
                self._audio = _AudioCopy(self.audio_from, self._out)
                self.audio_note = self._audio.note
        except av.error.FFmpegError as err:
            raise _output_error(self.path, f"cannot start the {self.codec} video: {err}") from None

    def _finish(self) -> None:
        if self.frames_written == 0:
            raise _output_error(self.path, "no frames were written")
        if self._out is None:  # png folder
            return
        av = _av()
        try:
            for packet in self._stream.encode(None):
                self._out.mux(packet)
            if self._audio is not None:
                self._audio.pump(self._out, None)
        except av.error.FFmpegError as err:
            raise _output_error(self.path, f"cannot finish the video: {err}") from None
        finally:
            self._close()

    def _abort(self) -> None:
        with contextlib.suppress(Exception):
            self._close()

    def _close(self) -> None:
        if self._audio is not None:
            self._audio.close()
            self._audio = None
        if self._out is not None:
            out, self._out = self._out, None
            out.close()


# --------------------------------------------------------------------------------------------
# resume


def is_done(out_path: PathLike) -> bool:
    """True when ``out_path`` exists: outputs are only ever renamed into place complete."""
    return os.path.lexists(out_path)


def sidecar_path(out_path: PathLike) -> Path:
    """The resume sidecar of an output: ``out.png`` -> ``out.png.lb.json``."""
    p = Path(out_path)
    return p.with_name(p.name + SIDECAR_SUFFIX)


def settings_hash(settings: Mapping[str, Any]) -> str:
    """A short stable hash of the settings that shape an output (key order does not matter)."""
    text = json.dumps(settings, sort_keys=True, default=str, separators=(",", ":"))
    return hashlib.sha256(text.encode("utf-8")).hexdigest()[:16]


_HASH_WHOLE_LIMIT = 8 << 20
_HASH_PART = 4 << 20


def input_fingerprint(path: PathLike) -> dict[str, Any]:
    """Size, mtime and a sha256 prefix of a file's bytes.

    The sha256 covers the whole file up to 8 MiB, else its first and last 4 MiB plus its size
    (cheap on long videos; with the size and mtime it catches any realistic change).
    """
    path = Path(path)
    st = os.stat(path)
    h = hashlib.sha256()
    with open(path, "rb") as f:
        if st.st_size <= _HASH_WHOLE_LIMIT:
            h.update(f.read())
            scope = "whole"
        else:
            h.update(f.read(_HASH_PART))
            f.seek(-_HASH_PART, os.SEEK_END)
            h.update(f.read(_HASH_PART))
            h.update(str(st.st_size).encode())
            scope = "head+tail 4 MiB"
    return {"size": st.st_size, "mtime_ns": st.st_mtime_ns, "sha256": h.hexdigest()[:16], "sha256_scope": scope}


class ResultStore:
    """Decides which outputs a rerun can skip, and records finished ones.

    An output counts as finished when its final name exists (:func:`is_done`) *and* its sidecar
    says it was made from the same input (size, then mtime or sha256 prefix) with the same
    settings. ``force=True`` redoes everything.

    Args:
        settings: Everything that shapes an output (attack spec, epsilon, codec, ...); JSON-able.
        force: Never skip (``--force``).
    """

    def __init__(self, settings: Mapping[str, Any], *, force: bool = False) -> None:
        self.settings = dict(settings)
        self.settings_hash = settings_hash(settings)
        self.force = force

    def is_finished(self, input_path: PathLike, out_path: PathLike) -> bool:
        """True when ``out_path`` is complete and was made from this input with these settings."""
        if self.force or not is_done(out_path):
            return False
        try:
            with open(sidecar_path(out_path), encoding="utf-8") as f:
                record = json.load(f)
            if record.get("settings_hash") != self.settings_hash:
                return False
            saved = record["input"]
            st = os.stat(input_path)
            if saved["size"] != st.st_size:
                return False
            if saved["mtime_ns"] == st.st_mtime_ns:
                return True
            return bool(saved["sha256"] == input_fingerprint(input_path)["sha256"])
        except (OSError, ValueError, KeyError, TypeError):
            return False  # no or unreadable sidecar: redo (safe: outputs are replaced atomically)

    def mark_finished(self, input_path: PathLike, out_path: PathLike, **extra: Any) -> Path:
        """Write ``out_path``'s sidecar; call after the output was renamed into place."""
        record = {
            "input_name": display_path(Path(input_path).name),
            "input": input_fingerprint(input_path),
            "settings_hash": self.settings_hash,
            "settings": self.settings,
            **extra,
        }
        data = json.dumps(record, indent=1, sort_keys=True, default=str).encode("utf-8")
        return write_bytes_atomic(sidecar_path(out_path), data, [input_path])


__all__ = [
    "DEFAULT_MAX_FRAMES",
    "DEFAULT_MAX_PIXELS",
    "DEFAULT_VIDEO_SUFFIX",
    "IMAGE_SUFFIXES",
    "SIDECAR_SUFFIX",
    "VIDEO_CODECS",
    "VIDEO_SUFFIXES",
    "ImageHeader",
    "InputEntry",
    "LoadedImage",
    "OutputError",
    "ResultStore",
    "VideoInfo",
    "VideoWriter",
    "apply_orientation",
    "atomic_path",
    "compose_output",
    "display_path",
    "ensure_not_input",
    "input_fingerprint",
    "is_done",
    "iter_inputs",
    "iter_video_frames",
    "iter_video_frames_timed",
    "media_kind",
    "mirror_path",
    "probe_video",
    "read_image",
    "read_image_header",
    "settings_hash",
    "sidecar_path",
    "write_bytes_atomic",
    "write_image_atomic",
]
