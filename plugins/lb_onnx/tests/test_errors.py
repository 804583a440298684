"""Bad ONNX input: one line naming the file and the problem; the CLI exits with 3."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import torch

from lb_onnx.convert import to_torch
from lb_onnx.description import description_from_mapping, load_description
from lb_onnx.plugin import build_onnx_extractor
from lbcore.errors import SpecError, WeightsError


def _one_line(err: pytest.ExceptionInfo, *parts: str) -> str:
    msg = str(err.value)
    assert "\n" not in msg
    for part in parts:
        assert part in msg, msg
    return msg


def _graph_with_op(path: Path, op: str, domain: str = "") -> Path:
    import onnx
    from onnx import TensorProto, helper

    x = helper.make_tensor_value_info("input", TensorProto.FLOAT, [1, 3, 16, 16])
    y = helper.make_tensor_value_info("output", TensorProto.FLOAT, [1, 3, 16, 16])
    node = helper.make_node(op, ["input"], ["output"], domain=domain)
    opsets = [helper.make_opsetid("", 17)] + ([helper.make_opsetid(domain, 1)] if domain else [])
    model = helper.make_model(helper.make_graph([node], "g", [x], [y]), opset_imports=opsets)
    onnx.save(model, str(path))
    return path


def test_unsupported_operator_is_named(tmp_path):
    path = _graph_with_op(tmp_path / "custom.onnx", "LandmarkMagic", domain="com.example")
    with pytest.raises(WeightsError) as err:
        to_torch(path, 16)
    _one_line(err, str(path), "unsupported ONNX operators", "LandmarkMagic", "com.example")


def test_an_operator_that_needs_torchvision_is_unsupported_without_it(tmp_path):
    import importlib.util

    if importlib.util.find_spec("torchvision") is not None:
        pytest.skip("torchvision is installed here: RoiAlign converts")
    path = _graph_with_op(tmp_path / "roi.onnx", "RoiAlign")
    with pytest.raises(WeightsError) as err:
        to_torch(path, 16)
    _one_line(err, str(path), "RoiAlign (opset 17)")


def test_onnx2torch_imports_without_torchvision():
    code = ("import sys, lb_onnx.convert as c; c.import_onnx2torch(); "
            "print('torchvision' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


def test_wrong_input_shape_is_named(fan_demo_onnx):
    with pytest.raises(WeightsError) as err:
        to_torch(fan_demo_onnx, 256)  # exported at 128
    _one_line(err, str(fan_demo_onnx), "'input'", "height 128", "(N, 3, 256, 256)")


def test_outputs_that_do_not_fit_the_description(fan_demo_onnx):
    desc = description_from_mapping({"name": "x", "points": 98, "input_size": 128,
                                     "crop": {"rule": "face-alignment"}, "decode": {"kind": "heatmap"}})
    with pytest.raises(WeightsError) as err:
        build_onnx_extractor(str(fan_demo_onnx), desc)
    _one_line(err, str(fan_demo_onnx), "output 0 has shape (1, 68, 32, 32)", "(1, 98, h, w)")


@pytest.mark.parametrize("content", [b"", b"this is not a protobuf \xff\xfe" * 40, bytes(range(256)) * 8])
def test_a_file_that_is_not_onnx(tmp_path, content):
    path = tmp_path / "model.onnx"
    path.write_bytes(content)
    with pytest.raises(WeightsError) as err:
        to_torch(path, 64)
    msg = _one_line(err, str(path))
    assert "not an ONNX model" in msg


def test_a_torch_checkpoint_is_not_onnx(tmp_path):
    path = tmp_path / "net.pth"
    torch.save({"w": torch.zeros(3)}, path)
    with pytest.raises(WeightsError) as err:
        to_torch(path, 64)
    _one_line(err, str(path), "not an ONNX model")


def test_missing_file_and_folder(tmp_path):
    with pytest.raises(WeightsError) as err:
        to_torch(tmp_path / "nope.onnx", 64)
    _one_line(err, "nope.onnx", "not found")
    with pytest.raises(WeightsError) as err:
        to_torch(tmp_path, 64)
    _one_line(err, "is a folder")


def test_bad_descriptions_are_spec_errors(tmp_path, fresh_pm):
    bad = tmp_path / "bad.toml"
    bad.write_text('points = 68\ninput_size = 128\n[crop]\nrule = "spiral"\n')
    with pytest.raises(SpecError) as err:
        load_description(str(bad))
    _one_line(err, str(bad), "crop.rule", "spiral")
    bad.write_text("points = 68\ninput_size = 128\ncolour = 1\n")
    with pytest.raises(SpecError) as err:
        load_description(str(bad))
    _one_line(err, "unknown keys colour")
    with pytest.raises(SpecError) as err:
        fresh_pm.build("extractors", "onnx:model=x.onnx")
    _one_line(err, "desc=")


def test_cli_exit_code_3_and_one_line(tmp_path):
    from PIL import Image

    img = tmp_path / "face.png"
    Image.new("RGB", (64, 64), (120, 100, 90)).save(img)
    bad = tmp_path / "broken.onnx"
    bad.write_bytes(b"\x08\x07garbage" * 100)
    lb = Path(sys.executable).with_name("lb")
    out = subprocess.run([str(lb), "attack", str(img), "-o", str(tmp_path / "out"), "--box", "8,8,56,56",
                          "--extractor", f"onnx:model={bad},desc=fan-demo"], capture_output=True, text=True)
    assert out.returncode == 3, out.stderr
    lines = [ln for ln in out.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1 and str(bad) in lines[0], out.stderr
