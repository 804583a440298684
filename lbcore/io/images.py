"""Still images: headers through Pillow (size, orientation, ICC) before decoding, faithful write-back."""


from __future__ import annotations

import io
import os
import stat
import threading
import warnings
from collections.abc import Iterable
from pathlib import Path
from typing import TYPE_CHECKING, Any

import attrs
import numpy as np

from lbcore.errors import SpecError

if TYPE_CHECKING:  # pragma: no cover
    pass


from lbcore.io.files import (
    DEFAULT_MAX_PIXELS,
    OutputError,
    PathLike,
    _cv2,
    _input_error,
    _megapixels,
    _output_error,
    _quiet_opencv,
    display_path,
    ensure_not_input,
    write_bytes_atomic,
)

# --------------------------------------------------------------------------------------------
# header parsing (dimensions before decoding, EXIF orientation)


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
        icc_profile: The embedded ICC colour profile (bytes), or None.
    """

    format: str
    width: int
    height: int
    orientation: int = 1
    grey: bool = False
    icc_profile: bytes | None = attrs.field(default=None, repr=False)


# Pillow's names for the formats read here, and ours.
_PIL_FORMATS = {"PNG": "png", "JPEG": "jpeg", "WEBP": "webp", "BMP": "bmp", "TIFF": "tiff", "PPM": "pnm"}
_GREY_MODES = frozenset({"1", "L", "LA", "La", "I", "I;16", "I;16B", "I;16L", "I;16N", "F"})
_EXIF_ORIENTATION = 0x0112
# Pillow's own decompression-bomb guard (Image.MAX_IMAGE_PIXELS) is lifted while a header is
# read, under this lock, so that --max-pixels (checked right after, with the claimed size in
# the message) is the one limit, whichever of the two is larger.
_PIL_LOCK = threading.Lock()


def read_image_header(data: bytes) -> ImageHeader:
    """Identify a still image from its bytes and read its claimed size, EXIF orientation and ICC
    profile, with Pillow's lazy ``Image.open`` (headers only: no pixel is decoded).

    Args:
        data: The file's bytes.

    Returns:
        The :class:`ImageHeader`.

    Raises:
        ValueError: Not a supported format or a malformed header; the message says which.
    """
    if data[:4] == b"GIF8":
        raise ValueError("GIF images are not supported (use PNG, JPEG, WebP, BMP, TIFF or PPM/PGM)")
    if data[4:12] in (b"ftypheic", b"ftypheix", b"ftypmif1", b"ftypavif"):
        raise ValueError("HEIF/AVIF images are not supported (use PNG, JPEG, WebP, BMP, TIFF or PPM/PGM)")
    from PIL import Image

    try:
        with _PIL_LOCK, warnings.catch_warnings():
            warnings.simplefilter("ignore")
            saved = Image.MAX_IMAGE_PIXELS
            Image.MAX_IMAGE_PIXELS = None
            try:
                im = Image.open(io.BytesIO(data), formats=list(_PIL_FORMATS))
            finally:
                Image.MAX_IMAGE_PIXELS = saved
    except Image.UnidentifiedImageError:
        raise ValueError("not an image: the content is not PNG, JPEG, WebP, BMP, TIFF or PPM/PGM") from None
    except Exception as err:  # Pillow raises many types on a damaged header
        raise ValueError(f"malformed or truncated header ({type(err).__name__}: {err})") from None
    with im:
        width, height = im.size
        fmt = _PIL_FORMATS.get(str(im.format), str(im.format).lower())
        orientation = _orientation(im)
        icc = im.info.get("icc_profile") or None
        grey = _is_grey(im)
    return ImageHeader(fmt, int(width), int(height), orientation, grey, icc if isinstance(icc, bytes) else None)


def _is_grey(im: Any) -> bool:
    """One colour channel (with or without alpha). Pillow widens 16-bit grey+alpha PNGs to RGBA;
    the raw mode of the first tile still says ``LA;16B``."""
    if im.mode in _GREY_MODES or im.mode.startswith("I;16"):
        return True
    tile = getattr(im, "tile", None) or []
    raw = tile[0].args if tile and isinstance(tile[0].args, (tuple, str)) else None
    rawmode = raw if isinstance(raw, str) else (raw[0] if raw and isinstance(raw[0], str) else "")
    return rawmode.startswith(("L", "I;16"))


def _orientation(im: Any) -> int:
    """The EXIF orientation 1..8 of an opened image (1 when absent or unreadable).

    Only what the header holds is read: for PNG that is an ``eXIf`` chunk before the image data,
    where the PNG specification puts it, so reading it never decodes pixels."""
    from PIL import Image

    try:
        if im.format == "PNG":
            raw = im.info.get("exif")
            if not raw:
                return 1
            exif = Image.Exif()
            exif.load(raw)
        else:
            exif = im.getexif()
        o = int(exif.get(_EXIF_ORIENTATION, 1))
    except Exception:  # a broken EXIF block is no reason to refuse the picture
        return 1
    return o if 1 <= o <= 8 else 1


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
        grey_content: Three colour channels equal at every pixel (a grey photo stored as RGB):
            the result is written with its channels averaged, so that it stays grey.
        alpha: (H, W) alpha channel in the file's depth (uint8 or uint16), or None.
        rgb16: (H, W, 3) uint16 original samples for 16-bit input, else None.
        orientation: The EXIF orientation that was applied (1 = none).
        icc_profile: The file's embedded ICC colour profile, or None.

    Shape:
        ``rgb``: (H, W, 3); ``alpha``: (H, W).
    """

    path: Path
    rgb: np.ndarray
    format: str
    bit_depth: int = 8
    grey: bool = False
    grey_content: bool = False
    alpha: np.ndarray | None = None
    rgb16: np.ndarray | None = None
    orientation: int = 1
    icc_profile: bytes | None = attrs.field(default=None, repr=False)

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
    grey_content = False
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
        grey_content = bool(np.array_equal(arr[:, :, 0], arr[:, :, 1]) and np.array_equal(arr[:, :, 1], arr[:, :, 2]))
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
        grey_content=grey_content,
        alpha=alpha,
        rgb16=rgb16,
        orientation=header.orientation,
        icc_profile=header.icc_profile,
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
    if like.grey or like.grey_content:
        grey = np.rint(out.astype(np.float64).mean(axis=2)).astype(out.dtype)
        if alpha is None and like.grey:
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


