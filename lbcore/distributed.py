"""Scale-out: ``lb protect`` over many processes, GPUs and machines with ``torch.distributed``.

Launch with PyTorch's own launcher, ``torchrun``, which starts the workers, gives each its
``RANK`` / ``WORLD_SIZE`` / ``LOCAL_RANK``, and restarts the group when a worker dies
(``--max-restarts``)::

    torchrun --nproc-per-node 4 -m lbcore distributed protect photos/ -o protected/
    # two machines: run on each, with the first machine's address
    torchrun --nnodes 2 --node-rank 0|1 --nproc-per-node 8 --master-addr HOST --master-port 29500 \\
        -m lbcore distributed protect /shared/videos -o /shared/protected

How the work is split: every worker walks the same inputs in the same order and takes its own
*shard* - whole files, balanced by size (largest first onto the least-loaded worker). A worker
attacks on ``cuda:LOCAL_RANK`` (or the CPU), writes its protected files atomically with the
usual resume sidecars, and writes its part of the report to ``OUT/.lb-distributed/``. After a
barrier, rank 0 merges the parts, in input order, into ``OUT/report.json``.

A lost worker: its finished files are complete (atomic writes + sidecars), its unfinished one
left no output. With ``torchrun --max-restarts N`` the group restarts and every file finished
before is skipped ("done earlier"), so exactly the missing work is redone; without restarts,
running the same command again does the same. Long videos are sharded as whole files (one
worker per video); frame ranges are not split across workers.

The coordination (barrier, part files) uses the ``gloo`` backend on every device: the attack
needs no collective communication, so NCCL is not required even on GPUs.
"""

from __future__ import annotations

import datetime
import json
import os
import time
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import Any

import attrs

from lbcore.errors import LBError, SpecError

__all__ = ["WorkerInfo", "worker_info", "shard", "protect_distributed", "merge_reports", "PARTS_DIR"]

PARTS_DIR = ".lb-distributed"
"""Hidden folder under the output folder with each worker's part of the report."""

_FAIL_ENV = "LB_TEST_DISTRIBUTED_FAIL"
"""Tests only: ``RANK:N`` makes that worker exit hard after finishing N files (a lost worker);
``RANK:N:first`` only on torchrun's first attempt (so ``--max-restarts`` can recover)."""


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
) -> dict[str, Any]:
    """:func:`lbcore.protection.protect` over the workers of a ``torchrun`` group.

    Run by every worker with the same arguments. Returns the merged report on rank 0 (also
    written to ``out_dir/report.json``) and this worker's part on the others. With one worker
    (no torchrun) it is the plain, single-process protect.
    """
    from lbcore.io import iter_inputs
    from lbcore.protection import ProtectOptions, protect

    options = options or ProtectOptions()
    info = info or worker_info()
    if not info.distributed:
        return protect(inputs, out_dir, options, progress=progress)
    log = progress or (lambda s: None)
    paths = [Path(p) for p in inputs]
    out = Path(out_dir)
    options = attrs.evolve(options, device=_device_for(options.device, info))
    store = _store(info)
    entries = list(iter_inputs(paths, exclude=[out]))
    work = [i for i, e in enumerate(entries) if e.kind in ("image", "video")]
    sizes = [_size(entries[i].path) for i in work]
    mine = {work[j] for j in shard(sizes, info.world_size)[info.rank]}
    if info.rank == 0:  # listing problems are reported once
        mine |= {i for i, e in enumerate(entries) if e.kind not in ("image", "video")}
    log(f"worker {info.rank}/{info.world_size} on {options.device}: {len(mine)} of {len(entries)} inputs")
    t0 = time.monotonic()
    part = _protect_entries(entries, sorted(mine), paths, out, options, log, info)
    part["seconds"] = round(time.monotonic() - t0, 2)
    part["worker"] = attrs.asdict(info)
    _write_part(out, info, part)
    if info.rank != 0:
        store.add(_done_key(info), 1)
        return part
    _wait_for_workers(store, info)
    report = merge_reports([_read_part(out, r, info.world_size) for r in range(info.world_size)], options)
    _write_report(out, report, [e.path for e in entries if e.kind in ("image", "video")])
    return report


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


def _size(path: Path) -> int:
    try:
        return path.stat().st_size
    except OSError:
        return 0


def _protect_entries(entries: Sequence[Any], indices: Sequence[int], paths: Sequence[Path], out: Path,
                     options: Any, log: Callable[[str], None], info: WorkerInfo) -> dict[str, Any]:
    """This worker's share of :func:`lbcore.protection.protect`'s loop (same records, same errors)."""
    from lbcore.io import display_path
    from lbcore.protection import _Run

    files = [e.path for e in entries if e.kind in ("image", "video")]
    run = _Run(options, out, files, log)
    out.mkdir(parents=True, exist_ok=True)
    # output collisions (photo.jpg + photo.png) are decided over all inputs, as in one process
    claimed: dict[Path, int] = {}
    collides: dict[int, int] = {}
    for i, e in enumerate(entries):
        if e.kind in ("image", "video"):
            target = run.output_path(e)
            if target in claimed:
                collides[i] = claimed[target]
            else:
                claimed[target] = i
    records: list[dict[str, Any]] = []
    done = 0
    for i in indices:
        entry = entries[i]
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
        "settings": {**options.settings(), "extractors": list(run.attacked), "held_out": list(run.held),
                     "eps": run.config.eps, "steps": run.config.steps, "threshold": options.threshold,
                     "device": str(run.device)},
        "notes": run.notes,
        "files": records,
    }


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


def merge_reports(parts: Sequence[dict[str, Any]], options: Any) -> dict[str, Any]:
    """One report from the workers' parts: files in input order, notes without repeats,
    the summary recomputed over all files, per-worker seconds and devices."""
    from lbcore.protection import _summary

    records = sorted((r for p in parts for r in p["files"]), key=lambda r: r.get("index", 0))
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
                     "seconds": p.get("seconds")} for p in parts],
    }


def _write_report(out: Path, report: dict[str, Any], inputs: Sequence[Path]) -> None:
    from lbcore.io import write_bytes_atomic

    write_bytes_atomic(out / "report.json", json.dumps(report, indent=2, default=str).encode(), inputs)
