"""``lb distributed protect``: ``lb protect`` across the workers of a ``torchrun`` group.

The sub-command takes exactly ``lb protect``'s options (it reuses that command's parameter
list), so the two cannot drift apart; see :mod:`lbcore.apps.distributed` for how work is split.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import attrs
import click

from lbcore.commands.evaluate_cmd import evaluate_cmd
from lbcore.commands.protect_cmd import protect_cmd

# ``lb protect`` parameter -> ProtectOptions field, where the names differ
_RENAMED = {"attack_name": "attack", "compile_": "compile"}
_CLI_ONLY = {"inputs", "outdir", "weights", "example", "quiet", "as_json", "boxes", "no_compression_check",
             "segment_frames"}


def options_from_cli(params: dict[str, Any]) -> Any:
    """``lb protect``'s parsed parameters -> :class:`~lbcore.apps.protection.ProtectOptions`."""
    from lbcore.apps.protection import ProtectOptions
    from lbcore.commands.attack_cmd import parse_box

    fields = {f.name for f in attrs.fields(ProtectOptions)}
    kwargs = {_RENAMED.get(k, k): v for k, v in params.items() if k not in _CLI_ONLY}
    kwargs = {k: v for k, v in kwargs.items() if k in fields}
    kwargs["boxes"] = tuple(parse_box(b) for b in params.get("boxes", ()))
    kwargs["check_compression"] = not params.get("no_compression_check", False)
    return ProtectOptions(**kwargs)


@click.group("distributed")
def distributed_group() -> None:
    """Run a command over many processes / GPUs / machines (launch with torchrun).

    \b
    torchrun --nproc-per-node 4 -m lbcore distributed protect IN -o OUT
    torchrun --nproc-per-node 4 -m lbcore distributed evaluate DATA --extractors ... -o OUT
    torchrun --nnodes 2 --node-rank R --nproc-per-node 8 --master-addr HOST \\
        --max-restarts 3 -m lbcore distributed protect IN -o OUT

    protect splits work by file and long videos by frame range (--segment-frames), evaluate by
    (source, attack, ablation) unit; each worker uses cuda:LOCAL_RANK (or the CPU); rank 0 merges
    the frame ranges and writes the merged report. A lost worker's files and ranges are redone by
    the restarted group (--max-restarts) or by running the same command again: finished ones are
    skipped.
    """


def _protect(**params: Any) -> None:
    from lbcore.apps.distributed import protect_distributed, worker_info
    from lbcore.commands.attack_cmd import apply_weights_option
    from lbcore.commands.protect_cmd import print_report
    from lbcore.errors import SpecError

    apply_weights_option(params["weights"])
    info = worker_info()
    paths = list(params["inputs"])
    if params["example"]:
        raise SpecError("--example is for `lb protect`; give inputs to `lb distributed protect`")
    if not paths:
        raise SpecError("give at least one input (image, folder or video)")
    outdir: Path = params["outdir"]
    quiet, as_json = params["quiet"], params["as_json"]
    log = None if quiet or as_json else (lambda s: click.echo(f"[{info.rank}] {s}", err=True))
    report = protect_distributed(paths, outdir, options_from_cli(params), progress=log, info=info,
                                 segment_frames=params["segment_frames"])
    if info.rank == 0:
        print_report(report, outdir, quiet, as_json)


_SEGMENT_FRAMES = click.Option(
    ["--segment-frames"], type=click.IntRange(min=0), default=256, show_default=True,
    help="Split videos longer than this into frame ranges over the workers (rounded up to a multiple "
         "of --batch-size; rank 0 joins them); 0: one worker per video.",
)

distributed_group.add_command(click.Command(
    "protect", params=[*protect_cmd.params, _SEGMENT_FRAMES], callback=_protect,
    help="`lb protect` with the inputs (and long videos' frame ranges) split over the torchrun workers "
         "(same options, plus --segment-frames).",
))

def _evaluate(**params: Any) -> None:
    import attrs as _attrs

    from lbcore.apps.distributed import _device_for, _store, worker_info
    from lbcore.apps.evaluation import evaluate
    from lbcore.commands.attack_cmd import apply_weights_option
    from lbcore.commands.evaluate_cmd import options_from_cli, print_results

    apply_weights_option(params["weights"])
    info = worker_info()
    options = options_from_cli(params)
    data, outdir = list(params["data"]), params["outdir"]
    quiet, as_json = params["quiet"], params["as_json"]
    log = None if quiet or as_json else (lambda s: click.echo(f"[{info.rank}] {s}", err=True))
    if info.distributed:
        # every worker runs its share of the (source, attack, ablation) units into OUT/partial;
        # rank 0 then waits for the others and builds the tables from all finished units
        worker_options = _attrs.evolve(options, device=_device_for(options.device, info))
        evaluate(data, outdir, worker_options, log=log, shard=(info.rank, info.world_size), finalize=False)
        store = _store(info)
        key = f"lbcore/evaluate/attempt-{info.restart}/done"
        if info.rank != 0:
            store.add(key, 1)
            return
        while int(store.add(key, 0)) < info.world_size - 1:
            time.sleep(0.2)
        options = worker_options
    results = evaluate(data, outdir, options, log=log)
    print_results(results, outdir, quiet, as_json)


distributed_group.add_command(click.Command(
    "evaluate", params=list(evaluate_cmd.params), callback=_evaluate,
    help="`lb evaluate` with its units split over the torchrun workers (same options).",
))

COMMANDS = [distributed_group]
