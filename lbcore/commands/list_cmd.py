"""``lb list KIND``: registered components with one-line summaries."""

from __future__ import annotations

import json
from typing import Any

import click

from lbcore.plugins import KINDS


@click.command("list")
@click.argument("kind", type=click.Choice(KINDS))
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
@click.option("-v", "--verbose", is_flag=True, help="Also show each component's parameters.")
def list_cmd(kind: str, as_json: bool, verbose: bool) -> None:
    """List the components of KIND (extractors, losses, optimizers, degradations, detectors,
    attacks) with one-line summaries. Attacks are listed in registration order (the paper's first)."""
    from lbcore.plugins import get_plugin_manager

    comps = get_plugin_manager().components(kind, sort=kind != "attacks")
    rows: list[dict[str, Any]] = [
        {"name": c.name, "summary": c.summary, "distribution": c.distribution, "params": c.params()}
        for c in comps.values()
    ]
    for r, c in zip(rows, comps.values(), strict=True):
        if kind == "attacks":
            r["settings"] = dict(getattr(c.factory, "fields", {}))
    if as_json:
        click.echo(json.dumps(rows, indent=2, default=str))
        return
    width = max((len(r["name"]) for r in rows), default=4)
    for r in rows:
        click.echo(f"{r['name']:<{width}}  {r['summary']}")
        if verbose and r.get("params"):
            click.echo(f"{'':<{width}}    params: {r['params']}")


COMMANDS = [list_cmd]
