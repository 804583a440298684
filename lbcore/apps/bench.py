"""Speed of the attack engine against a straightforward implementation of Algorithm 1.

``run_bench`` measures, for each extractor and attack preset, how many faces per second the
batched engine (:func:`lbcore.engine.attack`) protects at several batch sizes, and how many
the *baseline* protects on the same inputs in the same run. The baseline is Algorithm 1 as a
researcher writes it from the paper: one image at a time, float32, the model as loaded
(its weights still require gradients, so ``loss.backward()`` also computes weight gradients),
the clean heat-maps once per image, then ``T`` plain autograd steps. It uses the same
extractor (same crop, same network) and the same loss and update rule, so both do the same
work and reach the same adversarial images up to floating-point rounding
(:func:`baseline_attack`; the tests check it).

Achieved FLOP/s are estimated from a count of one face's forward and input-gradient backward
with :class:`torch.utils.flop_counter.FlopCounterMode` (weight gradients are off in the engine,
so the backward costs about one forward: a step is ~2x a forward) and compared with the
device's peak: a table for known GPUs (dense bf16/fp16 and fp32), otherwise a matrix multiply
timed in the run (the CPU's achievable GEMM rate, not a datasheet figure).
"""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Callable, Sequence
from functools import partial
from typing import Any

import attrs

from lbcore.errors import SpecError

__all__ = [
    "BenchOptions",
    "TARGETS",
    "baseline_attack",
    "count_flops",
    "device_peak",
    "format_table",
    "run_bench",
    "synthetic_batch",
]

TARGETS: list[dict[str, Any]] = [
    {"device": "cpu", "what": "speedup >= 3x over the baseline at batch 16", "extractors": ("hrnet", "fan"),
     "batch": 16, "speedup": 3.0},
    {"device": "H100", "what": "HRNet-W18, LB attack (T=20): >= 500 faces/s", "extractors": ("hrnet",),
     "attack": "lb", "faces_per_s": 500.0},
    {"device": "H100", "what": "1-minute 720p single-face video protected end to end in < 15 s (lb protect)",
     "extractors": ("hrnet",)},
]
"""The issue's targets, printed with every run (checked where a row applies)."""

# Dense tensor-core peaks (FLOP/s) from the vendors' datasheets: (bf16/fp16, fp32 without TF32).
_GPU_PEAKS: dict[str, tuple[float, float]] = {
    "H200": (989e12, 67e12),
    "H100 PCIe": (756e12, 51e12),
    "H100": (989e12, 67e12),  # SXM
    "A100": (312e12, 19.5e12),
    "L40S": (362e12, 91.6e12),
    "A10": (125e12, 31.2e12),
    "T4": (65e12, 8.1e12),
}


@attrs.define
class BenchOptions:
    """What ``lb bench`` measures (see ``lb bench --help``)."""

    extractors: tuple[str, ...] = ()
    attacks: tuple[str, ...] = ("lb",)
    batches: tuple[int, ...] = (1, 4, 16)
    steps: int = 20
    repeat: int = 1
    device: str = "auto"
    amp: str = "auto"
    compile: bool = False
    channels_last: bool = True
    image_size: int = 256
    baseline_faces: int = 2
    baseline: bool = True
    seed: int = 0
    #: with no ``extractors``: measure only the first default extractor (HRNet when installed)
    one_extractor: bool = False


