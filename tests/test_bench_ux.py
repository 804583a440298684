"""`lb bench` with no options finishes in minutes and says how long it will take (issue 17)."""

from __future__ import annotations

from typing import Any

import pytest
from click.testing import CliRunner

TINY_FAN = "fan:weights=none,width=16,landmarks=68,resolution=64"


def test_default_is_the_quick_sweep_and_full_is_behind_a_flag(monkeypatch):
    import lbcore.apps.bench as bench
    from lbcore.cli import cli

    seen: list[Any] = []

    def fake(options: Any, progress: Any = None) -> dict[str, Any]:
        seen.append(options)
        return {"rows": []}

    monkeypatch.setattr(bench, "run_bench", fake)
    assert CliRunner().invoke(cli, ["bench", "--json"]).exit_code == 0
    assert CliRunner().invoke(cli, ["bench", "--full", "--json"]).exit_code == 0
    quick, full = seen
    assert (quick.batches, quick.steps, quick.baseline_faces) == ((4,), 3, 1)
    assert (full.batches, full.steps, full.baseline_faces) == ((1, 4, 16), 20, 2)
    assert quick.one_extractor and not full.one_extractor


def test_the_quick_sweep_measures_one_extractor_hrnet_first(monkeypatch):
    import lbcore.apps.bench as bench

    installed = ["avssan:weights=none", "fan:weights=none", "hrnet:weights=none"]
    monkeypatch.setattr(bench, "_default_bench_specs", lambda pm: list(installed))
    lines: list[str] = []

    def log(line: str) -> None:
        lines.append(line)
        raise _Stop  # the choice is made before anything is built

    with pytest.raises(_Stop):
        bench.run_bench(bench.BenchOptions(one_extractor=True, batches=(1,), steps=1, device="cpu"), progress=log)
    assert lines == ["quick sweep: hrnet:weights=none only (also: avssan:weights=none, fan:weights=none; name "
                     "them with --extractor, or --full for all)"]


class _Stop(Exception):
    pass


def _stop_at_estimate(line: str) -> None:
    if line.startswith("estimate:"):
        raise _Stop


def test_an_estimate_comes_before_the_first_measurement():
    pytest.importorskip("lb_fan")
    from lbcore.cli import cli

    res = CliRunner().invoke(cli, ["bench", "--extractor", TINY_FAN, "--batch", "1", "--batch", "2", "--steps", "2",
                                   "--image-size", "80", "--amp", "none", "--baseline-faces", "0"])
    assert res.exit_code == 0, res.output
    lines = res.output.splitlines()
    assert lines[0].startswith("estimate: about ") and "1 extractor(s) x 1 attack(s) x batches 1, 2, T=2" in lines[0]
    assert any("batch 2:" in ln and "faces/s" in ln for ln in lines[1:])