_IJG_LUMA = np.array([
    16, 11, 10, 16, 24, 40, 51, 61, 12, 12, 14, 19, 26, 58, 60, 55, 14, 13, 16, 24, 40, 57, 69, 56,
    14, 17, 22, 29, 51, 87, 80, 62, 18, 22, 37, 56, 68, 109, 103, 77, 24, 35, 55, 64, 81, 104, 113, 92,
    49, 64, 78, 87, 103, 121, 120, 101, 72, 92, 95, 98, 112, 100, 103, 99], dtype=np.float64)


def _ijg_luma(quality: int) -> np.ndarray:
    scale = 5000.0 / quality if quality < 50 else 200.0 - 2.0 * quality
    return np.clip(np.floor((_IJG_LUMA * scale + 50.0) / 100.0), 1, 255)


@attrs.frozen
class JpegSettings:
    """How a JPEG file was encoded, as far as a re-encode needs: the IJG quality whose luma
    table is nearest the file's (exact for libjpeg/Pillow/OpenCV files) and the chroma
    subsampling (``444``, ``422`` or ``420``)."""

    quality: int
    subsampling: str


def jpeg_settings(path: PathLike) -> JpegSettings | None:
    """The :class:`JpegSettings` of a JPEG file, or None when it is not a baseline JPEG Pillow
    can read the tables of."""
    from PIL import Image, JpegImagePlugin

    try:
        with _PIL_LOCK, Image.open(path) as im:
            if im.format != "JPEG":
                return None
            tables = getattr(im, "quantization", None) or {}
            sampling = JpegImagePlugin.get_sampling(im)
    except Exception:  # not readable as JPEG: the caller falls back to its defaults
        return None
    if 0 not in tables:
        return None
    # the file's table is stored in zig-zag order; compare sorted values, which the order cannot change
    luma = np.sort(np.asarray(tables[0], dtype=np.float64))
    best = min(range(1, 101), key=lambda q: (float(np.abs(np.sort(_ijg_luma(q)) - luma).sum()), -q))
    sub = {0: "444", 1: "422", 2: "420"}.get(int(sampling), "420")
    return JpegSettings(int(best), sub)


