"""The attack engine: Algorithm 1 of the paper, batched, for one or several extractors.

One engine serves every variant: the update rule (FGSM / I-FGSM / MI-FGSM) is a component,
input diversity (LBtrans) and mixing (LBmix) are options, and differentiable degradations can
be placed between the image and the extractors with expectation over transformation (EOT).
"""

from __future__ import annotations

import contextlib
import math
import weakref
from collections.abc import Iterator, Sequence
from typing import Any

import attrs
import torch
import torch.nn.functional as F

from lbcore.attacks import AttackConfig, preset
from lbcore.errors import SpecError
from lbcore.extractor import Extractor, conv_outputs, residual_adds
from lbcore.optimizers import IterativeFGSM, UpdateRule
from lbcore.types import Faces

__all__ = ["AttackConfig", "AttackResult", "Performance", "preset", "attack", "performance_for", "resolve_amp", "resolve_device"]


def __getattr__(name: str) -> Any:
    # Deprecated: the attacks are components now (lbcore.attacks, `lb list attacks`).
    if name in ("PRESETS", "PRESET_SUMMARIES"):
        import warnings

        from lbcore.plugins import get_plugin_manager

        warnings.warn(f"lbcore.engine.{name} is deprecated: attacks are registered components "
                      "(lbcore.attacks.preset, `lb list attacks`)", DeprecationWarning, stacklevel=2)
        comps = get_plugin_manager().components("attacks", sort=False)
        if name == "PRESETS":
            return {n: dict(getattr(c.factory, "fields", {})) for n, c in comps.items()}
        return {n: c.summary for n, c in comps.items()}
    raise AttributeError(f"module 'lbcore.engine' has no attribute {name!r}")


@attrs.define(frozen=True)
class Performance:
    """How the engine runs an attack - never what it computes (apart from ``amp`` rounding).

    Attributes:
        amp: ``bf16`` / ``fp16`` run the extractors' forward and backward under autocast; the
            perturbation, the momentum, the loss and the budget stay float32. ``none`` (default)
            is plain float32.
        channels_last: convert the extractors' weights (and so their activations) to the NHWC
            layout that cuDNN and oneDNN convolutions run fastest in.
        compile: ``torch.compile`` each heat-map network (``forward_crops``); compiled once per
            extractor and kept for later calls. The first call pays the compile time.
        cudnn_benchmark: let cuDNN time its convolution algorithms for the shapes seen (CUDA).
    """

    amp: str = "none"
    channels_last: bool = False
    compile: bool = False
    cudnn_benchmark: bool = True

    def autocast_dtype(self) -> torch.dtype | None:
        """The autocast dtype, or ``None`` for float32."""
        table = {"none": None, "bf16": torch.bfloat16, "fp16": torch.float16}
        if self.amp not in table:
            raise SpecError(f"unknown amp {self.amp!r} (valid: none, bf16, fp16)")
        return table[self.amp]


def resolve_amp(amp: str, device: torch.device | str) -> str:
    """The autocast setting for ``device``: ``auto`` is bf16 on CUDA GPUs that support it (fp16 on
    older ones) and none on the CPU; ``fp16`` is refused on the CPU (no fast kernels there)."""
    dev = torch.device(device)
    if amp not in ("auto", "none", "bf16", "fp16"):
        raise SpecError(f"unknown amp {amp!r} (valid: auto, none, bf16, fp16)")
    if amp == "auto":
        if dev.type == "cuda":
            return "bf16" if torch.cuda.is_bf16_supported() else "fp16"
        return "none"
    if dev.type == "cpu" and amp == "fp16":
        raise SpecError("amp fp16 is for CUDA devices; use bf16 or none on the CPU")
    return amp


def performance_for(device: torch.device | str, amp: str = "auto", compile: bool = False) -> Performance:
    """The engine settings the commands use on ``device``: :func:`resolve_amp`'s autocast,
    channels-last on GPUs, optional ``torch.compile``."""
    dev = torch.device(device)
    return Performance(amp=resolve_amp(amp, dev), channels_last=dev.type == "cuda", compile=compile)


_COMPILED: weakref.WeakKeyDictionary[torch.nn.Module, Any] = weakref.WeakKeyDictionary()


@contextlib.contextmanager
def _compiled(exts: Sequence[Extractor], enabled: bool) -> Iterator[None]:
    """Temporarily route each heat-map extractor's ``forward_crops`` through ``torch.compile``.

    Only the network is compiled (cropping and decoding stay eager, their shapes vary per
    batch); the compiled callable is cached per extractor so repeated attacks reuse it.
    """
    patched: list[Extractor] = []
    try:
        if enabled:
            for e in exts:
                fc = getattr(e, "forward_crops", None)
                if fc is None or "forward_crops" in vars(e):
                    continue
                if e not in _COMPILED:
                    _COMPILED[e] = torch.compile(fc, dynamic=False)
                e.forward_crops = _COMPILED[e]  # type: ignore[method-assign]
                patched.append(e)
        yield
    finally:
        for e in patched:
            del e.forward_crops


def _float_output(out: Any) -> Any:
    """An extractor output with float32 heat-maps/landmarks (autocast may give bf16/fp16)."""
    if out.heatmaps is not None and out.heatmaps.dtype != torch.float32:
        out.heatmaps = out.heatmaps.float()
    if out.landmarks is not None and out.landmarks.dtype != torch.float32:
        out.landmarks = out.landmarks.float()
    return out


