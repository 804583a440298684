"""Build a differentiable torch network from a TFLite flatbuffer.

The file is read with the maintained ``tflite`` package (Python classes generated from
TensorFlow Lite's own ``schema.fbs``); reading it is pure data access, nothing in the file is
executed. Constant tensors become torch buffers (float16 weights are dequantized to float32 at
load time, which is what TFLite's DEQUANTIZE op does at run time), and the operators - already in
execution order in a TFLite subgraph - are replayed by :meth:`TFLiteNet.forward` with torch ops,
so gradients flow back to the input.

Layout: activations of rank 4 are kept NCHW inside the network (torch's layout); the input is
NCHW and outputs come back in TFLite's own layout (NHWC for rank 4), batch first. Any batch size
works: a RESHAPE keeps the batch dimension.

Supported operators (what MediaPipe's face mesh, attention mesh and BlazeFace models use): ADD,
CONCATENATION, CONV_2D, DEPTHWISE_CONV_2D, DEQUANTIZE (of constants), MAX_POOL_2D, AVERAGE_POOL_2D,
MUL, PAD, PRELU, RELU, RELU6, LOGISTIC, RESHAPE, STRIDED_SLICE (constant bounds, no
ellipsis/new-axis/shrink masks), and MediaPipe's custom operators Landmarks2TransformMatrix,
TransformTensorBilinear and TransformLandmarks (see :mod:`lb_mediapipe.mediapipe_ops`; their
options are flexbuffers, read with the ``flatbuffers`` package). Anything else, quantized
(integer) activations or sparse weights raise a one-line :class:`~lbcore.errors.WeightsError`
naming the file and the operator.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from lb_mediapipe import mediapipe_ops as mpo
from lbcore import ConvOutput, ResidualAdd
from lbcore.errors import WeightsError

__all__ = ["TFLiteNet", "read_tflite", "SUPPORTED_OPS"]

SUPPORTED_OPS = (
    "ADD", "AVERAGE_POOL_2D", "CONCATENATION", "CONV_2D", "DEPTHWISE_CONV_2D", "DEQUANTIZE",
    "LOGISTIC", "MAX_POOL_2D", "MUL", "PAD", "PRELU", "RELU", "RELU6", "RESHAPE", "STRIDED_SLICE",
    "CUSTOM:Landmarks2TransformMatrix", "CUSTOM:TransformTensorBilinear", "CUSTOM:TransformLandmarks",
)

_MAX_BYTES = 256 << 20  # far above any face model; refuses absurd files before parsing
# TensorType values of tflite's schema
_FLOAT32, _FLOAT16, _INT32 = 0, 1, 2
_NP_TYPES = {0: np.float32, 1: np.float16, 2: np.int32, 3: np.uint8, 4: np.int64, 9: np.int8, 7: np.int16}
_SAME, _VALID = 0, 1
# ActivationFunctionType values
_ACT_NONE, _ACT_RELU, _ACT_RELU_N1_TO_1, _ACT_RELU6 = 0, 1, 2, 3


def _tflite() -> Any:
    try:
        import tflite
    except ImportError:
        raise WeightsError("reading .tflite files needs the 'tflite' package (pip install tflite)") from None
    return tflite


class _Graph:
    """A parsed subgraph: tensors (shape, type, constant data) and operators."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.shapes: dict[int, tuple[int, ...]] = {}
        self.types: dict[int, int] = {}
        self.names: dict[int, str] = {}
        self.consts: dict[int, np.ndarray] = {}
        self.inputs: list[int] = []
        self.outputs: list[int] = []
        self.ops: list[tuple[str, list[int], list[int], dict[str, Any]]] = []

    def fail(self, why: str) -> WeightsError:
        return WeightsError(f"{self.path}: {why}")


def _op_names(tfl: Any) -> dict[int, str]:
    return {v: k for k, v in vars(tfl.BuiltinOperator).items() if not k.startswith("_") and isinstance(v, int)}


def _options(tfl: Any, op: Any, cls_name: str) -> Any:
    table = op.BuiltinOptions()
    if table is None:
        return None
    opts = getattr(tfl, cls_name)()
    opts.Init(table.Bytes, table.Pos)
    return opts


