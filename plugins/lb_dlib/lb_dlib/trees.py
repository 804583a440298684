"""dlib's shape predictor read as numbers, re-run in torch, and a soft (differentiable) surrogate.

A dlib ``shape_predictor`` file (``serialize(shape_predictor)``, version 1) holds: the mean
shape in the unit box, a cascade of forests of regression trees, and per cascade level the
feature-pool pixels (an anchor landmark and an offset in mean-shape coordinates). Every number
is one of dlib's packed integers (a byte: bit 7 the sign, bits 0-3 the byte count; then the
little-endian bytes); a float is two of them, mantissa and base-2 exponent. :func:`read_model`
decodes that into arrays (no code runs from the file) and caches them as an ``.npz``.

:class:`TreeCascade` runs the cascade as dlib does (Kazemi & Sullivan 2014): at each level a
similarity transform maps the mean shape to the current one, each pool pixel is the current
position of its anchor plus its transformed offset, rounded to the nearest pixel of the grey
image (zero outside), and each tree compares the difference of two pool pixels with a threshold
at each of its nodes; the reached leaves' shape updates are summed. With ``temperature > 0``
each comparison is replaced by a sigmoid, so a leaf's weight is the product of the sigmoids on
its path (a soft tree): a differentiable surrogate of the predictor around the hard path, used
for the ``grad=surrogate`` backward (BPDA, Athalye et al. 2018).
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

import numpy as np
import torch

from lbcore.errors import WeightsError

__all__ = ["read_model", "TreeCascade"]

_CACHE_VERSION = "1"


def _cache_dir() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "landmark-breaker" / "dlib-trees"


def _decode_ints(data: bytes) -> np.ndarray:
    """Every packed integer of ``data``, in order (int64)."""
    out = np.empty(len(data) // 2 + 1, dtype=np.int64)
    n = len(data)
    pos = 0
    k = 0
    frm = int.from_bytes
    try:
        while pos < n:
            h = data[pos]
            s = h & 15
            v = frm(data[pos + 1:pos + 1 + s], "little")
            out[k] = -v if h & 0x80 else v
            k += 1
            pos += 1 + s
    except IndexError:
        raise ValueError("more numbers than a shape predictor can hold") from None
    if pos != n:
        raise ValueError("the last number is cut off")
    return out[:k]


def _parse(ints: np.ndarray) -> dict[str, np.ndarray]:
    """Arrays of a version-1 shape predictor from its packed integers."""
    p = 0

    def take(n: int) -> np.ndarray:
        nonlocal p
        if p + n > len(ints):
            raise ValueError("the file ends early")
        v = ints[p:p + n]
        p += n
        return v

    def floats(n: int) -> np.ndarray:
        v = take(2 * n).reshape(n, 2).astype(np.float64)
        return (v[:, 0] * np.exp2(v[:, 1])).astype(np.float32)

    def one() -> int:
        return int(take(1)[0])

    if one() != 1:
        raise ValueError("not a version-1 dlib shape predictor")
    nr, nc = one(), one()
    if nr >= 0 or nc != -1:
        raise ValueError("the mean shape is not a column vector")
    initial = floats(-nr)
    dims = -nr
    levels = one()
    if not 0 < levels < 1000:
        raise ValueError(f"implausible cascade depth {levels}")
    split_idx: list[np.ndarray] = []
    thresh: list[np.ndarray] = []
    leaves: list[np.ndarray] = []
    for _ in range(levels):
        trees = one()
        li, lt, lv = [], [], []
        for _ in range(trees):
            ns = one()
            sp = take(4 * ns).reshape(ns, 4)
            li.append(sp[:, :2].copy())
            lt.append((sp[:, 2].astype(np.float64) * np.exp2(sp[:, 3].astype(np.float64))).astype(np.float32))
            nl = one()
            if nl != ns + 1:
                raise ValueError("a tree whose leaves do not match its splits")
            block = take(nl * (2 + 2 * dims)).reshape(nl, 2 + 2 * dims)
            if not (np.all(block[:, 0] == -dims) and np.all(block[:, 1] == -1)):
                raise ValueError("a leaf that is not a shape update")
            v = block[:, 2:].reshape(nl, dims, 2).astype(np.float64)
            lv.append((v[..., 0] * np.exp2(v[..., 1])).astype(np.float32))
        split_idx.append(np.stack(li))
        thresh.append(np.stack(lt))
        leaves.append(np.stack(lv))
    if one() != levels:
        raise ValueError("anchor list does not match the cascade")
    anchors = []
    for _ in range(levels):
        n = one()
        anchors.append(take(n).copy())
    if one() != levels:
        raise ValueError("offset list does not match the cascade")
    deltas = []
    for _ in range(levels):
        n = one()
        deltas.append(floats(2 * n).reshape(n, 2))
    if p != len(ints):
        raise ValueError("trailing data after the shape predictor")
    return {"initial": initial.reshape(-1, 2), "split_idx": np.stack(split_idx), "thresh": np.stack(thresh),
            "leaves": np.stack(leaves).reshape(levels, -1, split_idx[0].shape[1] + 1, dims // 2, 2),
            "anchors": np.stack(anchors), "deltas": np.stack(deltas)}


def read_model(path: str | os.PathLike[str], cache: bool = True) -> dict[str, np.ndarray]:
    """The arrays of a dlib shape-predictor file (decoding takes ~30 s; cached by content hash).

    Keys: ``initial`` ``(K, 2)`` mean shape in the unit box; ``split_idx`` ``(L, T, S, 2)``,
    ``thresh`` ``(L, T, S)``; ``leaves`` ``(L, T, S + 1, K, 2)``; ``anchors`` ``(L, P)`` and
    ``deltas`` ``(L, P, 2)`` the feature pool per level.
    """
    p = Path(path)
    try:
        data = p.read_bytes()
    except OSError as err:
        raise WeightsError(f"{p}: cannot read ({err.strerror})") from None
    digest = hashlib.sha256(data).hexdigest()[:16]
    cached = _cache_dir() / f"{digest}-v{_CACHE_VERSION}.npz"
    if cache and cached.is_file():
        try:
            with np.load(cached, allow_pickle=False) as z:
                return {k: z[k] for k in z.files}
        except (OSError, ValueError):
            pass  # a broken cache file: decode again
    try:
        arrays = _parse(_decode_ints(data))
    except ValueError as err:
        raise WeightsError(f"{p}: not a dlib shape predictor ({err})") from None
    if cache:
        try:
            cached.parent.mkdir(parents=True, exist_ok=True)
            tmp = cached.with_suffix(f".{os.getpid()}.tmp.npz")
            np.savez(tmp, **arrays)  # type: ignore[arg-type]
            os.replace(tmp, cached)
        except OSError:
            pass
    return arrays


def _similarity_2x2(src: np.ndarray, dst: np.ndarray) -> np.ndarray:
    """The 2x2 part ``c R`` of the least-squares similarity transform ``src -> dst`` (Umeyama),
    as dlib's ``find_similarity_transform``."""
    ms, md = src.mean(0), dst.mean(0)
    s0, d0 = src - ms, dst - md
    sigma = float((s0 ** 2).sum(1).mean())
    cov = d0.T @ s0 / len(src)
    u, d, vt = np.linalg.svd(cov)
    s = np.eye(2)
    if np.linalg.det(cov) < 0 or (np.linalg.det(cov) == 0 and np.linalg.det(u) * np.linalg.det(vt) < 0):
        s[1, 1] = -1
    r = u @ s @ vt
    c = float(np.trace(np.diag(d) @ s)) / sigma if sigma != 0 else 1.0
    return c * r


