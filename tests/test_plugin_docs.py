"""docs/plugins.md stays complete and true: every hook with its exact signature, every contract
field, the versioning policy, the entry-point snippet and the conformance kit are in the guide,
and its code runs."""

from __future__ import annotations

import inspect
import re
import sys
import types
from pathlib import Path

import attrs
import pytest
import tomllib

import lbcore
from lbcore import hookspecs

ROOT = Path(__file__).resolve().parents[1]
GUIDE = ROOT / "docs" / "plugins.md"


def _hooks() -> dict[str, types.FunctionType]:
    """Every hook specification (functions marked by lbcore's HookspecMarker)."""
    return {
        name: fn for name, fn in vars(hookspecs).items()
        if name.startswith("register_") and callable(fn) and hasattr(fn, "lbcore_spec")
    }


def _signature_text(fn: types.FunctionType) -> str:
    """``def name(arg: Ann, ...) -> Ret`` exactly as written in hookspecs.py (annotations are
    strings there: ``from __future__ import annotations``)."""
    sig = inspect.signature(fn)
    params = ", ".join(f"{p.name}: {p.annotation}" for p in sig.parameters.values())
    return f"def {fn.__name__}({params}) -> {sig.return_annotation}"


def _call_text(obj: object, name: str, drop_self: bool = True) -> str:
    fn = getattr(obj, name)
    names = [p for p in inspect.signature(fn).parameters if not (drop_self and p == "self")]
    return f"{name}({', '.join(names)})"


def required_items() -> list[tuple[str, str]]:
    """``(what, text)`` pairs that must appear verbatim in the guide."""
    from lbcore.extractor import Extractor, HeatmapExtractor
    from lbcore.optimizers import UpdateRule
    from lbcore.plugins import ENTRY_POINT_GROUP, KINDS
    from lbcore.testing import __all__ as testing_names
    from lbcore.types import ExtractorOutput, Faces, LandmarkScheme

    items: list[tuple[str, str]] = []
    hooks = _hooks()
    for name, fn in hooks.items():
        items.append((f"hook {name} signature", _signature_text(fn)))
        items.append((f"hook {name} in the table", f"| `{name}` |"))
    for kind in KINDS:
        items.append((f"hook for kind {kind}", f"register_{kind}"))
    items.append(("register call", "register(name, factory, **metadata)"))
    items += [(f"register metadata {k}", f"`{k}`") for k in ("summary", "weights")]
    for cls in (ExtractorOutput, Faces, LandmarkScheme):
        items += [(f"{cls.__name__}.{f.name}", f"`{f.name}`") for f in attrs.fields(cls)]
        items.append((f"{cls.__name__} named", cls.__name__))
    items += [(f"Degradation.{flag}", f"`{flag}: bool`") for flag in ("differentiable", "stochastic", "video")]
    items.append(("Degradation call", "__call__(images) -> Tensor"))
    items.append(("UpdateRule.max_steps", "`max_steps: int | None`"))
    items.append(("UpdateRule.init_state", _call_text(UpdateRule, "init_state") + " -> dict"))
    items.append(("UpdateRule.step", _call_text(UpdateRule, "step") + " -> Tensor"))
    items.append(("Detector call", "`detector(image) -> np.ndarray`"))
    items.append(("Detector output", "`(N, 5)`"))
    items.append(("Extractor.forward", _call_text(Extractor, "forward") + " -> ExtractorOutput"))
    items.append(("Extractor.decode", _call_text(Extractor, "decode") + " -> Tensor"))
    items.append(("Extractor.scheme", "`scheme`"))
    for m in ("crop_theta", "normalise", "forward_crops", "heatmap_theta", "input_size"):
        assert hasattr(HeatmapExtractor, m)
        items.append((f"HeatmapExtractor.{m}", f"`{m}"))
    items.append(("loss call", "`loss(clean, adv) -> Tensor`"))
    items.append(("image range", "`(B, 3, H, W)`"))
    items.append(("command hook", "`register_commands(cli)`"))
    items.append(("hook API version", f"HOOK_API_VERSION = {lbcore.HOOK_API_VERSION}"))
    items.append(("plugin declares its version", "LB_HOOK_API = 1"))
    items.append(("entry-point table", f"[project.entry-points.{ENTRY_POINT_GROUP}]"))
    items += [(f"lbcore.testing.{n}", f"`{n}") for n in testing_names]
    plugin_src = (ROOT / "lbcore" / "plugins.py").read_text()
    items += [(f"environment variable {v}", f"`{v}") for v in sorted(set(re.findall(r"LB_[A-Z_]+", plugin_src)))]
    return items