def read_tflite(path: str | os.PathLike[str]) -> _Graph:
    """Parse ``path`` into a :class:`_Graph` (constants folded, options decoded).

    Raises:
        WeightsError: missing/empty/oversized file, not a TFLite flatbuffer, several subgraphs,
            an unsupported operator or tensor type (one line, naming the file).
    """
    tfl = _tflite()
    p = Path(path)
    if not p.is_file():
        raise WeightsError(f"{p}: weights file not found")
    size = p.stat().st_size
    if size < 16:
        raise WeightsError(f"{p}: {size} bytes is too short for a TFLite model")
    if size > _MAX_BYTES:
        raise WeightsError(f"{p}: {size} bytes is larger than the {_MAX_BYTES}-byte limit for a TFLite model")
    data = p.read_bytes()
    if data[4:8] != b"TFL3":
        raise WeightsError(f"{p}: not a TFLite model (no TFL3 flatbuffer identifier)")
    g = _Graph(p)
    try:
        _parse(tfl, data, g)
    except WeightsError:
        raise
    except Exception as err:  # a damaged flatbuffer surfaces as index/struct errors
        raise WeightsError(f"{p}: corrupt TFLite model ({type(err).__name__}: {err})") from None
    return g


def _buffer(model: Any, data: bytes, index: int) -> bytes | None:
    buf = model.Buffers(index)
    if buf is None:
        return None
    offset, size = int(buf.Offset()), int(buf.Size())
    if offset > 1 and size > 0:  # large models keep buffers after the flatbuffer
        if offset + size > len(data):
            raise WeightsError("a weight buffer lies past the end of the file (truncated?)")
        return data[offset: offset + size]
    if buf.DataLength() == 0:
        return None
    return buf.DataAsNumpy().tobytes()


