"""ONNX file -> differentiable torch module, through onnx2torch, with one-line errors.

Loading never executes code from the file: ``onnx.load`` parses a protobuf (no pickles), custom
operator domains are refused, and files that keep their tensors in external files are refused
(they could name any path). onnx2torch turns every node into a torch operation, so gradients
flow from the outputs back to the input pixels.

onnx2torch imports torchvision in exactly two converters (NonMaxSuppression, RoiAlign); the
project never installs torchvision next to its CPU torch, so where it is absent those two
submodules are replaced by empty ones before onnx2torch is imported: the two operators are then
simply unsupported (a landmark network does not use them), and everything else converts.
"""

from __future__ import annotations

import importlib.util
import sys
import types
from pathlib import Path
from typing import Any

import torch

from lbcore.errors import WeightsError

__all__ = ["import_onnx2torch", "read_onnx", "fold_initializer_identities", "resolve_same_padding", "unsupported_ops", "graph_input", "to_torch", "MAX_BYTES"]

MAX_BYTES = 1 << 30
"""Refuse ONNX files larger than this (landmark networks are a few MB to a few hundred)."""

_TORCHVISION_OPS = ("nms", "roialign")


def import_onnx2torch() -> Any:
    """Import onnx2torch without torchvision (see the module docstring)."""
    if "onnx2torch" not in sys.modules and importlib.util.find_spec("torchvision") is None:
        for sub in _TORCHVISION_OPS:
            name = f"onnx2torch.node_converters.{sub}"
            if name not in sys.modules:
                stub = types.ModuleType(name, "left out: needs torchvision, which is not installed")
                stub.__all__ = []  # type: ignore[attr-defined]
                sys.modules[name] = stub
    try:
        import onnx2torch
    except ImportError as err:
        raise WeightsError(
            f"reading ONNX models needs onnx2torch ({err}); install it with "
            "'pip install --no-deps onnx2torch' (scripts/setup.sh does)"
        ) from None
    return onnx2torch


def read_onnx(path: str | Path) -> Any:
    """Parse an ONNX file (``onnx.ModelProto``); refuse what is not a usable self-contained model."""
    try:
        import onnx
    except ImportError:
        raise WeightsError("reading ONNX models needs the 'onnx' package (pip install onnx)") from None
    p = Path(path)
    if p.is_dir():
        raise WeightsError(f"{p}: is a folder, not an ONNX file")
    if not p.is_file():
        raise WeightsError(f"{p}: ONNX file not found")
    size = p.stat().st_size
    if size == 0:
        raise WeightsError(f"{p}: empty file, not an ONNX model")
    if size > MAX_BYTES:
        raise WeightsError(f"{p}: {size} bytes is larger than the {MAX_BYTES}-byte limit")
    try:
        model = onnx.load(str(p), load_external_data=False)
    except Exception as err:  # protobuf's DecodeError and friends
        reason = (str(err).splitlines() or [type(err).__name__])[0][:200]
        raise WeightsError(f"{p}: not an ONNX model ({reason})") from None
    # random bytes sometimes parse as an (almost) empty protobuf message
    if not model.graph.node or not model.graph.input or not model.opset_import:
        raise WeightsError(f"{p}: not an ONNX model (no graph, inputs or opset)")
    ext = [t.name for t in model.graph.initializer if t.data_location == onnx.TensorProto.EXTERNAL]
    if ext:
        raise WeightsError(f"{p}: keeps {len(ext)} tensors in external data files (e.g. {ext[0]}); "
                           "only self-contained ONNX files are loaded")
    return model


def fold_initializer_identities(model: Any) -> int:
    """Replace ``Identity`` nodes of an initializer by a copy of that initializer, in place.

    torch's TorchScript exporter stores equal parameters once and names the others through
    ``Identity`` nodes; the converter wants a convolution's weights and bias as initializers.
    Returns how many nodes were folded.
    """
    inits = {t.name: t for t in model.graph.initializer}
    keep, folded = [], 0
    for node in model.graph.node:
        if node.op_type == "Identity" and len(node.input) == 1 and node.input[0] in inits:
            copy = type(inits[node.input[0]])()
            copy.CopyFrom(inits[node.input[0]])
            copy.name = node.output[0]
            model.graph.initializer.append(copy)
            inits[copy.name] = copy
            folded += 1
        else:
            keep.append(node)
    if folded:
        del model.graph.node[:]
        model.graph.node.extend(keep)
    return folded


