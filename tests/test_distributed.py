"""Scale-out with torch.distributed / torchrun: sharding, merging, two CPU workers on 127.0.0.1,
a lost worker and the rerun that completes exactly the missing files; long videos split into
frame ranges over the workers and merged (pixel-identical to one process without the warm start),
a worker lost mid-video and the rerun that redoes only its ranges."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from lbcore.apps.distributed import (
    PARTS_DIR,
    WorkerInfo,
    merge_reports,
    shard,
    split_frames,
    worker_info,
)
from lbcore.errors import SpecError

TINY_FAN = "fan:weights=none,width=16,landmarks=68,resolution=64"


def test_shard_balances_sizes_and_covers_everything():
    sizes = [100, 10, 10, 90, 5, 5, 50, 40]
    parts = shard(sizes, 3)
    assert sorted(i for p in parts for i in p) == list(range(len(sizes)))
    loads = [sum(sizes[i] for i in p) for p in parts]
    assert max(loads) - min(loads) <= 15, loads
    assert parts == shard(sizes, 3)  # every worker computes the same split
    assert shard([1, 1, 1], 1) == [[0, 1, 2]]
    assert shard([], 2) == [[], []]
    assert shard([7, 7, 7, 7], 2) == [[0, 2], [1, 3]]  # ties: alternate, lower rank first
    with pytest.raises(SpecError):
        shard([1], 0)


def test_worker_info_from_torchrun_environment():
    info = worker_info({"RANK": "3", "WORLD_SIZE": "4", "LOCAL_RANK": "1", "TORCHELASTIC_RESTART_COUNT": "2"})
    assert info == WorkerInfo(rank=3, world_size=4, local_rank=1, restart=2) and info.distributed
    assert not worker_info({}).distributed
    with pytest.raises(SpecError, match="RANK=4 with WORLD_SIZE=4"):
        worker_info({"RANK": "4", "WORLD_SIZE": "4"})
    with pytest.raises(SpecError, match="bad torchrun environment"):
        worker_info({"RANK": "x"})


def test_merge_keeps_input_order_and_recomputes_the_summary():
    from lbcore.apps.protection import ProtectOptions

    def face(nme):
        return {"extractors": {"e": {"nme": nme, "broken": nme > 0.1, "attacked": True}}, "ssim": 0.99}

    parts = [
        {"settings": {"device": "cuda:0", "eps": 15}, "notes": ["a"], "seconds": 3.0, "worker": {"rank": 0},
         "files": [{"input": "x0", "status": "protected", "faces": [face(0.3)], "index": 0},
                   {"input": "x2", "status": "error", "error": "bad", "index": 2}]},
        {"settings": {"device": "cuda:1", "eps": 15}, "notes": ["a", "b"], "seconds": 5.0, "worker": {"rank": 1},
         "files": [{"input": "x1", "status": "done earlier", "faces": [face(0.05)], "index": 1}]},
    ]
    rep = merge_reports(parts, ProtectOptions())
    assert [f["input"] for f in rep["files"]] == ["x0", "x1", "x2"]
    assert all("index" not in f for f in rep["files"])
    assert rep["notes"] == ["a", "b"]
    assert rep["settings"]["device"] == ["cuda:0", "cuda:1"]
    assert rep["summary"]["faces"] == 2 and rep["summary"]["faces_broken_all_attacked"] == 1
    assert rep["summary"]["files"] == {"protected": 1, "error": 1, "done earlier": 1}
    assert rep["seconds"] == 5.0 and [w["files"] for w in rep["workers"]] == [2, 1]


@pytest.fixture(scope="module")
def fixed_fan(tmp_path_factory):
    """TINY_FAN with saved seeded weights: ``weights=none`` draws new random weights in every
    process, and about one draw in twenty predicts coinciding eye corners (NME undefined)."""
    pytest.importorskip("lb_fan")
    import torch

    from lbcore.plugins import get_plugin_manager

    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("fixed-fan") / "fan.pth"
    torch.save(get_plugin_manager().build("extractors", TINY_FAN).net.state_dict(), path)
    return TINY_FAN.replace("weights=none", f"weights={path}")


def test_single_process_is_plain_protect(tmp_path, fixed_fan):
    from lbcore.apps.distributed import protect_distributed
    from lbcore.apps.protection import ProtectOptions

    src = _images(tmp_path / "in", 2)
    opts = ProtectOptions(extractors=(fixed_fan,), steps=1, boxes=((10.0, 10.0, 60.0, 60.0),),
                          check_compression=False, device="cpu")
    rep = protect_distributed([src], tmp_path / "out", opts, info=WorkerInfo())
    assert [f["status"] for f in rep["files"]] == ["protected", "protected"]
    assert not (tmp_path / "out" / PARTS_DIR).exists()


def _images(folder: Path, n: int) -> Path:
    from lbcore.io import write_image_atomic

    rng = np.random.default_rng(0)
    for i in range(n):
        sub = folder / ("sub" if i % 2 else "") / f"img{i}.png"
        write_image_atomic(sub, (rng.random((72, 80, 3)) * 255).astype(np.uint8))
    return folder


def _outputs(out: Path) -> list[Path]:
    """Protected images (a worker killed while writing may leave a hidden temporary file)."""
    return [p for p in out.rglob("*.png") if not p.name.startswith(".")]


def _errors(out: Path) -> list[str]:
    """Error records in the workers' report parts (for failure messages)."""
    found = []
    for part in (out / PARTS_DIR).glob("*.json"):
        found += [f.get("error", "") for f in json.loads(part.read_text())["files"] if f["status"] == "error"]
    return found


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _torchrun(src: Path, out: Path, *extra: str, env: dict[str, str], extractor: str = TINY_FAN,
              args: tuple[str, ...] = ()) -> subprocess.CompletedProcess[str]:
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", "2", "--master-addr", "127.0.0.1",
           "--master-port", str(_free_port()), *extra, "-m", "lbcore", "distributed", "protect", str(src),
           "-o", str(out), "--extractor", extractor, "--steps", "2", "--box", "10,10,60,60",
           "--no-compression-check", "--device", "cpu", "--json",
           "--key-interval", "1", *args]  # every frame attacked: comparable with one process frame by frame
    # own session: on a timeout the whole group (torchrun and its workers) is stopped
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env,
                            start_new_session=True)
    try:
        stdout, stderr = proc.communicate(timeout=180)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        stdout, stderr = proc.communicate()
        pytest.fail(f"torchrun did not finish in 180 s: {stderr[-2000:]}")
    return subprocess.CompletedProcess(cmd, proc.returncode, stdout, stderr)