def _parse(tfl: Any, data: bytes, g: _Graph) -> None:
    model = tfl.Model.GetRootAsModel(data, 0)
    if model.SubgraphsLength() != 1:
        raise g.fail(f"{model.SubgraphsLength()} subgraphs; only single-graph models are supported")
    sg = model.Subgraphs(0)
    for i in range(sg.TensorsLength()):
        t = sg.Tensors(i)
        shape = tuple(int(s) for s in t.ShapeAsNumpy()) if t.ShapeLength() else ()
        g.shapes[i], g.types[i] = shape, int(t.Type())
        g.names[i] = t.Name().decode("utf-8", "replace")
        if t.Sparsity() is not None:
            raise g.fail(f"tensor {g.names[i]!r} holds sparse weights (operator DENSIFY), which are not supported")
        raw = _buffer(model, data, int(t.Buffer()))
        if raw is not None:
            dtype = _NP_TYPES.get(g.types[i])
            if dtype is None:
                raise g.fail(f"tensor {g.names[i]!r} has unsupported type {g.types[i]}")
            arr = np.frombuffer(raw, dtype=np.dtype(dtype).newbyteorder("<"))
            expected = int(np.prod(shape)) if shape else 1
            if arr.size != expected:
                raise g.fail(f"tensor {g.names[i]!r}: {arr.size} values for shape {shape}")
            g.consts[i] = arr.reshape(shape).astype(dtype)
    g.inputs = [int(v) for v in sg.InputsAsNumpy()]
    g.outputs = [int(v) for v in sg.OutputsAsNumpy()]
    names = _op_names(tfl)
    for k in range(sg.OperatorsLength()):
        op = sg.Operators(k)
        oc = model.OperatorCodes(op.OpcodeIndex())
        code = max(int(oc.BuiltinCode()), int(oc.DeprecatedBuiltinCode()))
        name = names.get(code, str(code))
        if name == "CUSTOM":
            name = f"CUSTOM:{(oc.CustomCode() or b'').decode('utf-8', 'replace')}"
        ins = [int(v) for v in op.InputsAsNumpy()] if op.InputsLength() else []
        outs = [int(v) for v in op.OutputsAsNumpy()] if op.OutputsLength() else []
        if name not in SUPPORTED_OPS:
            raise g.fail(f"unsupported TFLite operator {name} (operator {k}); supported: {', '.join(SUPPORTED_OPS)}")
        if name == "DEQUANTIZE":
            if ins[0] not in g.consts:
                raise g.fail(f"DEQUANTIZE of a computed tensor (operator {k}): quantized activations are not supported")
            src = g.consts[ins[0]]
            if src.dtype != np.float16:
                raise g.fail(f"DEQUANTIZE of {src.dtype} weights (operator {k}): only float16 weights are supported")
            g.consts[outs[0]] = src.astype(np.float32)
            continue
        opts: dict[str, Any] = {}
        if name in ("CONV_2D", "DEPTHWISE_CONV_2D"):
            o = _options(tfl, op, "Conv2DOptions" if name == "CONV_2D" else "DepthwiseConv2DOptions")
            opts = {"stride": (o.StrideH(), o.StrideW()), "dilation": (o.DilationHFactor(), o.DilationWFactor()),
                    "same": o.Padding() == _SAME, "act": o.FusedActivationFunction()}
        elif name in ("MAX_POOL_2D", "AVERAGE_POOL_2D"):
            o = _options(tfl, op, "Pool2DOptions")
            opts = {"stride": (o.StrideH(), o.StrideW()), "kernel": (o.FilterHeight(), o.FilterWidth()),
                    "same": o.Padding() == _SAME, "act": o.FusedActivationFunction()}
        elif name in ("ADD", "MUL"):
            o = _options(tfl, op, "AddOptions" if name == "ADD" else "MulOptions")
            opts = {"act": o.FusedActivationFunction() if o is not None else _ACT_NONE}
        elif name == "STRIDED_SLICE":
            o = _options(tfl, op, "StridedSliceOptions")
            if o.EllipsisMask() or o.NewAxisMask() or o.ShrinkAxisMask():
                raise g.fail(f"STRIDED_SLICE with ellipsis/new-axis/shrink masks (operator {k}) is not supported")
            opts = {"begin_mask": o.BeginMask(), "end_mask": o.EndMask()}
        elif name.startswith("CUSTOM:"):
            opts = _custom_options(op, g, k, name)
        elif name == "CONCATENATION":
            o = _options(tfl, op, "ConcatenationOptions")
            opts = {"axis": o.Axis(), "act": o.FusedActivationFunction()}
        if opts.get("act", _ACT_NONE) not in (_ACT_NONE, _ACT_RELU, _ACT_RELU_N1_TO_1, _ACT_RELU6):
            raise g.fail(f"unsupported fused activation {opts['act']} on {name} (operator {k})")
        for t in (*ins, *outs):
            if t >= 0 and t not in g.consts and g.types[t] != _FLOAT32:
                raise g.fail(f"{name} (operator {k}) computes on non-float32 tensor {g.names[t]!r}: "
                             "quantized models are not supported")
        g.ops.append((name, ins, outs, opts))


def _custom_options(op: Any, g: _Graph, k: int, name: str) -> dict[str, Any]:
    """A custom operator's options: a flexbuffer map (MediaPipe's operators), or none."""
    if not op.CustomOptionsLength():
        return {}
    from flatbuffers import flexbuffers

    try:
        opts = flexbuffers.Loads(bytes(op.CustomOptionsAsNumpy()))
    except Exception as err:  # a damaged flexbuffer
        raise g.fail(f"{name} (operator {k}): unreadable custom options ({type(err).__name__})") from None
    if not isinstance(opts, dict):
        raise g.fail(f"{name} (operator {k}): custom options are not a map")
    return dict(opts)


