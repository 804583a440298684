"""Photos one by one vs attacked together across files (``lb protect --batch-size``), one run.

Protects the same photos (default: the 13 sample photos of ``../shared/data/faces68`` and
``../shared/data/photos``) three ways in one process, each into its own folder:

* ``one-by-one``: ``--photo-batch 1`` (the default: one file at a time, the engine as before);
* ``pairs``: ``--photo-batch 2`` (network calls of two files shared, batch-invariant kernels);
* ``batched``: ``--photo-batch N`` (the network calls of N files shared).

and prints, per way: wall time, extractor network calls, face crops through a network per face
("passes per face", attack and measurement together), faces per second, and whether the written
files and the report's figures are byte-identical to ``pairs`` (a photo's output must not depend
on what it is grouped with; ``one-by-one`` keeps oneDNN's kernels and differs in the last bits).

    .venv/bin/python benchmarks/photo_batching.py --extractor fan-demo --steps 5

``--modes one-by-one,network`` also times each shared extractor's network alone (forward and
backward of random crops, best of three) in calls of each photo's face count and of 12 crops, and
from the one-by-one run's crop counts prints the best case for any cross-file batching: the
one-by-one wall time minus what the network calls would save if every call held 12 crops instead
of one photo's faces (every counted crop taken as a forward and a backward pass: an upper bound
on the saving).
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import json
import shutil
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]


def _digests(out: Path) -> dict[str, str]:
    return {p.relative_to(out).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(out.rglob("*")) if p.is_file() and p.suffix.lower() in (".png", ".jpg", ".jpeg", ".webp")}


def _figures(report: dict[str, Any], out: Path) -> str:
    text = json.dumps({"files": report["files"], "summary": report["summary"]}, sort_keys=True)
    return text.replace(str(out), "OUT")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("inputs", nargs="*", type=Path)
    ap.add_argument("--extractor", action="append", default=[], help="attacked extractor spec (repeatable; "
                    "default: the default ensemble)")
    ap.add_argument("--steps", type=int, default=None, help="attack steps (default: the strength's)")
    ap.add_argument("--strength", default="medium")
    ap.add_argument("--batch-size", type=int, default=13)
    ap.add_argument("--no-compression-check", action="store_true")
    ap.add_argument("--format", default="auto", help="output format (png: no differentiable JPEG in the attack)")
    ap.add_argument("--modes", default="one-by-one,pairs,batched")
    ap.add_argument("--threads", type=int, default=None, help="torch.set_num_threads")
    ap.add_argument("--keep", type=Path, default=None, help="copy each mode's report.json to KEEP/MODE.json")
    args = ap.parse_args(argv)

    import torch

    from lbcore.apps import protection
    from lbcore.extractor import Extractor

    if args.threads:
        torch.set_num_threads(args.threads)
    shared = ROOT.parent / "shared" / "data"
    inputs = args.inputs or [shared / "faces68", shared / "photos"]
    missing = [p for p in inputs if not p.exists()]
    if missing:
        print(f"missing input {missing[0]} (the sample photos live in ../shared/data)", file=sys.stderr)
        return 3

    # count every network call of an extractor whose calls photos share (class level: the
    # batched path calls the class's forward_crops too)
    counts = {"calls": 0, "crops": 0}
    per_class: dict[type, int] = {}
    lock = threading.Lock()
    patched: dict[type, Any] = {}

    def counting(cls: type) -> None:
        if cls in patched:
            return
        original = cls.forward_crops  # type: ignore[attr-defined]

        def forward_crops(self: Any, x: torch.Tensor) -> Any:
            with lock:
                counts["calls"] += 1
                counts["crops"] += int(x.shape[0])
                per_class[type(self)] = per_class.get(type(self), 0) + int(x.shape[0])
            return original(self, x)

        patched[cls] = original
        cls.forward_crops = forward_crops  # type: ignore[attr-defined]

    from lbcore.plugins import get_plugin_manager

    pm = get_plugin_manager()
    for spec in args.extractor:  # (imports the extractors' classes, to count their calls)
        pm.build("extractors", spec)
    if not args.extractor:
        protection.default_extractor_specs(pm)
    for cls in _subclasses(Extractor):
        if "forward_crops" in cls.__dict__ and getattr(cls, "shares_crops", False):
            counting(cls)

    tmp = Path(tempfile.mkdtemp(prefix="lb-photo-batching-"))
    one_by_one: tuple[float, dict[type, int], list[int]] | None = None
    rows = []
    results: dict[str, tuple[dict[str, str], str]] = {}
    try:
        for mode in args.modes.split(","):
            if mode == "network":
                continue
            out = tmp / mode
            counts.update(calls=0, crops=0)
            bs = {"batched": args.batch_size, "pairs": 2}.get(mode, 1)
            ctx = contextlib.nullcontext()
            torch.manual_seed(0)  # (random-weight test networks: the same in every mode)
            t0 = time.perf_counter()
            with ctx:
                report = protection.protect(inputs, out, extractors=tuple(args.extractor), steps=args.steps,
                                            strength=args.strength, photo_batch=bs, format=args.format,
                                            check_compression=not args.no_compression_check)
            wall = time.perf_counter() - t0
            faces = int(report["summary"]["photo_faces"])
            results[mode] = (_digests(out), _figures(report, out))
            if args.keep is not None:
                args.keep.mkdir(parents=True, exist_ok=True)
                shutil.copyfile(out / "report.json", args.keep / f"{mode}.json")
            rows.append((mode, bs, wall, faces, counts["calls"], counts["crops"]))
            if mode == "one-by-one":
                one_by_one = (wall, dict(per_class), [len(f.get("faces") or []) for f in report["files"]])
            per_class.clear()
            shutil.rmtree(out, ignore_errors=True)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
        for cls, original in patched.items():
            cls.forward_crops = original  # type: ignore[attr-defined]

    ref = results.get("pairs")
    print(f"photos: {', '.join(str(p) for p in inputs)}; extractors: {', '.join(args.extractor) or 'default'}; "
          f"steps: {args.steps or 'default'}; strength: {args.strength}; format: {args.format}; "
          f"compression checks: {not args.no_compression_check}; torch threads: {torch.get_num_threads()}")
    print(f"{'mode':<11} {'batch':>5} {'wall s':>8} {'faces':>5} {'net calls':>9} {'passes/face':>11} "
          f"{'faces/s':>8} {'files = pairs':>18} {'report = pairs':>19}")
    base = next((r[2] for r in rows if r[0] == "one-by-one"), None)  # the default path
    for mode, bs, wall, faces, calls, crops in rows:
        same_files = "-" if ref is None else str(results[mode][0] == ref[0])
        same_rep = "-" if ref is None else str(results[mode][1] == ref[1])
        print(f"{mode:<11} {bs:>5} {wall:>8.1f} {faces:>5} {calls:>9} {crops / max(faces, 1):>11.1f} "
              f"{faces / wall:>8.3f} {same_files:>18} {same_rep:>19}")
    if base is not None:
        for mode, _, wall, *_ in rows:
            if mode != "one-by-one":
                print(f"one-by-one / {mode} wall time: {base / wall:.2f}x")
    if "network" in args.modes.split(","):
        _network(pm, args, one_by_one)
    return 0


def _network(pm: Any, args: argparse.Namespace, one_by_one: tuple[float, dict[type, int], list[int]] | None) -> None:
    """Each shared extractor's network alone, and the best case for cross-file batching."""
    import torch

    from lbcore.apps import protection

    built = ({s: pm.build("extractors", s) for s in args.extractor} if args.extractor
             else protection.default_extractor_specs(pm)[0])
    faces = [f for f in (one_by_one[2] if one_by_one else [4]) if f > 0]
    sizes = sorted({min(f, 12) for f in faces} | {12})
    gen = torch.Generator().manual_seed(0)
    saving = 0.0
    print(f"network alone: forward + backward of 12 random crops in calls of n, milliseconds per crop (best of 3); "
          f"faces per photo: {sorted(faces)}")
    for spec, ext in built.items():
        if not getattr(ext, "shares_crops", False):
            continue
        size = ext.input_size
        hw = (int(size), int(size)) if isinstance(size, (int, float)) else (int(size[0]), int(size[1]))
        x = torch.rand(12, 3, *hw, generator=gen)

        def run(b: torch.Tensor, ext: Any = ext) -> None:
            xi = b.clone().requires_grad_(True)
            out = ext.forward_crops(xi)
            o = out[0] if isinstance(out, tuple) else out
            torch.autograd.grad(o.float().square().sum(), xi)

        cost = {}
        for n in sizes:
            def calls(n: int = n, x: torch.Tensor = x) -> None:
                for i in range(0, 12, n):
                    run(x[i:i + n])
            calls()
            best = float("inf")
            for _ in range(3):
                t0 = time.perf_counter()
                calls()
                best = min(best, time.perf_counter() - t0)
            cost[n] = best / 12
        crops = 0 if one_by_one is None else one_by_one[1].get(type(ext), 0)
        per_face = crops / max(sum(faces), 1)  # network passes per face and member (the same for every face)
        saving += sum(per_face * f * max(0.0, cost[min(f, 12)] - cost[12]) for f in faces)
        print(f"  {spec}: " + ", ".join(f"n={n} {cost[n] * 1000:.1f}" for n in sizes)
              + f"; crops one by one: {crops}")
    if one_by_one is not None:
        wall = one_by_one[0]
        print(f"best case for cross-file batching (every call 12 crops): {wall:.1f} s - {saving:.1f} s = "
              f"{wall - saving:.1f} s, {wall / max(wall - saving, 1e-9):.2f}x the one-by-one run")


def _subclasses(cls: type) -> list[type]:
    out: list[type] = []
    sub: type
    for sub in cls.__subclasses__():
        out += [sub, *_subclasses(sub)]
    return out


@contextlib.contextmanager
def _patched(obj: Any, name: str, value: Any) -> Any:
    before = getattr(obj, name)
    setattr(obj, name, value)
    try:
        yield
    finally:
        setattr(obj, name, before)


if __name__ == "__main__":
    raise SystemExit(main())
