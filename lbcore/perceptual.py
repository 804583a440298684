"""Perceptual budgets for the attack engine: where the change may go, and how much of it.

The paper bounds the perturbation by an L-infinity ball only, so the same +-15 grey levels land
on flat skin, highlights and the background, where people see them most. Three parts, each an
:class:`~lbcore.attacks.AttackConfig` field, each usable by any attack:

* a **soft face mask** (``mask="face"``, ``feather``): an ellipse around every face box that is
  1 in the middle and falls smoothly (smoothstep) to 0 at its rim, so the perturbation has no
  edge where it stops (the paper's attack stops at the extractor's square crop);
* **texture masking** (``texture``): the per-pixel L-infinity budget is scaled by a contrast-
  masking map of the clean image, ``s^2 / (s^2 + k^2)`` of the local standard deviation ``s``
  of its luma (``k = 6`` grey levels), blurred: near 0 on flat skin and background, near 1 on
  hair, eyebrows and edges, where a change hides in the texture that is already there (the
  masking effect that JND models build on);
* a **similarity budget** (``ssim_min``, ``psnr_min``): after every step the perturbation of
  each image is scaled back (a bisection along ``x + s * delta``) until every face box keeps at
  least the target SSIM (mean of the SSIM map over the box, :func:`lbcore.metrics.mask_ssim`'s
  ``mask-mean``, computed here with torch on a crop and equal to it) and PSNR. It is enforced
  again on the rounded 8-bit result, so it holds on the returned images.

``luma_weight`` scales the luma part of each step's change (the mean over the three channels)
and leaves the chroma part: below 1 the change moves into colour, to which the eye is less
sensitive at fine scales.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import torch
import torch.nn.functional as F

from lbcore.types import Faces

__all__ = ["budget_map", "soft_face_mask", "texture_map", "QualityGuard", "weight_luma"]

_SSIM_SIGMA, _SSIM_RADIUS, _K1, _K2, _RANGE = 1.5, 5, 0.01, 0.03, 255.0


def _gauss1d(sigma: float, radius: int, device: Any, dtype: torch.dtype) -> torch.Tensor:
    t = torch.arange(-radius, radius + 1, dtype=torch.float64)
    k = torch.exp(-0.5 * (t / sigma) ** 2)
    return (k / k.sum()).to(device=device, dtype=dtype)


def _blur(x: torch.Tensor, sigma: float, pad: bool = True) -> torch.Tensor:
    """Separable Gaussian blur of ``(N, C, H, W)``; ``pad`` replicates borders (same size),
    else a valid convolution."""
    radius = max(1, int(3.5 * sigma + 0.5))
    k = _gauss1d(sigma, radius, x.device, x.dtype)
    c = x.shape[1]
    if pad:
        x = F.pad(x, (radius, radius, radius, radius), mode="replicate")
    x = F.conv2d(x, k.view(1, 1, 1, -1).expand(c, 1, 1, -1), groups=c)
    return F.conv2d(x, k.view(1, 1, -1, 1).expand(c, 1, -1, 1), groups=c)


def soft_face_mask(shape: tuple[int, int], faces: Faces, n_images: int, feather: float,
                   margin: float = 0.3) -> torch.Tensor:
    """``(B, 1, H, W)`` soft mask: per face, an ellipse with the box's centre and semi-axes
    ``(1 + margin)`` times the box's half-sides; 1 inside ``1 - feather`` of that radius, a
    smoothstep down to 0 at the rim. Several faces: the maximum."""
    h, w = shape
    dev = faces.boxes.device
    out = torch.zeros(n_images, 1, h, w, device=dev)
    ys = torch.arange(h, device=dev, dtype=torch.float32).view(-1, 1)
    xs = torch.arange(w, device=dev, dtype=torch.float32).view(1, -1)
    f = min(max(float(feather), 1e-3), 1.0)
    for box, img in zip(faces.boxes.float(), faces.image_index.tolist(), strict=True):
        x1, y1, x2, y2 = box.tolist()
        cx, cy = (x1 + x2) / 2 - 0.5, (y1 + y2) / 2 - 0.5
        ax, ay = max((x2 - x1) / 2, 1.0) * (1 + margin), max((y2 - y1) / 2, 1.0) * (1 + margin)
        r = torch.sqrt(((xs - cx) / ax) ** 2 + ((ys - cy) / ay) ** 2)
        t = ((1.0 - r) / f).clamp(0, 1)
        m = t * t * (3 - 2 * t)
        out[int(img), 0] = torch.maximum(out[int(img), 0], m)
    return out


def texture_map(x: torch.Tensor, k: float = 6.0, sigma: float = 2.0) -> torch.Tensor:
    """``(B, 1, H, W)`` contrast-masking map in ``[0, 1)`` of images ``x`` (0..255): ``s^2 /
    (s^2 + k^2)`` of the local (Gaussian, ``sigma``) standard deviation ``s`` of the luma,
    blurred once more so the budget itself has no edges."""
    y = (0.299 * x[:, 0:1] + 0.587 * x[:, 1:2] + 0.114 * x[:, 2:3]).float()
    mu = _blur(y, sigma)
    var = (_blur(y * y, sigma) - mu * mu).clamp_min(0)
    t = var / (var + k * k)
    return _blur(t, sigma)


def budget_map(x: torch.Tensor, faces: Faces, config: Any) -> torch.Tensor | None:
    """The per-pixel multiplier of ``eps`` (``(B, 1, H, W)`` in [0, 1]) the config asks for, or
    ``None`` for the paper's uniform budget."""
    mask = str(getattr(config, "mask", "crop"))
    texture = float(getattr(config, "texture", 0.0))
    if mask == "crop" and texture <= 0:
        return None
    out = torch.ones(x.shape[0], 1, x.shape[2], x.shape[3], device=x.device)
    if mask == "face":
        out = soft_face_mask((x.shape[2], x.shape[3]), faces, x.shape[0], float(getattr(config, "feather", 0.35)),
                             float(getattr(config, "mask_margin", 0.3)))
    if texture > 0:
        out = out * ((1.0 - texture) + texture * texture_map(x))
    return out


