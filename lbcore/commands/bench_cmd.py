"""``lb bench``: faces per second of the attack engine against a straightforward baseline."""

from __future__ import annotations

import json

import click


@click.command("bench")
@click.option("--extractor", "extractors", multiple=True, metavar="SPEC",
              help="Extractor to measure (repeatable). Default: every installed extractor, weights=none, "
                   "published size.")
@click.option("--attack", "attacks", multiple=True, metavar="NAME",
              help="Registered attack (repeatable; see `lb list attacks`). Default: lb.")
@click.option("--batch", "batches", multiple=True, type=click.IntRange(min=1),
              help="Batch size in faces (repeatable). Default: 4 (with --full: 1, 4, 16).")
@click.option("--steps", type=click.IntRange(min=1), default=None, help="Iterations T. Default: 3 (with --full: 20).")
@click.option("--full", is_flag=True,
              help="The full sweep behind the README's figures: batches 1, 4, 16, T=20, 2 baseline faces "
                   "(hours on a 2-core CPU with every published-size extractor; the default takes minutes).")
@click.option("--repeat", type=int, default=1, show_default=True, help="Timed runs per row (the best counts).")
@click.option("--device", default="auto", show_default=True, help="auto, cpu, cuda or cuda:N.")
@click.option("--amp", type=click.Choice(["auto", "bf16", "fp16", "none"]), default="auto", show_default=True,
              help="Autocast of the extractors (auto: bf16 on GPUs, fp16 on GPUs without bf16, none on the CPU; "
                   "bf16 is fast on CPUs with AVX512-BF16 or AMX).")
@click.option("--compile", "compile_", is_flag=True, help="torch.compile the networks (first call compiles).")
@click.option("--channels-last/--no-channels-last", default=True, show_default=True, help="NHWC weights.")
@click.option("--image-size", type=int, default=256, show_default=True, help="Side of the test images (pixels).")
@click.option("--baseline-faces", type=click.IntRange(min=0), default=None,
              help="Faces the one-at-a-time baseline protects per row group (0: no baseline). Default: 1 "
                   "(with --full: 2).")
@click.option("--threads", type=int, default=None, help="CPU threads for torch (default: torch's choice).")
@click.option("--json", "as_json", is_flag=True, help="Print the results as JSON.")
@click.option("--markdown", is_flag=True, help="Also print a README-ready markdown table.")
def bench_cmd(extractors: tuple[str, ...], attacks: tuple[str, ...], batches: tuple[int, ...], steps: int | None,
              repeat: int, device: str, amp: str, compile_: bool, channels_last: bool, image_size: int,
              baseline_faces: int | None, threads: int | None, as_json: bool, markdown: bool,
              full: bool = False) -> None:
    """Measure faces/s of the batched engine and of Algorithm 1 written per image (the baseline).

    For each extractor x attack x batch size: faces/s, the baseline's faces/s on the same
    images in the same run, the speedup, peak memory and achieved FLOP/s against the device's
    peak. Targets: CPU (2 cores) >= 3x the baseline at batch 16 for HRNet and FAN; one H100:
    HRNet-W18 LB (T=20) >= 500 faces/s (checked with --full). An estimate of the run's length
    is printed before the first measurement.
    """
    import torch

    from lbcore.apps.bench import BenchOptions, format_table, run_bench, speedup_table_markdown

    if threads:
        torch.set_num_threads(threads)
    # the default finishes in minutes on a 2-core CPU; --full is the README's sweep
    default_batches, default_steps, default_baseline = ((1, 4, 16), 20, 2) if full else ((4,), 3, 1)
    n_baseline = default_baseline if baseline_faces is None else baseline_faces
    options = BenchOptions(
        extractors=extractors, attacks=attacks or ("lb",), batches=batches or default_batches,
        steps=steps or default_steps, repeat=repeat, device=device, amp=amp, compile=compile_,
        channels_last=channels_last, image_size=image_size, baseline_faces=n_baseline,
        baseline=n_baseline > 0, one_extractor=not full,
    )
    log = None if as_json else (lambda s: click.echo(s, err=True))
    result = run_bench(options, progress=log)
    if as_json:
        click.echo(json.dumps(result, indent=2))
        return
    for line in format_table(result):
        click.echo(line)
    if markdown:
        click.echo(speedup_table_markdown([result]))


COMMANDS = [bench_cmd]
