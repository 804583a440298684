"""The conformance kit: contract checks for every component kind, for plugin authors' tests.

One call runs every check of a kind's contract against a registered component (a spec string,
built through the shared plugin manager) or an instance::

    from lbcore.testing import check_component

    def test_my_extractor_conforms():
        check_component("extractor", "myextractor:weights=none")

    def test_my_loss_conforms():
        check_component("loss", "my-loss")

``check_component`` raises :class:`ConformanceError` (an ``AssertionError``, so pytest shows it
as a failed assertion) with a one-line reason naming the check; it returns a dict of what it
measured. :func:`conformance_report` runs the same checks without stopping at the first failure
and returns a :class:`ConformanceReport` (one line per check: passed, failed or skipped).

The checks per kind (see docs/plugins.md for the contracts they enforce):

* extractor - type and scheme, output shapes, values finite, input left untouched, decode
  in image coordinates (a translated image gives translated landmarks), gradient reaches the
  input pixels of every face, batch independence, determinism, device move;
* loss - ``(F,)`` finite per-face values, the clean output scores highest (the attack
  minimises), differentiable in the adversarial output only, face independence, device move;
* optimizer - ``max_steps``, ``init_state``, ``step`` keeps shape/dtype/device, moves against
  the gradient, leaves its input untouched, image independence, device move;
* degradation - flags are booleans, shape and ``[0, 255]`` range kept, input untouched,
  gradient when ``differentiable``, determinism unless ``stochastic``, device kept;
* detector - ``(N, 5)`` float array of ordered boxes sorted by score, input untouched.

The device move moves the component to CUDA when it is available and is skipped otherwise.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import attrs

__all__ = [
    "fresh_plugin_manager",
    "sample_batch",
    "ConformanceError",
    "ConformanceReport",
    "CheckResult",
    "check_component",
    "conformance_report",
    "check_extractor",
    "check_loss",
    "check_optimizer",
    "check_degradation",
    "check_detector",
    "sample_outputs",
]


class ConformanceError(AssertionError):
    """A component breaks its contract; the message says which check and why."""


class _Skip(Exception):
    """A check that does not apply here (no CUDA device, a flag that is off)."""


@attrs.frozen
class CheckResult:
    """The outcome of one check: ``status`` is ``passed``, ``failed`` or ``skipped``."""

    name: str
    status: str
    detail: str = ""


@attrs.define
class ConformanceReport:
    """Every check of one component, in order (see :func:`conformance_report`)."""

    kind: str
    component: str
    results: list[CheckResult] = attrs.field(factory=list)
    measured: dict[str, Any] = attrs.field(factory=dict)

    @property
    def ok(self) -> bool:
        return all(r.status != "failed" for r in self.results)

    @property
    def failures(self) -> list[CheckResult]:
        return [r for r in self.results if r.status == "failed"]

    def __str__(self) -> str:
        lines = [f"{self.kind} {self.component}: {'conforms' if self.ok else 'DOES NOT CONFORM'}"]
        for r in self.results:
            lines.append(f"  {r.status:<7} {r.name}" + (f" - {r.detail}" if r.detail else ""))
        return "\n".join(lines)

    def raise_for_failures(self) -> None:
        """Raise :class:`ConformanceError` naming the first failed check, if any."""
        if self.failures:
            first = self.failures[0]
            raise ConformanceError(f"{self.component}: {first.name}: {first.detail}")


class _Run:
    """Runs named checks; strict runs stop at the first failure (``ConformanceError``)."""

    def __init__(self, kind: str, component: str, strict: bool) -> None:
        self.report = ConformanceReport(kind, component)
        self.strict = strict
        self.broken = False

    def check(self, name: str, fn: Callable[[], Any], *, essential: bool = False) -> Any:
        """Run ``fn``; a later check that needs an essential one's result is skipped when it failed."""
        if self.broken:
            self.report.results.append(CheckResult(name, "skipped", "an essential check failed"))
            return None
        try:
            value = fn()
        except _Skip as why:
            self.report.results.append(CheckResult(name, "skipped", str(why)))
            return None
        except ConformanceError as err:
            msg = str(err)
            prefix = f"{name}: "
            detail = msg[len(prefix):] if msg.startswith(prefix) else msg
            self._failed(name, detail, err, essential)
            return None
        except Exception as err:  # a crash is a failed check too, with the error named
            self._failed(name, f"raised {type(err).__name__}: {err}", err, essential)
            return None
        self.report.results.append(CheckResult(name, "passed"))
        return value

    def _failed(self, name: str, detail: str, err: BaseException, essential: bool) -> None:
        self.report.results.append(CheckResult(name, "failed", detail))
        if self.strict:
            raise ConformanceError(f"{name}: {detail}") from err
        if essential:
            self.broken = True