def resolve_device(device: str | torch.device | None) -> torch.device:
    """``auto`` -> ``cuda`` when available else ``cpu``; anything else as given (checked)."""
    if device is None or str(device) == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        dev = torch.device(device)
    except (RuntimeError, TypeError) as err:
        raise SpecError(f"bad device {device!r}: {err}") from None
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise SpecError(f"device {device!r} requested but CUDA is not available here")
    return dev


@attrs.define
class AttackResult:
    """Adversarial images (8-bit values as float ``[0, 255]``) and per-image figures.

    ``final_loss`` (Eq. 1 on the returned images) costs one more forward pass of every
    extractor; it is computed the first time it is read, so callers that do not need it
    (``lb protect`` measures landmarks instead) do not pay for it.
    """

    adversarial: torch.Tensor
    clean_loss: torch.Tensor
    _final: Any = attrs.field(alias="final_loss")
    linf: torch.Tensor
    steps_taken: torch.Tensor
    _history: Any = attrs.field(factory=list, alias="loss_history")
    passes: Any = None
    """Per face ``(F,)`` (CPU, int64): extractor passes spent on it, summed over the attacked
    extractors - each forward (with its backward unless the stop rule ended the face there) of
    the face through one extractor during the iterations (the clean forward not counted)."""

    @property
    def final_loss(self) -> torch.Tensor:
        """Per-image Eq. 1 loss of ``adversarial`` (summed over faces and extractors)."""
        if callable(self._final):
            self._final = self._final()
        assert isinstance(self._final, torch.Tensor)
        return self._final

    @property
    def loss_history(self) -> list[list[float]]:
        """Per-step, per-image loss (kept on the device during the attack: read once at the end)."""
        if isinstance(self._history, torch.Tensor):
            self._history = self._history.tolist()
        assert isinstance(self._history, list)
        return self._history


def _per_image(values: torch.Tensor, image_index: torch.Tensor, n: int) -> torch.Tensor:
    out = torch.zeros(n, dtype=torch.float32, device=values.device)
    return out.index_add(0, image_index.to(values.device), values.float())


def _diversity(
    x: torch.Tensor, faces: Faces, min_scale: float, gen: torch.Generator
) -> tuple[torch.Tensor, Faces]:
    """LBtrans input diversity: resize the whole batch by a random factor, zero-pad back."""
    _, _, h, w = x.shape
    r = min_scale + (1.0 - min_scale) * float(torch.rand((), generator=gen))
    nh, nw = max(1, round(h * r)), max(1, round(w * r))
    small = F.interpolate(x, size=(nh, nw), mode="bilinear", align_corners=False)
    top = int(torch.randint(0, h - nh + 1, (), generator=gen))
    left = int(torch.randint(0, w - nw + 1, (), generator=gen))
    out = F.pad(small, (left, w - nw - left, top, h - nh - top))
    sx, sy = nw / w, nh / h
    b = faces.boxes
    boxes = torch.stack(
        [(b[:, 0] + 0.5) * sx - 0.5 + left, (b[:, 1] + 0.5) * sy - 0.5 + top,
         (b[:, 2] + 0.5) * sx - 0.5 + left, (b[:, 3] + 0.5) * sy - 0.5 + top],
        dim=1,
    )
    return out, Faces(boxes, faces.image_index)


def attack(
    images: torch.Tensor,
    faces: Faces,
    extractors: Extractor | Sequence[Extractor],
    config: AttackConfig | None = None,
    *,
    device: str | torch.device = "cpu",
    plugin_manager: Any = None,
    init: torch.Tensor | None = None,
    performance: Performance | None = None,
    on_step: Any = None,
) -> AttackResult:
    """Run Algorithm 1 on a batch of same-sized images against one or more extractors.

    Args:
        images: ``(B, 3, H, W)`` float ``[0, 255]`` clean images.
        faces: boxes of every face to protect (several per image allowed).
        extractors: one extractor or a list (ensemble: their losses are summed).
        config: the attack; default the paper's LB preset.
        device: where to run (never inferred from a model).
        init: optional starting adversarial image (e.g. the previous video frame's
            perturbation added to this frame); projected into the budget first.
        performance: how to run it (autocast, channels-last, compile); default plain fp32.
        on_step: optional progress callback, called as ``on_step(k, total)`` after attack step
            ``k`` (1-based) of ``total``.

    Returns:
        :class:`AttackResult`; ``adversarial`` holds integer values in ``[0, 255]`` within
        ``eps`` of ``images`` after rounding.
    """
    from lbcore.plugins import get_plugin_manager

    config = config or AttackConfig()
    pm = plugin_manager or get_plugin_manager()
    dev = resolve_device(device)
    exts = [extractors] if isinstance(extractors, Extractor) else list(extractors)
    if not exts:
        raise SpecError("attack needs at least one extractor")
    loss_fn = pm.build("losses", config.loss)
    rule: UpdateRule = pm.build("optimizers", config.optimizer)
    mix_rule = IterativeFGSM(alpha=getattr(rule, "alpha", 1.0)) if config.mix else None
    eot = [pm.build("degradations", s) for s in config.eot]
    for e in eot:
        if not getattr(e, "differentiable", False):
            raise SpecError(f"degradation {type(e).__name__} is not differentiable; cannot attack through it")

    perf = performance or Performance()
    amp_dtype = perf.autocast_dtype()
    if dev.type == "cuda" and perf.cudnn_benchmark:
        torch.backends.cudnn.benchmark = True
    with _compiled(exts, perf.compile):
        return _attack(images, faces, exts, config, dev, loss_fn, rule, mix_rule, eot, perf, amp_dtype, init,
                       on_step)


