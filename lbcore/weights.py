"""Finding, verifying and safely loading checkpoints.

Lookup order for a network's weights: an explicit path (``--weights NAME=PATH`` or
``weights=PATH`` in the spec), then ``$LB_WEIGHTS_DIR/<filename>``, then the user cache folder
(``$XDG_CACHE_HOME/landmark-breaker/weights`` or ``~/.cache/landmark-breaker/weights``).

Loading never executes code from a file: safetensors files are read as tensors,
everything else goes through ``torch.load(weights_only=True)``, optionally with an allow-list
of inert stand-in classes for legacy pickles that hold harmless objects (see
:func:`load_checkpoint`). Anything else in a pickle is refused.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import warnings
from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import attrs

from lbcore.errors import WeightsError

__all__ = [
    "WeightsFile",
    "seeded_init",
    "cache_dir",
    "resolve_weights",
    "load_checkpoint",
    "extract_state_dict",
    "load_state_dict_strict",
    "sha256sum",
    "register_explicit_weights",
    "explicit_weights",
    "choose_weights",
]


@attrs.frozen
class WeightsFile:
    """A known checkpoint file (published or the project's own)."""

    name: str
    filename: str
    fits: str
    url: str | None = None
    size: int | None = None
    sha256: str | None = None
    licence: str = "unknown"
    note: str = ""
    bundled: str | None = None  # path of a file shipped inside a package


_explicit: dict[str, str] = {}


def register_explicit_weights(mapping: Mapping[str, str]) -> None:
    """Remember ``--weights NAME=PATH`` pairs for this process."""
    _explicit.update(mapping)


def explicit_weights() -> dict[str, str]:
    """The ``--weights NAME=PATH`` pairs given to this process (a copy)."""
    return dict(_explicit)


def cache_dir() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "landmark-breaker" / "weights"


def weights_dir() -> Path:
    """Where a fetch writes weight files: ``$LB_WEIGHTS_DIR`` if set, else :func:`cache_dir`
    (both are searched by :func:`resolve_weights`)."""
    env = os.environ.get("LB_WEIGHTS_DIR")
    return Path(env) if env else cache_dir()


def _search_paths(entry: WeightsFile) -> list[Path]:
    paths = []
    env = os.environ.get("LB_WEIGHTS_DIR")
    if env:
        paths.append(Path(env) / entry.filename)
    paths.append(cache_dir() / entry.filename)
    if entry.bundled:
        paths.append(Path(entry.bundled))
    return paths


def resolve_weights(entry: WeightsFile, explicit: str | os.PathLike[str] | None = None) -> Path:
    """Return the path of ``entry``'s file, or raise a one-line error saying where to get it."""
    explicit = explicit or _explicit.get(entry.name)
    if explicit:
        p = Path(explicit).expanduser()
        if not p.is_file():
            raise WeightsError(f"{p}: weights file not found (given for {entry.name})")
        return p
    for p in _search_paths(entry):
        if p.is_file():
            return p
    where = f"published at {entry.url}" if entry.url else (entry.note or "not downloadable")
    raise WeightsError(
        f"weights {entry.name!r} ({entry.filename}) not found; {where}; put it in "
        f"$LB_WEIGHTS_DIR or {cache_dir()}, or pass --weights {entry.name}=PATH"
    )


def choose_weights(
    value: str | None,
    *,
    owner: str,
    published: Sequence[WeightsFile],
    demos: Sequence[WeightsFile],
    fits: Callable[[WeightsFile], bool],
    no_fit: str,
    verify: Callable[[WeightsFile, Path], Path] | None = None,
) -> Path | None:
    """The file an extractor's ``weights=`` value stands for (every plugin's rule).

    ``none`` -> ``None`` (random initialisation); the name of one of ``published``/``demos`` ->
    that file; ``auto`` (or ``None``) -> the first entry that ``fits`` the requested network and
    is present, published files before the project's demos; anything else -> a path that must
    exist. ``verify(entry, path)`` checks a found file (e.g. its sha256): a present but wrong
    file is an error, never a reason to fall back to a demo.

    Raises:
        WeightsError: one line - where a fitting file is published (or ``no_fit`` when none
            fits), plus which network a demo model would fit instead.
    """
    text = "auto" if value is None else str(value).strip()
    if text.lower() == "none":
        return None
    entries = [*published, *demos]
    check = verify or (lambda _entry, path: path)
    known = {e.name: e for e in entries}
    if text in known:
        return check(known[text], resolve_weights(known[text]))
    if text.lower() != "auto":
        path = Path(text).expanduser()
        if not path.is_file():
            raise WeightsError(f"{path}: weights file not found (given as {owner} weights=...)")
        return path
    first_error: WeightsError | None = None
    for entry in entries:
        if fits(entry):
            try:
                found = resolve_weights(entry)
            except WeightsError as err:
                first_error = first_error or err
                continue
            return check(entry, found)
    others = [e.fits for e in demos if not fits(e)]
    hint = f"; a demo model fits {', '.join(others)}" if others else ""
    raise WeightsError(f"{first_error or no_fit}{hint}")


def sha256sum(path: str | os.PathLike[str], chunk: int = 1 << 20) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while True:
            b = f.read(chunk)
            if not b:
                break
            h.update(b)
    return h.hexdigest()


def _load_safetensors(path: Path) -> dict[str, Any]:
    try:
        from safetensors.torch import load_file
    except ImportError:
        raise WeightsError(f"{path}: reading .safetensors needs the 'safetensors' package (pip install safetensors)") from None
    try:
        return dict(load_file(str(path)))
    except Exception as err:
        raise WeightsError(f"{path}: not a valid safetensors file ({err})") from None


def load_checkpoint(
    path: str | os.PathLike[str],
    *,
    allow: Mapping[str, type] | None = None,
    max_bytes: int = 4 << 30,
) -> Any:
    """Load a checkpoint without executing code from it.

    Args:
        path: a ``.safetensors`` file, or a PyTorch file (zip or legacy format).
        allow: extra globals the pickle may name, as ``{"module.Name": stand_in_class}``;
            each stand-in must be an inert class (no behaviour beyond holding attributes).
        max_bytes: refuse files larger than this (a zip bomb guard; uncompressed sizes of
            zip members are checked too).

    Raises:
        WeightsError: missing, truncated, oversized or unsafe file (one line, names the file).
    """
    import torch

    p = Path(path)
    if p.is_dir():
        raise WeightsError(f"{p}: is a folder, not a weights file")
    if not p.is_file():
        raise WeightsError(f"{p}: weights file not found")
    size = p.stat().st_size
    if size == 0:
        raise WeightsError(f"{p}: empty file")
    if size > max_bytes:
        raise WeightsError(f"{p}: {size} bytes is larger than the {max_bytes}-byte limit")
    if p.suffix == ".safetensors":
        return _load_safetensors(p)
    _check_zip(p, max_bytes)
    safe: list[Any] = []
    for qualname, cls in (allow or {}).items():
        safe.append((cls, qualname))
    try:
        with torch.serialization.safe_globals(safe), warnings.catch_warnings():
            # torch's note on an unusual pickle protocol is noise next to our one-line verdict
            warnings.filterwarnings("ignore", message=".*pickle protocol", category=UserWarning)
            return torch.load(str(p), map_location="cpu", weights_only=True)
    except Exception as err:
        raise WeightsError(f"{p}: refused or unreadable checkpoint ({_load_failure(err)})") from None


def _load_failure(err: Exception) -> str:
    """A short reason for a failed ``torch.load``: the refused global, or what is broken."""
    if isinstance(err, EOFError) or "failed finding central directory" in str(err):
        return "the file ends early: truncated or not a PyTorch checkpoint"
    lines = [m.strip() for m in str(err).strip().splitlines() if m.strip()]
    reason = next((m for m in lines if "GLOBAL" in m or "Unsupported" in m), lines[0] if lines else type(err).__name__)
    if "Unsupported operand" in reason:
        reason = f"not a PyTorch checkpoint: {reason}"
    # torch's messages go on with advice in further sentences; the first one says what failed
    return reason.split(". ")[0].rstrip(".")[:300]


def _check_zip(p: Path, max_bytes: int) -> None:
    import zipfile

    if not zipfile.is_zipfile(p):
        return
    try:
        with zipfile.ZipFile(p) as z:
            total = sum(i.file_size for i in z.infolist())
    except zipfile.BadZipFile as err:
        raise WeightsError(f"{p}: corrupt zip checkpoint ({err})") from None
    if total > max_bytes:
        raise WeightsError(f"{p}: unpacks to {total} bytes, over the {max_bytes}-byte limit (zip bomb?)")


def extract_state_dict(obj: Any, path: str | os.PathLike[str] = "<checkpoint>") -> dict[str, Any]:
    """Unwrap ``{'state_dict': ...}`` training checkpoints and strip DataParallel ``module.``."""
    import torch

    sd = obj
    if isinstance(sd, Mapping) and "state_dict" in sd and isinstance(sd["state_dict"], Mapping):
        sd = sd["state_dict"]
    if not isinstance(sd, Mapping) or not all(isinstance(k, str) for k in sd):
        raise WeightsError(f"{path}: does not hold a state dict")
    out: dict[str, Any] = {}
    for k, v in sd.items():
        if not isinstance(v, torch.Tensor):
            raise WeightsError(f"{path}: entry {k!r} is not a tensor")
        out[k[7:] if k.startswith("module.") else k] = v
    return out


def load_state_dict_strict(module: Any, state_dict: Mapping[str, Any], path: str | os.PathLike[str] = "<checkpoint>") -> dict[str, Any]:
    """Load strictly; on mismatch raise one line with the exact missing/unexpected/misshaped keys.

    ``num_batches_tracked`` may be absent (checkpoints older than PyTorch 0.4.1). NaN or
    infinite values are refused. Returns a small report (matched keys, parameter count).
    """
    import torch

    own = module.state_dict()
    missing = [k for k in own if k not in state_dict and not k.endswith("num_batches_tracked")]
    unexpected = [k for k in state_dict if k not in own]
    shapes = [
        f"{k}: file {tuple(state_dict[k].shape)} vs model {tuple(own[k].shape)}"
        for k in own
        if k in state_dict and tuple(state_dict[k].shape) != tuple(own[k].shape)
    ]
    if missing or unexpected or shapes:
        parts = []
        if missing:
            parts.append(f"missing {len(missing)} keys: {', '.join(missing[:8])}{' ...' if len(missing) > 8 else ''}")
        if unexpected:
            parts.append(f"unexpected {len(unexpected)} keys: {', '.join(unexpected[:8])}{' ...' if len(unexpected) > 8 else ''}")
        if shapes:
            parts.append(f"{len(shapes)} shape mismatches: {'; '.join(shapes[:4])}{' ...' if len(shapes) > 4 else ''}")
        err = WeightsError(f"{path}: does not fit {type(module).__name__}: " + " | ".join(parts))
        err.mismatch = {"missing": missing, "unexpected": unexpected, "shapes": shapes}  # type: ignore[attr-defined]
        raise err
    bad = [k for k, v in state_dict.items() if v.is_floating_point() and not bool(torch.isfinite(v).all())]
    if bad:
        raise WeightsError(f"{path}: non-finite values (NaN/inf) in {len(bad)} tensors, e.g. {bad[0]}")
    full = dict(state_dict)
    for k in own:
        if k not in full:
            full[k] = own[k]
    module.load_state_dict(full, strict=True)
    n_params = sum(int(p.numel()) for p in module.parameters())
    return {"matched": len(state_dict), "parameters": n_params, "missing_filled": [k for k in own if k not in state_dict]}


def download(entry: WeightsFile, dest_dir: str | os.PathLike[str], *, progress: bool = True,
             timeout: float = 30.0) -> Path:
    """Fetch ``entry.url`` into ``dest_dir``: resumes a ``.part`` file with an HTTP Range
    request, shows a progress bar, verifies size and sha256, then renames into place."""
    import urllib.error
    import urllib.request

    if not entry.url or not entry.url.startswith(("http://", "https://")):
        raise WeightsError(f"weights {entry.name!r} have no direct download URL; {entry.note or 'get the file by hand'}")
    dest = Path(dest_dir)
    dest.mkdir(parents=True, exist_ok=True)
    final = dest / entry.filename
    part = dest / (entry.filename + ".part")
    if final.is_file() and (not entry.sha256 or sha256sum(final) == entry.sha256):
        return final  # already complete (a file that fails its checksum is fetched again)
    have = part.stat().st_size if part.exists() else 0
    req = urllib.request.Request(entry.url, headers={"Range": f"bytes={have}-"} if have else {})
    try:
        resp = urllib.request.urlopen(req, timeout=timeout)
    except urllib.error.HTTPError as err:
        if err.code == 416 and have:  # already complete
            resp = None
        else:
            raise WeightsError(f"{entry.url}: HTTP {err.code} {err.reason}") from None
    except (urllib.error.URLError, OSError) as err:
        raise WeightsError(f"{entry.url}: cannot download ({err})") from None
    if resp is not None:
        with resp:
            if have and resp.status != 206:
                have = 0  # server ignored the range: start again
            total = resp.headers.get("Content-Length")
            total_n = int(total) + have if total is not None else entry.size
            bar = None
            if progress:
                from tqdm import tqdm

                bar = tqdm(total=total_n, initial=have, unit="B", unit_scale=True, desc=entry.filename)
            with open(part, "ab" if have else "wb") as f:
                while True:
                    chunk = resp.read(1 << 16)
                    if not chunk:
                        break
                    f.write(chunk)
                    if bar is not None:
                        bar.update(len(chunk))
            if bar is not None:
                bar.close()
    size = part.stat().st_size
    if entry.size is not None and size != entry.size:
        raise WeightsError(f"{part}: {size} bytes downloaded, expected {entry.size}; run again to resume")
    if entry.sha256:
        digest = sha256sum(part)
        if digest != entry.sha256:
            part.unlink()
            raise WeightsError(f"{entry.url}: sha256 {digest} does not match the expected {entry.sha256}; file removed")
    os.replace(part, final)
    return final


@contextlib.contextmanager
def seeded_init(seed: int = 0) -> Iterator[None]:
    """Build a network inside this block: its random initialisation comes from ``seed``, and the
    caller's random state is left as it was. A ``weights=none`` spec then names one network
    (the same in every process and every call), so runs that compare settings compare them on the
    same random model."""
    import torch

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        yield
