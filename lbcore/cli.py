"""The ``lb`` command line. Thin: every command calls the public API.

Importing this module must not import torch (``lb --help`` and ``lb plugins`` stay fast).
"""

from __future__ import annotations

import json
import sys
from typing import Any

import click

from lbcore.errors import LBError


class _Group(click.Group):
    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except LBError as err:
            click.echo(f"lb: error: {err}", err=True)
            ctx.exit(err.exit_code)
        except click.BadParameter as err:  # an option out of its range: one line, exit 2
            where = f" (see '{err.ctx.command_path} -h')" if err.ctx is not None else ""
            click.echo(f"lb: error: {' '.join(err.format_message().split())}{where}", err=True)
            ctx.exit(2)


@click.group(cls=_Group, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="lbcore", prog_name="lb")
def cli() -> None:
    """Landmark Breaker: protect faces against DeepFakes by breaking landmark extraction."""


@cli.command("plugins")
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
def plugins_cmd(as_json: bool) -> None:
    """List installed plugin distributions and what each registered."""
    from lbcore.plugins import get_plugin_manager

    pm = get_plugin_manager()
    report = pm.plugin_report()
    if as_json:
        click.echo(json.dumps(report, indent=2))
        return
    for d in report:
        click.echo(f"{d['name']} {d['version']}")
        for kind, names in d["components"].items():
            if names:
                click.echo(f"  {kind}: {', '.join(names)}")


def _show_warning(message: Any, category: Any, filename: str, lineno: int, file: Any = None, line: Any = None) -> None:
    """Plugin and user-facing warnings as one clean line on stderr."""
    click.echo(f"lb: warning: {message}", err=True)


def _install_commands(group: click.Group) -> None:
    import warnings

    from lbcore import commands

    warnings.showwarning = _show_warning
    commands.install(group)
    try:
        from lbcore.plugins import get_plugin_manager

        get_plugin_manager().register_commands(group)
    except LBError as err:  # strict plugin loading
        click.echo(f"lb: error: {err}", err=True)
        sys.exit(err.exit_code)


_install_commands(cli)


def main() -> None:
    cli(prog_name="lb")