def test_two_cpu_workers_lost_worker_and_rerun(tmp_path, fixed_fan):
    """torchrun, 2 workers on 127.0.0.1. Run 1 loses worker 1 after its first file: the
    command fails, finished files are complete. Run 2 (same command, --max-restarts 1, and
    worker 1 lost again on the first attempt) completes exactly the missing files."""
    src = _images(tmp_path / "in", 6)
    out = tmp_path / "out"
    env = {**os.environ, "OMP_NUM_THREADS": "1", "LB_TEST_DISTRIBUTED_FAIL": "1:1"}
    first = _torchrun(src, out, env=env, extractor=fixed_fan)
    assert first.returncode != 0
    assert "exitcode  : 17" in first.stderr or "exitcode: 17" in first.stderr.replace(" ", "")
    # finished = output and sidecar in place (a worker stopped between the two left an
    # output without a sidecar: unfinished, and redone)
    finished = {p.name: p.stat().st_mtime_ns for p in _outputs(out) if p.with_name(p.name + ".lb.json").exists()}
    assert 1 <= len(finished) < 6, (finished, first.stderr[-3000:])  # worker 1 did a file before it was lost
    assert not (out / "report.json").exists()

    env["LB_TEST_DISTRIBUTED_FAIL"] = "1:1:first"  # lost again, then torchrun restarts the group
    second = _torchrun(src, out, "--max-restarts", "1", env=env, extractor=fixed_fan)
    assert second.returncode == 0, (_errors(out), second.stderr[-3000:])
    report = json.loads(second.stdout)
    assert report.pop("report_path") == str(out / "report.json")
    assert report == json.loads((out / "report.json").read_text())
    names = [Path(f["input"]).name for f in report["files"]]
    assert names == ["img0.png", "img2.png", "img4.png", "img1.png", "img3.png", "img5.png"]  # input order
    status = {Path(f["input"]).name: f["status"] for f in report["files"]}
    # files finished before the first loss were not redone (nor were those the restarted
    # group's lost first attempt finished); every other file is protected now
    assert all(status[name] == "done earlier" for name in finished), (status, first.stderr[-3000:])
    assert set(status.values()) <= {"protected", "done earlier"}
    assert sum(st == "protected" for st in status.values()) >= 1
    for p in _outputs(out):
        if p.name in finished:
            assert p.stat().st_mtime_ns == finished[p.name], (p, first.stderr[-3000:])  # untouched
    assert len(_outputs(out)) == 6
    assert sorted(w["rank"] for w in report["workers"]) == [0, 1]
    assert report["summary"]["faces"] == 6