class TreeCascade:
    """dlib's cascade in numpy/torch: the hard path (dlib's own result) and a soft surrogate."""

    def __init__(self, arrays: dict[str, np.ndarray]) -> None:
        self.initial = arrays["initial"].astype(np.float32)
        self.split_idx = torch.from_numpy(arrays["split_idx"].astype(np.int64))
        self.thresh = torch.from_numpy(arrays["thresh"].astype(np.float32))
        lv = arrays["leaves"]
        self.leaves = torch.from_numpy(lv.reshape(lv.shape[0], lv.shape[1], lv.shape[2], -1).astype(np.float32))
        self.anchors = arrays["anchors"].astype(np.int64)
        self.deltas = arrays["deltas"].astype(np.float32)
        self.levels = int(self.split_idx.shape[0])
        n_splits = int(self.split_idx.shape[2])
        depth = int(round(np.log2(n_splits + 1)))
        if 2 ** depth - 1 != n_splits:
            raise WeightsError("dlib trees that are not complete binary trees are not supported")
        # for each leaf, the nodes on its path and whether it goes left (diff > thresh) at each
        nodes = np.zeros((n_splits + 1, depth), dtype=np.int64)
        left = np.zeros((n_splits + 1, depth), dtype=np.float32)
        for leaf in range(n_splits + 1):
            i = leaf + n_splits
            for d in range(depth - 1, -1, -1):
                parent = (i - 1) // 2
                nodes[leaf, d] = parent
                left[leaf, d] = 1.0 if i == 2 * parent + 1 else 0.0
                i = parent
        self.path_nodes = torch.from_numpy(nodes)
        self.path_left = torch.from_numpy(left)

    @staticmethod
    def grey(image: torch.Tensor) -> torch.Tensor:
        """dlib's intensity of an RGB pixel: the integer mean of the three channels (``(3, H, W)``
        float 0..255 -> ``(H, W)``); the floor is applied outside autograd (straight-through)."""
        mean = image.sum(0) / 3.0
        return mean + (torch.floor(mean.detach() + 1e-4) - mean.detach())

    def pool_pixels(self, level: int, shape: np.ndarray, box: tuple[int, int, int, int]) -> np.ndarray:
        """Integer ``(x, y)`` of level ``level``'s pool pixels for the current unit-box ``shape``."""
        tform = _similarity_2x2(self.initial.astype(np.float64), shape.astype(np.float64)).astype(np.float32)
        unit = (self.deltas[level] @ tform.T + shape[self.anchors[level]]).astype(np.float64)
        left, top, right, bottom = box
        xy = np.stack([left + unit[:, 0] * (right - left), top + unit[:, 1] * (bottom - top)], 1)
        return np.floor(xy + 0.5).astype(np.int64)

    def sample(self, grey: torch.Tensor, pix: np.ndarray) -> torch.Tensor:
        """Grey values at integer pixels (zero outside the image), differentiable in ``grey``."""
        h, w = grey.shape
        x, y = torch.from_numpy(pix[:, 0]), torch.from_numpy(pix[:, 1])
        inside = (x >= 0) & (x < w) & (y >= 0) & (y < h)
        vals = grey[y.clamp(0, h - 1), x.clamp(0, w - 1)]
        return torch.where(inside, vals, torch.zeros_like(vals))

    def run(self, image: torch.Tensor, box: tuple[int, int, int, int],
            temperature: float = 0.0) -> tuple[torch.Tensor, torch.Tensor]:
        """``(hard, soft)`` landmarks ``(K, 2)`` in image pixels for ``box`` (dlib's integer
        ``left, top, right, bottom``) on ``image`` ``(3, H, W)`` float 0..255.

        ``hard`` is dlib's result (rounded to integers, as dlib returns). ``soft`` (when
        ``temperature > 0``; else equal to the unrounded hard result) sums soft-tree updates
        computed at the pool pixels of the hard path; it carries the gradient w.r.t. ``image``.
        """
        grey = self.grey(image.float())
        shape = self.initial.copy()
        soft = torch.from_numpy(self.initial.copy()).flatten()
        for lv in range(self.levels):
            pix = self.pool_pixels(lv, shape, box)
            feats = self.sample(grey, pix)
            idx = self.split_idx[lv]
            diff = feats[idx[..., 0]] - feats[idx[..., 1]]  # (T, S)
            z = diff - self.thresh[lv]
            hard_left = (z.detach() > 0).float()
            # hard path: leaf reached by each tree
            node = torch.zeros(idx.shape[0], dtype=torch.long)
            n_splits = idx.shape[1]
            while bool((node < n_splits).any()):
                go = hard_left.gather(1, node.clamp(max=n_splits - 1)[:, None])[:, 0]
                nxt = torch.where(go > 0, 2 * node + 1, 2 * node + 2)
                node = torch.where(node < n_splits, nxt, node)
            leaf = node - n_splits
            upd = self.leaves[lv][torch.arange(idx.shape[0]), leaf].sum(0)  # (2K,)
            shape = shape + upd.numpy().reshape(-1, 2)  # float32, as dlib accumulates
            if temperature > 0:
                p_left = torch.sigmoid(z / temperature)  # (T, S)
                on_path = p_left[:, self.path_nodes]  # (T, S+1, depth)
                want = self.path_left[None]
                w = (on_path * want + (1 - on_path) * (1 - want)).prod(-1)  # (T, S+1)
                soft = soft + torch.einsum("tl,tlk->k", w, self.leaves[lv])
            else:
                soft = soft + upd
        left, top, right, bottom = box
        scale = torch.tensor([right - left, bottom - top], dtype=torch.float32)
        origin = torch.tensor([left, top], dtype=torch.float32)
        hard = np.floor(np.stack([left + shape[:, 0] * (right - left), top + shape[:, 1] * (bottom - top)], 1) + 0.5)
        return torch.from_numpy(hard.astype(np.float32)), origin + soft.view(-1, 2) * scale


