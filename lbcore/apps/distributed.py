"""Scale-out: ``lb protect`` over many processes, GPUs and machines with ``torch.distributed``.

Launch with PyTorch's own launcher, ``torchrun``, which starts the workers, gives each its
``RANK`` / ``WORLD_SIZE`` / ``LOCAL_RANK``, and restarts the group when a worker dies
(``--max-restarts``)::

    torchrun --nproc-per-node 4 -m lbcore distributed protect photos/ -o protected/
    # two machines: run on each, with the first machine's address
    torchrun --nnodes 2 --node-rank 0|1 --nproc-per-node 8 --master-addr HOST --master-port 29500 \\
        -m lbcore distributed protect /shared/videos -o /shared/protected

How the work is split: every worker walks the same inputs in the same order, cuts them into the
same *units* and takes its own *shard* of them, balanced by cost (largest first onto the
least-loaded worker). A unit is an image, a video, or - for a video longer than
``segment_frames`` (``--segment-frames``, default 256; 0 keeps whole videos) - a range of
consecutive frames ``[start, stop)``. A worker attacks on ``cuda:LOCAL_RANK`` (or the CPU),
writes its protected files atomically with the usual resume sidecars, and writes its part of
the report to ``OUT/.lb-distributed/``. After a barrier, rank 0 merges the parts, in input
order, into ``OUT/report.json``.

Frame ranges: a worker decodes the video from the start and drops the frames before ``start``
(exact; seeking is not), protects ``[start, stop)`` as ``lb protect`` does (same batches - range
lengths are a multiple of ``--batch-size`` - face detection and warm start from the previous
frame's perturbation, restarted at the range's first frame), and writes the protected frames
losslessly (FFV1 in Matroska, no audio) to ``OUT/.lb-distributed/segments/<video>/`` with a JSON
sidecar (exact frame times, counts, the measured faces). After the barrier rank 0 concatenates
each video's segments in order into the real output (the chosen codec, the source's audio, the
original frame times), writes its report record and resume sidecar, and deletes the segments.
A range is measured like a whole video (its first batch with faces, then every
``--report-every``-th), so a split video's measured subsample differs a little from one
process's. The warm start does not cross a range boundary, so the frames near one differ
slightly from a single-process run (each is still within the budget); they are identical when
the warm start is left out of both (and every frame is attacked, ``--key-interval 1``). With key
frames (``lb protect``'s default ``--key-interval 8``) each range starts with a key frame.

A lost worker: its finished files and ranges are complete (atomic writes + sidecars), its
unfinished one left no output. With ``torchrun --max-restarts N`` the group restarts and every
file or range finished before is skipped ("done earlier"), so exactly the missing work is
redone; without restarts, running the same command again does the same. A range still missing
at the merge (its worker failed on it) leaves its video unwritten, with an error naming the
video and frames.

The coordination (barrier, part files) uses the ``gloo`` backend on every device: the attack
needs no collective communication, so NCCL is not required even on GPUs.
"""

from __future__ import annotations

import contextlib
import datetime
import json
import os
import re
import shutil
import time
from collections.abc import Callable, Iterable, Sequence
from fractions import Fraction
from pathlib import Path
from typing import Any

import attrs

from lbcore.errors import LBError, SpecError

__all__ = ["WorkerInfo", "Unit", "worker_info", "shard", "split_frames", "protect_distributed", "merge_reports",
           "PARTS_DIR", "SEGMENT_FRAMES"]

PARTS_DIR = ".lb-distributed"
"""Hidden folder under the output folder with each worker's part of the report (and, under
``segments/``, the protected frame ranges of long videos until they are merged)."""

SEGMENT_FRAMES = 256
"""Default ``--segment-frames``: videos longer than this are split into frame ranges."""

_FAIL_ENV = "LB_TEST_DISTRIBUTED_FAIL"
"""Tests only: ``RANK:N`` makes that worker exit hard after finishing N units (files or frame
ranges; a lost worker); ``RANK:N:first`` only on torchrun's first attempt (so ``--max-restarts``
can recover)."""


