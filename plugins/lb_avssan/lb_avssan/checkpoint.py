"""Safe loading of the published AVS-SAN checkpoint.

The file is a SAN training snapshot, ``{'epoch', 'args', 'state_dict', 'optimizer'}``, written by
PyTorch 0.4 in the legacy (non-zip) format, with every key prefixed ``module.`` (DataParallel).
``args`` is the training ``argparse.Namespace`` and holds a ``models.model_utils.ModelConfig``,
two classes that ``torch.load(weights_only=True)`` refuses. Rather than falling back to
unrestricted unpickling (which would run whatever the file names), those two names - and only
those - are mapped to the inert attribute holders below; any other class or callable in the
pickle is refused by :func:`lbcore.weights.load_checkpoint`.
"""

from __future__ import annotations

import numbers
import os
from typing import Any

import attrs

from lbcore.errors import WeightsError
from lbcore.weights import extract_state_dict, load_checkpoint

__all__ = ["InertNamespace", "InertModelConfig", "SANConfig", "ALLOWED_GLOBALS", "load_avssan_checkpoint"]


class InertNamespace:
    """Stands in for ``argparse.Namespace`` when unpickling: holds attributes, does nothing."""


class InertModelConfig:
    """Stands in for SAN's ``models.model_utils.ModelConfig``: holds attributes, does nothing."""


ALLOWED_GLOBALS: dict[str, type] = {
    "argparse.Namespace": InertNamespace,
    "models.model_utils.ModelConfig": InertModelConfig,
}


@attrs.frozen
class SANConfig:
    """The evaluation settings a SAN snapshot carries (defaults: the published WFLW run).

    Attributes:
        expand_ratio: ``--pre_crop_expand``: the face box grows by this fraction of its width
            / height on each side before cropping.
        softargmax_radius: ``ModelConfig.argmax`` (``--argmax_size``): the soft-argmax window
            is ``2r+1`` square around the peak.
        crop_size: ``(--crop_height, --crop_width)``.
    """

    expand_ratio: float = 0.2
    softargmax_radius: int = 3
    crop_size: tuple[int, int] = (128, 128)


def _number(obj: Any, name: str, default: Any, lo: float, hi: float, path: str) -> Any:
    value = getattr(obj, name, None) if obj is not None else None
    if value is None:
        return default
    if isinstance(value, bool) or not isinstance(value, numbers.Real) or not (lo <= float(value) <= hi):
        raise WeightsError(f"{path}: implausible {name}={value!r} in the checkpoint's args")
    return value


def _config_from_args(args: Any, path: str) -> SANConfig:
    """Read (and sanity-check) the evaluation settings from the snapshot's ``args``."""
    if args is None:
        return SANConfig()
    if not isinstance(args, InertNamespace):
        raise WeightsError(f"{path}: 'args' is a {type(args).__name__}, not an argparse.Namespace")
    arch = getattr(args, "arch", "itn_cpm")
    if arch != "itn_cpm":
        raise WeightsError(f"{path}: a SAN snapshot of arch {arch!r}, not 'itn_cpm' (AVS-SAN)")
    mc = getattr(args, "modelconfig", None)
    if mc is not None:
        pts = getattr(mc, "pts_num", 99)
        stages = getattr(mc, "num_stages", 3)
        if pts != 99 or stages != 3:
            raise WeightsError(
                f"{path}: ITN-CPM with pts_num={pts}, num_stages={stages}; AVS-SAN needs 99 (98 + background) and 3"
            )
    radius = _number(mc, "argmax", 3, 1, 16, path)
    expand = _number(args, "pre_crop_expand", 0.2, 0.0, 2.0, path)
    h = _number(args, "crop_height", 128, 8, 1024, path)
    w = _number(args, "crop_width", 128, 8, 1024, path)
    if int(h) % 8 or int(w) % 8:
        raise WeightsError(f"{path}: crop size {h}x{w} is not a multiple of the network stride 8")
    return SANConfig(float(expand), int(radius), (int(h), int(w)))


def load_avssan_checkpoint(path: str | os.PathLike[str]) -> tuple[dict[str, Any], SANConfig]:
    """Load a SAN/AVS-SAN snapshot (or a plain state dict) without executing code from it.

    Returns:
        ``(state_dict, config)``: the state dict without ``module.`` prefixes, and the
        evaluation settings stored in the snapshot (defaults when it holds none).

    Raises:
        WeightsError: a missing, corrupt or unsafe file (one line naming it).
    """
    obj = load_checkpoint(path, allow=ALLOWED_GLOBALS)
    args = obj.get("args") if isinstance(obj, dict) else None
    config = _config_from_args(args, str(path))
    return extract_state_dict(obj, path), config
