"""The conformance kit (lbcore.testing) and the stability of the hook surface.

Good components pass; each kind of contract breach is caught by the check that names it; an
old-style plugin keeps working under a hook specification that gained an argument.
"""

from __future__ import annotations

import textwrap
import types
import warnings

import numpy as np
import pytest
import torch

import lbcore
from lbcore.errors import SpecError
from lbcore.extractor import apply_affine, argmax_2d
from lbcore.plugins import PluginManager, PluginWarning
from lbcore.testing import (
    ConformanceError,
    check_component,
    check_degradation,
    check_detector,
    check_extractor,
    check_loss,
    check_optimizer,
    conformance_report,
    sample_batch,
)

CUDA = torch.cuda.is_available()


# -- good components ---------------------------------------------------------------------
@pytest.mark.parametrize("kind,spec", [
    ("loss", "heatmap-cosine"), ("loss", "landmark-displacement"),
    ("optimizer", "fgsm"), ("optimizer", "ifgsm:alpha=2"), ("optimizer", "mifgsm"),
    ("detector", "haar"),
])
def test_builtin_components_conform(kind, spec):
    report = conformance_report(kind, spec)
    assert report.ok, str(report)
    assert {r.status for r in report.results} <= {"passed", "skipped"}
    assert len([r for r in report.results if r.status == "passed"]) >= 3


def test_tiny_extractor_conforms_and_reports_each_check(tiny_extractor):
    report = conformance_report("extractor", tiny_extractor)
    assert report.ok, str(report)
    names = [r.name for r in report.results]
    for check in ("output shapes", "decode round trip in image coordinates", "gradient reaches the input pixels",
                  "batch independence", "determinism", "device move"):
        assert check in names
    device = next(r for r in report.results if r.name == "device move")
    assert device.status == ("passed" if CUDA else "skipped")
    assert report.measured["round_trip_median_px"] == pytest.approx(0.0, abs=1e-3)
    text = str(report)
    assert text.splitlines()[0] == "extractor TinyHeatmapNet: conforms" and len(text.splitlines()) == len(names) + 1


def test_check_extractor_keeps_its_return_value(tiny_extractor):
    measured = check_extractor(tiny_extractor)
    assert measured["faces"] == 3 and measured["points"] == 5 and measured["grad_abs_sum"] > 0
    assert check_component("extractors", tiny_extractor)["points"] == 5


def test_loss_on_a_real_extractors_outputs(tiny_extractor):
    measured = check_loss("heatmap-cosine", extractor=tiny_extractor)
    assert measured["clean_value"] == pytest.approx([5.0] * 3, abs=1e-4)
    assert all(v < 5.0 for v in measured["perturbed_value"])


class Blur(lbcore.Degradation):
    """A differentiable 3x3 box blur."""

    differentiable = True

    def __call__(self, images):
        k = torch.ones(3, 1, 3, 3, device=images.device) / 9
        return torch.nn.functional.conv2d(torch.nn.functional.pad(images, (1, 1, 1, 1), mode="replicate"), k,
                                          groups=3)


def test_degradation_checks_pass_for_a_correct_stage():
    report = conformance_report("degradation", Blur())
    assert report.ok, str(report)
    status = {r.name: r.status for r in report.results}
    assert status["gradient when differentiable"] == "passed"
    assert status["determinism unless stochastic"] == "passed"


@pytest.mark.parametrize("device", ["cpu", pytest.param("cuda", marks=pytest.mark.skipif(not CUDA, reason="no CUDA"))])
def test_checks_run_on_a_device(device, tiny_extractor):
    check_extractor(tiny_extractor, device=device)
    check_loss("landmark-displacement", device=device)
    check_optimizer("mifgsm", device=device)
    check_degradation(Blur(), device=device)


# -- broken components: each is caught by the check that names the breach -------------------
def _wrapped(tiny_extractor, **overrides):
    """The tiny extractor with some of its methods replaced."""
    ext = tiny_extractor
    for name, fn in overrides.items():
        setattr(ext, name, types.MethodType(fn, ext))
    return ext


def _decode_scaled(self, output):
    # a wrong scale about the image origin (e.g. 256 used for 255): near the boxes, but not
    # image coordinates
    return apply_affine(output.hm_to_image, argmax_2d(output.heatmaps)) * 1.2


def _forward_batch_coupled(self, images, faces):
    out = type(self).forward(self, images, faces)
    out.heatmaps = out.heatmaps - out.heatmaps.mean(dim=0, keepdim=True)  # batch statistics
    return out


def _forward_detached(self, images, faces):
    out = type(self).forward(self, images, faces)
    out.heatmaps = out.heatmaps.detach()  # e.g. a numpy step inside
    return out