def _conv2d(h: torch.Tensor, w: torch.Tensor, b: torch.Tensor | None, stride: Sequence[int], padding: Sequence[int],
            dilation: Sequence[int], groups: int) -> torch.Tensor:
    """``F.conv2d``; on the CPU, depthwise convolutions as ``kh * kw`` shifted multiply-adds and 1x1
    convolutions as one matrix product per sample. Both give every crop the same numbers alone
    and in a batch (PyTorch's CPU kernels for them do not, on the small maps of these graphs,
    oneDNN on or off), so photos can share these networks' calls without changing a bit
    (:mod:`lbcore.apps.photo_batch`); both also ran faster than ``F.conv2d`` here."""
    if h.device.type != "cpu":
        return F.conv2d(h, w, b, tuple(stride), tuple(padding), tuple(dilation), groups)
    n, c, height, width = h.shape
    kh, kw = int(w.shape[2]), int(w.shape[3])
    if groups == 1 and kh == kw == 1 and tuple(stride) == (1, 1) and tuple(padding) == (0, 0):
        # (weight first: matmul broadcasts it to one product per sample instead of folding the batch)
        y = torch.matmul(w.reshape(w.shape[0], c), h.reshape(n, c, height * width)).reshape(n, -1, height, width)
    elif groups == c and w.shape[0] == c and w.shape[1] == 1:
        (sh, sw), (ph, pw), (dh, dw) = stride, padding, dilation
        if ph or pw:
            h = F.pad(h, (pw, pw, ph, ph))
        oh = (h.shape[2] - (kh - 1) * dh - 1) // sh + 1
        ow = (h.shape[3] - (kw - 1) * dw - 1) // sw + 1
        taps = w.reshape(c, kh * kw)
        terms = (h[:, :, i * dh:i * dh + (oh - 1) * sh + 1:sh, j * dw:j * dw + (ow - 1) * sw + 1:sw]
                 * taps[:, i * kw + j].view(1, c, 1, 1) for i in range(kh) for j in range(kw))
        y = next(terms)
        for term in terms:  # (in a fixed order: the same sums alone and in a batch)
            y = y + term
    else:
        return F.conv2d(h, w, b, tuple(stride), tuple(padding), tuple(dilation), groups)
    return y if b is None else y + b.view(1, -1, 1, 1)


