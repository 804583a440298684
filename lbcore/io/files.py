"""Paths, messages, atomic writes and folder walking: the part of the file layer every format shares."""


from __future__ import annotations

import contextlib
import os
import secrets
import shutil
import stat
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any, NamedTuple

from lbcore.errors import InputError, LBError

if TYPE_CHECKING:  # pragma: no cover
    pass

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
    text = raw.decode("utf-8", "backslashreplace")
    if text.isprintable():
        return text
    # a newline, tab or other control character in a name would break "one line per file"
    return "".join(c if c.isprintable() else c.encode("unicode_escape").decode("ascii") for c in text)


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
    from lbcore.errors import need_extra

    return need_extra("av", "video", "reading and writing video")


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
    paths = list(paths)
    visited: set[tuple[int, int]] = set()
    for ex in exclude:
        with contextlib.suppress(OSError):
            st = os.stat(ex)
            visited.add((st.st_dev, st.st_ino))
    claimed: dict[Path, Path] = {}
    walked: set[tuple[int, int]] = set()  # files found in folders
    named: set[tuple[int, int]] = set()  # files given by name
    # several inputs: each folder is mirrored under its own name (faces/a.jpg and photos/a.jpg
    # cannot collide); a single folder's contents go straight into the output folder
    own_names = len(paths) > 1

    def emit(entry: InputEntry, by_name: bool = False) -> InputEntry | None:
        if entry.kind in ("image", "video"):
            try:
                st = os.stat(entry.path)
                key: tuple[int, int] | None = (st.st_dev, st.st_ino)
            except OSError:
                key = None
            if key is not None:
                # a file given by name and also inside a given folder (or twice by name) is
                # protected once; links between files inside folders still mirror both names
                if key in named or (by_name and key in walked):
                    return None
                (named if by_name else walked).add(key)
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
            base = Path(_root_name(root)) if own_names else Path()
            for entry in _walk(root, base, recursive, visited, include_hidden):
                out = emit(entry)
                if out is not None:
                    yield out
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
                out = emit(InputEntry(root, Path(root.name), kind), by_name=True)
                if out is not None:
                    yield out
        else:
            yield InputEntry(root, Path(root.name), "error", f"{display_path(root)}: not a regular file or folder")


def _root_name(root: Path) -> str:
    """The name an input folder is mirrored under (``.`` and ``..`` become the real folder's name)."""
    name = root.name
    if name in ("", ".", ".."):
        name = Path(os.path.abspath(root)).name or "input"
    return name


SYMLINK_LOOP = "symbolic link loop; skipped"
"""The one message for every symbolic link loop met while walking (self-loops and longer ones)."""


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
            import errno

            if err.errno == errno.ELOOP:  # a link loop of any length: said, whatever its name
                yield InputEntry(path, sub, "error", f"{display_path(path)}: {SYMLINK_LOOP}")
            elif kind is not None:  # only report what would have been an input
                yield _error_entry(path, sub, err)
            continue
        if stat.S_ISDIR(st.st_mode):
            if not recursive:
                continue
            key = (st.st_dev, st.st_ino)
            if key in visited:
                real, here = os.path.realpath(path), os.path.realpath(folder)
                looped = here == real or here.startswith(real.rstrip(os.sep) + os.sep)
                problem = SYMLINK_LOOP if looped else "folder already walked; skipped"
                yield InputEntry(path, sub, "skip", f"{display_path(path)}: {problem}")
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