def test_evaluate_over_two_cpu_workers_matches_one_process(tmp_path, shared):
    """`lb distributed evaluate` under torchrun (2 CPU workers on 127.0.0.1): each worker runs
    its share of the units, rank 0 builds the tables; the rows equal a single-process run's."""
    pytest.importorskip("lb_fan")
    import torch

    from lbcore.plugins import get_plugin_manager

    data = shared / "data" / "dlib_faces" / "testing_with_face_landmarks.xml"
    # weights=none draws new random weights in every process: save fixed ones for both runs
    specs = {}
    for label, width in (("a", 16), ("b", 8)):
        torch.manual_seed(width)
        spec = TINY_FAN.replace("width=16", f"width={width}")
        ext = get_plugin_manager().build("extractors", spec)
        path = tmp_path / f"{label}.pth"
        torch.save(ext.net.state_dict(), path)
        specs[label] = spec.replace("weights=none", f"weights={path}")
    common = ["--extractors", f"a={specs['a']}", "--extractors", f"b={specs['b']}",
              "--attacks", "none,base1,lb", "--degradations", "none", "--ground-truth", "reference",
              "--limit", "2", "--steps", "2", "--synth", "none", "--device", "cpu"]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    single = subprocess.run([sys.executable, "-m", "lbcore", "evaluate", str(data), "-o", str(tmp_path / "one"),
                             *common, "-q"], capture_output=True, text=True, env=env, timeout=300)
    assert single.returncode == 0, single.stderr
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", "2", "--master-addr", "127.0.0.1",
           "--master-port", str(_free_port()), "-m", "lbcore", "distributed", "evaluate", str(data),
           "-o", str(tmp_path / "two"), *common]
    res = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=300, start_new_session=True)
    assert res.returncode == 0, res.stderr[-3000:]
    assert "[1] " in res.stderr and "done in" in res.stderr  # worker 1 ran units of its own
    one = json.loads((tmp_path / "one" / "results.json").read_text())
    two = json.loads((tmp_path / "two" / "results.json").read_text())

    def key(r):
        return (r["source"], r["attack"], r["target"], r["degradation"])

    rows1 = {key(r): r for r in one["rows"]}
    rows2 = {key(r): r for r in two["rows"]}
    assert rows1.keys() == rows2.keys() and len(rows1) == 2 * 2 * 2 + 2
    for k, r in rows1.items():
        assert rows2[k]["nme"] == pytest.approx(r["nme"], abs=1e-6), k
    assert (tmp_path / "two" / "report.md").is_file()


