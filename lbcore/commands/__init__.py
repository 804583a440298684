"""Built-in ``lb`` sub-commands, one module each; ``install`` adds them to the group.

Command modules import torch only inside their functions.
"""

from __future__ import annotations

import importlib

import click

_MODULES = ["list", "attack", "weights", "train", "synth", "protect", "evaluate", "bench", "distributed", "serve", "transfer"]


def install(group: click.Group) -> None:
    for name in _MODULES:
        try:
            mod = importlib.import_module(f"lbcore.commands.{name}_cmd")
        except ModuleNotFoundError as err:
            if err.name == f"lbcore.commands.{name}_cmd":
                continue
            raise
        for cmd in mod.COMMANDS:
            group.add_command(cmd)
