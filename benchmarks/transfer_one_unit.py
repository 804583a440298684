"""``lb transfer`` restricted to the units of one held-out extractor (screening on a busy CPU).

    python benchmarks/transfer_one_unit.py HELD_OUT [lb transfer arguments...]

Runs only the controls and, for every attack, the unit that holds ``HELD_OUT`` out of the
ensemble (``all`` for the white-box unit). Units are keyed exactly as in a full ``lb transfer``
run, so a later full run with the same ``-o`` resumes them. The report of this run lists only
these units; the figures of the other held-out columns are empty.
"""

from __future__ import annotations

import sys

from lbcore.apps import transfer
from lbcore.cli import main

if __name__ == "__main__":
    only = sys.argv.pop(1)
    full = transfer._Run.units

    def units(self, attacks):  # type: ignore[no-untyped-def]
        keep = None if only == "all" else only
        return [u for u in full(self, attacks) if u.attack in ("clean", "noise") or u.held_out == keep]

    transfer._Run.units = units  # type: ignore[method-assign]
    sys.argv[0] = "lb"
    sys.exit(main())