def test_split_frames_covers_every_frame_once_balanced():
    for n, seg, batch in [(10, 4, 1), (275, 64, 8), (7, 3, 2), (5, 8, 8), (16, 4, 4), (1, 1, 1), (9, 2, 2)]:
        ranges = split_frames(n, seg, batch)
        assert [f for a, b in ranges for f in range(a, b)] == list(range(n)), (n, seg, batch)
        size = -(-seg // batch) * batch  # rounded up to whole batches: one process's batches
        assert all(b - a == size for a, b in ranges[:-1]) and 0 < ranges[-1][1] - ranges[-1][0] <= size
        assert all(a % batch == 0 for a, _ in ranges)
    assert split_frames(10, 0, 4) == [(0, 10)]  # 0: whole videos
    assert split_frames(0, 4) == []
    with pytest.raises(SpecError, match="segment-frames"):
        split_frames(10, -1)
    # a long video's ranges and a few photos (cost 1 each) balance over two workers
    costs = [b - a for a, b in split_frames(275, 32, 8)] + [1] * 5
    loads = [sum(costs[i] for i in p) for p in shard(costs, 2)]
    assert sum(loads) == 280 and max(loads) - min(loads) <= 32, loads


CLIP_FRAMES = 8


@pytest.fixture(scope="module")
def small_clip(tmp_path_factory, shared):
    """The shared clip's first 8 frames at 128x72, with its audio, as an H.264 MP4."""
    import cv2

    from lbcore.io import VideoWriter, iter_video_frames, probe_video

    src = shared / "data" / "video" / "short_hamilton_clip.mp4"
    folder = tmp_path_factory.mktemp("dclip")
    path = folder / "in" / "clip.mp4"
    path.parent.mkdir()
    with VideoWriter(path, probe_video(src).fps, codec="h264", crf=12, audio_from=src) as w:
        for i, frame in enumerate(iter_video_frames(src)):
            if i >= CLIP_FRAMES:
                break
            w.write(cv2.resize(frame, (128, 72), interpolation=cv2.INTER_AREA))
    # weights=none draws new random weights in every process: fixed ones for every run
    import torch

    from lbcore.plugins import get_plugin_manager

    pytest.importorskip("lb_fan")
    torch.manual_seed(0)
    ext = get_plugin_manager().build("extractors", TINY_FAN)
    torch.save(ext.net.state_dict(), folder / "fan.pth")
    return path, TINY_FAN.replace("weights=none", f"weights={folder / 'fan.pth'}")


def _clip_options(spec: str):
    from lbcore.apps.protection import ProtectOptions

    # the settings `lb distributed protect ... --steps 2 --box 10,10,60,60 --batch-size 2` gives
    return ProtectOptions(extractors=(spec,), steps=2, boxes=((10.0, 10.0, 60.0, 60.0),), check_compression=False,
                          device="cpu", batch_size=2)


@pytest.fixture(scope="module")
def cold_reference(small_clip, tmp_path_factory):
    """One process, same settings, the warm start left out: (frames, times) of its output."""
    import torch

    from lbcore.apps.protection import _Run
    from lbcore.io import iter_inputs, iter_video_frames_timed

    clip, spec = small_clip
    out = tmp_path_factory.mktemp("cold")
    run = _Run(_clip_options(spec), out, [clip], None)
    plain_attack = run.attack_on_device
    run.attack_on_device = lambda x, faces, init=None: plain_attack(x, faces)  # type: ignore[method-assign]
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # as the workers (OMP_NUM_THREADS=1): the same float sums
    try:
        rec = run.video(next(iter_inputs([clip])))
    finally:
        torch.set_num_threads(threads)
    assert rec["frames"] == CLIP_FRAMES and rec["faces_protected"] == CLIP_FRAMES
    return [(f, t) for f, t in iter_video_frames_timed(out / "clip.mkv")]


def _segments(out: Path) -> list[dict]:
    found = []
    for part in sorted((out / PARTS_DIR).glob("part-*.json")):
        found += json.loads(part.read_text()).get("segments", [])
    return found


def _segment_name(seg: dict) -> str:
    """A segment's file stem, from its record in a worker's part."""
    return f"{seg['start']:09d}-" + ("end" if seg["stop"] is None else f"{seg['stop']:09d}")


def _check_clip_output(out: Path, clip: Path, reference: list) -> dict:
    from lbcore.io import iter_video_frames_timed, probe_video

    report = json.loads((out / "report.json").read_text())
    rec = report["files"][0]
    assert rec["status"] == "protected" and rec["frames"] == CLIP_FRAMES == rec["faces_protected"], rec
    assert rec["audio"] == "copied" and probe_video(out / "clip.mkv").has_audio
    # the attacked extractor, and the real models measured by default without being attacked (--held-out auto)
    assert set(rec["extractors"]) == {report["settings"]["extractors"][0], *report["settings"]["held_out"]}
    assert rec["ssim_mean"] is not None
    got = list(iter_video_frames_timed(out / "clip.mkv"))
    src = list(iter_video_frames_timed(clip))
    assert len(got) == len(src) == len(reference) == CLIP_FRAMES
    for (g, tg), (s, ts), (r, tr) in zip(got, src, reference, strict=True):
        assert tg == tr and abs(float(tg) - float(ts)) <= 0.001  # Matroska keeps milliseconds
        assert 0 < np.abs(g.astype(int) - s.astype(int)).max() <= 15  # protected, within eps
        assert np.array_equal(g, r)  # the single process without warm start, pixel for pixel
    assert not (out / PARTS_DIR / "segments").exists(), "segments left after the merge"
    return report


def test_long_video_split_into_frame_ranges_over_two_workers(small_clip, cold_reference, tmp_path):
    """8 frames, --segment-frames 2 --batch-size 2: 4 ranges, 2 per worker, merged by rank 0 into
    one output with the frames, times and audio of one process's (each range one batch: no warm
    start anywhere, so the output equals the cold single-process run's pixel for pixel)."""
    from lbcore.apps.protection import protect

    clip, spec = small_clip
    out = tmp_path / "out"
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    res = _torchrun(clip.parent, out, env=env, extractor=spec, args=("--segment-frames", "2", "--batch-size", "2"))
    assert res.returncode == 0, (_errors(out), res.stderr[-3000:])
    segs = _segments(out)
    assert sorted((s["start"], s["stop"]) for s in segs) == [(0, 2), (2, 4), (4, 6), (6, None)]
    assert all(s["status"] == "protected" for s in segs)
    report = _check_clip_output(out, clip, cold_reference)
    assert [w["frame_ranges"] for w in sorted(report["workers"], key=lambda w: w["rank"])] == [2, 2]
    assert report["summary"]["files"] == {"protected": 1}
    # marked finished like a single-process output: `lb protect` with the same settings skips it
    again = protect([clip.parent], out, _clip_options(spec))
    assert again["files"][0]["status"] == "done earlier"


def test_worker_lost_mid_video_rerun_redoes_only_its_ranges(small_clip, cold_reference, tmp_path):
    """Worker 1 is lost after its first range (2-4): the command fails, finished ranges stay as
    segments. The rerun redoes only the ranges without a finished segment and merges the video."""
    clip, spec = small_clip
    out = tmp_path / "out"
    args = ("--segment-frames", "2", "--batch-size", "2")
    env = {**os.environ, "OMP_NUM_THREADS": "1", "LB_TEST_DISTRIBUTED_FAIL": "1:1"}
    first = _torchrun(clip.parent, out, env=env, extractor=spec, args=args)
    assert first.returncode != 0
    assert not (out / "clip.mkv").exists() and not (out / "report.json").exists()
    done = {p.stem: p.stat().st_mtime_ns for p in (out / PARTS_DIR / "segments").glob("*/*.json")}
    assert "000000002-000000004" in done and "000000006-end" not in done, (done, first.stderr[-3000:])
    del env["LB_TEST_DISTRIBUTED_FAIL"]
    second = _torchrun(clip.parent, out, env=env, extractor=spec, args=args)
    assert second.returncode == 0, (_errors(out), second.stderr[-3000:])
    status = {_segment_name(s): s["status"] for s in _segments(out)}
    assert len(status) == 4
    assert {k for k, v in status.items() if v == "done earlier"} == set(done), (status, done)
    assert all(v == "protected" for k, v in status.items() if k not in done)
    _check_clip_output(out, clip, cold_reference)


def test_key_frames_over_two_workers_equal_one_process_range_by_range(small_clip, tmp_path):
    """--key-interval 2 over two workers, --segment-frames 4: each range plans its own key frames
    (key, propagated, warm-started key, propagated). The merged output equals, pixel for pixel,
    one process protecting each frame range alone with the same options."""
    import attrs
    import torch

    from lbcore.apps.protection import _Run
    from lbcore.io import iter_inputs, iter_video_frames

    clip, spec = small_clip
    out = tmp_path / "out"
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    res = _torchrun(clip.parent, out, env=env, extractor=spec,
                    args=("--segment-frames", "4", "--batch-size", "2", "--key-interval", "2"))
    assert res.returncode == 0, (_errors(out), res.stderr[-3000:])
    assert sorted((s["start"], s["stop"]) for s in _segments(out)) == [(0, 4), (4, None)]
    opts = attrs.evolve(_clip_options(spec), key_interval=2)
    reference: list[np.ndarray] = []
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # as the workers (OMP_NUM_THREADS=1): the same float sums
    try:
        for start, stop in ((0, 4), (4, None)):
            seg = tmp_path / "ref" / f"{start}.mkv"
            seg.parent.mkdir(exist_ok=True)
            raw: dict = {}
            _Run(opts, tmp_path / "ref", [clip], None).video(next(iter_inputs([clip])), span=(start, stop), out=seg,
                                                             raw=raw)
            assert raw["faces_protected"] == raw["frames"] == 4
            reference += list(iter_video_frames(seg, max_frames=None))
    finally:
        torch.set_num_threads(threads)
    got = list(iter_video_frames(out / "clip.mkv", max_frames=None))
    src = list(iter_video_frames(clip, max_frames=None))
    assert len(got) == len(reference) == CLIP_FRAMES
    for g, r, c in zip(got, reference, src, strict=True):
        assert np.array_equal(g, r)
        assert 0 < np.abs(g.astype(int) - c.astype(int)).max() <= 15
    # (the key-interval plan is not the per-frame attack's: frames 1, 3, 5, 7 were propagated)
    per_frame = list(iter_video_frames(_cold(small_clip, tmp_path), max_frames=None))
    assert not all(np.array_equal(g, r) for g, r in zip(got, per_frame, strict=True))


def _cold(small_clip, tmp_path) -> Path:
    """One process, the per-frame attack (--key-interval 1), whole clip."""
    from lbcore.apps.protection import protect

    clip, spec = small_clip
    rep = protect([clip], tmp_path / "per-frame", _clip_options(spec))
    return Path(rep["files"][0]["output"])


def test_missing_frame_range_at_merge_is_one_error_line(small_clip, tmp_path):
    """Rank 0's merge with segments missing (one failed, the others never written): an error
    record naming the video and the frame ranges, no output, no crash."""
    from lbcore.apps.distributed import _merge_videos, plan_units
    from lbcore.apps.protection import _Run
    from lbcore.io import display_path, iter_inputs

    clip, spec = small_clip
    out = tmp_path / "out"
    run = _Run(_clip_options(spec), out, [clip], None)
    entries = list(iter_inputs([clip]))
    units = plan_units(entries, run, 2, {})
    assert [(u.start, u.stop, u.cost) for u in units] == [(0, 2, 2), (2, 4, 2), (4, 6, 2), (6, None, 2)]
    assert [(u.start, u.cost) for u in plan_units(entries, run, 0, {})] == [(None, CLIP_FRAMES)]
    name = display_path(clip)
    parts = [{"segments": [{"index": 0, "start": 2, "stop": 4, "status": "error", "error": f"{name}: boom"}]}]
    lines = []
    (rec,) = _merge_videos(entries, units, run, out, parts, lines.append)
    assert rec["status"] == "error" and rec["index"] == 0
    assert rec["error"] == (f"{name}: frames 0-2, 4-6, 6-end missing (worker lost?); frames 2-4 failed (boom); "
                            "not written (run the same command again to redo them)")
    assert not (out / "clip.mkv").exists()
    assert len(lines) == 1 and f"{name}: error" in lines[0]