@attrs.frozen
class WorkerInfo:
    """This process's place in the group (from torchrun's environment)."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    restart: int = 0

    @property
    def distributed(self) -> bool:
        return self.world_size > 1


def worker_info(env: dict[str, str] | None = None) -> WorkerInfo:
    """Read ``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK`` and ``TORCHELASTIC_RESTART_COUNT``."""
    env = dict(os.environ if env is None else env)
    try:
        info = WorkerInfo(
            rank=int(env.get("RANK", "0")), world_size=int(env.get("WORLD_SIZE", "1")),
            local_rank=int(env.get("LOCAL_RANK", "0")), restart=int(env.get("TORCHELASTIC_RESTART_COUNT", "0")),
        )
    except ValueError as err:
        raise SpecError(f"bad torchrun environment (RANK/WORLD_SIZE/LOCAL_RANK): {err}") from None
    if not 0 <= info.rank < info.world_size:
        raise SpecError(f"bad torchrun environment: RANK={info.rank} with WORLD_SIZE={info.world_size}")
    return info


def shard(sizes: Sequence[int], world_size: int) -> list[list[int]]:
    """Split items with the given sizes over ``world_size`` workers, balancing total size.

    Greedy "largest first onto the least-loaded worker" (deterministic: ties go to the lower
    index / rank), so every worker computes the same split without talking to the others.

    Returns:
        For each rank, the indices of its items in increasing order.
    """
    if world_size < 1:
        raise SpecError("world size must be at least 1")
    load = [0] * world_size
    out: list[list[int]] = [[] for _ in range(world_size)]
    for i in sorted(range(len(sizes)), key=lambda j: (-sizes[j], j)):
        r = min(range(world_size), key=lambda k: (load[k], len(out[k]), k))
        out[r].append(i)
        load[r] += max(1, int(sizes[i]))
    return [sorted(s) for s in out]


@attrs.frozen
class Unit:
    """One piece of work: input ``index`` (into the input entries) whole, or its frames
    ``[start, stop)`` (``stop`` None: to the end of the video); ``cost`` in frames."""

    index: int
    cost: int = 1
    start: int | None = None
    stop: int | None = None

    @property
    def is_range(self) -> bool:
        return self.start is not None


def split_frames(n_frames: int, segment_frames: int, batch_size: int = 1) -> list[tuple[int, int]]:
    """Consecutive frame ranges ``[start, stop)`` covering ``range(n_frames)`` exactly once.

    Each range but the last has ``segment_frames`` frames rounded up to a multiple of
    ``batch_size``, so a range's batches are the batches one process makes of the whole video.
    ``segment_frames`` 0 (or a video no longer than one range) gives one range.
    """
    if segment_frames < 0:
        raise SpecError(f"--segment-frames must be 0 (whole videos) or positive, got {segment_frames}")
    if n_frames <= 0:
        return []
    batch = max(1, batch_size)
    size = -(-segment_frames // batch) * batch if segment_frames else n_frames
    return [(a, min(a + size, n_frames)) for a in range(0, n_frames, size)]


def _device_for(device: str, info: WorkerInfo) -> str:
    """Each worker on its own GPU: ``auto``/``cuda`` -> ``cuda:LOCAL_RANK`` where CUDA exists."""
    import torch

    if device in ("auto", "cuda") and torch.cuda.is_available():
        return f"cuda:{info.local_rank % torch.cuda.device_count()}"
    if device == "auto":
        return "cpu"
    return device


def _maybe_fail(info: WorkerInfo, done: int) -> None:
    """The test hook of :data:`_FAIL_ENV`: simulate a worker lost mid-run."""
    spec = os.environ.get(_FAIL_ENV)
    if not spec:
        return
    parts = spec.split(":")
    if int(parts[0]) != info.rank or done < int(parts[1]):
        return
    if len(parts) > 2 and parts[2] == "first" and info.restart > 0:
        return
    os._exit(17)


def protect_distributed(
    inputs: Iterable[str | os.PathLike[str]],
    out_dir: str | os.PathLike[str],
    options: Any = None,
    *,
    progress: Callable[[str], None] | None = None,
    info: WorkerInfo | None = None,
    segment_frames: int = SEGMENT_FRAMES,
) -> dict[str, Any]:
    """:func:`lbcore.apps.protection.protect` over the workers of a ``torchrun`` group.

    Run by every worker with the same arguments. Returns the merged report on rank 0 (also
    written to ``out_dir/report.json``) and this worker's part on the others. With one worker
    (no torchrun) it is the plain, single-process protect. Videos longer than
    ``segment_frames`` frames are split into frame ranges over the workers (0: never).
    """
    from lbcore.apps.protection import ProtectOptions, _Run, protect
    from lbcore.io import iter_inputs

    options = options or ProtectOptions()
    info = info or worker_info()
    split_frames(0, segment_frames)  # refuse a negative --segment-frames in every mode
    if not info.distributed:
        return protect(inputs, out_dir, options, progress=progress)
    log = progress or (lambda s: None)
    paths = [Path(p) for p in inputs]
    out = Path(out_dir)
    options = attrs.evolve(options, device=_device_for(options.device, info))
    store = _store(info)
    entries = list(iter_inputs(paths, exclude=[out]))
    files = [e.path for e in entries if e.kind in ("image", "video")]
    run = _Run(options, out, files, log)
    collides = _collisions(entries, run)
    units = plan_units(entries, run, segment_frames, collides)
    mine = [units[j] for j in shard([u.cost for u in units], info.world_size)[info.rank]]
    if info.rank == 0:  # listing problems are reported once
        mine += [Unit(i) for i, e in enumerate(entries) if e.kind not in ("image", "video")]
    mine.sort(key=lambda u: (u.index, u.start or 0))
    log(f"worker {info.rank}/{info.world_size} on {options.device}: {len(mine)} of {len(units)} units "
        f"({len(entries)} inputs)")
    t0 = time.monotonic()
    part = _protect_units(entries, mine, run, collides, out, log, info)
    part["seconds"] = round(time.monotonic() - t0, 2)
    part["worker"] = attrs.asdict(info)
    _write_part(out, info, part)
    if info.rank != 0:
        store.add(_done_key(info), 1)
        return part
    _wait_for_workers(store, info)
    parts = [_read_part(out, r, info.world_size) for r in range(info.world_size)]
    videos = _merge_videos(entries, units, run, out, parts, log)
    report = merge_reports(parts, options, videos)
    _write_report(out, report, files)
    return report


def _collisions(entries: Sequence[Any], run: Any) -> dict[int, int]:
    """Inputs whose output another input already claims (photo.jpg + photo.png): index -> first index.
    Decided over all inputs, as in one process."""
    claimed: dict[Path, int] = {}
    collides: dict[int, int] = {}
    for i, e in enumerate(entries):
        if e.kind in ("image", "video"):
            target = run.output_path(e)
            if target in claimed:
                collides[i] = claimed[target]
            else:
                claimed[target] = i
    return collides


def plan_units(entries: Sequence[Any], run: Any, segment_frames: int, collides: dict[int, int]) -> list[Unit]:
    """The units of work, the same in every worker.

    Cost is in frames: a video (range) costs its frame count; an image costs 1. The attack runs
    on face crops resized to each extractor's input size, so a photo's face costs about what a
    video frame's face costs whatever the photo's pixel size; a photo's extra measurement (the
    compression checks) is small next to the attack's steps. An unreadable video costs 1 (its
    worker only reports the error).

    A long video is split only while its output is unfinished; such an output is written by
    rank 0 after the barrier only, so no worker can see it change while the others plan.
    """
    from lbcore.errors import LBError
    from lbcore.io import probe_video

    units: list[Unit] = []
    kwargs = {} if run.o.max_frames is None else {"max_frames": run.o.max_frames}
    for i, e in enumerate(entries):
        if e.kind == "image" or (e.kind == "video" and i in collides):
            units.append(Unit(i))
        elif e.kind == "video":
            try:
                n = probe_video(e.path, **kwargs).frame_count
            except LBError:
                units.append(Unit(i))
                continue
            ranges = split_frames(n, segment_frames, run.o.batch_size)
            if len(ranges) < 2 or run.store.is_finished(e.path, run.output_path(e)):
                units.append(Unit(i, cost=1 if len(ranges) >= 2 else max(1, n)))
                continue
            for k, (a, b) in enumerate(ranges):
                # the last range runs to the end: a container's frame count can be short
                units.append(Unit(i, cost=b - a, start=a, stop=b if k < len(ranges) - 1 else None))
    return units


def _store(info: WorkerInfo) -> Any:
    """A client of the key-value store torchrun's agent hosts at ``MASTER_ADDR:MASTER_PORT``.

    The only coordination needed is "every worker wrote its part", so no process group is
    created: a counter in the store, keyed by torchrun's restart count, is the barrier (a
    restarted group never sees the counts of the attempt it replaces).
    """
    import torch.distributed as dist

    try:
        host, port = os.environ["MASTER_ADDR"], int(os.environ["MASTER_PORT"])
    except (KeyError, ValueError):
        raise SpecError("MASTER_ADDR / MASTER_PORT are not set: launch with torchrun") from None
    return dist.TCPStore(host, port, is_master=False, timeout=datetime.timedelta(minutes=10))


def _done_key(info: WorkerInfo) -> str:
    return f"lbcore/protect/attempt-{info.restart}/done"


def _wait_for_workers(store: Any, info: WorkerInfo, poll_s: float = 0.2) -> None:
    """Rank 0 waits until the other workers have written their parts. A worker that is lost
    never counts itself; torchrun then stops (or restarts) the whole group, this one included."""
    key = _done_key(info)
    while int(store.add(key, 0)) < info.world_size - 1:
        time.sleep(poll_s)


def _protect_units(entries: Sequence[Any], units: Sequence[Unit], run: Any, collides: dict[int, int],
                   out: Path, log: Callable[[str], None], info: WorkerInfo) -> dict[str, Any]:
    """This worker's share of :func:`lbcore.apps.protection.protect`'s loop (same records, same errors),
    plus the frame ranges of long videos (``segments``: merged by rank 0)."""
    from lbcore.io import display_path

    out.mkdir(parents=True, exist_ok=True)
    records: list[dict[str, Any]] = []
    segments: list[dict[str, Any]] = []
    done = 0
    for unit in units:
        i = unit.index
        entry = entries[i]
        if unit.is_range:
            seg = _segment(run, entry, unit, out)
            seg["index"] = i
            segments.append(seg)
            done += 1
            log(f"{display_path(entry.path)} frames {_span_text(unit.start, unit.stop)}: {seg['status']} "
                f"(worker {info.rank})" + (f": {seg.get('error')}" if seg["status"] == "error" else ""))
            _maybe_fail(info, done)
            continue
        if entry.kind in ("error", "skip"):
            rec = {"input": str(entry.path), "status": "error" if entry.kind == "error" else "skipped",
                   "error": entry.error}
        elif i in collides:
            first = entries[collides[i]].path
            rec = {"input": str(entry.path), "kind": entry.kind, "status": "error",
                   "error": f"{display_path(entry.path)}: would be written to the same output "
                            f"{display_path(run.output_path(entry))} as {display_path(first)}; skipped "
                            "(rename one of them)"}
        else:
            rec = _one(run, entry)
            done += 1
        rec["index"] = i
        records.append(rec)
        log(f"{display_path(entry.path)}: {rec['status']} (worker {info.rank})"
            + (f": {rec.get('error')}" if rec["status"] == "error" else ""))
        _maybe_fail(info, done)
    return {
        "settings": {**run.o.settings(), "extractors": list(run.attacked), "held_out": list(run.held),
                     "eps": run.config.eps, "steps": run.config.steps, "threshold": run.o.threshold,
                     "device": str(run.device)},
        "notes": run.notes,
        "files": records,
        "segments": segments,
    }


# -- frame ranges of long videos -------------------------------------------------------------


def _span_text(start: int | None, stop: int | None) -> str:
    return f"{start}-{'end' if stop is None else stop}"


def _segment_dir(out: Path, entry: Any) -> Path:
    """A stable folder per video: a readable stem plus a hash of its relative path."""
    import hashlib

    rel = Path(entry.rel).as_posix()
    stem = re.sub(r"[^A-Za-z0-9._-]", "_", Path(rel).stem)[:40] or "video"
    return out / PARTS_DIR / "segments" / f"{stem}-{hashlib.sha256(rel.encode()).hexdigest()[:12]}"


def _segment_paths(out: Path, entry: Any, start: int | None, stop: int | None) -> tuple[Path, Path]:
    base = _segment_dir(out, entry) / f"{start:09d}-{'end' if stop is None else f'{stop:09d}'}"
    return base.with_suffix(".mkv"), base.with_suffix(".json")


def _segment_key(run: Any, entry: Any, start: int | None, stop: int | None) -> dict[str, Any]:
    """What a finished segment must match to be reused: the input, the range and the settings
    that shape its frames (batching included)."""
    st = os.stat(entry.path)
    return {"input": {"size": st.st_size, "mtime_ns": st.st_mtime_ns}, "start": start, "stop": stop,
            "settings_hash": run.store.settings_hash, "batch_size": run.o.batch_size,
            "report_every": run.o.report_every}


def _load_segment(run: Any, entry: Any, start: int | None, stop: int | None, out: Path) -> dict[str, Any] | None:
    """A finished segment's sidecar (frames file present, same key), else None."""
    video, side = _segment_paths(out, entry, start, stop)
    try:
        data: dict[str, Any] = json.loads(side.read_text(encoding="utf-8"))
        if data.get("key") != _segment_key(run, entry, start, stop) or not video.is_file():
            return None
    except (OSError, ValueError):
        return None
    return data


