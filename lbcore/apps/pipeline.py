"""Overlap decoding, face detection and encoding with the attack (video protection).

A video is protected in batches of frames. Without overlap the device waits while the CPU
decodes and detects the next batch, and again while it encodes the last one. Here:

* :func:`prefetch` runs a generator (decode + detect + host-to-device copy) in a background
  thread, a bounded number of items ahead;
* :class:`BackgroundWriter` encodes finished frames in another thread, in order;
* :func:`stage_frames` turns a batch of decoded frames into the attack's input: on a CUDA
  device the uint8 frames go through pinned (page-locked) memory and are copied on a side
  stream with ``non_blocking=True``, so the copy of batch *k+1* runs while batch *k* is
  attacked; on the CPU it is a plain conversion (the same code path, tested everywhere).

Errors raised in a background thread are re-raised in the caller, at the next item or at
``close``, with their original traceback; leaving early (an exception in the caller, a
``break``) stops the threads without waiting for the rest of the input.
"""

from __future__ import annotations

import contextlib
import queue
import threading
from collections.abc import Callable, Iterable, Iterator
from typing import Any, Generic, TypeVar

import numpy as np

__all__ = ["BackgroundWriter", "StagedFrames", "prefetch", "stage_frames"]

T = TypeVar("T")

_DONE = object()


class _Failure:
    def __init__(self, err: BaseException) -> None:
        self.err = err


def prefetch(items: Iterable[T], depth: int = 2) -> Iterator[T]:
    """Yield ``items`` as produced by a background thread that runs up to ``depth`` items ahead.

    Args:
        items: Any iterable (typically a generator that decodes and prepares batches).
        depth: How many finished items may wait (memory bound: ``depth`` + 1 batches alive).

    Yields:
        The items, in order. An exception of the producer is raised here, once the items
        before it have been yielded.
    """
    if depth < 1:
        raise ValueError("prefetch depth must be at least 1")
    q: queue.Queue[Any] = queue.Queue(maxsize=depth)
    stop = threading.Event()

    def put(item: Any) -> bool:
        while not stop.is_set():
            try:
                q.put(item, timeout=0.05)
                return True
            except queue.Full:
                continue
        return False

    def produce() -> None:
        try:
            for item in items:
                if not put(item):
                    return
            put(_DONE)
        except BaseException as err:  # handed to the consumer, which re-raises it
            put(_Failure(err))
        finally:
            close = getattr(items, "close", None)
            if stop.is_set() and callable(close):
                # a generator's finally blocks (closing the video file) run now
                with contextlib.suppress(RuntimeError, ValueError):
                    close()

    thread = threading.Thread(target=produce, name="lb-prefetch", daemon=True)
    thread.start()
    try:
        while True:
            item = q.get()
            if item is _DONE:
                return
            if isinstance(item, _Failure):
                raise item.err
            yield item
    finally:
        stop.set()
        thread.join()


class BackgroundWriter(Generic[T]):
    """Call ``write(item)`` for every item put, in order, in one background thread.

    Use as a context manager: leaving the block normally waits until every item is written and
    re-raises a write error; leaving with an exception stops after the item being written (the
    rest are dropped: the output is being abandoned anyway).

    Args:
        write: The function that consumes one item (e.g. encodes a batch of frames).
        depth: Items that may wait (bounded memory; ``put`` blocks when full).
        threaded: False writes in ``put`` itself (no overlap; for comparisons).
    """

    def __init__(self, write: Callable[[T], None], depth: int = 2, *, threaded: bool = True) -> None:
        self._write = write
        self._threaded = threaded
        self._q: queue.Queue[Any] = queue.Queue(maxsize=depth)
        self._error: BaseException | None = None
        self._abandon = threading.Event()
        self._thread = threading.Thread(target=self._run, name="lb-writer", daemon=True)

    def __enter__(self) -> BackgroundWriter[T]:
        if self._threaded:
            self._thread.start()
        return self

    def _run(self) -> None:
        while True:
            item = self._q.get()
            if item is _DONE:
                return
            if self._error is not None or self._abandon.is_set():
                continue  # drain without writing
            try:
                self._write(item)
            except BaseException as err:
                self._error = err

    def put(self, item: T) -> None:
        """Queue ``item`` (blocks while ``depth`` items wait); raises an earlier write error."""
        if self._error is not None:
            raise self._error
        if not self._threaded:
            self._write(item)
            return
        self._q.put(item)

    def __exit__(self, exc_type: Any, exc: Any, tb: Any) -> None:
        if not self._threaded:
            return
        if exc_type is not None:
            self._abandon.set()
        self._q.put(_DONE)
        self._thread.join()
        if exc_type is None and self._error is not None:
            raise self._error


class StagedFrames:
    """A batch of frames ready for the attack.

    Attributes:
        frames: ``(B, H, W, 3)`` uint8 on the CPU, as decoded.
    """

    def __init__(self, frames: Any, device: Any = None, ready: Any = None) -> None:
        self.frames = frames
        self._host: Any = None
        self._device = device
        self._ready = ready

    @property
    def host(self) -> Any:
        """``(B, 3, H, W)`` float32 on the CPU, values 0..255 (made on first use: only batches
        that are measured need it when the attack runs on a GPU)."""
        if self._host is None:
            self._host = self.frames.permute(0, 3, 1, 2).float()
        return self._host

    @property
    def device(self) -> Any:
        """The same pixels on the attack's device (the host tensor itself on the CPU); on CUDA
        the current stream first waits for the copy to finish."""
        import torch

        if self._device is None:
            return self.host
        if self._ready is not None:
            stream = torch.cuda.current_stream(self._device.device)
            stream.wait_event(self._ready)
            self._device.record_stream(stream)  # the allocator must not reuse it early
            self._ready = None
        return self._device


def stage_frames(frames: list[np.ndarray], device: Any, copy_stream: Any = None) -> StagedFrames:
    """Stack ``(H, W, 3)`` uint8 RGB frames into the attack's input on ``device``.

    On CUDA the uint8 frames (a quarter of the float32 bytes) are copied from pinned memory on
    ``copy_stream`` (default: a stream made for the device) without blocking, then converted to
    float32 NCHW on the device. Safe to call from a background thread.
    """
    import torch

    dev = torch.device(device)
    u8 = torch.from_numpy(np.ascontiguousarray(np.stack(frames)))  # (B, H, W, 3)
    if dev.type == "cpu":
        return StagedFrames(u8)
    if dev.type != "cuda":
        return StagedFrames(u8, u8.to(dev).permute(0, 3, 1, 2).float())
    stream = copy_stream or _copy_stream(dev)
    pinned = u8.pin_memory()
    with torch.cuda.stream(stream):
        on_dev = pinned.to(dev, non_blocking=True).permute(0, 3, 1, 2).float()
        ready = torch.cuda.Event()
        ready.record(stream)
    return StagedFrames(u8, on_dev, ready)


_STREAMS: dict[Any, Any] = {}


def _copy_stream(dev: Any) -> Any:
    import torch

    if dev not in _STREAMS:
        _STREAMS[dev] = torch.cuda.Stream(dev)
    return _STREAMS[dev]
