"""Resume: sidecars that say which outputs are finished, for which input and settings."""


from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # pragma: no cover
    pass


from lbcore.io.files import (
    SIDECAR_SUFFIX,
    PathLike,
    display_path,
    write_bytes_atomic,
)

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
    """Size, mtime and the sha256 of a file's bytes (all 64 hex digits).

    The sha256 covers the whole file up to 8 MiB (``sha256_scope: "whole"``: the same digest
    ``sha256sum`` prints), else its first and last 4 MiB plus its size (``"head+tail 4 MiB"``;
    cheap on long videos; with the size and mtime it catches any realistic change).
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
    return {"size": st.st_size, "mtime_ns": st.st_mtime_ns, "sha256": h.hexdigest(), "sha256_scope": scope}


class ResultStore:
    """Decides which outputs a rerun can skip, and records finished ones.

    An output counts as finished when its final name exists (:func:`is_done`) *and* its sidecar
    says it was made from the same input (size, then mtime or sha256) with the same
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
            digest = input_fingerprint(input_path)["sha256"]
            # sidecars of earlier versions hold the digest's first 16 hex digits
            return bool(saved["sha256"] == digest or (len(saved["sha256"]) == 16 and digest.startswith(saved["sha256"])))
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