def _forward_in_place(self, images, faces):
    images.mul_(0.99)  # rescales the caller's tensor
    return type(self).forward(self, images, faces)


@pytest.mark.parametrize("override,check", [
    ({"decode": _decode_scaled}, "decode round trip in image coordinates"),
    ({"forward": _forward_batch_coupled}, "batch independence"),
    ({"forward": _forward_detached}, "gradient reaches the input pixels"),
    ({"forward": _forward_in_place}, "output shapes"),
])
def test_broken_extractors_fail_the_right_check(tiny_extractor, override, check):
    ext = _wrapped(tiny_extractor, **override)
    with pytest.raises(ConformanceError) as err:
        check_extractor(ext)
    assert str(err.value).startswith(f"{check}: ") and "\n" not in str(err.value)
    report = conformance_report("extractor", ext)
    assert not report.ok and report.failures[0].name == check
    with pytest.raises(ConformanceError, match=check):
        report.raise_for_failures()


def test_not_an_extractor():
    with pytest.raises(ConformanceError, match="type: Linear is not an lbcore.Extractor"):
        check_extractor(torch.nn.Linear(2, 2))
    report = conformance_report("extractor", torch.nn.Linear(2, 2))
    assert [r.status for r in report.results] == ["failed", "skipped"]


def _scalar_loss(clean, adv):
    return (adv.heatmaps - clean.heatmaps.detach()).pow(2).sum()


def _positive_distance(clean, adv):
    return (adv.landmarks - clean.landmarks.detach()).norm(dim=-1).mean(-1)


def _clean_not_detached(clean, adv):
    return -(adv.landmarks - clean.landmarks).norm(dim=-1).mean(-1)


def _batch_mean(clean, adv):
    d = -(adv.landmarks - clean.landmarks.detach()).norm(dim=-1).mean(-1)
    return d + 0.1 * d.sum()  # still lowest away from clean, but coupled across faces


@pytest.mark.parametrize("loss,check", [
    (_scalar_loss, "per-face values, finite, clean scores highest"),
    (_positive_distance, "per-face values, finite, clean scores highest"),
    (_clean_not_detached, "clean output treated as a constant"),
    (_batch_mean, "face independence"),
])
def test_broken_losses_fail_the_right_check(loss, check):
    with pytest.raises(ConformanceError, match=f"^{check}: "):
        check_loss(loss)


def test_positive_distance_is_told_the_direction():
    with pytest.raises(ConformanceError, match="the attack minimises"):
        check_loss(_positive_distance)


class Ascent(lbcore.UpdateRule):
    def step(self, x, grad, state, eps):
        return x + grad.sign()


class InPlace(lbcore.UpdateRule):
    def step(self, x, grad, state, eps):
        return x.sub_(grad.sign())


class Coupled(lbcore.UpdateRule):
    def step(self, x, grad, state, eps):
        return x - grad / grad.abs().max()  # normalised over the whole batch


class BadSteps(lbcore.UpdateRule):
    max_steps = 0


@pytest.mark.parametrize("rule,match", [
    (Ascent(), "direction"), (InPlace(), "in place"), (Coupled(), "image independence"),
    (BadSteps(), "max_steps"),
])
def test_broken_optimizers_fail(rule, match):
    with pytest.raises(ConformanceError, match=match):
        check_optimizer(rule)


class OutOfRange(lbcore.Degradation):
    def __call__(self, images):
        return images * 1.5


class FakeGradient(lbcore.Degradation):
    differentiable = True

    def __call__(self, images):
        return images.round()  # round has a zero gradient: no straight-through estimator


class Random(lbcore.Degradation):
    def __call__(self, images):
        return (images + torch.randn_like(images)).clamp(0, 255)


class ShapeChange(lbcore.Degradation):
    def __call__(self, images):
        return images[..., ::2]


@pytest.mark.parametrize("stage,match", [
    (OutOfRange(), "range"), (FakeGradient(), "gradient"), (Random(), "determinism"), (ShapeChange(), "shape"),
])
def test_broken_degradations_fail(stage, match):
    with pytest.raises(ConformanceError, match=match):
        check_degradation(stage)


def test_stochastic_stage_skips_determinism():
    stage = Random()
    stage.stochastic = True
    report = conformance_report("degradation", stage)
    assert report.ok
    assert {r.name: r.status for r in report.results}["determinism unless stochastic"] == "skipped"


def _unsorted(image):
    return np.array([[0, 0, 10, 10, 0.1], [5, 5, 20, 20, 0.9]], dtype=np.float32)


def _xywh(image):
    return np.array([[10, 10, 5, 5, 1.0]], dtype=np.float32)


def _list(image):
    return [[0, 0, 10, 10, 1.0]]