def _segment(run: Any, entry: Any, unit: Unit, out: Path) -> dict[str, Any]:
    """Protect one frame range into its segment file + sidecar (or reuse a finished one)."""
    from lbcore.io import display_path, write_bytes_atomic

    rec: dict[str, Any] = {"start": unit.start, "stop": unit.stop}
    if not run.o.force and _load_segment(run, entry, unit.start, unit.stop, out) is not None:
        return {**rec, "status": "done earlier"}
    video, side = _segment_paths(out, entry, unit.start, unit.stop)
    raw: dict[str, Any] = {}
    assert unit.start is not None
    try:
        key = _segment_key(run, entry, unit.start, unit.stop)
        run.video(entry, span=(unit.start, unit.stop), out=video, raw=raw)
        times = [None if t is None else str(Fraction(t)) for t in raw["times"]]
        data = {"key": key, "times": times, **{k: raw[k] for k in
                ("frames", "faces_protected", "skipped_small_faces", "stats")}}
        write_bytes_atomic(side, json.dumps(data, default=str).encode())
    except Exception as err:  # as _one: one range's failure must not lose the shard
        name = display_path(entry.path)
        if isinstance(err, LBError):
            msg = str(err) if name in str(err) else f"{name}: {err}"
        else:
            msg = (f"{name}: internal error ({type(err).__name__}: {' '.join(str(err).split())}); "
                   "please report this")
        return {**rec, "status": "error", "error": msg}
    return {**rec, "status": "protected" if raw["faces_protected"] else "unchanged", "frames": raw["frames"]}