def weight_luma(delta: torch.Tensor, luma_weight: float) -> torch.Tensor:
    """``delta`` with its luma part (mean over channels) scaled by ``luma_weight``."""
    if luma_weight == 1.0:
        return delta
    y = delta.mean(dim=1, keepdim=True)
    return delta + (luma_weight - 1.0) * y


class QualityGuard:
    """Keeps every face box of a batch at ``ssim_min`` / ``psnr_min`` or better.

    SSIM: the SSIM map (Gaussian window, sigma 1.5, 11 taps, K = 0.01 / 0.03, range 255) averaged
    over the box's pixels at least a window radius from the image border and over the channels:
    :func:`lbcore.metrics.region_mask_ssim` with ``variant="mask-mean"``. PSNR: over the box's
    pixels and channels (:func:`lbcore.metrics.psnr` with the box as mask). Both are computed in
    float32 on crops (centred, see ``_ssim``), differentiably.

    The budget is kept per face: each face's change is scaled by its own factor, over the face
    box grown by a margin and fading out beyond it (so, in a group photo, one face that reaches
    its floor does not hold back the others).
    """

    def __init__(self, x: torch.Tensor, faces: Faces, ssim_min: float, psnr_min: float) -> None:
        self.x = x
        self.ssim_min = float(ssim_min)
        self.psnr_min = float(psnr_min)
        h, w = x.shape[2], x.shape[3]
        r = _SSIM_RADIUS
        self.regions: list[tuple[int, tuple[int, int, int, int] | None, tuple[int, int, int, int] | None]] = []
        self.scopes: list[tuple[int, int, int, int, torch.Tensor] | None] = []
        for box, img in zip(faces.boxes.tolist(), faces.image_index.tolist(), strict=True):
            bx1, by1, bx2, by2 = (int(math.ceil(v)) for v in box)
            sx1, sy1 = max(bx1, r), max(by1, r)
            sx2, sy2 = min(bx2, w - r), min(by2, h - r)
            ssim_reg = (sx1, sy1, sx2, sy2) if sx2 > sx1 and sy2 > sy1 else None
            px1, py1, px2, py2 = max(bx1, 0), max(by1, 0), min(bx2, w), min(by2, h)
            psnr_reg = (px1, py1, px2, py2) if px2 > px1 and py2 > py1 else None
            self.regions.append((int(img), ssim_reg, psnr_reg))
            self.scopes.append(self._scope(box, h, w, x.device))
        self.kernel = _gauss1d(_SSIM_SIGMA, r, x.device, torch.float32)
        # a face whose measured pixels another face's scope reaches: its figure depends on both
        # factors, so a projection checks it on the blended image (the others, on their own terms)
        self.shared = [self._reached(f) for f in range(len(self.regions))]
        self._clean: dict[int, tuple[torch.Tensor, ...]] = {}

    def _reached(self, f: int) -> bool:
        img, sreg, preg = self.regions[f]
        r = _SSIM_RADIUS
        spans = ([(sreg[0] - r, sreg[1] - r, sreg[2] + r, sreg[3] + r)] if sreg else []) + ([preg] if preg else [])
        for g, ((gimg, _, _), scope) in enumerate(zip(self.regions, self.scopes, strict=True)):
            if g == f or gimg != img or scope is None:
                continue
            a, b, c, d, _ = scope
            if any(a < x2 and x1 < c and b < y2 and y1 < d for x1, y1, x2, y2 in spans):
                return True
        return False

    @staticmethod
    def _scope(box: list[float], h: int, w: int, device: Any) -> tuple[int, int, int, int, torch.Tensor] | None:
        """Where a face's scale applies: 1 over the box grown by 0.35 of its half-sides plus a
        window radius, fading (smoothstep) to 0 over another half of its half-sides."""
        x1, y1, x2, y2 = box
        hx, hy = max((x2 - x1) / 2, 1.0), max((y2 - y1) / 2, 1.0)
        cx, cy = (x1 + x2) / 2 - 0.5, (y1 + y2) / 2 - 0.5
        core_x, core_y = hx * 1.35 + _SSIM_RADIUS + 1, hy * 1.35 + _SSIM_RADIUS + 1
        fade_x, fade_y = hx * 0.5, hy * 0.5
        a, b = max(int(cx - core_x - fade_x), 0), max(int(cy - core_y - fade_y), 0)
        c, d = min(int(math.ceil(cx + core_x + fade_x)) + 1, w), min(int(math.ceil(cy + core_y + fade_y)) + 1, h)
        if c <= a or d <= b:
            return None
        xs = torch.arange(a, c, device=device, dtype=torch.float32).view(1, -1)
        ys = torch.arange(b, d, device=device, dtype=torch.float32).view(-1, 1)
        tx = (1 - ((xs - cx).abs() - core_x) / fade_x).clamp(0, 1)
        ty = (1 - ((ys - cy).abs() - core_y) / fade_y).clamp(0, 1)
        t = tx * ty
        return a, b, c, d, t * t * (3 - 2 * t)

    def scale_map(self, face_scale: torch.Tensor) -> torch.Tensor:
        """``(B, 1, H, W)``: 1 where no face's scale reaches, else ``1 - max_f (1 - s_f) w_f``."""
        out = torch.ones(self.x.shape[0], 1, self.x.shape[2], self.x.shape[3], device=self.x.device)
        for f, ((img, _, _), scope) in enumerate(zip(self.regions, self.scopes, strict=True)):
            s = float(face_scale[f])
            if scope is None or s >= 1.0:
                continue
            a, b, c, d, wgt = scope
            out[img, 0, b:d, a:c] = torch.minimum(out[img, 0, b:d, a:c], 1.0 - (1.0 - s) * wgt)
        return out

    @property
    def active(self) -> bool:
        return self.ssim_min > 0 or self.psnr_min > 0

    def _filt(self, t: torch.Tensor) -> torch.Tensor:
        """Valid separable Gaussian filtering (the SSIM window) of a ``(C, h, w)`` crop."""
        k = self.kernel
        c = t.shape[0]
        wx = k.view(1, 1, 1, -1).expand(c, 1, 1, -1)
        wy = k.view(1, 1, -1, 1).expand(c, 1, -1, 1)
        return F.conv2d(F.conv2d(t[None], wx, groups=c), wy, groups=c)[0]

    def _clean_terms(self, f: int) -> tuple[torch.Tensor, ...]:
        """Face ``f``'s SSIM crop of the clean image centred at 128, its local means and
        variances (computed once per guard)."""
        if f not in self._clean:
            img, (x1, y1, x2, y2), _ = self.regions[f]  # type: ignore[misc]
            r = _SSIM_RADIUS
            ac = self.x[img, :, y1 - r:y2 + r, x1 - r:x2 + r].float() - 128.0
            mac = self._filt(ac)
            self._clean[f] = (ac, mac, self._filt(ac * ac) - mac * mac)
        return self._clean[f]

    @staticmethod
    def _ssim_of(mac: torch.Tensor, mbc: torch.Tensor, va: torch.Tensor, vb: torch.Tensor,
                 cab: torch.Tensor) -> torch.Tensor:
        c1, c2 = (_K1 * _RANGE) ** 2, (_K2 * _RANGE) ** 2
        ma, mb = mac + 128.0, mbc + 128.0
        s = ((2 * ma * mb + c1) * (2 * cab + c2)) / ((ma * ma + mb * mb + c1) * (va + vb + c2))
        return s.double().mean()

    def _ssim(self, f: int, b: torch.Tensor) -> torch.Tensor:
        """Mean SSIM over the valid (window fully inside) pixels of face ``f``'s ``(C, h, w)``
        crop ``b`` against the clean one."""
        # (co)variances are shift-invariant: computed on values centred at 128 they keep float32
        # accurate (squares of 0..255 values would lose the small variances of flat skin)
        ac, mac, va = self._clean_terms(f)
        bc = b - 128.0
        mbc = self._filt(bc)
        vb = self._filt(bc * bc) - mbc * mbc
        cab = self._filt(ac * bc) - mac * mbc
        return self._ssim_of(mac, mbc, va, vb, cab)

    def _along(self, adv: torch.Tensor) -> list[tuple[torch.Tensor, ...]]:
        """Per face, what its SSIM and PSNR along ``x + s * (adv - x)`` need, for any ``s``
        without filtering again: with ``d = adv - x`` on the crop, the local mean of ``d``, its
        variance and its covariance with the clean crop (the adversarial crop's mean is
        ``mean_x + s mean_d``, its variance ``var_x + 2 s cov + s^2 var_d``, the cross term
        ``var_x + s cov``), and the box's mean squared change (which scales with ``s^2``)."""
        r = _SSIM_RADIUS
        out: list[tuple[torch.Tensor, ...]] = []
        for f, (img, sreg, preg) in enumerate(self.regions):
            terms: tuple[torch.Tensor, ...] = ()
            if sreg is not None:
                x1, y1, x2, y2 = sreg
                ac, mac, va = self._clean_terms(f)
                d = adv[img, :, y1 - r:y2 + r, x1 - r:x2 + r].float() - (ac + 128.0)
                md = self._filt(d)
                terms = (mac, va, md, self._filt(ac * d) - mac * md, self._filt(d * d) - md * md)
            if preg is not None:
                x1, y1, x2, y2 = preg
                dp = adv[img, :, y1:y2, x1:x2].double() - self.x[img, :, y1:y2, x1:x2].double()
                terms = (*terms, (dp * dp).mean())
            out.append(terms)
        return out

    def _ok_along(self, along: list[tuple[torch.Tensor, ...]], scale: torch.Tensor) -> torch.Tensor:
        """Per face: it meets the targets at ``x + scale[f] * (adv - x)`` (from :meth:`_along`)."""
        ok = torch.ones(len(self.regions), dtype=torch.bool)
        for f, ((_, sreg, preg), terms) in enumerate(zip(self.regions, along, strict=True)):
            s = float(scale[f])
            if sreg is not None and self.ssim_min > 0:
                mac, va, md, cov, vd = terms[:5]
                val = float(self._ssim_of(mac, mac + s * md, va, va + 2 * s * cov + s * s * vd, va + s * cov))
                ok[f] &= not val < self.ssim_min  # (NaN passes, as in _face_ok)
            if preg is not None and self.psnr_min > 0:
                mse = float(terms[-1]) * s * s
                ok[f] &= mse <= 0 or 10 * math.log10(_RANGE**2 / mse) >= self.psnr_min
        return ok

    def measure(self, adv: torch.Tensor, face_scale: torch.Tensor | None = None,
                only: list[bool] | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """Per-face ``(ssim, psnr)`` of ``adv`` against the clean images (NaN where the box has
        no measurable pixel; PSNR ``inf`` for an unchanged box). With ``face_scale``, face ``f``
        is measured on ``x + face_scale[f] * (adv - x)`` (computed on its crops only). With
        ``only``, the faces it marks False are not measured (NaN)."""
        r = _SSIM_RADIUS
        ss, ps = [], []
        nan = torch.tensor(float("nan"), dtype=torch.float64, device=adv.device)

        def crop(f: int, img: int, y1: int, y2: int, x1: int, x2: int) -> tuple[torch.Tensor, torch.Tensor]:
            a = self.x[img, :, y1:y2, x1:x2].float()
            b = adv[img, :, y1:y2, x1:x2].float()
            if face_scale is not None:
                b = a + float(face_scale[f]) * (b - a)
            return a, b

        for f, (img, sreg, preg) in enumerate(self.regions):
            if only is not None and not only[f]:
                sreg = preg = None
            if sreg is None:
                ss.append(nan)
            else:
                x1, y1, x2, y2 = sreg
                ss.append(self._ssim(f, crop(f, img, y1 - r, y2 + r, x1 - r, x2 + r)[1]))
            if preg is None:
                ps.append(nan)
            else:
                x1, y1, x2, y2 = preg
                a, b = crop(f, img, y1, y2, x1, x2)
                mse = ((a - b).double() ** 2).mean()
                ps.append(10 * torch.log10(_RANGE**2 / mse) if float(mse) > 0
                          else torch.tensor(float("inf"), dtype=torch.float64, device=adv.device))
        return torch.stack(ss), torch.stack(ps)

    def _face_ok(self, adv: torch.Tensor, face_scale: torch.Tensor | None = None,
                 only: list[bool] | None = None) -> torch.Tensor:
        """Per face: it meets the targets (a face without measurable pixels, or one ``only``
        leaves out, always does)."""
        s, p = self.measure(adv, face_scale, only)
        s, p = s.cpu(), p.cpu()
        ok = torch.ones(len(self.regions), dtype=torch.bool)
        if self.ssim_min > 0:
            ok &= torch.isnan(s) | (s >= self.ssim_min)
        if self.psnr_min > 0:
            ok &= torch.isnan(p) | (p >= self.psnr_min)
        return ok

    def _ok(self, adv: torch.Tensor) -> torch.Tensor:
        """Per image: every face meets the targets."""
        ok = torch.ones(adv.shape[0], dtype=torch.bool)
        for (img, _, _), good in zip(self.regions, self._face_ok(adv).tolist(), strict=True):
            ok[img] &= bool(good)
        return ok

    def project(self, adv: torch.Tensor, iters: int = 7) -> torch.Tensor:
        """``x + m * (adv - x)`` where the scale map ``m`` gives each face the largest factor
        in [0, 1] (to ``2^-iters``) that meets the targets.

        The factors are searched along each face's own line (:meth:`_along`: three filterings
        per face, then every trial factor costs only arithmetic); faces whose measured pixels
        another face's scope reaches are then checked together on the blended image."""
        if not self.active or not self.regions:
            return adv
        along = self._along(adv)
        n = len(self.regions)
        one = torch.ones(n, dtype=torch.float64)
        ok = self._ok_along(along, one)
        if bool(ok.all()):
            return adv
        lo = torch.where(ok, 1.0, 0.0).double()
        hi = one.clone()
        if self.psnr_min > 0:
            # the box MSE scales with s^2: the PSNR floor gives an upper end in closed form
            for f, terms in enumerate(along):
                if not bool(ok[f]) and terms and self.regions[f][2] is not None and float(terms[-1]) > 0:
                    p = 10 * math.log10(_RANGE**2 / float(terms[-1]))
                    if p < self.psnr_min:
                        hi[f] = 10 ** ((p - self.psnr_min) / 20)
        todo = ~ok
        if bool((hi < 1).any()):  # the closed-form PSNR end is often the answer already
            good = self._ok_along(along, hi)
            lo = torch.where(todo & good, hi, lo)
            todo = todo & ~good
        lo = self.bisect(lambda s: self._ok_along(along, s), lo, hi, todo, iters)
        delta = adv - self.x

        def blended(scale: torch.Tensor) -> torch.Tensor:
            return self.x + self.scale_map(scale) * delta

        shared = torch.tensor(self.shared, dtype=torch.bool)
        if bool(shared.any()) and bool((lo < 1).any()):
            # faces that overlap share pixels: check them together
            def ok_of(s: torch.Tensor) -> torch.Tensor:
                return torch.where(shared, self._face_ok(blended(s), only=self.shared), self._ok_along(along, s))

            lo, _ = self.settle(ok_of, lo, shrink=0.9, tries=7)
        return blended(lo)

    @staticmethod
    def bisect(ok_at: Callable[[torch.Tensor], torch.Tensor], lo: torch.Tensor, hi: torch.Tensor,
               todo: torch.Tensor, iters: int) -> torch.Tensor:
        """Per face, bisect between ``lo`` (meets the targets) and ``hi`` (does not) for the faces
        in ``todo``; ``ok_at(scales)`` says, per face, whether those factors meet the targets.
        Returns the largest factors found that do (``lo``)."""
        for _ in range(iters):
            if not bool(todo.any()):
                break
            mid = (lo + hi) / 2
            good = ok_at(torch.where(todo, mid, lo))
            lo = torch.where(todo & good, mid, lo)
            hi = torch.where(todo & ~good, mid, hi)
        return lo

    @staticmethod
    def settle(ok_of: Callable[[torch.Tensor], torch.Tensor], scale: torch.Tensor, shrink: float,
               tries: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Check the faces together at ``scale`` and shrink those that fail by ``shrink``, until all
        pass or ``tries`` checks are spent (or nothing is left to shrink); returns the factors and
        the last per-face result."""
        ok = ok_of(scale)
        for _ in range(tries - 1):
            if bool(ok.all()) or not bool(scale.any()):
                break
            scale = torch.where(ok, scale, scale * shrink)
            ok = ok_of(scale)
        return scale, ok

    def enforce_rounded(self, adv: torch.Tensor, lo: torch.Tensor, hi: torch.Tensor,
                        tries: int = 30) -> torch.Tensor:
        """The 8-bit ``adv`` (integer values within ``[lo, hi]``) shrunk, per face, until every
        face meets the targets after rounding; at worst a face is left unchanged."""
        if not self.active or not self.regions:
            return adv
        delta = adv - self.x
        scale = torch.ones(len(self.regions), dtype=torch.float64)
        out = adv
        for i in range(tries + 1):
            good = self._face_ok(out)
            if bool(good.all()):
                return out
            scale = torch.where(good, scale, scale * 0.9 if i < tries else torch.zeros_like(scale))
            cand = (self.x + self.scale_map(scale) * delta).round()
            out = torch.min(torch.max(cand, lo), hi).clamp(0, 255)
        return out