@pytest.mark.parametrize("det,match", [(_unsorted, "sorted by score"), (_xywh, "x2 <= x1"), (_list, "expected an")])
def test_broken_detectors_fail(det, match):
    with pytest.raises(ConformanceError, match=match):
        check_detector(det)


def test_unknown_kind_is_a_spec_error():
    with pytest.raises(SpecError, match="unknown component kind 'codec'"):
        check_component("codec", "jpeg")


def test_spec_strings_go_through_the_plugin_manager(fresh_pm):
    with pytest.raises(ConformanceError, match="unknown optimizer 'nope'"):
        check_component("optimizer", "nope")


def test_sample_batch_is_the_documented_one():
    images, faces = sample_batch()
    assert images.shape == (2, 3, 160, 200) and float(images.min()) >= 0 and float(images.max()) <= 255
    assert faces.image_index.tolist() == [0, 0, 1]


# -- hook API versioning -------------------------------------------------------------------
FUTURE_SPECS = '''
from lbcore.hookspecs import hookspec


@hookspec
def register_extractors(register, context):
    """A later hook API: the hook gained a ``context`` argument."""


@hookspec
def register_losses(register, context):
    """Same."""


@hookspec
def register_optimizers(register):
    """Unchanged."""


@hookspec
def register_degradations(register):
    """Unchanged."""


@hookspec
def register_detectors(register):
    """Unchanged."""


@hookspec
def register_attacks(register):
    """Unchanged."""


@hookspec
def register_commands(cli):
    """Unchanged."""
'''

OLD_PLUGIN = '''
from lbcore import hookimpl

LB_HOOK_API = 1


def old_net(points: int = 5):
    """Written against hook API 1."""
    return ("old-net", points)


@hookimpl
def register_extractors(register):
    register("old-net", old_net)
'''

NEW_PLUGIN = '''
from lbcore import hookimpl

LB_HOOK_API = 1
seen = {}


@hookimpl
def register_extractors(register, context):
    seen["context"] = context
    register("new-net", lambda: "new-net")
'''


def _module(name: str, source: str) -> types.ModuleType:
    mod = types.ModuleType(name)
    exec(compile(textwrap.dedent(source), f"<{name}>", "exec"), mod.__dict__)
    return mod


class FutureManager(PluginManager):
    """What a later lbcore could ship: hooks with an added argument."""

    hookspecs = _module("future_specs", FUTURE_SPECS)

    def hook_arguments(self, kind, register):
        args = super().hook_arguments(kind, register)
        if kind in ("extractors", "losses"):
            args["context"] = {"hook_api": 2}
        return args


def test_hook_api_version_is_public():
    assert lbcore.HOOK_API_VERSION == 1 and "HOOK_API_VERSION" in lbcore.__all__


def test_old_style_plugin_works_when_a_hook_gains_an_argument():
    pm = FutureManager(load_entry_points=False)  # the built-ins are old-style plugins too
    pm.add_plugin(_module("old_plugin", OLD_PLUGIN), name="old", distribution="lb-old")
    new = _module("new_plugin", NEW_PLUGIN)
    pm.add_plugin(new, name="new", distribution="lb-new")
    assert pm.failures == []
    assert pm.build("extractors", "old-net:points=7") == ("old-net", 7)
    assert pm.build("extractors", "new-net") == "new-net"
    assert new.seen["context"] == {"hook_api": 2}
    assert {"heatmap-cosine", "landmark-displacement"} <= set(pm.components("losses"))
    assert "mifgsm" in pm.components("optimizers")


def test_current_manager_refuses_an_argument_it_does_not_offer():
    pm = PluginManager(load_entry_points=False)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        pm.add_plugin(_module("new_plugin", NEW_PLUGIN), name="new", distribution="lb-new")
        pm.add_plugin(_module("old_plugin", OLD_PLUGIN), name="old", distribution="lb-old")
    assert [d for d, _ in pm.failures] == ["lb-new"]
    assert "context" in pm.failures[0][1]
    assert any(issubclass(w.category, PluginWarning) and "lb-new" in str(w.message) for w in caught)
    assert "old-net" in pm.components("extractors") and "new-net" not in pm.components("extractors")


def test_plugin_needing_a_newer_hook_api_is_refused_clearly():
    pm = PluginManager(load_entry_points=False)
    newer = _module("newer_plugin", OLD_PLUGIN.replace("LB_HOOK_API = 1", "LB_HOOK_API = 2"))
    with pytest.warns(PluginWarning, match="needs hook API 2, this lbcore provides 1"):
        pm.add_plugin(newer, name="newer", distribution="lb-newer")
    assert "old-net" not in pm.components("extractors")