def missing_from_guide(text: str) -> list[str]:
    return [what for what, needle in required_items() if needle not in text]


@pytest.fixture(scope="module")
def guide() -> str:
    return GUIDE.read_text()


def test_every_hook_and_contract_field_is_documented(guide):
    assert _hooks().keys() >= {f"register_{k}" for k in ("extractors", "losses", "optimizers", "degradations",
                                                         "detectors", "commands")}
    assert missing_from_guide(guide) == []


def test_the_meta_test_notices_a_missing_hook_and_a_missing_field(guide):
    sig = _signature_text(_hooks()["register_degradations"])
    assert sig in guide
    assert "hook register_degradations signature" in missing_from_guide(guide.replace(sig, ""))
    assert "ExtractorOutput.hm_to_image" in missing_from_guide(guide.replace("`hm_to_image`", "hm-to-image"))
    assert "Degradation.stochastic" in missing_from_guide(guide.replace("`stochastic: bool`", "stochastic"))


def _blocks(text: str, lang: str) -> list[str]:
    return re.findall(rf"```{lang}\n(.*?)```", text, flags=re.S)


def test_code_blocks_are_valid(guide):
    py = _blocks(guide, "python")
    assert len(py) >= 3
    for block in py:
        compile(block, "<docs/plugins.md>", "exec")
    tomls = _blocks(guide, "toml")
    assert tomls
    for block in tomls:
        data = tomllib.loads(block)
        assert data["project"]["entry-points"]["lbcore"]


def test_entry_point_snippet_matches_the_example_package(guide):
    example = tomllib.loads((ROOT / "examples" / "lb_example_regressor" / "pyproject.toml").read_text())
    (name, target), = example["project"]["entry-points"]["lbcore"].items()
    assert f'{name} = "{target}"' in guide
    assert example["project"]["name"] in guide


def test_links_point_at_headings(guide):
    anchors = {re.sub(r"[^a-z0-9 -]", "", h.strip().lower()).replace(" ", "-")
               for h in re.findall(r"^#+ (.+)$", guide, flags=re.M)}
    links = set(re.findall(r"\]\(#([^)]+)\)", guide))
    assert links and links <= anchors, links - anchors


def test_documented_cli_options_exist(guide):
    from lbcore.cli import cli

    attack = {o for p in cli.commands["attack"].params for o in getattr(p, "opts", [])}
    joined = guide.replace("\\\n", " ")  # shell line continuations
    for opt in set(re.findall(r"lb attack [^\n`]*", joined)):
        for flag in re.findall(r"(--[a-z-]+)", opt):
            assert flag in attack, flag
    assert "--random-start" in attack


def test_quick_start_plugin_runs_and_conforms(guide, tmp_path):
    """The guide's one-file plugin, registered as its entry point would register it, passes the
    conformance kit."""
    from lbcore.plugins import PluginManager
    from lbcore.testing import check_component, fresh_plugin_manager

    (block,) = [b for b in _blocks(guide, "python") if b.startswith("# file: my_plugin.py")]
    module = types.ModuleType("my_plugin")
    exec(compile(block, "my_plugin.py", "exec"), module.__dict__)
    pm = PluginManager(load_entry_points=False)
    pm.add_plugin(module, name="my-net", distribution="lb-my-net", version="0.1.0")
    assert pm.failures == []
    comp = pm.get("extractors", "my-net")
    assert comp.distribution == "lb-my-net" and comp.summary.startswith("Tiny heat-map network")
    with fresh_plugin_manager() as shared:
        shared.add_plugin(module, name="my-net", distribution="lb-my-net")
        measured = check_component("extractor", "my-net:points=68")
    assert measured["points"] == 68
    assert "torch" not in module.__dict__  # registering imported nothing heavy
    sys.modules.pop("my_plugin", None)