def _attack(images: torch.Tensor, faces: Faces, exts: list[Extractor], config: AttackConfig, dev: torch.device,
            loss_fn: Any, rule: UpdateRule, mix_rule: UpdateRule | None, eot: list[Any], perf: Performance,
            amp_dtype: torch.dtype | None, init: torch.Tensor | None, on_step: Any = None) -> AttackResult:
    """The body of :func:`attack` once components are built."""

    def run(e: Extractor, inp: torch.Tensor, fcs: Faces) -> Any:
        # Autocast covers the extractor only: the loss, the gradient w.r.t. the image and the
        # update stay float32 (autocast's backward runs in the forward's dtypes).
        ctx = contextlib.nullcontext() if amp_dtype is None else torch.autocast(dev.type, dtype=amp_dtype)
        with ctx:
            out = e(inp, fcs)
        return _float_output(out)

    gen = torch.Generator(device="cpu")
    gen.manual_seed(int(config.seed))
    torch.manual_seed(int(config.seed))

    x = images.to(dev, torch.float32)
    faces = faces.to(dev)
    n_img = x.shape[0]
    for e in exts:
        e.to(dev).eval()
        if perf.channels_last:
            e.to(memory_format=torch.channels_last)  # type: ignore[call-overload]
        # Only the image's gradient is needed: no weight gradients are computed or stored.
        for p in e.parameters():
            p.requires_grad_(False)

    if config.balance not in ("none", "grad", "loss"):
        raise SpecError(f"unknown balance {config.balance!r} (valid: none, grad, loss)")
    if not 0.0 <= float(config.feature_mix) <= 1.0:
        raise SpecError(f"feature_mix {config.feature_mix} must be within 0..1")
    feats = _Features(exts, float(config.feature_depth)) if config.feature_mix > 0 else None
    ghost = _Ghost(exts, float(config.ghost), int(config.seed), dev) if config.ghost > 0 else None
    adds = [m for e in exts for m in residual_adds(e)] if float(config.sgm) != 1.0 else []
    for m in adds:
        m.gamma = float(config.sgm)
    try:
        with torch.no_grad():
            clean = [run(e, x, faces) for e in exts]
            clean_feat = dict(feats.value) if feats is not None else {}
            member_clean = [loss_fn(c, c) for c in clean]
            clean_loss = sum(_per_image(v, faces.image_index, n_img) for v in member_clean)
            # each member's scale: the magnitude of its clean loss per face (1 where that is 0)
            scale = [torch.where(v.abs() > 1e-6, v.abs(), torch.ones_like(v)).float() for v in member_clean]
        n_faces = int(faces.boxes.shape[0])
        clean_feat = {i: f.detach().float().flatten(1) for i, f in clean_feat.items()
                      if isinstance(f, torch.Tensor) and f.shape[0] == n_faces}
        return _iterate(x, faces, exts, config, dev, loss_fn, rule, mix_rule, eot, run, gen, init,
                        clean, clean_loss, scale, feats, clean_feat, n_img, perf, on_step, ghost)
    finally:
        if feats is not None:
            feats.close()
        if ghost is not None:
            ghost.close()
        for m in adds:
            m.gamma = 1.0


class _Features:
    """Forward hooks keeping one hidden activation of each member (``feature_mix``)."""

    def __init__(self, exts: Sequence[Extractor], depth: float) -> None:
        self.value: dict[int, Any] = {}
        self.handles: list[Any] = []
        for i, e in enumerate(exts):
            convs = conv_outputs(e)
            if convs:
                m = convs[min(len(convs) - 1, max(0, round(depth * (len(convs) - 1))))]
                self.handles.append(m.register_forward_hook(self._keep(i)))

    def _keep(self, i: int) -> Any:
        def hook(module: Any, inputs: Any, output: Any) -> None:
            self.value[i] = output
        return hook

    def close(self) -> None:
        for h in self.handles:
            h.remove()


class _Ghost:
    """Ghost networks (``ghost``): while on, every convolution's output is scaled per channel
    by a fresh draw from ``U[1 - r, 1 + r]`` (one eroded copy of the member per forward pass)."""

    def __init__(self, exts: Sequence[Extractor], r: float, seed: int, dev: torch.device) -> None:
        self.r = r
        self.on = False
        self.gen = torch.Generator(device=dev)
        self.gen.manual_seed(seed + 7919)
        self.handles = [m.register_forward_hook(self._erode) for e in exts for m in conv_outputs(e)]

    def _erode(self, module: Any, inputs: Any, output: Any) -> Any:
        if not self.on or not isinstance(output, torch.Tensor) or output.dim() != 4:
            return None
        shape = (output.shape[0], output.shape[1], 1, 1)
        u = torch.rand(shape, generator=self.gen, device=output.device, dtype=torch.float32)
        return output * (1 + self.r * (2 * u - 1)).to(output.dtype)

    @contextlib.contextmanager
    def active(self) -> Iterator[None]:
        self.on = True
        try:
            yield
        finally:
            self.on = False

    def close(self) -> None:
        for h in self.handles:
            h.remove()