def _merge_videos(entries: Sequence[Any], units: Sequence[Unit], run: Any, out: Path,
                  parts: Sequence[dict[str, Any]], log: Callable[[str], None]) -> list[dict[str, Any]]:
    """Rank 0, after the barrier: one output and one report record per split video."""
    from lbcore.io import display_path

    ranges: dict[int, list[Unit]] = {}
    for u in units:
        if u.is_range:
            ranges.setdefault(u.index, []).append(u)
    errors = {(s["index"], s["start"]): s["error"] for p in parts for s in p.get("segments", [])
              if s["status"] == "error"}
    records = []
    for i, spans in ranges.items():
        entry = entries[i]
        name = display_path(entry.path)
        try:
            rec = _merge_video(run, entry, spans, out, {u.start: errors[(i, u.start)] for u in spans
                                                        if (i, u.start) in errors})
        except Exception as err:  # a bad merge must not lose the report
            msg = str(err) if isinstance(err, LBError) else f"internal error ({type(err).__name__}: {err})"
            rec = {"input": str(entry.path), "kind": "video", "status": "error",
                   "error": " ".join((msg if name in msg else f"{name}: {msg}").split())}
        rec["index"] = i
        records.append(rec)
        log(f"{name}: {rec['status']} ({len(spans)} frame ranges merged)"
            + (f": {rec.get('error')}" if rec["status"] == "error" else ""))
    return records