def _pil_encode(arr: np.ndarray, suffix: str, quality: int | None, subsampling: str | None,
                icc_profile: bytes | None) -> bytes:
    """Encode :func:`compose_output`'s BGR(A)/grey array with Pillow (JPEG quality and chroma
    subsampling, lossy or lossless WebP, ICC profiles)."""
    from PIL import Image

    if arr.ndim == 2:
        im = Image.fromarray(arr)
    elif arr.shape[2] == 4:
        im = Image.fromarray(np.ascontiguousarray(arr[:, :, [2, 1, 0, 3]]), "RGBA")
    else:
        im = Image.fromarray(np.ascontiguousarray(arr[:, :, ::-1]), "RGB")
    kwargs: dict[str, Any] = {}
    if icc_profile:
        kwargs["icc_profile"] = icc_profile
    buf = io.BytesIO()
    if suffix in (".jpg", ".jpeg"):
        sub = {"444": 0, "422": 1, "420": 2}[subsampling or "420"]
        im.save(buf, "JPEG", quality=int(quality if quality is not None else 95), subsampling=sub,
                optimize=True, **kwargs)
    elif suffix == ".webp":
        if quality is None:
            im.save(buf, "WEBP", lossless=True, quality=100, method=4, **kwargs)
        else:
            im.save(buf, "WEBP", quality=int(quality), method=4, **kwargs)
    else:
        im.save(buf, "PNG", compress_level=3, **kwargs)
    return buf.getvalue()


def encode_image(image: np.ndarray, like: LoadedImage | None, suffix: str, *, quality: int | None = None,
                 subsampling: str | None = None, icc_profile: bytes | None = None) -> bytes:
    """The bytes :func:`write_image_atomic` would write for ``suffix`` (``.jpg``/``.webp`` with
    ``quality`` and, for JPEG, ``subsampling``; WebP without quality is lossless). Encoded with
    Pillow when a quality, subsampling or ICC profile must be honoured, else with OpenCV."""
    suffix = suffix.lower()
    arr = compose_output(image, like, suffix)
    if suffix in (".jpg", ".jpeg", ".webp") or (suffix == ".png" and icc_profile and arr.dtype == np.uint8):
        return _pil_encode(arr, suffix, quality, subsampling, icc_profile)
    cv2 = _cv2()
    with _quiet_opencv():
        ok, buf = cv2.imencode(suffix, arr, _encode_params(suffix, 95))
    if not ok:
        raise SpecError(f"cannot encode as {suffix}")
    return bytes(buf.tobytes())


def write_image_atomic(
    path: PathLike,
    image: np.ndarray,
    like: LoadedImage | None = None,
    *,
    inputs: Iterable[PathLike] = (),
    jpeg_quality: int = 95,
    data: bytes | None = None,
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
        data: the file's bytes, encoded already (:func:`encode_image`); ``image`` is then unused.

    Returns:
        ``path``.

    Raises:
        OutputError: Writing would overwrite an input, the format cannot hold the result, or the
            write failed.
    """
    path = Path(path)
    guarded = list(inputs) + ([like.path] if like is not None else [])
    ensure_not_input(path, guarded)
    if data is not None:  # already encoded (encode_image)
        return write_bytes_atomic(path, data, guarded)
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


