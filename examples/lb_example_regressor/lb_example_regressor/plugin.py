"""The ``lbcore`` entry point of lb-example-regressor (see pyproject.toml).

Everything here is cheap to import: torch and the model load only inside the factories, which
lbcore calls when a component is used (``lb plugins`` and ``lb list`` never build anything).
The factories' annotated keyword parameters are the spec keys users type:
``example-regressor:context=1.4,heatmaps=false``, ``example-nme:eps=1e-6``,
``--attack example-displacement:steps=40``.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from lbcore import hookimpl

#: The hook API this plugin was written against (lbcore refuses it, with a clear message, if
#: the installed lbcore is older; newer lbcores keep calling these hooks unchanged).
LB_HOOK_API = 1


def example_regressor(weights: str = "none", context: float = 1.3, heatmaps: bool = True,
                      sigma: float = 1.5, seed: int = 0) -> Any:
    """Small CNN regressing 68 landmark coordinates (no heat-maps inside; renders them for Eq. 1).

    Args:
        weights: ``none`` - untrained, starts at a mean face shape; or a path to a state dict.
        context: crop side as a multiple of the face box's mean side.
        heatmaps: render Gaussian heat-maps from the coordinates so ``heatmap-cosine`` applies.
        sigma: width of the rendered Gaussians (heat-map pixels).
        seed: seeds the untrained initialisation.
    """
    from lb_example_regressor.model import CoordinateRegressor

    model = CoordinateRegressor(context=context, heatmaps=heatmaps, sigma=sigma, seed=seed)
    if weights.strip().lower() != "none":
        from lbcore.weights import extract_state_dict, load_checkpoint, load_state_dict_strict

        load_state_dict_strict(model, extract_state_dict(load_checkpoint(weights), weights), weights)
    return model.eval()


def example_nme(eps: float = 1e-6) -> Any:
    """Minus the landmark displacement over the clean face's size (an NME-like attack loss)."""
    from lb_example_regressor.losses import NormalisedDisplacementLoss

    return NormalisedDisplacementLoss(eps=eps)


@hookimpl
def register_extractors(register: Callable[..., None]) -> None:
    register("example-regressor", example_regressor,
             summary="Example plugin: small CNN regressing 68 landmark coordinates from a 64x64 crop")


@hookimpl
def register_losses(register: Callable[..., None]) -> None:
    register("example-nme", example_nme)


@hookimpl
def register_attacks(register: Callable[..., None]) -> None:
    from lbcore.attacks import recipe  # torch-free: registering stays cheap

    # A regressor's coordinates, not heat-maps, are what a face-swap tool uses: push them away
    # with the plugin's own loss. Its gradient is zero at the clean image, hence the random start.
    register("example-displacement", recipe(
        "Example plugin: MI-FGSM on the normalised landmark displacement (example-nme), random start",
        loss="example-nme", optimizer="mifgsm:alpha=1,decay=0.5", random_start=2.0))
