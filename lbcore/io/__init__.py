"""The robust file layer behind ``lb attack``, ``lb protect`` and ``lb evaluate``.

Modules: :mod:`lbcore.io.files` (paths, messages, atomic writes, folder walking),
:mod:`lbcore.io.images`, :mod:`lbcore.io.video`, :mod:`lbcore.io.store` (resume) and
:mod:`lbcore.io.annotations` (landmark files). Their public names are re-exported here.

Reading
    :func:`read_image` identifies the format from the file's bytes (never from its name), reads the
    claimed width and height, the EXIF orientation and the ICC profile from the header with
    Pillow's lazy ``Image.open`` and refuses decompression bombs *before* decoding. It
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

from lbcore.io.files import (
    _TMP_TAG,
    DEFAULT_MAX_FRAMES,
    DEFAULT_MAX_PIXELS,
    IMAGE_SUFFIXES,
    SIDECAR_SUFFIX,
    VIDEO_SUFFIXES,
    InputEntry,
    OutputError,
    PathLike,
    atomic_path,
    display_path,
    ensure_not_input,
    iter_inputs,
    media_kind,
    mirror_path,
    write_bytes_atomic,
)
from lbcore.io.images import (
    ImageHeader,
    LoadedImage,
    apply_orientation,
    compose_output,
    read_image,
    read_image_header,
    write_image_atomic,
)
from lbcore.io.store import ResultStore, input_fingerprint, is_done, settings_hash, sidecar_path
from lbcore.io.video import (
    DEFAULT_VIDEO_SUFFIX,
    VideoInfo,
    VideoWriter,
    iter_video_frames,
    iter_video_frames_timed,
    probe_video,
)

__all__ = [
    "DEFAULT_MAX_FRAMES", "DEFAULT_MAX_PIXELS", "DEFAULT_VIDEO_SUFFIX", "IMAGE_SUFFIXES", "SIDECAR_SUFFIX",
    "VIDEO_SUFFIXES", "ImageHeader", "InputEntry", "LoadedImage", "OutputError", "PathLike", "ResultStore",
    "VideoInfo", "VideoWriter", "_TMP_TAG", "apply_orientation", "atomic_path", "compose_output", "display_path",
    "ensure_not_input", "input_fingerprint", "is_done", "iter_inputs", "iter_video_frames",
    "iter_video_frames_timed", "media_kind", "mirror_path", "probe_video", "read_image", "read_image_header",
    "settings_hash", "sidecar_path", "write_bytes_atomic", "write_image_atomic",
]
