"""The overlap of decode / attack / encode (lbcore.apps.pipeline): order, bounded read-ahead, errors
surfacing in the caller, early exit, and staging frames for the device."""

from __future__ import annotations

import threading
import time

import numpy as np
import pytest
import torch

from lbcore.apps.pipeline import BackgroundWriter, prefetch, stage_frames


def test_prefetch_keeps_order_and_runs_in_another_thread():
    threads = []

    def produce():
        for i in range(7):
            threads.append(threading.current_thread().name)
            yield i

    assert list(prefetch(produce(), depth=2)) == list(range(7))
    assert set(threads) == {"lb-prefetch"}


def test_prefetch_reads_ahead_while_the_consumer_works_but_only_depth_items():
    produced = []

    def produce():
        for i in range(20):
            produced.append(i)
            yield i

    it = prefetch(produce(), depth=3)
    assert next(it) == 0
    time.sleep(0.3)  # the consumer is "attacking" batch 0: the producer fills the queue meanwhile
    # 1 taken + 3 waiting + at most 1 blocked in put
    assert 4 <= len(produced) <= 5
    assert list(it) == list(range(1, 20))


def test_prefetch_reraises_the_producer_error_after_the_items_before_it():
    def produce():
        yield 1
        yield 2
        raise ValueError("frame 3 is corrupt")

    got = []
    with pytest.raises(ValueError, match="frame 3 is corrupt"):
        for item in prefetch(produce()):
            got.append(item)
    assert got == [1, 2]


def test_leaving_early_stops_the_producer_and_runs_its_cleanup():
    state = {"closed": False, "produced": 0}

    def produce():
        try:
            for i in range(1000):
                state["produced"] += 1
                yield i
        finally:
            state["closed"] = True

    with pytest.raises(RuntimeError, match="attack failed"):
        for item in prefetch(produce(), depth=2):
            if item == 3:
                raise RuntimeError("attack failed")
    assert state["closed"] and state["produced"] < 10
    with pytest.raises(ValueError):
        next(prefetch(iter([]), depth=0))


def test_background_writer_writes_everything_in_order_in_its_thread():
    written, names = [], set()

    def write(item):
        time.sleep(0.01)
        names.add(threading.current_thread().name)
        written.append(item)

    with BackgroundWriter(write, depth=2) as w:
        for i in range(10):
            w.put(i)
    assert written == list(range(10)) and names == {"lb-writer"}


def test_background_writer_reports_a_write_error():
    def write(item):
        if item == 2:
            raise OSError("disk full")

    with pytest.raises(OSError, match="disk full"), BackgroundWriter(write) as w:
        for i in range(3):
            w.put(i)
    # and at a later put, before the block ends
    with pytest.raises(OSError, match="disk full"), BackgroundWriter(write, depth=1) as w:
        for i in range(50):
            w.put(i)
            time.sleep(0.005)


def test_background_writer_abandons_the_rest_when_the_block_fails():
    written = []

    def write(item):
        time.sleep(0.05)
        written.append(item)

    with pytest.raises(KeyError), BackgroundWriter(write, depth=5) as w:
        for i in range(5):
            w.put(i)
        raise KeyError("attack crashed")
    assert len(written) < 5  # not every queued batch was encoded into the abandoned output


@pytest.mark.parametrize("device", ["cpu", "cuda"])
def test_stage_frames_gives_float_nchw_on_the_device(device):
    if device == "cuda" and not torch.cuda.is_available():
        pytest.skip("needs a CUDA device")
    rng = np.random.default_rng(0)
    frames = [rng.integers(0, 256, (6, 5, 3), dtype=np.uint8) for _ in range(3)]
    staged = stage_frames(frames, device)
    assert staged.host.shape == (3, 3, 6, 5) and staged.host.dtype == torch.float32
    assert staged.host.device.type == "cpu"
    np.testing.assert_array_equal(staged.host.permute(0, 2, 3, 1).numpy(), np.stack(frames).astype(np.float32))
    on_dev = staged.device
    assert on_dev.device.type == device and on_dev.dtype == torch.float32
    assert torch.equal(on_dev.cpu(), staged.host)


def test_stage_frames_from_a_background_thread_overlaps_with_work():
    # the same staging the video path runs inside prefetch's thread
    frames = [np.full((4, 4, 3), i, np.uint8) for i in range(6)]
    batches = prefetch((stage_frames(frames[i:i + 2], "cpu") for i in range(0, 6, 2)), depth=2)
    firsts = [float(b.device[0, 0, 0, 0]) for b in batches]
    assert firsts == [0.0, 2.0, 4.0]


def test_unthreaded_writer_writes_in_put():
    written = []
    with BackgroundWriter(written.append, threaded=False) as w:
        w.put(1)
        assert written == [1]  # already written, in the caller's thread
        w.put(2)
    assert written == [1, 2]
