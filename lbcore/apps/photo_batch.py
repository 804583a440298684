"""Cross-file batching of photo attacks (``lb protect --batch-size N``).

Photos differ in size, output format and therefore attack settings (a JPEG output is attacked
through a differentiable JPEG at its own quality), so they cannot be stacked into one image
tensor without changing what each attack computes. Instead every photo of a batch runs its own,
unchanged :func:`lbcore.engine.attack` in a worker thread, and only the expensive part, the
extractor's network on the face crops (its ``forward_crops``),
is shared: when every worker waits on a network call, the crops of all of them go through the
network as one batch (forward, and the backward of the gradient with respect to the crops), and
each worker gets its own rows back. Everything per photo - crops, losses, the update rule, the
perceptual budget, the random generator seeded per photo - is computed exactly as file by file;
the protected pixels are identical wherever the network gives each face the same numbers in a
batch as alone (true of the convolutional extractors on the CPU; checked by the tests and by
``benchmarks/photo_batching.py``).

Only extractors that say so (:attr:`lbcore.extractor.Extractor.shares_crops`: the heat-map
networks and MediaPipe's meshes) are shared; other members of an ensemble run in each photo's
thread as they are. A shared call's per-crop extras (MediaPipe's face-presence score) come back
without a gradient. The caller
(:meth:`lbcore.apps.protection._Run.attack_photos`) falls back to file by file for settings whose
randomness is not drawn from the per-photo generator (``--robust``: a random JPEG quality from
torch's global generator) and for feature-mixing hooks or ``--compile``.

On the CPU the shared network calls run with oneDNN off (``invariant=True``; one photo alone runs
through a batcher of one, so both paths do): oneDNN's
convolution kernels depend on the batch size (the same face gives last-bit-different heat-maps
alone and in a batch), PyTorch's own kernels do not. On a GPU, cuDNN may likewise pick other
kernels for other batch sizes: there batched outputs are not promised bit-identical.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from typing import Any

import torch

__all__ = ["CrossFileBatcher", "Cancelled", "shareable"]


def shareable(extractors: Sequence[Any], config: Any, plugin_manager: Any, compile: bool) -> list[Any]:
    """The members whose network calls several images' attacks may share without changing any
    of them (``Extractor.shares_crops``), or none when the attack's randomness is not drawn
    from its own generator (a stochastic degradation: torch's global one), it hooks the
    networks (``feature_mix``) or they are compiled."""
    stochastic = any(getattr(plugin_manager.build("degradations", s), "stochastic", False) for s in config.eot)
    if stochastic or float(config.feature_mix) != 0 or compile:
        return []
    return [e for e in extractors if getattr(e, "shares_crops", False)]


@contextmanager
def _onednn_off() -> Iterator[None]:
    # (global, not per thread: set only while every worker waits on the batcher)
    before = torch.backends.mkldnn.enabled
    torch.backends.mkldnn.enabled = False  # type: ignore[assignment]
    try:
        yield
    finally:
        torch.backends.mkldnn.enabled = before


class Cancelled(Exception):
    """The batch was cancelled (Ctrl-C in the main thread)."""


class _Record:
    """One batched forward pass that needs a backward pass: its graph, until every part is done."""

    def __init__(self, inp: torch.Tensor, out: torch.Tensor, pending: int) -> None:
        self.inp: torch.Tensor | None = inp
        self.out: torch.Tensor | None = out
        self.pending = pending


class _Request:
    def __init__(self, job: int, kind: str, member: int = -1, x: torch.Tensor | None = None, grad: bool = False,
                 record: _Record | None = None, rows: tuple[int, int] = (0, 0)) -> None:
        self.job, self.kind, self.member, self.x, self.grad = job, kind, member, x, grad
        self.record, self.rows = record, rows
        self.result: Any = None
        self.extra: Any = None
        self.error: BaseException | None = None
        self.done = False


def _split(value: Any, sizes: list[int], total: int) -> list[Any]:
    """Per-request parts of a batched ``forward_crops`` extra (rows along the batch axis)."""
    if isinstance(value, torch.Tensor):
        dim = 0 if value.dim() and value.shape[0] == total else (1 if value.dim() > 1 and value.shape[1] == total
                                                                  else None)
        if dim is None:
            return [value.detach()] * len(sizes)
        return [p.detach() for p in torch.split(value, sizes, dim=dim)]
    if isinstance(value, (list, tuple)):
        parts = [_split(v, sizes, total) for v in value]
        return [type(value)(p[i] for p in parts) for i in range(len(sizes))]
    if isinstance(value, dict):
        parts_d = {k: _split(v, sizes, total) for k, v in value.items()}
        return [{k: p[i] for k, p in parts_d.items()} for i in range(len(sizes))]
    return [value] * len(sizes)


class _Shared(torch.autograd.Function):
    """A worker's rows of a batched network call, with the backward batched as well."""

    @staticmethod
    def forward(ctx: Any, x: torch.Tensor, batcher: CrossFileBatcher, member: int, box: list[Any]) -> torch.Tensor:
        req = batcher._submit(_Request(batcher._job(), "forward", member, x.detach(), grad=True))
        ctx.batcher, ctx.record, ctx.rows = batcher, req.record, req.rows
        box.append(req.extra)
        out: torch.Tensor = req.result
        return out

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> tuple[Any, ...]:
        batcher: CrossFileBatcher = ctx.batcher
        req = batcher._submit(_Request(batcher._job(), "backward", x=grad, record=ctx.record, rows=ctx.rows))
        return req.result, None, None, None


class CrossFileBatcher:
    """Runs several attacks (one per photo) in lockstep, sharing the extractors' network calls.

    Args:
        extractors: the attacked extractors whose calls are shared (``shares_crops``; their
            ``forward_crops`` is routed through the batcher for the worker threads while
            :meth:`run` runs).
        invariant: run the shared network calls (forward and backward) with oneDNN off, so that
            a face gets the same numbers whatever else is in the batch (CPU).
        max_crops: the most face crops in one shared call (several photos' crops; a photo with
            more faces is one call of its own).
    """

    def __init__(self, extractors: Sequence[Any], invariant: bool = False, max_crops: int = 15) -> None:
        self.extractors = list(extractors)
        self.invariant = invariant
        self.max_crops = max_crops
        self._cond = threading.Condition()
        self._local = threading.local()
        self._live = 0
        self._waiting: list[_Request] = []
        self._cancelled = False
        self.network_calls = 0
        """Batched network invocations (forward passes; a backward pass is counted apart)."""
        self.backward_calls = 0
        self.crops = 0
        """Face crops that went through a network forward pass (over all members)."""

    # -- the workers' side -----------------------------------------------------------
    def _job(self) -> int:
        return int(getattr(self._local, "job", -1))

    def _route(self, member: int, original: Callable[[torch.Tensor], Any]) -> Callable[[torch.Tensor], Any]:
        def forward_crops(x: torch.Tensor) -> Any:
            if getattr(self._local, "job", None) is None:
                return original(x)  # not a worker: the main thread measuring, say
            if torch.is_grad_enabled() and x.requires_grad:
                box: list[Any] = []
                heat = _Shared.apply(x, self, member, box)
                extra = box[0]
                return heat if extra is None else (heat, extra)
            req = self._submit(_Request(self._job(), "forward", member, x.detach(), grad=False))
            return req.result if req.extra is None else (req.result, req.extra)
        return forward_crops

    def _submit(self, req: _Request) -> _Request:
        with self._cond:
            if self._cancelled:
                raise Cancelled("cancelled")
            self._waiting.append(req)
            self._service()
            while not req.done:
                self._cond.wait()
        if req.error is not None:
            raise req.error
        return req

    # -- serving (under the lock, when every live worker waits) ------------------------
    def _service(self) -> None:
        if not self._waiting or len(self._waiting) < self._live:
            return
        batch, self._waiting = self._waiting, []
        try:
            groups: dict[tuple[Any, ...], list[_Request]] = {}
            for r in sorted(batch, key=lambda r: r.job):
                key = ("forward", r.member, r.grad) if r.kind == "forward" else ("backward", id(r.record))
                groups.setdefault(key, []).append(r)
            for key, reqs in groups.items():
                try:
                    self._forward(reqs) if key[0] == "forward" else self._backward(reqs)
                except Exception as err:  # every worker of the group fails the same way
                    for r in reqs:
                        r.error = err
        finally:
            for r in batch:
                r.done = True
            self._cond.notify_all()

    def _forward(self, reqs: list[_Request]) -> None:
        # calls of at most `max_crops` crops, a photo's crops never split: PyTorch's CPU
        # convolutions (oneDNN off) gave each crop the same numbers in batches of 1 to 15 but not
        # of 16 (fan-demo and a tiny FAN, torch 2.13); a photo with more faces is one call of its
        # own, exactly as one by one
        part: list[_Request] = []
        for r in reqs:
            assert r.x is not None
            if part and sum(int(q.x.shape[0]) for q in part if q.x is not None) + int(r.x.shape[0]) > self.max_crops:
                self._forward_part(part)
                part = []
            part.append(r)
        if part:
            self._forward_part(part)

    def _forward_part(self, reqs: list[_Request]) -> None:
        ext = self.extractors[reqs[0].member]
        original = type(ext).forward_crops.__get__(ext)
        xs = [r.x for r in reqs]
        assert all(x is not None for x in xs)
        sizes = [int(x.shape[0]) for x in xs if x is not None]
        total = sum(sizes)
        inp = torch.cat([x for x in xs if x is not None]) if len(xs) > 1 else xs[0]
        assert inp is not None
        self.network_calls += 1
        self.crops += total
        with self._kernels():
            self._run_forward(reqs, original, inp, sizes, total)

    def _kernels(self) -> Any:
        import contextlib

        return _onednn_off() if self.invariant else contextlib.nullcontext()

    def _run_forward(self, reqs: list[_Request], original: Any, inp: torch.Tensor, sizes: list[int],
                     total: int) -> None:
        if reqs[0].grad:
            with torch.enable_grad():
                inp = inp.detach().requires_grad_(True)
                out = original(inp)
        else:
            with torch.no_grad():
                out = original(inp)
        heat, extra = (out[0], out[1]) if isinstance(out, tuple) else (out, None)
        extras = _split(extra, sizes, total) if extra is not None else [None] * len(reqs)
        record = _Record(inp, heat, len(reqs)) if reqs[0].grad else None
        start = 0
        for r, n, e in zip(reqs, sizes, extras, strict=True):
            r.result = heat[start:start + n].detach().clone()
            r.extra, r.record, r.rows = e, record, (start, start + n)
            start += n

    def _backward(self, reqs: list[_Request]) -> None:
        record = reqs[0].record
        assert record is not None and record.out is not None and record.inp is not None
        grad = torch.zeros_like(record.out)
        for r in reqs:
            assert r.x is not None
            grad[r.rows[0]:r.rows[1]] = r.x
        record.pending -= len(reqs)
        self.backward_calls += 1
        with torch.enable_grad(), self._kernels():
            (g,) = torch.autograd.grad(record.out, record.inp, grad_outputs=grad, retain_graph=record.pending > 0)
        if record.pending <= 0:
            record.out = record.inp = None  # the graph is no longer needed
        for r in reqs:
            r.result = g[r.rows[0]:r.rows[1]].clone()

    # -- running ---------------------------------------------------------------------
    @contextmanager
    def _installed(self) -> Iterator[None]:
        for k, e in enumerate(self.extractors):
            object.__setattr__(e, "forward_crops", self._route(k, type(e).forward_crops.__get__(e)))
        try:
            yield
        finally:
            for e in self.extractors:
                e.__dict__.pop("forward_crops", None)

    def run(self, jobs: Sequence[Callable[[], Any]]) -> list[Any]:
        """Run ``jobs`` (each one photo's attack) in lockstep; return each one's result or the
        exception it raised. Ctrl-C in the calling thread cancels every job and is re-raised."""
        results: list[Any] = [None] * len(jobs)
        with self._cond:
            self._live = len(jobs)
            self._cancelled = False

        def work(i: int) -> None:
            self._local.job = i
            try:
                results[i] = jobs[i]()
            except BaseException as err:  # handed to the caller
                results[i] = err
            finally:
                self._local.job = None
                with self._cond:
                    self._live -= 1
                    self._service()

        threads = [threading.Thread(target=work, args=(i,), daemon=True, name=f"lb-photo-{i}")
                   for i in range(len(jobs))]
        with self._installed():
            for t in threads:
                t.start()
            try:
                for t in threads:
                    while t.is_alive():
                        t.join(0.2)
            except KeyboardInterrupt:
                self.cancel()
                for t in threads:
                    t.join()
                raise
        return results

    def cancel(self) -> None:
        """Make every waiting and later network call of the workers raise :class:`Cancelled`."""
        with self._cond:
            self._cancelled = True
            for r in self._waiting:
                r.error, r.done = Cancelled("cancelled"), True
            self._waiting = []
            self._cond.notify_all()
