"""Plugin entry point: registers the ``hrnet`` extractor (no torch at import).

Weights (the factory's ``weights`` key):

* ``weights=PATH`` - load that checkpoint (plain state dict, ``{'state_dict': ...}`` or
  DataParallel ``module.`` keys; strict);
* ``weights=none`` - random initialisation (tests, training);
* default (``auto``; ``None`` from Python) - the published ``HR18-WFLW.pth`` found through
  :func:`lbcore.weights.resolve_weights` (``--weights hr18-wflw=PATH``, ``$LB_WEIGHTS_DIR``, the
  cache folder); if it is not there, a :data:`DEMO_WEIGHTS` entry that fits the requested
  network; otherwise the one-line "not found; published at ..." error.

The default is the string ``auto`` rather than ``None`` because spec strings turn ``none`` into
Python ``None`` for optional parameters, and ``weights=none`` must mean random initialisation.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from lbcore import hookimpl, parse_spec
from lbcore.errors import SpecError
from lbcore.weights import WeightsFile

__all__ = ["hrnet", "register_extractors", "PUBLISHED_WEIGHTS", "DEMO_WEIGHTS", "fits"]

PUBLISHED_WEIGHTS = WeightsFile(
    name="hr18-wflw",
    filename="HR18-WFLW.pth",
    fits="hrnet",
    url="https://1drv.ms/u/s!AiWjZ1LamlxzdTsr_9QZCwJsn5U",
    licence="MIT",
    note=(
        "HRNetV2-W18 trained on WFLW (98 points, NME 4.60), linked from the README of "
        "github.com/HRNet/HRNet-Facial-Landmark-Detection; about 39 MB, plain state dict"
    ),
)

DEMO_WEIGHTS: list[WeightsFile] = []
"""The project's own demo models, used when the published file is absent.

An entry's ``fits`` is a spec: ``hrnet`` (width 18, 98 points) or e.g. ``hrnet:width=8``
(``width`` and ``landmarks`` keys; missing keys mean the defaults 18 and 98). It is used
only for a request with the same ``width`` and ``landmarks``.
"""

_DEFAULTS = {"width": 18, "landmarks": 98}


def fits(entry: WeightsFile, width: int, landmarks: int) -> bool:
    """Whether ``entry`` holds weights for ``hrnet`` with this ``width`` and ``landmarks``."""
    try:
        name, params = parse_spec(entry.fits)
        arch = {k: int(params.get(k, v)) for k, v in _DEFAULTS.items()}
    except (SpecError, ValueError):
        return False
    return name == "hrnet" and arch == {"width": width, "landmarks": landmarks}


def hrnet(landmarks: int = 98, weights: str = "auto", width: int = 18, truncate: bool = False) -> Any:
    """HRNetV2-W18 heat-map extractor (WFLW, 98 points), the original crop and decoding.

    Args:
        landmarks: heat-maps the head outputs (98 for the WFLW checkpoint).
        weights: a checkpoint path, ``none`` (random initialisation) or ``auto`` (the
            published ``HR18-WFLW.pth``, else a fitting demo model).
        width: channels of the highest-resolution branch (18 = W18; 6 or 8 for cheap models).
        truncate: decode to the original's integer ``int(x) + 1`` coordinates.
    """
    from lb_hrnet.extractor import HRNetExtractor
    from lb_hrnet.model import HighResolutionNet
    from lbcore.weights import (
        choose_weights,
        extract_state_dict,
        load_checkpoint,
        load_state_dict_strict,
        seeded_init,
    )

    path = choose_weights(
        weights, owner="hrnet", published=[PUBLISHED_WEIGHTS], demos=DEMO_WEIGHTS,
        fits=lambda e: fits(e, width, landmarks),
        no_fit=f"hrnet: no weights for width={width}, landmarks={landmarks} (the published "
               f"{PUBLISHED_WEIGHTS.filename} fits width=18, landmarks=98); pass weights=PATH or "
               f"weights=none for a random network")
    with seeded_init(0):  # weights=none: one network, whatever ran before
        network = HighResolutionNet(width=width, landmarks=landmarks)
    if path is not None:
        state = extract_state_dict(load_checkpoint(path), path)
        load_state_dict_strict(network, state, path)
    return HRNetExtractor(network, truncate=truncate).eval()


@hookimpl
def register_extractors(register: Callable[..., None]) -> None:
    register(
        "hrnet",
        hrnet,
        summary="HRNetV2-W18 (WFLW, 98 points): heat-maps 64x64 from a 256x256 crop",
        weights=[PUBLISHED_WEIGHTS, *DEMO_WEIGHTS],
    )
