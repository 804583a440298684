"""Plugin entry point: registers the ``avssan`` extractor (no torch at import).

Weights (the factory's ``weights`` key):

* ``weights=PATH`` - load that checkpoint: the published SAN snapshot (``{'epoch', 'args',
  'state_dict', 'optimizer'}``, ``module.`` keys, PyTorch 0.4 legacy pickle), or a plain state
  dict; strict, and never executing code from the file (:mod:`lb_avssan.checkpoint`);
* ``weights=none`` - random initialisation (tests, training);
* default (``auto``; ``None`` from Python) - the published ``avs-san-wflw`` file found through
  :func:`lbcore.weights.resolve_weights` (``--weights avs-san-wflw=PATH``, ``$LB_WEIGHTS_DIR``,
  the cache folder); if it is not there, a :data:`DEMO_WEIGHTS` entry that fits the requested
  network; otherwise the one-line "not found; published at ..." error.

The default is the string ``auto`` rather than ``None`` because spec strings turn ``none`` into
Python ``None`` for optional parameters, and ``weights=none`` must mean random initialisation.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from lb_avssan.checkpoint import ALLOWED_GLOBALS
from lbcore import hookimpl, parse_spec
from lbcore.errors import SpecError
from lbcore.weights import WeightsFile

__all__ = ["avssan", "register_extractors", "PUBLISHED_WEIGHTS", "DEMO_WEIGHTS", "fits"]

PUBLISHED_WEIGHTS = WeightsFile(
    name="avs-san-wflw",
    filename="avs-san-wflw.pth.tar",
    fits="avssan",
    url="https://drive.google.com/open?id=1ofTpgtKX9zNbyFuyL6JIEpnVlcDjgOPQ",
    licence="MIT",
    note=(
        "AVS(SAN) trained on style-augmented WFLW (98 points, NME 4.39), linked from "
        "landmark_detection/README.md of github.com/TheSouthFrog/stylealign; the repository does "
        "not record the file's own name (SAN saves checkpoint_<epoch>.pth.tar), so save it as "
        "avs-san-wflw.pth.tar; no checksum is published"
    ),
)
"""The published AVS-SAN checkpoint (a PyTorch 0.4 SAN training snapshot)."""

DEMO_WEIGHTS: list[WeightsFile] = []
"""The project's own demo models, used when the published file is absent.

An entry's ``fits`` is a spec: ``avssan`` (full width) or e.g. ``avssan:width_div=4``; it is used
only for a request with the same ``width_div``.
"""


def fits(entry: WeightsFile, width_div: int) -> bool:
    """Whether ``entry`` holds weights for ``avssan`` with this ``width_div``."""
    try:
        name, params = parse_spec(entry.fits)
        div = int(params.get("width_div", 1))
    except (SpecError, ValueError):
        return False
    return name == "avssan" and div == width_div


def avssan(
    weights: str = "auto",
    include_background: bool = False,
    truncate: bool = False,
    width_div: int = 1,
) -> Any:
    """AVS-SAN (ITN-CPM, WFLW 98 points): heat-maps 16x16 from a non-uniform 128x128 crop.

    Args:
        weights: a checkpoint path, ``none`` (random initialisation) or ``auto`` (the
            published ``avs-san-wflw`` file, else a fitting demo model).
        include_background: add stage 3's background map as a 99th heat-map channel.
        truncate: round the grown crop box outward to whole pixels, as the original does.
        width_div: divide the network's channel widths (1 = the published network).
    """
    from lb_avssan.checkpoint import load_avssan_checkpoint
    from lb_avssan.extractor import AVSSANExtractor
    from lb_avssan.model import ITNCPM
    from lbcore.weights import choose_weights, load_state_dict_strict, seeded_init

    if width_div < 1:
        raise SpecError(f"avssan: width_div must be >= 1, got {width_div}")
    path = choose_weights(
        weights, owner="avssan", published=[PUBLISHED_WEIGHTS], demos=DEMO_WEIGHTS,
        fits=lambda e: fits(e, width_div),
        no_fit=f"avssan: no weights for width_div={width_div} (the published {PUBLISHED_WEIGHTS.filename} "
               f"is full width); pass weights=PATH or weights=none for a random network")
    with seeded_init(0):  # weights=none: one network, whatever ran before
        net = ITNCPM(width_div=width_div)
    config = None
    if path is not None:
        state_dict, config = load_avssan_checkpoint(path)
        load_state_dict_strict(net, state_dict, path)
    return AVSSANExtractor(net, include_background=include_background, truncate=truncate, config=config).eval()


@hookimpl
def register_extractors(register: Callable[..., None]) -> None:
    register(
        "avssan",
        avssan,
        summary="AVS-SAN ITN-CPM (WFLW, 98 points + background): 16x16 heat-maps from a 128x128 crop",
        weights=[PUBLISHED_WEIGHTS, *DEMO_WEIGHTS],
        pickle_allow=ALLOWED_GLOBALS,  # inert stand-ins `lb weights inspect` may unpickle
    )