@contextmanager
def fresh_plugin_manager(**env: str) -> Iterator[Any]:
    """A newly loaded plugin manager (optionally under extra environment variables),
    installed as the shared one for the duration of the ``with`` block."""
    from lbcore import plugins

    old_env = {k: os.environ.get(k) for k in env}
    os.environ.update(env)
    old = plugins._shared
    try:
        plugins._shared = None
        pm = plugins.get_plugin_manager()
        yield pm
    finally:
        plugins._shared = old
        for k, v in old_env.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


def sample_batch(height: int = 160, width: int = 200, seed: int = 0) -> tuple[Any, Any]:
    """Two smooth random images with three faces (two in the first image, one off-centre and
    partly outside the second) - enough to exercise cropping, batching and clipping."""
    import torch
    import torch.nn.functional as F

    from lbcore.types import Faces

    g = torch.Generator().manual_seed(seed)
    low = torch.rand(2, 3, height // 8, width // 8, generator=g) * 255
    images = F.interpolate(low, size=(height, width), mode="bilinear", align_corners=False)
    boxes = torch.tensor(
        [[20.0, 30.0, 90.0, 110.0], [110.0, 20.0, 180.0, 100.0], [150.0, 100.0, 230.0, 190.0]]
    )
    return images, Faces(boxes, torch.tensor([0, 0, 1]))


def sample_outputs(faces: int = 3, points: int = 5, size: int = 16, seed: int = 0) -> tuple[Any, Any]:
    """A clean and a nearby adversarial :class:`~lbcore.types.ExtractorOutput` with every field
    set (Gaussian heat-maps, their placement, and landmarks), for checking losses without an
    extractor. The adversarial tensors require gradients."""
    import torch

    from lbcore.extractor import apply_affine, scale_affine
    from lbcore.types import ExtractorOutput

    g = torch.Generator().manual_seed(seed)
    centres = 3 + torch.rand(faces, points, 2, generator=g) * (size - 6)
    moved = centres + torch.randn(faces, points, 2, generator=g) * 1.5
    ys, xs = torch.meshgrid(torch.arange(size, dtype=torch.float32), torch.arange(size, dtype=torch.float32),
                            indexing="ij")

    def maps(c: torch.Tensor) -> torch.Tensor:
        d2 = (xs - c[..., 0, None, None]) ** 2 + (ys - c[..., 1, None, None]) ** 2
        return torch.exp(-d2 / (2 * 1.5**2))

    theta = scale_affine(4.0, 4.0, faces)
    theta[:, :, 2] += torch.arange(faces, dtype=torch.float32)[:, None] * 70.0  # faces side by side
    clean = ExtractorOutput(heatmaps=maps(centres), landmarks=apply_affine(theta, centres), hm_to_image=theta)
    adv_hm = maps(moved).requires_grad_(True)
    adv_lm = apply_affine(theta, moved).requires_grad_(True)
    adv = ExtractorOutput(heatmaps=adv_hm, landmarks=adv_lm, hm_to_image=theta.clone())
    return clean, adv


def _fail(what: str, why: str) -> None:
    raise ConformanceError(f"{what}: {why}")


def _cuda_or_skip() -> Any:
    import torch

    if not torch.cuda.is_available():
        raise _Skip("no CUDA device here")
    return torch.device("cuda")


def _name_of(component: Any) -> str:
    return component if isinstance(component, str) else type(component).__name__


def _pm() -> Any:
    from lbcore.plugins import get_plugin_manager

    return get_plugin_manager()


def _close_points(a: Any, b: Any, tol: float, fraction: float = 0.9) -> tuple[bool, float]:
    """Whether at least ``fraction`` of the points of ``a`` and ``b`` lie within ``tol`` pixels;
    also the median distance. (A fraction, not all: an argmax decode may legitimately flip
    between near-equal maxima under float noise.)"""
    d = (a.float().cpu() - b.float().cpu()).norm(dim=-1).flatten()
    if d.numel() == 0:
        return True, 0.0
    return bool((d <= tol).float().mean() >= fraction), float(d.median())


# -- extractors --------------------------------------------------------------------------
def _primary(out: Any) -> Any:
    return out.heatmaps if out.heatmaps is not None else out.landmarks


def _translation_pair(shift: tuple[int, int] = (16, 12), size: int = 256, seed: int = 3) -> tuple[Any, ...]:
    """Two windows of one larger smooth image, the second shifted by ``shift`` (x, y), and the
    same face in both: the face's crop lies inside both windows, so its content is identical and
    only its image coordinates differ."""
    import torch
    import torch.nn.functional as F

    from lbcore.types import Faces

    dx, dy = shift
    g = torch.Generator().manual_seed(seed)
    low = torch.rand(1, 3, (size + dy) // 8 + 1, (size + dx) // 8 + 1, generator=g) * 255
    base = F.interpolate(low, size=(size + dy, size + dx), mode="bilinear", align_corners=False)
    a = base[:, :, :size, :size].contiguous()
    b = base[:, :, dy:dy + size, dx:dx + size].contiguous()
    box = torch.tensor([[100.0, 96.0, 164.0, 168.0]])
    idx = torch.zeros(1, dtype=torch.long)
    offset = torch.tensor([dx, dy, dx, dy], dtype=torch.float32)
    return a, Faces(box, idx), b, Faces(box - offset, idx), torch.tensor([float(dx), float(dy)])


def _extractor_checks(run: _Run, extractor: Any, device: str, check_gradient: bool) -> dict[str, Any]:
    import torch

    from lbcore.extractor import Extractor
    from lbcore.losses import heatmap_cosine_loss
    from lbcore.types import ExtractorOutput, Faces

    measured: dict[str, Any] = {}

    def build() -> Any:
        ext = _pm().build("extractors", extractor) if isinstance(extractor, str) else extractor
        if not isinstance(ext, Extractor):
            _fail("type", f"{type(ext).__name__} is not an lbcore.Extractor")
        return ext

    ext = run.check("type", build, essential=True)

    def scheme() -> None:
        s: Any = getattr(ext, "scheme", None)
        if s is None or s.num_points <= 0:
            _fail("scheme", "extractor declares no landmark scheme")
        a, b = s.eye_corners
        if not (0 <= a < s.num_points and 0 <= b < s.num_points and a != b):
            _fail("scheme", f"eye corners {s.eye_corners} invalid for {s.num_points} points")
        perm = tuple(s.flip_permutation)
        if perm and (sorted(perm) != list(range(s.num_points))
                     or any(perm[perm[i]] != i for i in range(s.num_points))):
            _fail("scheme", "flip_permutation is not an involution of the points")

    run.check("scheme", scheme, essential=True)
    if run.broken:
        return measured
    ext = ext.to(device).eval()
    k = ext.scheme.num_points
    images, faces = sample_batch()
    images, faces = images.to(device), faces.to(device)
    n = len(faces)
    measured.update(faces=n, points=k)
    state: dict[str, Any] = {}

    def shapes() -> None:
        before = images.clone()
        out = ext(images, faces)
        if not isinstance(out, ExtractorOutput):
            _fail("output", f"forward returned {type(out).__name__}, not ExtractorOutput")
        if not torch.equal(before, images):
            _fail("output", "forward modified the input images in place")
        if out.heatmaps is None and out.landmarks is None:
            _fail("output", "neither heatmaps nor landmarks")
        if out.heatmaps is not None:
            hm = out.heatmaps
            if hm.dim() != 4 or hm.shape[0] != n or hm.shape[1] != k:
                _fail("heatmaps", f"shape {tuple(hm.shape)}, expected ({n}, {k}, h, w)")
            if out.hm_to_image is None or tuple(out.hm_to_image.shape) != (n, 2, 3):
                _fail("hm_to_image", "missing or not (F, 2, 3)")
        if out.landmarks is not None and tuple(out.landmarks.shape) != (n, k, 2):
            _fail("landmarks", f"shape {tuple(out.landmarks.shape)}, expected ({n}, {k}, 2)")
        state["out"] = out

    run.check("output shapes", shapes, essential=True)

    def values() -> None:
        out = state["out"]
        for field in ("heatmaps", "landmarks", "hm_to_image"):
            t = getattr(out, field)
            if t is None:
                continue
            if t.device.type != images.device.type:
                _fail(field, f"on {t.device}, the inputs are on {images.device}")
            if not bool(torch.isfinite(t).all()):
                _fail(field, "non-finite values")

    run.check("values finite, on the inputs' device", values)

    def decode() -> None:
        with torch.no_grad():
            lm = ext.decode(state["out"])
        if tuple(lm.shape) != (n, k, 2):
            _fail("decode", f"shape {tuple(lm.shape)}, expected ({n}, {k}, 2)")
        if not bool(torch.isfinite(lm).all()):
            _fail("decode", "non-finite landmarks")
        for i in range(n):
            x1, y1, x2, y2 = faces.boxes[i].tolist()
            w, h = x2 - x1, y2 - y1
            inside = (
                (lm[i, :, 0] >= x1 - 1.0 * w) & (lm[i, :, 0] <= x2 + 1.0 * w)
                & (lm[i, :, 1] >= y1 - 1.0 * h) & (lm[i, :, 1] <= y2 + 1.0 * h)
            )
            if not bool(inside.all()):
                _fail("decode", f"face {i}: landmarks far outside the face box (not image coordinates?)")
        state["lm"] = lm

    run.check("decode near the faces", decode, essential=True)

    def round_trip() -> None:
        a, fa, b, fb, shift = _translation_pair()
        with torch.no_grad():
            la = ext.decode(ext(a.to(device), fa.to(device)))
            lb = ext.decode(ext(b.to(device), fb.to(device)))
        ok, med = _close_points(la, lb + shift.to(lb.device), tol=1.0)
        measured["round_trip_median_px"] = med
        if not ok:
            _fail("decode round trip", f"translating the image by {tuple(shift.tolist())} px moved the "
                  f"landmarks by a different amount (median error {med:.2f} px): decode must return "
                  "full-image pixel coordinates")

    run.check("decode round trip in image coordinates", round_trip)

    def determinism() -> None:
        again = _primary(ext(images, faces))
        if not torch.allclose(_primary(state["out"]), again, atol=1e-5, rtol=1e-4):
            _fail("determinism", "two forward passes in eval mode differ")

    run.check("determinism", determinism)

    def batch_independence() -> None:
        # face 2 alone equals face 2 in the batch
        one = Faces(faces.boxes[2:3], torch.zeros(1, dtype=torch.long, device=faces.boxes.device))
        solo = _primary(ext(images[1:2], one))
        if not torch.allclose(solo[0], _primary(state["out"])[2], atol=1e-4, rtol=1e-3):
            _fail("batch independence", "a face's output depends on the other faces in the batch")

    run.check("batch independence", batch_independence)

    def gradient() -> None:
        if not check_gradient:
            raise _Skip("check_gradient=False")
        x = images.clone().requires_grad_(True)
        adv = ext(x, faces)
        out = state["out"]
        if adv.heatmaps is not None and out.heatmaps is not None:
            # Eq. 1 against a slightly different reference: at the clean output itself the
            # cosine's gradient is zero by construction
            ref = out.heatmaps.detach() + 0.1 * out.heatmaps.detach().std() * torch.randn(
                out.heatmaps.shape, generator=torch.Generator().manual_seed(0)).to(out.heatmaps.device)
            loss = heatmap_cosine_loss(ref, adv.heatmaps).sum()
        else:
            loss = adv.landmarks.sum()
        if not loss.requires_grad:
            _fail("gradient", "the output does not depend differentiably on the images")
        both = adv.landmarks is not None and adv.heatmaps is not None
        (g,) = torch.autograd.grad(loss, x, retain_graph=both)
        if not bool(torch.isfinite(g).all()):
            _fail("gradient", "non-finite gradient")
        for i in range(n):
            x1, y1, x2, y2 = [int(v) for v in faces.boxes[i].tolist()]
            img = int(faces.image_index[i])
            region = g[img, :, max(y1, 0): max(y2, 1), max(x1, 0): max(x2, 1)]
            if float(region.abs().sum()) == 0.0:
                _fail("gradient", f"no gradient reaches the pixels of face {i}")
        if both:
            # regression outputs with rendered heat-maps: the coordinates must carry the
            # gradient too (the landmark-displacement loss uses them)
            gl = None
            if adv.landmarks.requires_grad:
                (gl,) = torch.autograd.grad(adv.landmarks.sum(), x, allow_unused=True)
            if gl is None or float(gl.abs().sum()) == 0.0:
                _fail("gradient", "landmarks are set but not differentiable with respect to the images")
        measured["grad_abs_sum"] = float(g.abs().sum())

    run.check("gradient reaches the input pixels", gradient)

    def device_move() -> None:
        if images.device.type == "cuda":
            raise _Skip("already checked on CUDA")
        cuda = _cuda_or_skip()
        ext.to(cuda)
        try:
            out = ext(images.to(cuda), faces.to(cuda))
            got = _primary(out)
            if got.device.type != "cuda":
                _fail("device", "output not on the inputs' device after .to('cuda')")
            with torch.no_grad():
                lm = ext.decode(out)
            ok, med = _close_points(lm, state["lm"], tol=2.0)
            if not ok:
                _fail("device", f"CUDA landmarks differ from CPU ones (median {med:.2f} px)")
        finally:
            ext.to(device)

    run.check("device move", device_move)
    return measured


def check_extractor(extractor: Any, *, device: str = "cpu", check_gradient: bool = True) -> dict[str, Any]:
    """Run the extractor contract checks; raise :class:`ConformanceError` on the first failure.

    ``extractor`` is a spec string (built through the shared plugin manager) or an instance.
    Checks: type and scheme, output shapes, values finite and on the inputs' device, the input
    left untouched, decoded landmarks near the boxes and in full-image coordinates (a translated
    image gives landmarks translated by the same amount), determinism, batch independence (a
    face's output does not depend on the other faces in the batch), the gradient of Eq. 1 (or of
    the landmarks) reaches the input pixels of every face, and a move to CUDA when available.

    Returns a dict of what was measured (``faces``, ``points``, ``grad_abs_sum``, ...).
    """
    run = _Run("extractor", _name_of(extractor), strict=True)
    return _extractor_checks(run, extractor, device, check_gradient)


# -- losses ------------------------------------------------------------------------------
_FIELDS = ("heatmaps", "landmarks", "hm_to_image")


def _map_output(out: Any, fn: Callable[[str, Any], Any], keep_extra: bool = False) -> Any:
    """A new ExtractorOutput with ``fn(field, tensor)`` applied to each tensor field that is set."""
    from lbcore.types import ExtractorOutput

    new: dict[str, Any] = {f: (fn(f, getattr(out, f)) if getattr(out, f) is not None else None) for f in _FIELDS}
    return ExtractorOutput(heatmaps=new["heatmaps"], landmarks=new["landmarks"], hm_to_image=new["hm_to_image"],
                           extra=dict(out.extra) if keep_extra else {})


def _loss_checks(run: _Run, loss: Any, extractor: Any, device: str) -> dict[str, Any]:
    import torch


    measured: dict[str, Any] = {}

    def build() -> Any:
        fn = _pm().build("losses", loss) if isinstance(loss, str) else loss
        if not callable(fn):
            _fail("type", f"{type(fn).__name__} is not callable")
        return fn

    fn = run.check("type", build, essential=True)
    if run.broken:
        return measured
    state: dict[str, Any] = {}

    def outputs() -> None:
        if extractor is None:
            clean, adv = sample_outputs()
            clean = _map_output(clean, lambda f, t: t.to(device))
            adv = _map_output(adv, lambda f, t: t.detach().to(device).requires_grad_(f != "hm_to_image"))
            state["leaves"] = [adv.heatmaps, adv.landmarks]
        else:
            ext = _pm().build("extractors", extractor) if isinstance(extractor, str) else extractor
            ext = ext.to(device).eval()
            images, faces = sample_batch()
            images, faces = images.to(device), faces.to(device)
            with torch.no_grad():
                clean = ext(images, faces)
            noise = torch.randn(images.shape, generator=torch.Generator().manual_seed(1)).to(device) * 4.0
            x = (images + noise).clamp(0, 255).requires_grad_(True)
            adv = ext(x, faces)
            state.update(ext=ext, images=images, faces=faces)
            state["leaves"] = [x]
        state.update(clean=clean, adv=adv)

    run.check("sample outputs", outputs, essential=True)
    if run.broken:
        return measured
    clean, adv = state["clean"], state["adv"]
    n = len(_primary(clean))

    def values() -> None:
        v = fn(clean, adv)
        if not isinstance(v, torch.Tensor) or tuple(v.shape) != (n,):
            shape = tuple(v.shape) if isinstance(v, torch.Tensor) else type(v).__name__
            _fail("values", f"returned {shape}, expected a ({n},) tensor (one value per face)")
        if not bool(torch.isfinite(v).all()):
            _fail("values", "non-finite values")
        if v.device.type != _primary(adv).device.type:
            _fail("values", f"on {v.device}, the outputs are on {_primary(adv).device}")
        at_clean = fn(clean, clean)
        if not bool(torch.isfinite(at_clean).all()):
            _fail("values", "non-finite value when adv equals clean")
        # the attack minimises: the clean output must score at least as high as a changed one
        if bool((at_clean < v.detach() - 1e-4 * (1 + at_clean.abs())).any()):
            _fail("direction", "the clean output scores lower than a perturbed one; the attack "
                  "minimises the loss (return minus a distance, or a similarity)")
        state["v"] = v
        measured["clean_value"] = at_clean.tolist()
        measured["perturbed_value"] = v.detach().tolist()

    run.check("per-face values, finite, clean scores highest", values, essential=True)

    def differentiable() -> None:
        v = fn(clean, adv)
        if not v.requires_grad:
            _fail("gradient", "the value does not depend differentiably on the adversarial output")
        grads = torch.autograd.grad(v.sum(), state["leaves"], allow_unused=True)
        total = sum(float(g.abs().sum()) for g in grads if g is not None)
        if total == 0.0 or not all(bool(torch.isfinite(g).all()) for g in grads if g is not None):
            _fail("gradient", "zero or non-finite gradient with respect to the adversarial output")
        measured["grad_abs_sum"] = total

    run.check("differentiable in the adversarial output", differentiable)

    def clean_is_constant() -> None:
        if extractor is not None:
            raise _Skip("real extractor outputs: the clean pass ran without gradients")
        c = _map_output(clean, lambda f, t: t.detach().clone().requires_grad_(f != "hm_to_image"))
        v = fn(c, adv)
        leaves: list[Any] = [c.heatmaps, c.landmarks]
        if v.requires_grad:
            grads = torch.autograd.grad(v.sum(), leaves, allow_unused=True)
            if any(g is not None and float(g.abs().sum()) > 0 for g in grads):
                _fail("clean constant", "the gradient flows into the clean output (detach it)")

    run.check("clean output treated as a constant", clean_is_constant)

    def face_independence() -> None:
        keep = [0, 2] if n >= 3 else [0]

        def sub(o: Any, rows: list[int]) -> Any:
            return _map_output(o, lambda f, t: t[rows], keep_extra=True)

        part = fn(sub(clean, keep), sub(adv, keep))
        if not torch.allclose(part.detach(), state["v"].detach()[keep], atol=1e-4, rtol=1e-4):
            _fail("face independence", "a face's value depends on the other faces in the batch")

    run.check("face independence", face_independence)

    def device_move() -> None:
        if device != "cpu":
            raise _Skip(f"checked on {device}")
        cuda = _cuda_or_skip()

        def move(o: Any) -> Any:
            return _map_output(o, lambda f, t: t.detach().to(cuda))

        v = fn(move(clean), move(adv))
        if v.device.type != "cuda":
            _fail("device", "value not on the outputs' device")
        if not torch.allclose(v.cpu(), state["v"].detach().cpu(), atol=1e-3, rtol=1e-3):
            _fail("device", "CUDA values differ from CPU values")

    run.check("device move", device_move)
    return measured


def check_loss(loss: Any, *, extractor: Any = None, device: str = "cpu") -> dict[str, Any]:
    """Run the loss contract checks; raise :class:`ConformanceError` on the first failure.

    ``loss`` is a spec string or a callable ``(clean, adv) -> (F,)``. By default it sees
    :func:`sample_outputs` (every output field set); pass ``extractor`` (spec or instance) to
    check it on that extractor's real outputs instead (for losses that read ``extra``).
    """
    run = _Run("loss", _name_of(loss), strict=True)
    return _loss_checks(run, loss, extractor, device)


# -- optimizers --------------------------------------------------------------------------
def _optimizer_checks(run: _Run, rule: Any, device: str) -> dict[str, Any]:
    import torch

    from lbcore.optimizers import UpdateRule

    measured: dict[str, Any] = {}

    def build() -> Any:
        r = _pm().build("optimizers", rule) if isinstance(rule, str) else rule
        if not isinstance(r, UpdateRule):
            _fail("type", f"{type(r).__name__} is not an lbcore.UpdateRule")
        ms = r.max_steps
        if ms is not None and (not isinstance(ms, int) or ms < 1):
            _fail("max_steps", f"{ms!r}: use None or a positive int")
        return r

    r = run.check("type and max_steps", build, essential=True)
    if run.broken:
        return measured
    g = torch.Generator().manual_seed(0)
    x = (torch.rand(2, 3, 24, 20, generator=g) * 255).round().to(device)
    grad = torch.randn(2, 3, 24, 20, generator=g).to(device)
    eps = 15.0
    state: dict[str, Any] = {}

    def steps() -> None:
        st = r.init_state(x)
        if not isinstance(st, dict):
            _fail("init_state", f"returned {type(st).__name__}, expected a dict")
        before_x, before_g = x.clone(), grad.clone()
        cur = x
        for t in range(3):
            nxt = r.step(cur, grad, st, eps)
            if not isinstance(nxt, torch.Tensor) or nxt.shape != x.shape:
                _fail("step", f"step {t}: returned {getattr(nxt, 'shape', type(nxt).__name__)}, expected {tuple(x.shape)}")
            if nxt.dtype != x.dtype or nxt.device.type != x.device.type:
                _fail("step", f"step {t}: {nxt.dtype} on {nxt.device}, expected {x.dtype} on {x.device}")
            if not bool(torch.isfinite(nxt).all()):
                _fail("step", f"step {t}: non-finite values")
            if t == 0:
                state["first"] = nxt
            cur = nxt
        if not (torch.equal(before_x, x) and torch.equal(before_g, grad)):
            _fail("step", "modified its input image or gradient in place")
        # a first-order decrease of the loss <grad, x>: the step must go against the gradient
        change = float((grad * (state["first"] - x)).sum())
        measured["first_order_change"] = change
        if change >= 0:
            _fail("direction", "the step does not decrease the loss to first order (it must move against "
                  "the gradient: the attack minimises)")

    run.check("init_state and step (shape, dtype, device, direction)", steps, essential=True)

    def independence() -> None:
        st = r.init_state(x[1:2])
        solo = r.step(x[1:2], grad[1:2], st, eps)
        if not torch.allclose(solo, state["first"][1:2], atol=1e-4):
            _fail("image independence", "an image's step depends on the other images in the batch")

    run.check("image independence", independence)

    def device_move() -> None:
        if device != "cpu":
            raise _Skip(f"checked on {device}")
        cuda = _cuda_or_skip()
        xc = x.to(cuda)
        out = r.step(xc, grad.to(cuda), r.init_state(xc), eps)
        if out.device.type != "cuda":
            _fail("device", "step output not on the inputs' device")
        if not torch.allclose(out.cpu(), state["first"].cpu(), atol=1e-3):
            _fail("device", "CUDA step differs from the CPU step")

    run.check("device move", device_move)
    return measured


def check_optimizer(rule: Any, *, device: str = "cpu") -> dict[str, Any]:
    """Run the update-rule contract checks; raise :class:`ConformanceError` on the first failure."""
    run = _Run("optimizer", _name_of(rule), strict=True)
    return _optimizer_checks(run, rule, device)


# -- degradations ------------------------------------------------------------------------
def _degradation_checks(run: _Run, degradation: Any, device: str, size: tuple[int, int]) -> dict[str, Any]:
    import torch
    import torch.nn.functional as F

    measured: dict[str, Any] = {}

    def build() -> Any:
        d = _pm().build_degradation(degradation) if isinstance(degradation, str) else degradation
        if not callable(d):
            _fail("type", f"{type(d).__name__} is not callable")
        for flag in ("differentiable", "stochastic", "video"):
            if not isinstance(getattr(d, flag, False), bool):
                _fail("flags", f"{flag} is {getattr(d, flag)!r}, expected a bool")
        return d

    d = run.check("type and flags", build, essential=True)
    if run.broken:
        return measured
    h, w = size
    frames = 4 if getattr(d, "video", False) else 2
    g = torch.Generator().manual_seed(0)
    low = torch.rand(frames, 3, h // 8, w // 8, generator=g) * 255
    x = F.interpolate(low, size=(h, w), mode="bilinear", align_corners=False).round().to(device)
    state: dict[str, Any] = {}

    def shape_range() -> None:
        before = x.clone()
        y = d(x)
        if not isinstance(y, torch.Tensor) or tuple(y.shape) != tuple(x.shape):
            _fail("shape", f"returned {getattr(y, 'shape', type(y).__name__)}, expected {tuple(x.shape)}")
        if y.dtype != torch.float32:
            _fail("dtype", f"{y.dtype}, expected float32")
        if y.device.type != x.device.type:
            _fail("device", f"output on {y.device}, input on {x.device}")
        if not bool(torch.isfinite(y).all()):
            _fail("range", "non-finite values")
        lo, hi = float(y.min()), float(y.max())
        if lo < -1e-3 or hi > 255.0 + 1e-3:
            _fail("range", f"values in [{lo:.2f}, {hi:.2f}], expected [0, 255]")
        if not torch.equal(before, x):
            _fail("input", "modified its input in place")
        measured["mean_abs_change"] = float((y - x).abs().mean())
        state["y"] = y

    run.check("shape, dtype, [0, 255] range, device kept", shape_range, essential=True)

    def gradient() -> None:
        if not getattr(d, "differentiable", False):
            raise _Skip("differentiable is False")
        xi = x.clone().requires_grad_(True)
        y = d(xi)
        if not y.requires_grad:
            _fail("gradient", "differentiable is True but the output has no gradient")
        (gr,) = torch.autograd.grad((y * torch.linspace(0, 1, y.numel(), device=y.device).view_as(y)).sum(), xi)
        if not bool(torch.isfinite(gr).all()) or float(gr.abs().sum()) == 0.0:
            _fail("gradient", "zero or non-finite gradient although differentiable is True")

    run.check("gradient when differentiable", gradient)

    def determinism() -> None:
        if getattr(d, "stochastic", False):
            raise _Skip("stochastic is True")
        again = d(x)
        if not torch.allclose(again, state["y"], atol=1e-3):
            _fail("determinism", "two calls differ although stochastic is False")

    run.check("determinism unless stochastic", determinism)

    def device_move() -> None:
        if device != "cpu":
            raise _Skip(f"checked on {device}")
        cuda = _cuda_or_skip()
        if hasattr(d, "to"):
            d.to(cuda)
        try:
            y = d(x.to(cuda))
            if y.device.type != "cuda":
                _fail("device", "output not on the input's device")
        finally:
            if hasattr(d, "to"):
                d.to("cpu")

    run.check("device move", device_move)
    return measured


def check_degradation(degradation: Any, *, device: str = "cpu", size: tuple[int, int] = (48, 64)) -> dict[str, Any]:
    """Run the degradation contract checks; raise :class:`ConformanceError` on the first failure.

    ``degradation`` is a spec (chains ``a+b`` allowed) or an instance; ``size`` is ``(H, W)``
    of the test images (even sizes suit video codecs' chroma subsampling).
    """
    run = _Run("degradation", _name_of(degradation), strict=True)
    return _degradation_checks(run, degradation, device, size)


# -- detectors ---------------------------------------------------------------------------
def _detector_checks(run: _Run, detector: Any) -> dict[str, Any]:
    import numpy as np

    measured: dict[str, Any] = {}

    def build() -> Any:
        det = _pm().build("detectors", detector) if isinstance(detector, str) else detector
        if not callable(det):
            _fail("type", f"{type(det).__name__} is not callable")
        return det

    det = run.check("type", build, essential=True)
    if run.broken:
        return measured
    rng = np.random.default_rng(0)
    image = (rng.random((120, 160, 3)) * 255).astype(np.uint8)

    def output() -> None:
        before = image.copy()
        boxes = det(image)
        if not isinstance(boxes, np.ndarray) or boxes.ndim != 2 or boxes.shape[1] != 5:
            _fail("output", f"returned {getattr(boxes, 'shape', type(boxes).__name__)}, expected an (N, 5) array")
        if not np.issubdtype(boxes.dtype, np.floating):
            _fail("output", f"dtype {boxes.dtype}, expected float")
        if not np.array_equal(before, image):
            _fail("input", "modified the input image in place")
        if len(boxes):
            if not np.isfinite(boxes).all():
                _fail("output", "non-finite values")
            if (boxes[:, 2] <= boxes[:, 0]).any() or (boxes[:, 3] <= boxes[:, 1]).any():
                _fail("output", "a box with x2 <= x1 or y2 <= y1 (expected x1, y1, x2, y2)")
            if (np.diff(boxes[:, 4]) > 1e-6).any():
                _fail("output", "boxes not sorted by score, best first")
        measured["boxes_on_noise"] = int(len(boxes))

    run.check("(N, 5) boxes, ordered, sorted by score", output)

    def blank() -> None:
        boxes = det(np.zeros((64, 64, 3), dtype=np.uint8))
        if not isinstance(boxes, np.ndarray) or boxes.ndim != 2 or boxes.shape[1] != 5:
            _fail("blank", "on a blank image: expected an (N, 5) array (N may be 0)")

    run.check("blank image", blank)
    return measured


def check_detector(detector: Any) -> dict[str, Any]:
    """Run the detector contract checks; raise :class:`ConformanceError` on the first failure."""
    run = _Run("detector", _name_of(detector), strict=True)
    return _detector_checks(run, detector)


# -- one call ----------------------------------------------------------------------------
_KIND_ALIASES = {
    "extractor": "extractors", "extractors": "extractors",
    "loss": "losses", "losses": "losses",
    "optimizer": "optimizers", "optimizers": "optimizers",
    "degradation": "degradations", "degradations": "degradations",
    "detector": "detectors", "detectors": "detectors",
}


def _dispatch(run: _Run, kind: str, component: Any, options: dict[str, Any]) -> dict[str, Any]:
    if kind == "extractors":
        return _extractor_checks(run, component, options.pop("device", "cpu"), options.pop("check_gradient", True))
    if kind == "losses":
        return _loss_checks(run, component, options.pop("extractor", None), options.pop("device", "cpu"))
    if kind == "optimizers":
        return _optimizer_checks(run, component, options.pop("device", "cpu"))
    if kind == "degradations":
        return _degradation_checks(run, component, options.pop("device", "cpu"), options.pop("size", (48, 64)))
    return _detector_checks(run, component)


def _kind(kind: str) -> str:
    from lbcore.errors import SpecError

    if kind not in _KIND_ALIASES:
        raise SpecError(f"unknown component kind {kind!r} (valid: {', '.join(sorted(set(_KIND_ALIASES.values())))})")
    return _KIND_ALIASES[kind]


def check_component(kind: str, component: Any, **options: Any) -> dict[str, Any]:
    """Run every contract check of ``kind`` against ``component``; stop at the first failure.

    Args:
        kind: ``extractor``, ``loss``, ``optimizer``, ``degradation`` or ``detector`` (plural
            forms too).
        component: a spec string (built through the shared plugin manager, so it checks the
            registered factory too) or an instance.
        options: per kind - ``device`` (all but detectors), ``check_gradient`` (extractors),
            ``extractor`` (losses: check on this extractor's real outputs), ``size``
            (degradations).

    Returns:
        A dict of what was measured.

    Raises:
        ConformanceError: one line, ``<check>: <why>``.
    """
    k = _kind(kind)
    run = _Run(k[:-1] if k != "losses" else "loss", _name_of(component), strict=True)
    return _dispatch(run, k, component, dict(options))


def conformance_report(kind: str, component: Any, **options: Any) -> ConformanceReport:
    """Like :func:`check_component` but runs every check and reports each one.

    ``print(report)`` gives one line per check; ``report.ok`` says whether all passed (skipped
    checks do not count as failures); ``report.raise_for_failures()`` fails a test.
    """
    k = _kind(kind)
    run = _Run(k[:-1] if k != "losses" else "loss", _name_of(component), strict=False)
    run.report.measured = _dispatch(run, k, component, dict(options))
    return run.report