def _same_pad(size: int, kernel: int, stride: int, dilation: int = 1) -> tuple[int, int]:
    """TensorFlow's SAME padding (the extra pixel goes after)."""
    eff = (kernel - 1) * dilation + 1
    out = -(-size // stride)
    total = max((out - 1) * stride + eff - size, 0)
    return total // 2, total - total // 2


def _nhwc_axis(axis: int, rank: int) -> int:
    """A TFLite axis of a rank-4 NHWC tensor -> the axis of our NCHW copy."""
    axis = axis % rank
    return {0: 0, 1: 2, 2: 3, 3: 1}[axis] if rank == 4 else axis


class TFLiteNet(torch.nn.Module):
    """A TFLite subgraph replayed with torch ops (see the module docstring).

    Args:
        path: the ``.tflite`` file.
        input_shape: required NHWC input shape (batch included), or ``None`` for any.
        output_sizes: required element counts of the outputs (batch included), in order, or
            ``None``; a mismatch means "not the model this extractor expects".
        what: how to name the expected model in that error.
    """

    def __init__(self, path: str | os.PathLike[str], *, input_shape: Sequence[int] | None = None,
                 output_sizes: Sequence[int] | None = None, what: str = "the expected model") -> None:
        super().__init__()
        g = read_tflite(path)
        self.path = str(path)
        if len(g.inputs) != 1:
            raise g.fail(f"{len(g.inputs)} inputs; {what} has one image input")
        in_shape = g.shapes[g.inputs[0]]
        out_shapes = [g.shapes[o] for o in g.outputs]
        sizes = [int(np.prod(s)) if s else 1 for s in out_shapes]
        if (input_shape is not None and tuple(in_shape) != tuple(input_shape)) or (
                output_sizes is not None and sizes != list(output_sizes)):
            raise g.fail(f"not {what}: input {list(in_shape)}, outputs {[list(s) for s in out_shapes]} "
                         f"(expected input {list(input_shape or [])}, outputs of {list(output_sizes or [])} values)")
        self.input_shape = in_shape
        self.output_shapes = out_shapes
        self._input = g.inputs[0]
        self._outputs = list(g.outputs)
        self._ranks = {t: len(s) for t, s in g.shapes.items()}
        self._steps: list[tuple[str, list[int], list[int], dict[str, Any]]] = []
        self._const_ids: set[int] = set()
        for name, ins, outs, opts in g.ops:
            self._steps.append((name, ins, outs, self._prepare(g, name, ins, outs, opts)))
        # one ConvOutput per convolution: the attack's feature and ghost hooks see its output
        convs = [o for name, _, _, o in self._steps if name in ("CONV_2D", "DEPTHWISE_CONV_2D")]
        for i, o in enumerate(convs):
            o["tap"] = i
        self.conv_out = torch.nn.ModuleList(ConvOutput() for _ in convs)
        # one ResidualAdd per ADD of two computed tensors (a residual block closing): the input
        # produced earlier is the skip connection, the later one the block's branch
        made = {t: i for i, (_, _, outs, _) in enumerate(self._steps) for t in outs}
        adds = 0
        for name, ins, _, o in self._steps:
            if name == "ADD" and len(ins) == 2 and all(t in made for t in ins):
                skip, branch = sorted(ins, key=lambda t: made[t])
                o["residual"] = (adds, skip, branch)
                adds += 1
        self.res_add = torch.nn.ModuleList(ResidualAdd() for _ in range(adds))

    # -- loading -----------------------------------------------------------------------
    def _const(self, g: _Graph, t: int, arr: np.ndarray) -> str:
        key = f"c{t}"
        if t not in self._const_ids:
            self.register_buffer(key, torch.from_numpy(np.ascontiguousarray(arr)))
            self._const_ids.add(t)
        return key

    def _prepare(self, g: _Graph, name: str, ins: list[int], outs: list[int], opts: dict[str, Any]) -> dict[str, Any]:
        out = dict(opts)
        if name in ("CONV_2D", "DEPTHWISE_CONV_2D"):
            if ins[1] not in g.consts:
                raise g.fail(f"{name} with computed weights is not supported")
            w = g.consts[ins[1]].astype(np.float32)
            if name == "CONV_2D":  # OHWI -> OIHW
                w = w.transpose(0, 3, 1, 2)
                out["groups"] = 1
            else:  # 1 H W (C*M) -> (C*M) 1 H W
                w = w.transpose(3, 0, 1, 2)
                in_ch = g.shapes[ins[0]][3]
                out["groups"] = in_ch
            out["w"] = self._const(g, ins[1], w)
            out["b"] = self._const(g, ins[2], g.consts[ins[2]].astype(np.float32)) if len(ins) > 2 and ins[2] >= 0 else None
        elif name == "PRELU":
            a = g.consts.get(ins[1])
            if a is None:
                raise g.fail("PRELU with a computed slope is not supported")
            a = a.astype(np.float32)
            if self._ranks[ins[0]] == 4:  # slope broadcast over NHWC's last dims -> NCHW
                a = a.reshape((1,) * (3 - a.ndim) + a.shape).transpose(2, 0, 1)[None]
            out["alpha"] = self._const(g, ins[1], a)
        elif name == "PAD":
            pads = g.consts.get(ins[1])
            if pads is None:
                raise g.fail("PAD with computed paddings is not supported")
            pads = pads.reshape(-1, 2).astype(int)
            if len(pads) == 4 and pads[0].any():
                raise g.fail("PAD of the batch dimension is not supported")
            # F.pad lists (before, after) from the last dimension backwards; our rank-4
            # copies are NCHW, so NHWC's W, H, C come in that order (the batch is never padded)
            order = [2, 1, 3] if len(pads) == 4 else list(range(len(pads)))[::-1]
            flat = [int(v) for d in order for v in pads[d]]
            out["pads"] = flat
        elif name == "STRIDED_SLICE":
            parts = [g.consts.get(t) for t in ins[1:4]]
            if any(p is None for p in parts):
                raise g.fail("STRIDED_SLICE with computed bounds is not supported")
            shape = g.shapes[ins[0]]
            begin, end, strides = ([int(v) for v in p.reshape(-1)] for p in parts if p is not None)
            sl = []
            for d in range(len(shape)):
                b = None if opts["begin_mask"] >> d & 1 else begin[d]
                e = None if opts["end_mask"] >> d & 1 else end[d]
                sl.append((b, e, strides[d]))
            if shape and sl[0] != (0, shape[0], 1) and sl[0][:2] != (None, None):
                raise g.fail("STRIDED_SLICE of the batch dimension is not supported")
            out["slices"] = [(None, None, 1)] + sl[1:]
        elif name == "CUSTOM:Landmarks2TransformMatrix":
            need = ("left_rotation_idx", "right_rotation_idx", "subset_idxs", "output_width", "output_height",
                    "scale_x", "scale_y")
            if any(key not in opts for key in need) or len(g.shapes[ins[0]]) != 3:
                raise g.fail(f"{name}: only version 2 (rank-3 landmarks; options {', '.join(need)}) is supported")
            points = g.shapes[ins[0]][1]
            idx = [int(i) for i in opts["subset_idxs"]] + [int(opts["left_rotation_idx"]), int(opts["right_rotation_idx"])]
            if not opts["subset_idxs"] or min(idx) < 0 or max(idx) >= points:
                raise g.fail(f"{name}: landmark indices outside 0..{points - 1}")
        elif name == "CUSTOM:TransformTensorBilinear":
            if len(g.shapes[ins[0]]) != 4 or len(g.shapes[outs[0]]) != 4:
                raise g.fail(f"{name}: only rank-4 (NHWC) tensors are supported")
            out["size"] = (int(g.shapes[outs[0]][1]), int(g.shapes[outs[0]][2]))
        elif name == "CUSTOM:TransformLandmarks":
            if len(g.shapes[ins[0]]) != 3:
                raise g.fail(f"{name}: only version 2 (rank-3 landmarks) is supported")
        elif name == "RESHAPE":
            # the output tensor's static shape; its batch dimension follows the input's
            out["shape"] = [int(v) for v in g.shapes[outs[0]]]
            if not out["shape"]:
                raise g.fail("RESHAPE to an unknown shape is not supported")
        for t in ins:
            if t >= 0 and t in g.consts and name in ("ADD", "MUL", "CONCATENATION"):
                arr = g.consts[t].astype(np.float32)
                if self._ranks.get(t) == 4:
                    arr = arr.transpose(0, 3, 1, 2)
                elif arr.ndim == 1 and any(self._ranks.get(x) == 4 for x in ins if x not in g.consts):
                    arr = arr.reshape(1, -1, 1, 1)
                out.setdefault("consts", {})[t] = self._const(g, t, arr)
        return out

    # -- running -----------------------------------------------------------------------
    @staticmethod
    def _act(x: torch.Tensor, act: int) -> torch.Tensor:
        if act == _ACT_RELU:
            return F.relu(x)
        if act == _ACT_RELU6:
            return x.clamp(0.0, 6.0)
        if act == _ACT_RELU_N1_TO_1:
            return x.clamp(-1.0, 1.0)
        return x

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        """``(N, C, H, W)`` input -> the model's outputs in TFLite layout, batch ``N`` first."""
        n = x.shape[0]
        vals: dict[int, torch.Tensor] = {self._input: x}
        for name, ins, outs, o in self._steps:

            def arg(t: int, _o: dict[str, Any] = o) -> torch.Tensor:
                if t in vals:
                    return vals[t]
                return getattr(self, _o["consts"][t]).to(x.dtype)

            if name in ("CONV_2D", "DEPTHWISE_CONV_2D"):
                h = vals[ins[0]]
                w = getattr(self, o["w"]).to(h.dtype)
                b = getattr(self, o["b"]).to(h.dtype) if o["b"] is not None else None
                if o["same"]:
                    ph = _same_pad(h.shape[2], w.shape[2], o["stride"][0], o["dilation"][0])
                    pw = _same_pad(h.shape[3], w.shape[3], o["stride"][1], o["dilation"][1])
                    if ph[0] == ph[1] and pw[0] == pw[1]:
                        y = _conv2d(h, w, b, o["stride"], (ph[0], pw[0]), o["dilation"], o["groups"])
                    else:
                        y = _conv2d(F.pad(h, (*pw, *ph)), w, b, o["stride"], (0, 0), o["dilation"], o["groups"])
                else:
                    y = _conv2d(h, w, b, o["stride"], (0, 0), o["dilation"], o["groups"])
                y = self._act(self.conv_out[o["tap"]](y), o["act"])
            elif name in ("MAX_POOL_2D", "AVERAGE_POOL_2D"):
                h = vals[ins[0]]
                kh, kw = o["kernel"]
                if o["same"]:
                    ph = _same_pad(h.shape[2], kh, o["stride"][0])
                    pw = _same_pad(h.shape[3], kw, o["stride"][1])
                    if any((*ph, *pw)):
                        if name == "MAX_POOL_2D":
                            h = F.pad(h, (*pw, *ph), value=float("-inf"))
                        else:  # TFLite averages over the valid pixels only
                            ones = F.pad(torch.ones_like(h[:1, :1]), (*pw, *ph))
                            y = F.avg_pool2d(F.pad(h, (*pw, *ph)), (kh, kw), o["stride"]) / F.avg_pool2d(ones, (kh, kw), o["stride"])
                            vals[outs[0]] = self._act(y, o["act"])
                            continue
                pool = F.max_pool2d if name == "MAX_POOL_2D" else F.avg_pool2d
                y = self._act(pool(h, (kh, kw), o["stride"]), o["act"])
            elif name == "ADD":
                if "residual" in o:
                    k, skip, branch = o["residual"]
                    y = self._act(self.res_add[k](vals[skip], vals[branch]), o["act"])
                else:
                    y = self._act(arg(ins[0]) + arg(ins[1]), o["act"])
            elif name == "MUL":
                y = self._act(arg(ins[0]) * arg(ins[1]), o["act"])
            elif name == "STRIDED_SLICE":
                h = vals[ins[0]]
                if h.dim() == 4:
                    h = h.permute(0, 2, 3, 1)
                y = h[tuple(slice(*s) for s in o["slices"])]
                if y.dim() == 4:
                    y = y.permute(0, 3, 1, 2)
            elif name == "CUSTOM:Landmarks2TransformMatrix":
                y = mpo.landmarks_to_transform_matrix(
                    vals[ins[0]], left=int(o["left_rotation_idx"]), right=int(o["right_rotation_idx"]),
                    subset=[int(i) for i in o["subset_idxs"]], out_w=int(o["output_width"]),
                    out_h=int(o["output_height"]), scale_x=float(o["scale_x"]), scale_y=float(o["scale_y"]),
                    target_rotation=float(o.get("target_rotation_radians", 0.0)))
            elif name == "CUSTOM:TransformTensorBilinear":
                y = mpo.transform_tensor_bilinear(vals[ins[0]], vals[ins[1]], *o["size"])
            elif name == "CUSTOM:TransformLandmarks":
                y = mpo.transform_landmarks(vals[ins[0]], vals[ins[1]])
            elif name == "PRELU":
                h = vals[ins[0]]
                a = getattr(self, o["alpha"]).to(h.dtype)
                y = torch.where(h >= 0, h, h * a)
            elif name == "RELU":
                y = F.relu(vals[ins[0]])
            elif name == "RELU6":
                y = vals[ins[0]].clamp(0.0, 6.0)
            elif name == "LOGISTIC":
                y = torch.sigmoid(vals[ins[0]])
            elif name == "PAD":
                y = F.pad(vals[ins[0]], o["pads"])
            elif name == "RESHAPE":
                h = vals[ins[0]]
                if self._ranks[ins[0]] == 4:
                    h = h.permute(0, 2, 3, 1)
                y = h.reshape(n, *o["shape"][1:])
                if y.dim() == 4:
                    y = y.permute(0, 3, 1, 2)
            elif name == "CONCATENATION":
                parts = [arg(t) for t in ins]
                y = self._act(torch.cat(parts, dim=_nhwc_axis(o["axis"], self._ranks[outs[0]])), o["act"])
            else:  # pragma: no cover - refused at load time
                raise WeightsError(f"{self.path}: unsupported TFLite operator {name}")
            vals[outs[0]] = y
        res = []
        for t in self._outputs:
            y = vals[t]
            res.append(y.permute(0, 2, 3, 1) if y.dim() == 4 else y)
        return res