def _smooth(g: torch.Tensor, sigma: float) -> torch.Tensor:
    """TI: the gradient smoothed by a separable Gaussian of ``sigma`` pixels (zero padding)."""
    r = max(1, math.ceil(3 * sigma))
    k = torch.exp(-0.5 * (torch.arange(-r, r + 1, dtype=g.dtype, device=g.device) / sigma) ** 2)
    k = k / k.sum()
    c = g.shape[1]
    g = F.conv2d(g, k.view(1, 1, 1, -1).expand(c, 1, 1, -1), padding=(0, r), groups=c)
    return F.conv2d(g, k.view(1, 1, -1, 1).expand(c, 1, -1, 1), padding=(r, 0), groups=c)


def _face_widths(faces: Faces, n_img: int) -> list[float | None]:
    """The median face-box width of each image (None for an image without faces)."""
    widths = (faces.boxes[:, 2] - faces.boxes[:, 0]).float()
    out: list[float | None] = []
    for i in range(n_img):
        w = widths[faces.image_index == i]
        out.append(float(w.median()) if w.numel() else None)
    return out


def _smooth_rel(g: torch.Tensor, faces: Faces, rel: float) -> torch.Tensor:
    """``ti_rel``: TI per image with sigma ``rel`` times the median width of its faces."""
    out = g.clone()
    for i, w in enumerate(_face_widths(faces, g.shape[0])):
        if w is not None:
            out[i:i + 1] = _smooth(g[i:i + 1], max(0.3, rel * w))
    return out


class _Coarse:
    """``coarse``: each image's perturbation lives on a grid ``cells`` cells across its faces
    (cell = median face-box width / ``cells``, at least one pixel); the image is the clean one
    plus the grid's bilinear upsampling, which stays within the grid's ``[-eps, eps]``."""

    def __init__(self, x: torch.Tensor, faces: Faces, cells: float, eps: float) -> None:
        self.x = x
        self.eps = eps
        h, w = x.shape[-2:]
        self.grids: list[torch.Tensor] = []
        for fw in _face_widths(faces, x.shape[0]):
            cell = max(1.0, fw / cells) if fw is not None else 1.0
            size = (max(1, math.ceil(h / cell)), max(1, math.ceil(w / cell)))
            self.grids.append(torch.zeros(1, x.shape[1], *size, device=x.device, dtype=torch.float32))
        self.states: dict[int, list[dict[str, Any]]] = {}

    def up(self, d: torch.Tensor) -> torch.Tensor:
        return F.interpolate(d, size=self.x.shape[-2:], mode="bilinear", align_corners=False)

    def step(self, rule: UpdateRule, grad: torch.Tensor) -> torch.Tensor:
        """One update of every grid by ``rule`` on the gradient pulled back through the
        upsampling; returns the new images (before the engine's clipping and projection)."""
        states = self.states.setdefault(id(rule), [rule.init_state(d) for d in self.grids])
        out = []
        for i, d in enumerate(self.grids):
            with torch.enable_grad():
                dv = d.detach().requires_grad_(True)
                (g,) = torch.autograd.grad(self.up(dv), dv, grad_outputs=grad[i:i + 1].float())
            nd = rule.step(d, g, states[i], self.eps).clamp(-self.eps, self.eps)
            self.grids[i] = nd
            out.append(self.x[i:i + 1] + self.up(nd).to(self.x.dtype))
        return torch.cat(out)


def _rotate(x: torch.Tensor, faces: Faces, degrees: float) -> tuple[torch.Tensor, Faces]:
    """``rotate``: the whole batch turned by ``degrees`` about the image centre (bilinear, zeros
    outside; differentiable); each face box moves with its centre and keeps its size."""
    _, _, h, w = x.shape
    t = math.radians(degrees)
    c, s = math.cos(t), math.sin(t)
    # output pixel p samples the input at R(-t) p (offsets from the centre, normalised coordinates)
    theta = torch.tensor([[c, s * h / w, 0.0], [-s * w / h, c, 0.0]], dtype=x.dtype, device=x.device)
    grid = F.affine_grid(theta.expand(x.shape[0], 2, 3), list(x.shape), align_corners=False)
    out = F.grid_sample(x, grid, mode="bilinear", padding_mode="zeros", align_corners=False)
    b = faces.boxes
    dx = (b[:, 0] + b[:, 2]) / 2 + 0.5 - w / 2
    dy = (b[:, 1] + b[:, 3]) / 2 + 0.5 - h / 2
    cx, cy = c * dx - s * dy + w / 2 - 0.5, s * dx + c * dy + h / 2 - 0.5
    half_w, half_h = (b[:, 2] - b[:, 0]) / 2, (b[:, 3] - b[:, 1]) / 2
    boxes = torch.stack([cx - half_w, cy - half_h, cx + half_w, cy + half_h], dim=1)
    return out, Faces(boxes, faces.image_index)


