"""Leave-one-out transfer (``lb transfer``, benchmarks/transfer_matrix.py) and the engine's
transfer techniques (TI, variance tuning, ensemble balancing, feature loss)."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest
import torch
from click.testing import CliRunner

from lbcore.apps.transfer import parse_attack
from lbcore.engine import attack, budget_ok, preset
from lbcore.errors import SpecError
from lbcore.testing import sample_batch

ROOT = Path(__file__).resolve().parents[1]


def test_parse_attack_fields_labels_and_component_commas():
    label, cfg = parse_attack("lb:ti_sigma=3,optimizer=mifgsm:alpha=2,decay=1,steps=7,balance=grad")
    assert label == "lb:ti_sigma=3,optimizer=mifgsm:alpha=2,decay=1,steps=7,balance=grad"
    assert (cfg.ti_sigma, cfg.optimizer, cfg.steps, cfg.balance) == (3.0, "mifgsm:alpha=2,decay=1", 7, "grad")
    assert cfg.random_start == 1.0  # the preset's own fields stay
    label, cfg = parse_attack("di=lbtrans", eps=8, steps=5)
    assert (label, cfg.eps, cfg.steps, cfg.diversity_prob) == ("di", 8.0, 5, 1.0)
    assert parse_attack("lb:steps=9", steps=5)[1].steps == 9  # the attack's own field wins
    assert parse_attack("lb:eot=jpeg:quality=75+blur")[1].eot == ("jpeg:quality=75", "blur")
    with pytest.raises(SpecError, match="unknown preset"):
        parse_attack("nope")
    with pytest.raises(SpecError, match="not an attack field"):
        parse_attack("lb:alpha=2")
    with pytest.raises(SpecError, match="not a int"):
        parse_attack("lb:steps=many")


@pytest.mark.parametrize("fields", [{"ti_sigma": 2.0}, {"vt_samples": 2}, {"balance": "grad"}, {"balance": "loss"},
                                    {"feature_mix": 0.5}, {"feature_mix": 1.0, "feature_depth": 0.2}])
def test_each_technique_stays_in_budget_and_changes_the_attack(tiny_extractor, fields):
    from lb_test_tiny_model import tiny

    images, faces = sample_batch(seed=3)
    ensemble = [tiny_extractor, tiny(points=9, seed=1)]  # (different K: loss balancing matters)
    base = attack(images, faces, ensemble, preset("lb", eps=6, steps=4))
    res = attack(images, faces, ensemble, preset("lb", eps=6, steps=4, **fields))
    assert budget_ok(images, res.adversarial, 6)
    assert not torch.equal(res.adversarial, base.adversarial)
    again = attack(images, faces, ensemble, preset("lb", eps=6, steps=4, **fields))
    assert torch.equal(res.adversarial, again.adversarial)  # seeded


def test_grad_balance_evens_out_a_dominating_member(tiny_extractor):
    """With landmark displacement a member whose loss is 1000x larger takes the whole sign of the
    summed gradient; balanced, the result differs from attacking that member alone."""
    from lb_test_tiny_model import tiny

    images, faces = sample_batch(seed=3)
    small, big = tiny_extractor, tiny(seed=1)

    class Loud(torch.nn.Module):
        def __init__(self, inner):
            super().__init__()
            self.inner, self.scheme = inner, inner.scheme

        def forward(self, x, f):
            out = self.inner(x, f)
            out.heatmaps = out.heatmaps * 1000.0
            return out

    from lbcore.extractor import Extractor

    Loud.__bases__ = (Extractor,)
    cfg = preset("lb", eps=6, steps=3, loss="landmark-displacement:temperature=1000", random_start=1.0)
    loud = Loud(big)
    alone = attack(images, faces, [loud], cfg).adversarial
    summed = attack(images, faces, [small, loud], cfg).adversarial
    balanced = attack(images, faces, [small, loud], preset("lb", eps=6, steps=3, balance="grad",
                                                           loss="landmark-displacement:temperature=1000",
                                                           random_start=1.0)).adversarial
    assert (summed != alone).float().mean() < (balanced != alone).float().mean()


def test_bad_technique_values_are_one_line_errors(tiny_extractor):
    images, faces = sample_batch(seed=3)
    with pytest.raises(SpecError, match="unknown balance"):
        attack(images, faces, tiny_extractor, preset("lb", steps=1, balance="max"))
    with pytest.raises(SpecError, match="feature_mix"):
        attack(images, faces, tiny_extractor, preset("lb", steps=1, feature_mix=2.0))


def _benchmark():
    spec = importlib.util.spec_from_file_location("transfer_matrix", ROOT / "benchmarks" / "transfer_matrix.py")
    assert spec is not None and spec.loader is not None
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_benchmark_leave_one_out_on_two_faces(shared, tmp_path):
    """The benchmark script on 2 faces, 2 steps: every leave-one-out row attacks the others only,
    the held-out cells are where the summary reads them, and a rerun resumes every unit."""
    bench = _benchmark()
    argv = ["--data", str(shared / "data" / "faces68"), "--limit", "2", "--steps", "2", "--quiet", "--no-dlib",
            "--extractors", "a=fan-demo;b=fan-demo:truncate=true", "--attack", "ti=lb:ti_sigma=2",
            "--out", str(tmp_path)]
    res = bench.main(argv)
    assert res["data"]["faces"] == 2
    rows = {(r["attack"], r["attacked"], r["degradation"], r["target"]): r for r in res["rows"]}
    lo = rows[("ti", "all but a", "none", "a")]
    assert lo["role"] == "held-out" and lo["members"] == ["b"]
    assert rows[("ti", "all but a", "none", "b")]["role"] == "white-box"
    assert rows[("ti", "all", "jpeg:quality=75", "a")]["members"] == ["a", "b"]
    # the two members are the same network: the held-out one breaks as the attacked one does,
    # far beyond the controls (nothing moves without a perturbation)
    assert lo["nme_median"] > 0.1
    assert rows[("clean", "clean", "none", "a")]["nme_median"] == 0
    assert rows[("noise", "noise", "none", "a")]["nme_median"] < lo["nme_median"]
    s = res["summary"]["ti"]["jpeg:quality=75"]
    assert s["held_out"]["a"]["nme_median"] == rows[("ti", "all but a", "jpeg:quality=75", "a")]["nme_median"]
    assert 0.5 < s["ssim_box"] < 1 and s["psnr_box"] > 25
    report = (tmp_path / "report.md").read_text()
    assert "## Held-out median NME" in report and "**" in report
    again = bench.main(argv)
    assert any("resumed" in n for n in again["notes"])
    assert json.loads((tmp_path / "results.json").read_text())["summary"] == json.loads(json.dumps(again["summary"]))


def test_cli_transfer_one_face(shared, tmp_path):
    from lbcore.cli import cli as main

    out = tmp_path / "o"
    r = CliRunner().invoke(main, ["transfer", str(shared / "data" / "faces68"), "--limit", "1", "--steps", "1",
                                  "--extractors", "fan-demo;b=fan-demo:truncate=true", "--no-controls",
                                  "--no-white-box", "--degradations", "none", "--device", "cpu", "-o", str(out)])
    assert r.exit_code == 0, r.output
    assert "| lb | none |" in r.output and (out / "results.json").is_file()
    bad = CliRunner().invoke(main, ["transfer", str(shared / "data" / "faces68"), "--extractors", "fan-demo",
                                    "--attack", "lb:warp=9", "-o", str(out)])
    assert bad.exit_code == 2 and "not an attack field" in bad.output