def synthetic_batch(n: int, size: int, seed: int = 0) -> tuple[Any, Any]:
    """``n`` deterministic ``size`` x ``size`` test images with one face box each.

    Smooth random images (blurred noise) so heat-maps are not degenerate; the box covers the
    central ~60% with a small per-image jitter, like a detected face.
    """
    import torch
    import torch.nn.functional as F

    from lbcore.types import Faces

    g = torch.Generator().manual_seed(seed)
    coarse = torch.rand(n, 3, max(2, size // 8), max(2, size // 8), generator=g)
    images = F.interpolate(coarse, size=(size, size), mode="bilinear", align_corners=False)
    images = (images * 200 + torch.rand(n, 3, size, size, generator=g) * 55).clamp(0, 255).round()
    jitter = (torch.rand(n, 2, generator=g) - 0.5) * size * 0.06
    lo, hi = size * 0.2, size * 0.8
    boxes = torch.stack([lo + jitter[:, 0], lo + jitter[:, 1], hi + jitter[:, 0], hi + jitter[:, 1]], dim=1)
    return images, Faces(boxes, torch.arange(n))


def baseline_attack(images: Any, faces: Any, extractor: Any, config: Any, *, device: Any = "cpu",
                    plugin_manager: Any = None) -> Any:
    """Algorithm 1 written per image, the straightforward way (the benchmark's baseline).

    One image at a time, float32, no batching; the extractor is used as loaded (its weights
    require gradients, as after ``torch.load``), so each ``loss.backward()`` also computes weight
    gradients, which are then thrown away. Same extractor, crop, loss (``config.loss``) and
    update rule (FGSM / I-FGSM / MI-FGSM, LBmix alternation, LBtrans resize-and-pad) as the
    engine, projection onto the epsilon-ball every step, 8-bit rounding at the end.

    Args:
        images: ``(B, 3, H, W)`` float ``[0, 255]``.
        faces: the faces to protect (any number per image).
        extractor: one extractor.
        config: an :class:`~lbcore.engine.AttackConfig` (``eot`` is not part of the paper's
            Algorithm 1 and is refused; ``random_start`` noise is drawn as the engine draws it).

    Returns:
        ``(B, 3, H, W)`` adversarial images, integer values in ``[0, 255]``.
    """
    import torch

    from lbcore.engine import _diversity, resolve_device
    from lbcore.optimizers import FGSM, IterativeFGSM, MomentumIterativeFGSM
    from lbcore.plugins import get_plugin_manager
    from lbcore.types import Faces

    if config.eot or config.projection != "ball":
        raise SpecError("the baseline implements Algorithm 1 with projection=ball only (no eot)")
    pm = plugin_manager or get_plugin_manager()
    dev = resolve_device(device)
    loss_fn = pm.build("losses", config.loss)
    rule = pm.build("optimizers", config.optimizer)
    if not isinstance(rule, FGSM | IterativeFGSM | MomentumIterativeFGSM):
        raise SpecError(f"the baseline knows FGSM, I-FGSM and MI-FGSM, not {config.optimizer!r}")
    model = extractor.to(dev).eval()
    for p in model.parameters():  # as loaded from a checkpoint
        p.requires_grad_(True)
    gen = torch.Generator().manual_seed(int(config.seed))
    torch.manual_seed(int(config.seed))
    eps = float(config.eps)
    steps = 1 if isinstance(rule, FGSM) else int(config.steps)
    alpha = float(getattr(rule, "alpha", eps))
    decay = float(getattr(rule, "decay", 0.0))
    noise = None
    if config.random_start > 0:  # drawn like the engine's, so a test can compare the two paths
        r = min(float(config.random_start), eps)
        noise = (torch.rand(images.shape, generator=gen) * 2 - 1) * r
    out = []
    for i in range(images.shape[0]):
        x = images[i: i + 1].to(dev, torch.float32)
        mine = faces.image_index == i
        f = Faces(faces.boxes[mine].to(dev), torch.zeros(int(mine.sum()), dtype=torch.long, device=dev))
        if len(f) == 0:
            out.append(x.round().cpu())
            continue
        with torch.no_grad():
            h_clean = model(x, f)
        x_adv = x.clone() if noise is None else (x + noise[i: i + 1].to(dev)).clamp(x - eps, x + eps).clamp(0, 255)
        g_acc = torch.zeros_like(x)
        for t in range(steps):
            x_adv.requires_grad_(True)
            inp, fi = x_adv, f
            if config.diversity_prob > 0 and float(torch.rand((), generator=gen)) < config.diversity_prob:
                inp, fi = _diversity(inp, fi, config.diversity_min_scale, gen)
            loss = loss_fn(h_clean, model(inp, fi)).sum()
            model.zero_grad(set_to_none=True)
            loss.backward()
            grad = x_adv.grad
            assert grad is not None
            with torch.no_grad():
                if isinstance(rule, FGSM):
                    x_new = x_adv - eps * grad.sign()
                elif isinstance(rule, MomentumIterativeFGSM) and not (config.mix and t % 2 == 1):
                    g_acc = decay * g_acc + grad / grad.abs().sum().clamp_min(1e-12)
                    x_new = x_adv - alpha * g_acc.sign()
                else:  # I-FGSM, and LBmix's odd steps
                    x_new = x_adv - alpha * grad.sign()
                x_new = torch.min(torch.max(x_new, x - eps), x + eps).clamp(0, 255)
            x_adv = x_new.detach()
        x_adv = torch.min(torch.max(x_adv.round(), torch.ceil(x - eps - 1e-6)), torch.floor(x + eps + 1e-6))
        out.append(x_adv.clamp(0, 255).detach().cpu())
    for p in model.parameters():
        p.requires_grad_(False)
    return torch.cat(out)


def count_flops(extractor: Any, image_size: int, device: Any = "cpu") -> dict[str, float]:
    """FLOPs of one face: ``forward`` and ``step`` (forward + backward to the image only).

    Counted by :class:`torch.utils.flop_counter.FlopCounterMode` (matrix multiplies and
    convolutions, 2 FLOPs per multiply-add) with the weights not requiring gradients, as in
    the engine.
    """
    import torch
    from torch.utils.flop_counter import FlopCounterMode

    images, faces = synthetic_batch(1, image_size)
    images, faces = images.to(device), faces.to(device)
    for p in extractor.parameters():
        p.requires_grad_(False)
    with FlopCounterMode(display=False) as fwd, torch.no_grad():
        extractor(images, faces)
    x = images.clone().requires_grad_(True)
    with FlopCounterMode(display=False) as step:
        out = extractor(x, faces)
        target = out.heatmaps if out.heatmaps is not None else out.landmarks
        target.float().square().sum().backward()  # reaches only the image: weights need no grad
    return {"forward": float(fwd.get_total_flops()), "step": float(step.get_total_flops())}


def device_peak(device: Any, amp: str = "none") -> tuple[float, str]:
    """Peak FLOP/s of ``device`` for the given precision and where the figure comes from."""
    import torch

    dev = torch.device(device)
    low = amp in ("bf16", "fp16")
    if dev.type == "cuda":
        name = torch.cuda.get_device_name(dev)
        for key, (half, single) in _GPU_PEAKS.items():
            if key.lower() in name.lower():
                return (half if low else single), f"{key} datasheet, dense {'bf16/fp16' if low else 'fp32'}"
    dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(amp, torch.float32)
    n = 1024 if dev.type == "cpu" else 8192
    a = torch.randn(n, n, device=dev).to(dtype)
    b = torch.randn(n, n, device=dev).to(dtype)
    best = float("inf")
    for _ in range(3):
        _sync(dev)
        t0 = time.perf_counter()
        for _ in range(3):
            a @ b
        _sync(dev)
        best = min(best, (time.perf_counter() - t0) / 3)
    return 2 * n**3 / best, f"measured {n}x{n} {str(dtype).replace('torch.', '')} matmul"


def _sync(dev: Any) -> None:
    import torch

    if torch.device(dev).type == "cuda":
        torch.cuda.synchronize(dev)


class _PeakMemory:
    """Peak memory of a block: CUDA allocator peak, or on CPU the process's resident set size
    sampled every few milliseconds, minus its size at the start (MB)."""

    def __init__(self, device: Any) -> None:
        import torch

        self.dev = torch.device(device)
        self.peak_mb = 0.0
        self._stop = threading.Event()

    @staticmethod
    def _rss_mb() -> float:
        try:
            with open("/proc/self/statm") as fh:
                return int(fh.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20
        except (OSError, ValueError):  # not Linux
            import resource

            return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024

    def __enter__(self) -> _PeakMemory:
        import torch

        if self.dev.type == "cuda":
            torch.cuda.synchronize(self.dev)
            torch.cuda.reset_peak_memory_stats(self.dev)
            self._start = torch.cuda.memory_allocated(self.dev) / 2**20
        else:
            self._start = self._rss_mb()
            self._max = self._start
            self._thread = threading.Thread(target=self._sample, daemon=True)
            self._thread.start()
        return self

    def _sample(self) -> None:
        while not self._stop.wait(0.005):
            self._max = max(self._max, self._rss_mb())

    def __exit__(self, *exc: Any) -> None:
        import torch

        if self.dev.type == "cuda":
            torch.cuda.synchronize(self.dev)
            self.peak_mb = torch.cuda.max_memory_allocated(self.dev) / 2**20 - self._start
        else:
            self._stop.set()
            self._thread.join()
            self.peak_mb = max(self._max, self._rss_mb()) - self._start


def _describe_device(dev: Any) -> str:
    import platform

    import torch

    if dev.type == "cuda":
        return f"{torch.cuda.get_device_name(dev)} ({dev})"
    model = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as fh:
            for line in fh:
                if line.startswith("model name"):
                    model = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    return f"cpu: {model}, {torch.get_num_threads()} thread(s) of {os.cpu_count()} core(s)"


def _timed(fn: Callable[[], Any], dev: Any, repeat: int) -> tuple[float, float, Any]:
    """Best wall-clock seconds, the process CPU seconds of that run, and the result.

    CPU seconds count the work this process did whatever else runs on the machine: on a
    shared CPU they compare the engine and the baseline fairly when wall time does not.
    """
    best, best_cpu, result = float("inf"), float("inf"), None
    for _ in range(max(1, repeat)):
        _sync(dev)
        t0, c0 = time.perf_counter(), time.process_time()
        result = fn()
        _sync(dev)
        wall, cpu = time.perf_counter() - t0, time.process_time() - c0
        if wall < best:
            best, best_cpu = wall, cpu
    return best, best_cpu, result


def run_bench(options: BenchOptions, progress: Callable[[str], None] | None = None) -> dict[str, Any]:
    """Measure the engine and the baseline; return the results (``device``, ``rows``, ...).

    Each row: ``extractor``, ``attack``, ``batch``, ``faces_per_s`` (engine), ``baseline_faces_per_s``
    (the per-image baseline on the first ``baseline_faces`` of the same images; it does not
    depend on the batch size), ``speedup``, ``peak_mem_mb`` (engine), ``tflops`` (achieved),
    ``flop_utilisation`` (of ``peak_tflops``), and the mean Eq. 1 loss each reached on the
    baseline's faces (``loss_engine``, ``loss_baseline``: they should agree).
    """
    import torch

    from lbcore.attacks import attack_names, preset
    from lbcore.engine import Performance, attack, resolve_amp, resolve_device
    from lbcore.plugins import get_plugin_manager

    log = progress or (lambda s: None)
    pm = get_plugin_manager()
    dev = resolve_device(options.device)
    amp = resolve_amp(options.amp, dev)
    for a in options.attacks:
        if a not in attack_names():
            raise SpecError(f"unknown attack preset {a!r} (valid: {', '.join(attack_names())})")
    if not options.batches or min(options.batches) < 1:
        raise SpecError("batch sizes must be positive")
    specs = list(options.extractors) or _default_bench_specs(pm)
    if not specs:
        raise SpecError("no extractor installed to benchmark (install lb-fan, lb-hrnet or lb-avssan)")
    if options.one_extractor and not options.extractors and len(specs) > 1:
        specs.sort(key=lambda s: not s.startswith("hrnet:"))  # the paper's HRNetV2-W18 first
        log(f"quick sweep: {specs[0]} only (also: {', '.join(specs[1:])}; name them with --extractor, "
            "or --full for all)")
        specs = specs[:1]
    perf = Performance(amp=amp, channels_last=options.channels_last, compile=options.compile)
    peak, peak_source = device_peak(dev, amp)
    pool_images, pool_faces = synthetic_batch(max(options.batches), options.image_size, options.seed)
    result: dict[str, Any] = {
        "device": _describe_device(dev),
        "device_type": dev.type,
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
        "load_average": list(os.getloadavg()) if hasattr(os, "getloadavg") else None,
        "settings": {**attrs.asdict(options), "amp": amp, "extractors": specs},
        "peak_tflops": round(peak / 1e12, 3),
        "peak_source": peak_source,
        "targets": [t["what"] + f" ({t['device']})" for t in TARGETS],
        "rows": [],
    }
    built = {spec: pm.build("extractors", spec).to(dev).eval() for spec in specs}
    log(f"estimate: {_estimate(built, options, pool_images, pool_faces, dev, pm, perf)}")
    for spec in specs:
        ext = built[spec]
        flops = count_flops(ext, options.image_size, dev)
        for name in options.attacks:
            config = preset(name, steps=options.steps, seed=options.seed)
            steps = 1 if preset(name).steps == 1 else options.steps
            face_flops = steps * flops["step"] + 2 * flops["forward"]  # + clean and final passes
            base_fps = base_cpu_fps = base_loss = None
            nb = min(options.baseline_faces, max(options.batches))
            if options.baseline and nb > 0:
                x, f = pool_images[:nb], _first_faces(pool_faces, nb)
                # warm-up (oneDNN/cuDNN primitives for these shapes), as the engine gets below
                baseline_attack(x[:1], _first_faces(f, 1), ext, attrs.evolve(config, steps=1), device=dev,
                                plugin_manager=pm)
                secs, cpu_secs, adv = _timed(partial(baseline_attack, x, f, ext, config, device=dev, plugin_manager=pm), dev, 1)
                base_fps, base_cpu_fps = nb / secs, nb / max(cpu_secs, 1e-9)
                base_loss = _mean_loss(ext, x, f, adv, config, pm, dev)
                log(f"{spec} {name}: baseline {base_fps:.3f} faces/s ({nb} faces, one at a time, fp32)")
            # warm-up: compile, oneDNN/cuDNN primitive caches
            attack(pool_images[:1], _first_faces(pool_faces, 1), ext, preset(name, steps=1), device=dev,
                   plugin_manager=pm, performance=perf)
            for b in options.batches:
                x, f = pool_images[:b], _first_faces(pool_faces, b)
                compile_s = None
                if options.compile:  # a compiled network is specialised to its batch shape
                    t0 = time.perf_counter()
                    attack(x, f, ext, preset(name, steps=1), device=dev, plugin_manager=pm, performance=perf)
                    compile_s = round(time.perf_counter() - t0, 1)
                with _PeakMemory(dev) as mem:
                    secs, cpu_secs, res = _timed(partial(attack, x, f, ext, config, device=dev, plugin_manager=pm,
                                               performance=perf), dev, options.repeat)
                fps, cpu_fps = b / secs, b / max(cpu_secs, 1e-9)
                on_cpu = dev.type == "cpu"
                row = {
                    "extractor": spec, "attack": name, "batch": b, "steps": steps, "amp": amp,
                    "faces_per_s": round(fps, 4),
                    # forward+backward passes through the extractor per face (the stop rule spends fewer)
                    "passes_per_face": round(float(res.passes[:b].float().mean()), 2),
                    "baseline_passes_per_face": None if base_fps is None else steps,
                    "baseline_faces_per_s": None if base_fps is None else round(base_fps, 4),
                    "speedup": None if base_fps is None else round(fps / base_fps, 2),
                    "peak_mem_mb": round(mem.peak_mb, 1),
                    "faces_per_cpu_s": round(cpu_fps, 4) if on_cpu else None,
                    "baseline_faces_per_cpu_s": round(base_cpu_fps, 4) if on_cpu and base_cpu_fps else None,
                    "speedup_cpu": round(cpu_fps / base_cpu_fps, 2) if on_cpu and base_cpu_fps else None,
                    "gflop_per_face": round(face_flops / 1e9, 2),
                    "tflops": round(fps * face_flops / 1e12, 4),
                    "flop_utilisation": round(fps * face_flops / peak, 4),
                    "loss_engine": round(float(res.final_loss[:nb].mean()), 4) if base_loss is not None else None,
                    "loss_baseline": None if base_loss is None else round(base_loss, 4),
                    "compile_s": compile_s,
                }
                result["rows"].append(row)
                log(f"{spec} {name} batch {b}: {fps:.3f} faces/s"
                    + ("" if row["speedup"] is None else f" ({row['speedup']}x baseline)"))
    result["target_checks"] = _check_targets(result)
    return result


def _estimate(built: dict[str, Any], options: BenchOptions, images: Any, faces: Any, dev: Any, pm: Any,
              perf: Any) -> str:
    """How long the run will take, from one timed 1-step attack on one face per extractor."""
    from lbcore.attacks import preset
    from lbcore.engine import attack

    total = 0.0
    each = []
    face_steps = options.steps * (sum(options.batches) * options.repeat
                                  + (min(options.baseline_faces, max(options.batches)) if options.baseline else 0))
    for ext in built.values():
        x, f = images[:1], _first_faces(faces, 1)
        attack(x, f, ext, preset("lb", steps=1), device=dev, plugin_manager=pm, performance=perf)  # warm-up
        t0 = time.perf_counter()
        attack(x, f, ext, preset("lb", steps=1), device=dev, plugin_manager=pm, performance=perf)
        _sync(dev)
        one = time.perf_counter() - t0
        each.append(f"{one:.1f} s")
        # per face-step (batching makes a step cheaper per face), times every attack
        total += one * face_steps * len(options.attacks) + 3 * one
    minutes = total / 60
    when = f"about {total:.0f} s" if total < 90 else f"about {minutes:.0f} min"
    return (f"{when} for {len(built)} extractor(s) x {len(options.attacks)} attack(s) x batches "
            f"{', '.join(map(str, options.batches))}, T={options.steps} (extrapolated from a 1-step attack on one face: "
            f"{', '.join(each)}; other load on the machine lengthens it; fewer --extractor or --batch values "
            "shorten it)")


def _first_faces(faces: Any, n: int) -> Any:
    from lbcore.types import Faces

    keep = faces.image_index < n
    return Faces(faces.boxes[keep], faces.image_index[keep])


def _mean_loss(ext: Any, x: Any, f: Any, adv: Any, config: Any, pm: Any, dev: Any) -> float:
    import torch

    loss_fn = pm.build("losses", config.loss)
    with torch.no_grad():
        xd, fd = x.to(dev), f.to(dev)
        return float(loss_fn(ext(xd, fd), ext(adv.to(dev), fd)).mean())


def _check_targets(result: dict[str, Any]) -> list[str]:
    """One line per target that a row of this run measures: met or not, with the figure."""
    lines = []
    dev = result["device"]
    for t in TARGETS:
        on_cpu = t["device"] == "cpu"
        if on_cpu != (result["device_type"] == "cpu") or (not on_cpu and t["device"] not in dev):
            continue
        for row in result["rows"]:
            base = row["extractor"].split(":", 1)[0]
            if base not in t["extractors"]:
                continue
            if "batch" in t and row["batch"] == t["batch"] and row["speedup"] is not None:
                ok = row["speedup"] >= t["speedup"]
                cpu = row.get("speedup_cpu")
                ok_cpu = cpu is not None and cpu >= t["speedup"]
                lines.append(f"{t['what']}: {row['extractor']} {row['attack']} {row['speedup']}x wall-clock "
                             f"-> {'met' if ok else 'NOT met'}"
                             + ("" if cpu is None else f"; {cpu}x in CPU time -> {'met' if ok_cpu else 'NOT met'}"))
            elif "faces_per_s" in t and row["attack"] == t.get("attack") and row["steps"] == 20:
                ok = row["faces_per_s"] >= t["faces_per_s"]
                lines.append(f"{t['what']}: {row['extractor']} batch {row['batch']} {row['faces_per_s']:.0f} faces/s "
                             f"-> {'met' if ok else 'NOT met'}")
    return lines


def format_table(result: dict[str, Any]) -> list[str]:
    """Human-readable lines: the device, one line per row, the targets and their checks."""
    lines = [f"device: {result['device']}; torch {result['torch']}; load average "
             f"{', '.join(f'{v:.2f}' for v in result['load_average'] or [])}",
             f"peak: {result['peak_tflops']} TFLOP/s ({result['peak_source']})",
             f"{'extractor':34s} {'attack':7s} {'batch':>5s} {'passes':>6s} {'faces/s':>9s} {'baseline':>9s} {'speedup':>24s} "
             f"{'mem MB':>8s} {'TFLOP/s':>8s} {'util':>6s}"]
    for r in result["rows"]:
        base = "-" if r["baseline_faces_per_s"] is None else f"{r['baseline_faces_per_s']:.3f}"
        speed = "-" if r["speedup"] is None else f"{r['speedup']:.2f}x"
        if r.get("speedup_cpu") is not None:
            speed += f" ({r['speedup_cpu']:.2f}x cpu-time)"
        passes = "-" if r.get("passes_per_face") is None else f"{r['passes_per_face']:.1f}"
        lines.append(f"{r['extractor'][:34]:34s} {r['attack']:7s} {r['batch']:5d} {passes:>6s} {r['faces_per_s']:9.3f} {base:>9s} "
                     f"{speed:>24s} {r['peak_mem_mb']:8.1f} {r['tflops']:8.4f} {100 * r['flop_utilisation']:5.1f}%")
    lines.append("targets: " + "; ".join(result["targets"]))
    lines += [f"  {line}" for line in result.get("target_checks", [])]
    return lines


def speedup_table_markdown(results: Sequence[dict[str, Any]]) -> str:
    """A README table from one or more runs."""
    out = ["| device | extractor | attack | amp | batch | faces/s | baseline faces/s | speedup (wall) | speedup (CPU time) "
           "| peak MB | TFLOP/s (util) |",
           "|---|---|---|---|---:|---:|---:|---:|---:|---:|---:|"]
    for res in results:
        for r in res["rows"]:
            base = "-" if r["baseline_faces_per_s"] is None else f"{r['baseline_faces_per_s']:.3f}"
            speed = "-" if r["speedup"] is None else f"{r['speedup']:.2f}x"
            cpu = "-" if r.get("speedup_cpu") is None else f"{r['speedup_cpu']:.2f}x"
            out.append(f"| {res['device']} | `{r['extractor']}` | {r['attack']} | {r.get('amp', '-')} | {r['batch']} "
                       f"| {r['faces_per_s']:.3f} | {base} | {speed} | {cpu} | {r['peak_mem_mb']:.0f} | {r['tflops']:.3f} "
                       f"({100 * r['flop_utilisation']:.1f}%) |")
    return "\n".join(out)


def _default_bench_specs(pm: Any) -> list[str]:
    """Every installed extractor that builds at its published size with random weights
    (``weights=none``): the networks the engine is measured on. Extractors that only exist as a
    file (ONNX, TFLite) or answer by queries are left out, as are demos and extractors not in
    every default ensemble (``default=False`` or a tuple of strengths)."""
    specs = []
    for n, c in pm.components("extractors").items():
        if c.metadata.get("demo") or c.metadata.get("default", True) is not True:
            continue
        try:
            pm.build("extractors", f"{n}:weights=none")
        except Exception:  # no random initialisation: nothing to benchmark without a file
            continue
        specs.append(f"{n}:weights=none")
    return specs