def resolve_same_padding(model: Any) -> Any:
    """``auto_pad=SAME_UPPER/SAME_LOWER`` (Keras/TF exports) -> explicit ``pads``.

    The converter knows only explicit padding. With the input sizes from ONNX shape inference
    (the image input has a fixed size), each such Conv/MaxPool/AveragePool gets the pads that
    keep ``ceil(in / stride)`` outputs, the extra pixel at the end (UPPER) or start (LOWER).
    Returns the (possibly new) model; nodes whose input size is unknown are left as they are.
    """
    import onnx
    from onnx import helper

    nodes = [n for n in model.graph.node if n.op_type in ("Conv", "MaxPool", "AveragePool")
             and any(a.name == "auto_pad" and a.s in (b"SAME_UPPER", b"SAME_LOWER") for a in n.attribute)]
    if not nodes:
        return model
    try:
        inferred = onnx.shape_inference.infer_shapes(model)
    except Exception:
        return model
    shapes: dict[str, list[int]] = {}
    for vi in [*inferred.graph.input, *inferred.graph.value_info]:
        shapes[vi.name] = [d.dim_value if d.HasField("dim_value") else 0 for d in vi.type.tensor_type.shape.dim]
    inits = {t.name: list(t.dims) for t in model.graph.initializer}
    for node in nodes:
        spatial = shapes.get(node.input[0], [])[2:]
        attrs = {a.name: helper.get_attribute_value(a) for a in node.attribute}
        kernel = attrs.get("kernel_shape") or inits.get(node.input[1] if len(node.input) > 1 else "", [])[2:]
        if not spatial or 0 in spatial or len(kernel) != len(spatial):
            continue
        strides = attrs.get("strides") or [1] * len(spatial)
        dil = attrs.get("dilations") or [1] * len(spatial)
        begin, end = [], []
        for size, k, st, d in zip(spatial, kernel, strides, dil, strict=True):
            out = -(-size // st)
            total = max((out - 1) * st + (k - 1) * d + 1 - size, 0)
            small, big = total // 2, total - total // 2
            upper = attrs["auto_pad"] == b"SAME_UPPER"
            begin.append(small if upper else big)
            end.append(big if upper else small)
        keep = [a for a in node.attribute if a.name not in ("auto_pad", "pads")]
        del node.attribute[:]
        node.attribute.extend([*keep, helper.make_attribute("pads", begin + end)])
    return model


def unsupported_ops(model: Any) -> list[str]:
    """``op (domain, opset N)`` of every node type the converter cannot turn into torch."""
    import_onnx2torch()
    from onnx2torch.node_converters.registry import get_converter

    opsets = {o.domain or "": int(o.version) for o in model.opset_import}
    bad: list[str] = []
    seen: set[tuple[str, str]] = set()
    for node in model.graph.node:
        domain = node.domain or ""
        key = (domain, node.op_type)
        if key in seen:
            continue
        seen.add(key)
        version = opsets.get(domain, opsets.get("ai.onnx", 0)) if domain in ("", "ai.onnx") else opsets.get(domain, 0)
        try:
            get_converter(node.op_type, version, domain)
        except NotImplementedError:
            where = f"domain {domain}, " if domain else ""
            bad.append(f"{node.op_type} ({where}opset {version})")
    return bad


def graph_input(model: Any) -> tuple[str, list[int | str]]:
    """Name and shape (ints, or names of free dimensions) of the one image input."""
    inits = {t.name for t in model.graph.initializer}
    inputs = [i for i in model.graph.input if i.name not in inits]
    if len(inputs) != 1:
        names = ", ".join(i.name for i in inputs)
        raise WeightsError(f"expected one image input, found {len(inputs)} ({names})")
    dims: list[int | str] = []
    for d in inputs[0].type.tensor_type.shape.dim:
        dims.append(int(d.dim_value) if d.HasField("dim_value") else (d.dim_param or "?"))
    return inputs[0].name, dims


def to_torch(path: str | Path, input_size: int, layout: str = "nchw") -> tuple[torch.nn.Module, int | None]:
    """The ONNX file at ``path`` as an eval-mode torch module, checked against a square input
    in ``layout`` (``nchw``, ``nhwc`` or ``nwhc``).

    Returns:
        The module and the batch size it is fixed to (``None`` when the batch is free).

    Raises:
        WeightsError: one line naming the file and the problem: not ONNX, unsupported ops
            (all of them listed), an input that is not ``(N, 3, input_size, input_size)``, or
            a failed conversion.
    """
    p = Path(path)
    model = read_onnx(p)
    try:
        name, dims = graph_input(model)
    except WeightsError as err:
        raise WeightsError(f"{p}: {err}") from None
    order = {"nchw": ("channels", "height", "width"), "nhwc": ("height", "width", "channels"),
             "nwhc": ("width", "height", "channels")}[layout]
    expect = {"channels": 3, "height": input_size, "width": input_size}
    text = "(" + ", ".join(["N", *(str(expect[w]) for w in order)]) + f") [{layout.upper()}]"
    if len(dims) != 4:
        raise WeightsError(f"{p}: input {name!r} has shape {dims}, the description says {text}")
    for got, what in zip(dims[1:], order, strict=True):
        if isinstance(got, int) and got not in (0, expect[what]):
            raise WeightsError(f"{p}: input {name!r} has shape {dims}: {what} {got}, the description says {text}")
    bad = unsupported_ops(model)
    if bad:
        raise WeightsError(f"{p}: unsupported ONNX operators: {', '.join(bad)}")
    onnx2torch = import_onnx2torch()
    fold_initializer_identities(model)
    model = resolve_same_padding(model)
    try:
        module = onnx2torch.convert(model)
    except Exception as err:
        reason = (str(err).splitlines() or [type(err).__name__])[0][:200]
        raise WeightsError(f"{p}: cannot convert to torch ({reason})") from None
    batch = dims[0] if isinstance(dims[0], int) and dims[0] > 0 else None
    return module.eval(), batch
