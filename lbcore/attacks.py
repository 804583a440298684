"""Attacks as components: an attack is a named recipe for the engine.

A recipe fixes the parts of an :class:`AttackConfig` that make an attack what it is (the loss,
the update rule, the number of steps, input diversity, mixing, EOT, a random start, ...) and
leaves the rest at the engine's defaults. Plugins register recipes through the
``register_attacks`` hook, exactly like extractors::

    from lbcore import hookimpl
    from lbcore.attacks import recipe

    @hookimpl
    def register_attacks(register):
        register("my-attack", recipe("My attack: LB with 40 steps", steps=40))

Every command then takes it by name, with spec keys for any :class:`AttackConfig` field
(``--attack my-attack:steps=60,eps=8``), and :func:`lbcore.preset` builds its config.

This module imports no torch: registering and listing attacks stays cheap.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Mapping
from typing import Any

import attrs

from lbcore.errors import SpecError

__all__ = ["AttackConfig", "Recipe", "recipe", "preset", "attack_names"]


@attrs.define
class AttackConfig:
    """Everything that defines an attack run (paper settings by default).

    Attributes:
        loss: loss spec (``heatmap-cosine`` is Eq. 1).
        optimizer: update-rule spec (``mifgsm:alpha=1,decay=0.5`` is Eq. 2).
        eps: L-infinity budget on the 0..255 scale.
        steps: maximum iterations T.
        projection: ``ball`` projects onto the epsilon-ball each step; ``stop`` is the paper's
            literal rule of Algorithm 1 (stop an image when the next step would leave the ball).
        diversity_prob: LBtrans - probability of a random resize + zero pad at each step.
        diversity_min_scale: smallest resize factor for LBtrans.
        mix: LBmix - alternate I-FGSM (odd steps) and the update rule (even steps).
        eot: degradation specs applied (differentiably) before the extractors, one drawn per step.
        eot_samples: gradient samples averaged per step when ``eot`` is set.
        random_start: uniform noise in ``[-r, r]`` added at the start (PGD-style); needed by
            distance losses such as ``landmark-displacement``, whose gradient is zero at the
            clean image. The paper starts from the clean image (0).
        seed: seeds every random draw of the run.
        ti_sigma: translation-invariant gradients (TI, Dong et al. 2019): the gradient is
            smoothed by a Gaussian of this standard deviation (image pixels) before the update;
            0 (default) is off.
        vt_samples: variance tuning (VT/VMI, Wang & He 2021): each step adds to the gradient
            the previous step's variance term, the mean gradient at ``vt_samples`` points drawn
            uniformly within ``vt_beta * eps`` of the image minus the gradient there; 0 is off.
            Costs ``vt_samples`` extra forward/backward passes per step.
        vt_beta: VT's neighbourhood radius as a multiple of ``eps``.
        balance: ensemble balancing - ``none`` sums the members' losses; ``grad`` normalises
            each member's gradient to a mean absolute value of 1 per image before summing (one
            member cannot dominate the direction); ``loss`` divides each member's per-face loss by
            the magnitude of its clean value.
        feature_mix: losses on intermediate features - ``(1 - m) * loss + m * c * cos`` per face
            and member, where ``cos`` is the cosine similarity of one hidden activation of the
            member on the clean and the adversarial image and ``c`` the magnitude of the member's
            clean loss (same scale); 0 (default) is off, 1 attacks the features only.
        feature_depth: which hidden activation: the convolution at this fraction of the
            member's convolutions (0 first, 1 last, in module order).
        ssim_min: perceptual budget - every face box keeps at least this SSIM (mean of the SSIM
            map over the box; 0: off). Enforced on the returned 8-bit images
            (:mod:`lbcore.perceptual`).
        psnr_min: every face box keeps at least this PSNR in dB (0: off).
        mask: ``crop`` (the paper: every pixel an extractor's crop sees may change) or ``face``
            (a soft ellipse around each face box that fades to zero: no visible edge).
        feather: with ``mask="face"``, the fraction of the ellipse's radius over which the
            budget fades from full to zero.
        texture: 0..1, how much the per-pixel budget follows the clean image's local contrast
            (1: near zero on flat skin and background, full on texture and edges).
        luma_weight: scale of the luma part (channel mean) of each step's change; below 1 moves
            the change into colour, above 1 into brightness.
        mask_margin: with ``mask="face"``, how far the ellipse reaches beyond the face box
            (fraction of the box's half-sides).
        stop_nme: per-face early stop - a face stops (its perturbation frozen, no more
            backward passes; once every face of the batch is done the loop ends) as soon as every
            attacked extractor's NME between its landmarks on the current image and on the clean
            one exceeds ``stop_nme * stop_margin``; checked on the forward outputs each step
            computes anyway. 0 (default) is off.
        stop_margin: factor (>= 1) on ``stop_nme`` (a face stops only clearly past the threshold).
        stop_every: check the stop rule every this many steps (1: every step).
        box_jitter: each step, every attacked member sees every face box scaled by a random
            factor in ``[1 - j, 1 + j]`` and shifted by up to ``j / 2`` of its size (its clean
            reference is recomputed in the jittered box); 0 is off.
        ti_rel: TI with the Gaussian's sigma this fraction of the width of each image's faces
            (the median box width); overrides ``ti_sigma`` when above 0.
        coarse: optimise the perturbation on a coarse grid with this many cells across each
            image's faces (cell = median face-box width / ``coarse``); the update rule steps on
            the grid (the gradient reaches it through the upsampling), the grid is held in
            ``[-eps, eps]``, and the image changes by its bilinear upsampling - the whole budget
            at low frequencies, relative to the face. 0 (default) is off.
        ghost: ghost networks (Li et al., AAAI 2020): every attacked forward pass runs a
            randomly eroded copy of each member - the output of every convolution is scaled per
            channel by a factor drawn uniformly from ``[1 - ghost, 1 + ghost]``, redrawn for every
            pass - so that each step attacks a different nearby network; the clean reference is
            the unmodified member. 0 (default) is off.
        sgm: skip gradient method (Wu et al., ICLR 2020): in every member's residual blocks
            (:class:`lbcore.ResidualAdd`) the gradient into the residual branch is scaled by
            this factor, so more of it flows back through the skip connections; the forward
            pass is unchanged. 1 (default) is off; members without marked blocks are unaffected.
        rotate: rotation diversity: each step the image turns by a random angle in ``[-rotate,
            rotate]`` degrees about its centre, the face boxes move with it, and each member's
            clean reference is recomputed on the turned clean image (one more forward per member
            and step); 0 (default) is off. Not together with ``box_jitter``.
        double: start from a double image instead of the clean one: each face plus a faint copy
            of itself moved sideways by this many face-box widths (and turned by
            ``double_rotate`` degrees), the difference clipped to ``eps``, faded out around
            the face and multiplied by the perceptual budget map where there is one (soft mask,
            texture masking). Model-free, so it moves every extractor, attacked or not; the update rule
            then optimises from there. 0 (default) is off. It replaces ``random_start``; the warm
            start of a video frame (``init``) replaces it.
        double_rotate: the copy's turn in degrees (with ``double`` above 0).
        hinge: a member that already moves a face's landmarks by this NME (against its clean
            landmarks, read from the step's own forward pass) stops pulling on that face, so the
            face's budget goes to the members not yet broken; 0 (default) is off. Read on steps
            without input diversity, rotation or box jitter (the outputs are then in the face's
            own frame); other steps keep the last reading. Off when a single extractor is attacked.
    """

    loss: str = "heatmap-cosine"
    optimizer: str = "mifgsm:alpha=1,decay=0.5"
    eps: float = 15.0
    steps: int = 20
    projection: str = "ball"
    diversity_prob: float = 0.0
    diversity_min_scale: float = 0.85
    mix: bool = False
    eot: tuple[str, ...] = ()
    eot_samples: int = 1
    random_start: float = 0.0
    seed: int = 0
    ti_sigma: float = 0.0
    vt_samples: int = 0
    vt_beta: float = 1.5
    balance: str = "none"
    feature_mix: float = 0.0
    feature_depth: float = 0.5
    ssim_min: float = 0.0
    psnr_min: float = 0.0
    mask: str = "crop"
    feather: float = 0.35
    texture: float = 0.0
    luma_weight: float = 1.0
    mask_margin: float = 0.3
    stop_nme: float = 0.0
    stop_margin: float = 1.0
    stop_every: int = 1
    box_jitter: float = 0.0
    ti_rel: float = 0.0
    coarse: float = 0.0
    ghost: float = 0.0
    sgm: float = 1.0
    rotate: float = 0.0
    double: float = 0.0
    double_rotate: float = 0.0
    hinge: float = 0.0

    def __attrs_post_init__(self) -> None:
        _check_perceptual(self)

    def describe(self) -> dict[str, Any]:
        return attrs.asdict(self)


def _check_perceptual(cfg: AttackConfig) -> None:
    """Refuse budgets that cannot mean anything (one-line :class:`SpecError`)."""
    import math

    for name in ("eps", "ssim_min", "psnr_min", "feather", "texture", "luma_weight", "mask_margin"):
        v = getattr(cfg, name)
        if not isinstance(v, int | float) or not math.isfinite(float(v)) or float(v) < 0:
            raise SpecError(f"attack setting {name}={v!r} must be a finite number >= 0")
    if cfg.ssim_min > 1:
        raise SpecError(f"attack setting ssim_min={cfg.ssim_min} must be at most 1 (SSIM of identical images)")
    if cfg.texture > 1:
        raise SpecError(f"attack setting texture={cfg.texture} must be in 0..1")
    if not isinstance(cfg.stop_nme, int | float) or not math.isfinite(float(cfg.stop_nme)) or cfg.stop_nme < 0:
        raise SpecError(f"attack setting stop_nme={cfg.stop_nme!r} must be a finite number >= 0 (0: off)")
    if not isinstance(cfg.stop_margin, int | float) or not 1 <= float(cfg.stop_margin) <= 100:
        raise SpecError(f"attack setting stop_margin={cfg.stop_margin!r} must be in 1..100")
    if not isinstance(cfg.stop_every, int) or cfg.stop_every < 1:
        raise SpecError(f"attack setting stop_every={cfg.stop_every!r} must be an integer >= 1")
    if not isinstance(cfg.coarse, int | float) or not math.isfinite(float(cfg.coarse)) or cfg.coarse < 0:
        raise SpecError(f"attack setting coarse={cfg.coarse!r} must be a finite number >= 0 (0: off)")
    if not isinstance(cfg.ghost, int | float) or not 0 <= float(cfg.ghost) < 1:
        raise SpecError(f"attack setting ghost={cfg.ghost!r} must be in 0..1 (0: off)")
    if not isinstance(cfg.sgm, int | float) or not 0 < float(cfg.sgm) <= 1:
        raise SpecError(f"attack setting sgm={cfg.sgm!r} must be in (0, 1] (1: off)")
    if not isinstance(cfg.rotate, int | float) or not 0 <= float(cfg.rotate) <= 90:
        raise SpecError(f"attack setting rotate={cfg.rotate!r} must be in 0..90 degrees (0: off)")
    if cfg.rotate > 0 and cfg.box_jitter > 0:
        raise SpecError("attack settings rotate and box_jitter cannot be combined (each replaces the clean reference)")
    if not isinstance(cfg.double, int | float) or not 0 <= float(cfg.double) <= 1:
        raise SpecError(f"attack setting double={cfg.double!r} must be in 0..1 face widths (0: off)")
    if not isinstance(cfg.double_rotate, int | float) or not -90 <= float(cfg.double_rotate) <= 90:
        raise SpecError(f"attack setting double_rotate={cfg.double_rotate!r} must be in -90..90 degrees")
    if not isinstance(cfg.hinge, int | float) or not math.isfinite(float(cfg.hinge)) or cfg.hinge < 0:
        raise SpecError(f"attack setting hinge={cfg.hinge!r} must be a finite NME >= 0 (0: off)")
    if cfg.mask not in ("crop", "face"):
        raise SpecError(f"attack setting mask={cfg.mask!r} must be crop or face")


_SPEC_TYPES = {"str": str, "int": int, "float": float, "bool": bool}


def _spec_fields() -> dict[str, tuple[type, Any]]:
    """The :class:`AttackConfig` fields a spec string can set (scalars; ``eot`` is a tuple of
    specs and is set by a recipe or from Python), with their types and engine defaults."""
    out: dict[str, tuple[type, Any]] = {}
    for f in attrs.fields(AttackConfig):
        t = _SPEC_TYPES.get(str(f.type))
        if t is not None:
            out[f.name] = (t, f.default)
    return out


class Recipe:
    """A registered attack: calling it returns an :class:`AttackConfig`.

    Its signature lists every scalar :class:`AttackConfig` field with the recipe's own default,
    so spec strings (``lb:steps=30``) are checked and converted like any component's; any
    other field (``eot``) may be passed from Python.
    """

    def __init__(self, summary: str, fields: Mapping[str, Any]) -> None:
        known = {f.name for f in attrs.fields(AttackConfig)}
        unknown = sorted(set(fields) - known)
        if unknown:
            raise SpecError(f"attack recipe sets unknown fields {', '.join(unknown)} (valid: {', '.join(sorted(known))})")
        self.fields = dict(fields)
        self.__doc__ = summary
        params = [
            inspect.Parameter(name, inspect.Parameter.KEYWORD_ONLY, default=self.fields.get(name, default), annotation=t)
            for name, (t, default) in _spec_fields().items()
        ]
        params.append(inspect.Parameter("extra", inspect.Parameter.VAR_KEYWORD))
        self.__signature__ = inspect.Signature(params, return_annotation=AttackConfig)

    def __call__(self, **overrides: Any) -> AttackConfig:
        known = {f.name for f in attrs.fields(AttackConfig)}
        unknown = sorted(set(overrides) - known)
        if unknown:
            raise SpecError(f"unknown attack setting {', '.join(unknown)} (valid: {', '.join(sorted(known))})")
        given = {k: v for k, v in overrides.items() if v is not None}
        if "eot" in given:
            given["eot"] = tuple(given["eot"])
        return AttackConfig(**{**self.fields, **given})

    def __repr__(self) -> str:
        return f"Recipe({self.__doc__!r}, {self.fields!r})"


def recipe(summary: str, **fields: Any) -> Recipe:
    """A named attack's factory: ``fields`` override :class:`AttackConfig`'s defaults."""
    return Recipe(summary, fields)


def preset(spec: str, *, plugin_manager: Any = None, **overrides: Any) -> AttackConfig:
    """The :class:`AttackConfig` of a registered attack: a name (``lb``) or a spec
    (``lb:steps=30,eps=8``), with keyword overrides (``None`` values are ignored)."""
    from lbcore.plugins import get_plugin_manager
    from lbcore.spec import bind_params, parse_spec

    pm = plugin_manager or get_plugin_manager()
    name, raw = parse_spec(spec)
    comps = pm.components("attacks")
    if name not in comps:
        raise SpecError(f"unknown attack preset {name!r} (valid: {', '.join(attack_names(pm))})")
    factory: Callable[..., AttackConfig] = comps[name].factory
    params = bind_params(factory, raw, spec)
    params.update({k: v for k, v in overrides.items() if v is not None})
    cfg = factory(**params)
    if not isinstance(cfg, AttackConfig):
        raise SpecError(f"attack {name!r} did not return an AttackConfig (got {type(cfg).__name__})")
    return cfg


def attack_names(plugin_manager: Any = None) -> list[str]:
    """Registered attack names in registration order (the paper's first)."""
    from lbcore.plugins import get_plugin_manager

    pm = plugin_manager or get_plugin_manager()
    return list(pm.components("attacks", sort=False))