def _double_start(x: torch.Tensor, faces: Faces, shift: float, degrees: float, eps: float) -> torch.Tensor:
    """``double``: a model-free start - each face plus a faint copy of itself, moved sideways by
    ``shift`` box widths and turned by ``degrees`` about the box centre: ``x + clip(copy - x,
    -eps, eps)`` inside the ellipse of 0.8 times the box's half-sides, fading to nothing by 1.1
    times (faces in order, each copy taken from the clean image; overlaps summed within eps).
    Every landmark extractor sees the copy's eyes, brows and mouth beside the real ones; the
    update rule starts from there."""
    out = x.clone()
    _, _, h, w = x.shape
    t = math.radians(degrees)
    c, s = math.cos(t), math.sin(t)
    for f in range(faces.boxes.shape[0]):
        i = int(faces.image_index[f])
        x0, y0, x1, y1 = (float(v) for v in faces.boxes[f])
        bw, bh = x1 - x0, y1 - y0
        if not (bw > 0 and bh > 0):
            continue
        cx, cy = (x0 + x1) / 2, (y0 + y1) / 2
        rx0, ry0 = max(0, int(math.floor(cx - 0.55 * bw))), max(0, int(math.floor(cy - 0.55 * bh)))
        rx1, ry1 = min(w, int(math.ceil(cx + 0.55 * bw)) + 1), min(h, int(math.ceil(cy + 0.55 * bh)) + 1)
        if rx1 <= rx0 or ry1 <= ry0:
            continue
        ys = torch.arange(ry0, ry1, device=x.device, dtype=torch.float32)
        xs = torch.arange(rx0, rx1, device=x.device, dtype=torch.float32)
        py, px = torch.meshgrid(ys, xs, indexing="ij")
        # output pixel p shows the clean face at R(-t) (p - centre - shift) + centre
        ox, oy = px - cx - shift * bw, py - cy
        qx, qy = c * ox + s * oy + cx, -s * ox + c * oy + cy
        grid = torch.stack([(qx + 0.5) / w * 2 - 1, (qy + 0.5) / h * 2 - 1], dim=-1)[None]
        src = x[i:i + 1].float()
        copy = F.grid_sample(src, grid, mode="bilinear", padding_mode="reflection", align_corners=False)
        d = (copy - src[:, :, ry0:ry1, rx0:rx1]).clamp(-eps, eps)
        edge = (((px - cx) / bw) ** 2 + ((py - cy) / bh) ** 2).sqrt()  # 0.5: the box's inscribed ellipse
        fade = ((0.55 - edge) / 0.15).clamp(0, 1)
        region = out[i:i + 1, :, ry0:ry1, rx0:rx1]
        out[i:i + 1, :, ry0:ry1, rx0:rx1] = (region + d * fade).round().clamp(0, 255).to(out.dtype)
    return torch.min(torch.max(out, x - eps), x + eps)  # (overlapping faces: the sum within eps)


def _jitter_boxes(boxes: torch.Tensor, j: float, gen: torch.Generator) -> torch.Tensor:
    """``box_jitter``: every box scaled by a factor in ``[1 - j, 1 + j]`` about its centre and
    shifted by up to ``j / 2`` of its width and height."""
    n = boxes.shape[0]
    u = (torch.rand((n, 3), generator=gen) * 2 - 1).to(boxes.device, boxes.dtype)
    c = (boxes[:, :2] + boxes[:, 2:]) / 2
    size = boxes[:, 2:] - boxes[:, :2]
    c = c + u[:, 1:] * (j / 2) * size
    half = size * (1 + j * u[:, :1]) / 2
    return torch.cat([c - half, c + half], dim=1)