def _merge_video(run: Any, entry: Any, spans: Sequence[Unit], out: Path,
                 errors: dict[int | None, str]) -> dict[str, Any]:
    """Concatenate a video's segments, in order, into its output (the user's codec, the source's
    audio, the original frame times); its report record, sidecar; delete the segments.

    With a segment missing (its worker failed on it: ``errors`` by range start, or was lost) the
    video is not written: an error record names the video and the frames."""
    from lbcore.io import VideoWriter, display_path, iter_video_frames_timed, probe_video

    name = display_path(entry.path)
    target = run.output_path(entry)
    record: dict[str, Any] = {"input": str(entry.path), "output": str(target), "kind": "video"}
    loaded = [(u, _load_segment(run, entry, u.start, u.stop, out)) for u in spans]
    missing = [u for u, data in loaded if data is None]
    if missing:
        lost = ", ".join(_span_text(u.start, u.stop) for u in missing if u.start not in errors)
        why = [f"frames {lost} missing (worker lost?)"] if lost else []
        for u in missing:
            if u.start in errors:
                err = errors[u.start].removeprefix(f"{name}: ")
                why.append(f"frames {_span_text(u.start, u.stop)} failed ({err})")
        text = f"{name}: {'; '.join(why)}; not written (run the same command again to redo them)"
        return {**record, "status": "error", "error": " ".join(text.split())}
    kwargs = {} if run.o.max_frames is None else {"max_frames": run.o.max_frames}
    info = probe_video(entry.path, **kwargs)
    stats: dict[str, list[float]] = {}
    n_frames = n_faces = n_small = 0
    with VideoWriter(target, info.fps, codec=run.o.codec, crf=run.o.crf,
                     audio_from=entry.path if info.has_audio else None, inputs=run.inputs) as writer:
        for u, data in loaded:
            assert data is not None
            video, side = _segment_paths(out, entry, u.start, u.stop)
            times = [None if t is None else Fraction(t) for t in data["times"]]
            got = 0
            for rgb, _ in iter_video_frames_timed(video, max_frames=None):
                if got < len(times):
                    writer.write(rgb, times[got])
                got += 1
            if got != len(times) or got != data["frames"]:
                side.unlink(missing_ok=True)  # redone by the next run
                raise LBError(f"{name}: frames {_span_text(u.start, u.stop)}: segment holds {got} frames, "
                              f"its sidecar says {len(times)}; run the same command again")
            for k, v in data["stats"].items():
                stats.setdefault(k, []).extend(v)
            n_frames += data["frames"]
            n_faces += data["faces_protected"]
            n_small += data["skipped_small_faces"]
    run.video_record(record, stats, n_frames, n_faces, n_small, info.fps,
                     writer.audio_note or ("copied" if info.has_audio else "none"))
    run.store.mark_finished(entry.path, target, report=record)
    shutil.rmtree(_segment_dir(out, entry), ignore_errors=True)
    with contextlib.suppress(OSError):
        _segment_dir(out, entry).parent.rmdir()  # when no other video's segments are left
    return record


