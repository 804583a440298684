"""``lb distributed protect``: ``lb protect`` across the workers of a ``torchrun`` group.

The sub-command takes exactly ``lb protect``'s options (it reuses that command's parameter
list), so the two cannot drift apart; see :mod:`lbcore.distributed` for how work is split.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import attrs
import click

from lbcore.commands.protect_cmd import protect_cmd

# ``lb protect`` parameter -> ProtectOptions field, where the names differ
_RENAMED = {"attack_name": "attack"}
_CLI_ONLY = {"inputs", "outdir", "weights", "example", "quiet", "as_json", "boxes", "no_compression_check"}


def options_from_cli(params: dict[str, Any]) -> Any:
    """``lb protect``'s parsed parameters -> :class:`~lbcore.protection.ProtectOptions`."""
    from lbcore.commands.attack_cmd import parse_box
    from lbcore.protection import ProtectOptions

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
    torchrun --nnodes 2 --node-rank R --nproc-per-node 8 --master-addr HOST \\
        --max-restarts 3 -m lbcore distributed protect IN -o OUT

    Work is split by file; each worker uses cuda:LOCAL_RANK (or the CPU); rank 0 writes the
    merged OUT/report.json. A lost worker's files are redone by the restarted group
    (--max-restarts) or by running the same command again: finished files are skipped.
    """


def _protect(**params: Any) -> None:
    from lbcore.commands.attack_cmd import apply_weights_option
    from lbcore.commands.protect_cmd import _table
    from lbcore.distributed import protect_distributed, worker_info
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
    report = protect_distributed(paths, outdir, options_from_cli(params), progress=log, info=info)
    if info.rank != 0:
        return
    report["report_path"] = str(outdir / "report.json")
    if as_json:
        click.echo(json.dumps(report, indent=2, default=str))
    elif not quiet:
        for note in report["notes"]:
            click.echo(f"note: {note}", err=True)
        for line in _table(report):
            click.echo(line)
    if any(r["status"] == "error" for r in report["files"]):
        raise SystemExit(1)


distributed_group.add_command(click.Command(
    "protect", params=list(protect_cmd.params), callback=_protect,
    help="`lb protect` with the inputs split over the torchrun workers (same options).",
))

COMMANDS = [distributed_group]