def _iterate(x: torch.Tensor, faces: Faces, exts: list[Extractor], config: AttackConfig, dev: torch.device,
             loss_fn: Any, rule: UpdateRule, mix_rule: UpdateRule | None, eot: list[Any], run: Any,
             gen: torch.Generator, init: torch.Tensor | None, clean: list[Any], clean_loss: Any,
             scale: list[torch.Tensor], feats: _Features | None, clean_feat: dict[int, torch.Tensor],
             n_img: int, perf: Performance, on_step: Any = None, ghost: _Ghost | None = None) -> AttackResult:
    """The iterations of :func:`attack` (after the clean pass)."""
    mix = float(config.feature_mix)
    # per-face early stop (config.stop_nme > 0): `view` holds the faces still attacked and their
    # clean values; it is the whole batch (exactly today's computation) while the rule is off
    stopper = _Stopper(exts, clean, scale, clean_feat, faces, config, dev) if float(config.stop_nme) > 0 else None
    view: dict[str, Any] = {"clean": clean, "scale": scale, "feat": clean_feat, "faces": faces}
    passes = torch.zeros(len(faces), dtype=torch.long)
    outs: list[Any] = []
    # the hinge hands a broken member's share to the others: with one member there is none to hand
    # it to, and stopping would only leave less margin against re-compression (measured)
    hinge = float(config.hinge) if len(exts) > 1 else 0.0
    pulls: dict[int, torch.Tensor] = {}  # hinge: per member, 1 for the faces it still pulls on
    clean_lm: dict[int, tuple[Any, torch.Tensor]] = {}  # hinge: per member, its clean reference decoded

    def member_losses(inp: torch.Tensor, fcs: Faces, jit: list[tuple[Faces, Any]] | None = None,
                      own_frame: bool = True) -> list[torch.Tensor]:
        out = []
        outs.clear()
        for i, (c, e) in enumerate(zip(view["clean"], exts, strict=True)):
            if jit is not None:  # box_jitter: this member's own boxes and clean reference
                fcs, c = jit[i]
            with ghost.active() if ghost is not None else contextlib.nullcontext():
                o = run(e, inp, fcs)
            if stopper is not None:
                outs.append(o)
            loss = loss_fn(c, o)
            if hinge > 0:
                if own_frame:
                    if i not in clean_lm or clean_lm[i][0] is not c:  # (decoded once per clean reference)
                        clean_lm[i] = (c, _landmarks(e, c))
                    pulls[i] = (_nme_to(e, clean_lm[i][1], o) <= hinge).to(loss.dtype)
                if i in pulls and pulls[i].shape == loss.shape:
                    loss = loss * pulls[i]
            if feats is not None and i in view["feat"] and isinstance(feats.value.get(i), torch.Tensor):
                cos = F.cosine_similarity(feats.value[i].float().flatten(1), view["feat"][i], dim=1, eps=1e-12)
                loss = (1 - mix) * loss + mix * view["scale"][i] * cos
            if config.balance == "loss":
                loss = loss / view["scale"][i]
            out.append(loss)
        return out

    def gradient(point: torch.Tensor, check: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
        """Gradient of the (EOT-averaged, diversified, balanced) loss at ``point``, and the loss.

        ``check``: apply the stop rule to the first sample's forward outputs; faces it ends get
        no backward (and no share of the gradient) from then on."""
        grad: torch.Tensor | None = None
        total = torch.zeros(n_img, device=dev)
        faces_now: Faces = view["faces"]
        keep: torch.Tensor | None = None
        for k in range(max(1, config.eot_samples if eot else 1)):
            xi = point.detach().requires_grad_(True)
            inp, fcs = xi, faces_now
            jit: list[tuple[Faces, Any]] | None = None
            if config.box_jitter > 0:
                # one jittered box set per member, its clean reference in those boxes; the sets are
                # stacked so that DI moves them with the image (same crop content, same reference)
                jb = [_jitter_boxes(faces_now.boxes, float(config.box_jitter), gen) for _ in exts]
                with torch.no_grad():
                    refs = [run(e, x, Faces(b, faces_now.image_index)) for e, b in zip(exts, jb, strict=True)]
                fcs = Faces(torch.cat(jb), faces_now.image_index.repeat(len(exts)))
            rot_refs: list[Any] | None = None
            if config.rotate > 0:
                # one random turn per step; each member's clean reference recomputed on the turned
                # clean image (as box_jitter), so DI afterwards moves image, boxes and references alike
                deg = (float(torch.rand((), generator=gen)) * 2 - 1) * float(config.rotate)
                inp, fcs = _rotate(inp, fcs, deg)
                with torch.no_grad():
                    turned, _ = _rotate(x, faces_now, deg)
                    rot_refs = [run(e, turned, fcs) for e in exts]
            for d in eot:
                inp = d(inp)
            diversified = False
            if config.diversity_prob > 0 and float(torch.rand((), generator=gen)) < config.diversity_prob:
                inp, fcs = _diversity(inp, fcs, config.diversity_min_scale, gen)
                diversified = True
            if ghost is not None:
                diversified = True  # (the stop rule reads outputs of the members themselves only)
            if rot_refs is not None:
                diversified = True
                jit = [(fcs, r) for r in rot_refs]
            if config.box_jitter > 0:
                diversified = True  # (the stop rule reads outputs in the attack's own boxes only)
                nf = faces_now.boxes.shape[0]
                jit = [(Faces(fcs.boxes[i * nf:(i + 1) * nf], faces_now.image_index), r) for i, r in enumerate(refs)]
            losses = member_losses(inp, fcs, jit, own_frame=not diversified and jit is None)
            stopper_passes(len(exts))
            per_face = sum(losses)
            assert isinstance(per_face, torch.Tensor)
            if stopper is not None and check and k == 0 and not diversified:
                keep = ~stopper.check(outs)
            if keep is not None and not bool(keep.any()):
                g = torch.zeros_like(xi)  # every face ended here: no backward at all
            elif config.balance == "grad" and len(losses) > 1:
                g = torch.zeros_like(xi)
                for j, loss in enumerate(losses):
                    part = loss if keep is None else loss[keep]
                    (gj,) = torch.autograd.grad(part.sum(), xi, retain_graph=j < len(losses) - 1)
                    size = gj.abs().flatten(1).mean(1).clamp_min(1e-30).view(-1, 1, 1, 1)
                    g = g + gj / size
            else:
                (g,) = torch.autograd.grad((per_face if keep is None else per_face[keep]).sum(), xi)
            grad = g if grad is None else grad + g
            total += _per_image(per_face.detach(), faces_now.image_index, n_img)
        assert grad is not None
        return grad, total

    def stopper_passes(n: int) -> None:
        if stopper is None:
            passes.add_(n)
        else:
            passes.index_add_(0, stopper.index_cpu, torch.full((len(stopper.index_cpu),), n, dtype=torch.long))

    eps = float(config.eps)
    # perceptual budgets (lbcore.perceptual): a per-pixel L-inf bound (soft face mask, texture
    # masking) and a per-face SSIM/PSNR floor; the paper's uniform ball when none is set
    from lbcore import perceptual

    weight = perceptual.budget_map(x, faces, config)
    bound: torch.Tensor | float = eps if weight is None else eps * weight
    guard = perceptual.QualityGuard(x, faces, config.ssim_min, config.psnr_min)
    lo = (x - bound).clamp(0, 255)
    hi = (x + bound).clamp(0, 255)
    if init is not None:
        x_adv = torch.min(torch.max(init.to(dev, torch.float32), lo), hi)
    elif config.double > 0:
        start = _double_start(x, faces, float(config.double), float(config.double_rotate), eps)
        if weight is not None:  # the copy also fades with the budget map (mask, texture)
            start = x + ((start - x) * weight).round()
        x_adv = torch.min(torch.max(start, lo), hi)
    elif config.random_start > 0:
        r = min(float(config.random_start), eps)
        noise = (torch.rand(x.shape, generator=gen) * 2 - 1).to(dev) * r
        x_adv = torch.min(torch.max(x + noise, lo), hi)
    else:
        x_adv = x.clone()
    x_adv = guard.project(x_adv)
    state = rule.init_state(x_adv)
    mix_state = mix_rule.init_state(x_adv) if mix_rule else {}
    active = torch.ones(n_img, dtype=torch.bool, device=dev)
    steps_taken = torch.zeros(n_img, dtype=torch.long, device=dev)
    steps = config.steps if rule.max_steps is None else min(config.steps, rule.max_steps)
    history: list[torch.Tensor] = []
    # Pixels no extractor ever sees (outside every face crop) get no gradient; they are put
    # back to their clean values at the end, so a random start changes nothing outside faces.
    touched = torch.zeros_like(x, dtype=torch.bool)
    if stopper is not None and init is not None:
        # a face the stop rule ends before its first backward keeps the start it was given
        touched |= (x_adv != x) if weight is None else (x_adv != x) & (weight > 0)
    elif init is None and config.double > 0:
        touched |= x_adv != x  # the double image is kept where no crop's gradient reaches
    variance = torch.zeros_like(x) if config.vt_samples > 0 else None
    coarse = _Coarse(x, faces, float(config.coarse), eps) if config.coarse > 0 else None

    for t in range(steps):
        # (only the stop rule ends images early; reading `active` would stall a GPU every step)
        if config.projection == "stop" and not bool(active.any()):
            break
        if stopper is not None and not bool(active.any()):
            break  # every face past the stop threshold
        raw, total = gradient(x_adv, check=stopper is not None and t % int(config.stop_every) == 0)
        if stopper is not None:
            active, partial = stopper.narrow(view, active, n_img)
        history.append(total)
        touched |= raw != 0
        grad = raw
        if variance is not None:
            grad = raw + variance
            radius = float(config.vt_beta) * eps
            acc = torch.zeros_like(x)
            for _ in range(int(config.vt_samples)):
                noise = (torch.rand(x.shape, generator=gen) * 2 - 1).to(dev) * radius
                acc += gradient((x_adv + noise).clamp(0, 255))[0]
            variance = acc / int(config.vt_samples) - raw
        if config.ti_rel > 0:
            grad = _smooth_rel(grad, faces, float(config.ti_rel))
        elif config.ti_sigma > 0:
            grad = _smooth(grad, float(config.ti_sigma))
        use_mix = mix_rule is not None and t % 2 == 1
        with torch.no_grad():
            if coarse is not None:
                cand = coarse.step(mix_rule if use_mix and mix_rule is not None else rule, grad)
            elif use_mix:
                assert mix_rule is not None
                cand = mix_rule.step(x_adv, grad, mix_state, eps)
            else:
                cand = rule.step(x_adv, grad, state, eps)
            if weight is not None:
                # each step spends the change where the budget map allows it (texture, face)
                cand = x_adv + weight * (cand - x_adv)
            cand = cand.clamp(0, 255)
            if config.luma_weight != 1.0:
                # the step's luma part (not the whole change's, which would compound every step)
                cand = (x_adv + perceptual.weight_luma(cand - x_adv, config.luma_weight)).clamp(0, 255)
            if config.projection == "stop":
                over = ((cand - x).abs() > bound + 1e-4).flatten(1).any(1)
                active = active & ~over
            else:
                cand = torch.min(torch.max(cand, lo), hi)
            cand = guard.project(cand)
            mask = active.view(-1, 1, 1, 1)
            if stopper is not None:
                # an image with ended and running faces changes only where the running ones' gradient reaches
                mask = mask & (~partial.view(-1, 1, 1, 1) | (raw != 0))
            x_adv = torch.where(mask, cand, x_adv)
            steps_taken += active.long()
        if on_step is not None:
            on_step(t + 1, steps)

    with torch.no_grad():
        x_adv = torch.where(touched, x_adv, x)
        # 8-bit output: round, then re-check the budget after rounding.
        x_adv = x_adv.round()
        lo8, hi8 = torch.ceil(x - bound - 1e-6), torch.floor(x + bound + 1e-6)
        x_adv = torch.min(torch.max(x_adv, lo8), hi8)
        x_adv = x_adv.clamp(0, 255)
        x_adv = guard.enforce_rounded(x_adv, lo8, hi8)
        linf = (x_adv - x).abs().flatten(1).amax(1)

    def final() -> torch.Tensor:
        with torch.no_grad(), _compiled(exts, perf.compile):
            out = sum(_per_image(loss_fn(c, run(e, x_adv, faces)), faces.image_index, n_img)
                      for c, e in zip(clean, exts, strict=True))
        assert isinstance(out, torch.Tensor)
        return out

    assert isinstance(clean_loss, torch.Tensor)
    hist = torch.stack(history) if history else torch.zeros(0, n_img)
    return AttackResult(x_adv, clean_loss, final, linf, steps_taken, hist, passes=passes)


def _subset_output(out: Any, idx: torch.Tensor, n: int) -> Any:
    """An extractor output restricted to faces ``idx`` (tensors whose first axis is the ``n`` faces)."""
    def pick(v: Any) -> Any:
        return v[idx] if isinstance(v, torch.Tensor) and v.dim() > 0 and v.shape[0] == n else v
    return attrs.evolve(out, heatmaps=pick(out.heatmaps), landmarks=pick(out.landmarks),
                        hm_to_image=pick(out.hm_to_image), extra={k: pick(v) for k, v in out.extra.items()})


def _landmarks(e: Extractor, out: Any) -> torch.Tensor:
    """The landmarks ``e`` decodes from ``out`` (no gradient, float32)."""
    with torch.no_grad():
        return e.decode(out).detach().float()


def _nme_to(e: Extractor, ref: torch.Tensor, out: Any) -> torch.Tensor:
    """Per face: NME between the landmarks ``e`` decodes from ``out`` and ``ref`` (landmarks),
    normalised by ``ref``'s outer-eye-corner distance."""
    a, b = e.scheme.eye_corners
    norm = (ref[:, a] - ref[:, b]).norm(dim=-1).clamp_min(1e-6)
    return (_landmarks(e, out) - ref).norm(dim=-1).mean(-1) / norm


class _Stopper:
    """The per-face stop rule (``AttackConfig.stop_nme``): which faces are still attacked.

    A face ends once every attacked extractor's NME between its landmarks (decoded from the
    step's forward output) and its clean landmarks exceeds ``stop_nme * stop_margin``.
    """

    def __init__(self, exts: list[Extractor], clean: list[Any], scale: list[torch.Tensor],
                 feat: dict[int, torch.Tensor], faces: Faces, config: AttackConfig, dev: torch.device) -> None:
        self.exts, self.clean, self.scale, self.feat, self.faces = exts, clean, scale, feat, faces
        self.limit = float(config.stop_nme) * float(config.stop_margin)
        self.n = len(faces)
        self.clean_lm = [_landmarks(e, c) for e, c in zip(exts, clean, strict=True)]
        self.done = torch.zeros(self.n, dtype=torch.bool, device=dev)
        self.index = torch.arange(self.n, device=dev)  # faces still attacked
        self.index_cpu = self.index.cpu()
        self.ended: torch.Tensor | None = None  # (over `index`) faces the last check ended

    def check(self, outs: list[Any]) -> torch.Tensor:
        """Faces (of the current ``index``) that every extractor now sees past the limit."""
        ended = torch.ones(len(self.index), dtype=torch.bool, device=self.done.device)
        for e, o, ref in zip(self.exts, outs, self.clean_lm, strict=True):
            ended &= _nme_to(e, ref[self.index], o) > self.limit
        self.ended = ended
        return ended

    def narrow(self, view: dict[str, Any], active: torch.Tensor, n_img: int) -> tuple[torch.Tensor, torch.Tensor]:
        """After a check: drop the ended faces from ``view``; return the images still attacked
        and those with both ended and running faces."""
        if self.ended is not None and bool(self.ended.any()):
            self.done[self.index[self.ended]] = True
            self.index = torch.nonzero(~self.done).flatten()
            self.index_cpu = self.index.cpu()
            idx = self.index
            view["clean"] = [_subset_output(c, idx, self.n) for c in self.clean]
            view["scale"] = [s[idx] for s in self.scale]
            view["feat"] = {i: f[idx] for i, f in self.feat.items()}
            view["faces"] = Faces(self.faces.boxes[idx], self.faces.image_index[idx])
        self.ended = None
        running = torch.zeros(n_img, dtype=torch.bool, device=self.done.device)
        running[self.faces.image_index[~self.done]] = True
        finished = torch.zeros(n_img, dtype=torch.bool, device=self.done.device)
        finished[self.faces.image_index[self.done]] = True
        return active & running, running & finished


def budget_ok(clean: torch.Tensor, adv: torch.Tensor, eps: float) -> bool:
    """True when ``adv`` is within ``eps`` of ``clean`` in L-infinity and inside ``[0, 255]``."""
    return bool(((adv - clean).abs().max() <= eps + 1e-4) and adv.min() >= 0 and adv.max() <= 255 and math.isfinite(float(adv.sum())))