def _one(run: Any, entry: Any) -> dict[str, Any]:
    from lbcore.io import display_path

    name = display_path(entry.path)
    try:
        return dict(run.image(entry) if entry.kind == "image" else run.video(entry))
    except LBError as err:
        msg = str(err)
        return {"input": str(entry.path), "kind": entry.kind, "status": "error",
                "error": msg if name in msg else f"{name}: {msg}"}
    except Exception as err:  # a bug on one file must not lose the rest of the shard
        return {"input": str(entry.path), "kind": entry.kind, "status": "error",
                "error": f"{name}: internal error ({type(err).__name__}: {' '.join(str(err).split())}); "
                         "please report this"}


def _part_path(out: Path, rank: int, world: int) -> Path:
    return out / PARTS_DIR / f"part-{rank:04d}-of-{world:04d}.json"


def _write_part(out: Path, info: WorkerInfo, part: dict[str, Any]) -> None:
    from lbcore.io import write_bytes_atomic

    path = _part_path(out, info.rank, info.world_size)
    path.parent.mkdir(parents=True, exist_ok=True)
    write_bytes_atomic(path, json.dumps(part, indent=1, default=str).encode())


def _read_part(out: Path, rank: int, world: int) -> dict[str, Any]:
    path = _part_path(out, rank, world)
    try:
        data: dict[str, Any] = json.loads(path.read_text(encoding="utf-8"))
        return data
    except (OSError, ValueError) as err:
        raise LBError(f"{path}: worker {rank}'s part of the report is missing or unreadable ({err})") from None


def merge_reports(parts: Sequence[dict[str, Any]], options: Any, videos: Sequence[dict[str, Any]] = ()
                  ) -> dict[str, Any]:
    """One report from the workers' parts and the merged split ``videos``: files in input order,
    notes without repeats, the summary recomputed over all files, per-worker seconds and devices."""
    from lbcore.apps.protection import _summary

    records = sorted([*(r for p in parts for r in p["files"]), *videos], key=lambda r: r.get("index", 0))
    for r in records:
        r.pop("index", None)
    notes: list[str] = []
    for p in parts:
        notes += [n for n in p.get("notes", []) if n not in notes]
    settings = dict(parts[0]["settings"]) if parts else {}
    settings["device"] = sorted({p["settings"]["device"] for p in parts})
    return {
        "settings": settings,
        "notes": notes,
        "files": records,
        "summary": _summary(records, options.threshold),
        "seconds": max((p.get("seconds", 0.0) for p in parts), default=0.0),
        "workers": [{"rank": p["worker"]["rank"], "device": p["settings"]["device"], "files": len(p["files"]),
                     "frame_ranges": len(p.get("segments", [])), "seconds": p.get("seconds")} for p in parts],
    }


def _write_report(out: Path, report: dict[str, Any], inputs: Sequence[Path]) -> None:
    from lbcore.io import write_bytes_atomic

    write_bytes_atomic(out / "report.json", json.dumps(report, indent=2, default=str).encode(), inputs)
