"""face-api.js's 68-point landmark networks in torch, read from their TensorFlow.js weight files.

The models (``face_landmark_68_model`` and ``face_landmark_68_tiny_model``) are published as a
TensorFlow.js *weights manifest* (JSON: the name, shape, dtype and quantisation of every tensor)
beside one binary file of concatenated tensors. Both ship inside the ``@vladmandic/face-api``
npm package (MIT). Reading them executes nothing: the manifest is JSON, the binary is raw
numbers, de-quantised here as TensorFlow.js does (``uint8``/``uint16``: ``q * scale + min``;
``float16`` and ``float32`` as they are).

Architecture (the face-api.js ``FaceLandmark68Net`` / ``FaceLandmark68TinyNet`` layouts, facts
taken from the weight names and shapes and from the published JavaScript):

* input: an RGB square of 112 x 112 in ``[0, 255]``; the mean ``(122.782, 117.001, 104.298)`` is
  subtracted per channel and the result divided by 255;
* four (tiny: three) *dense blocks*. Block ``b`` has a first convolution with stride 2 (a plain
  3x3 convolution in the first block, a depthwise-separable one after) and three (tiny: two)
  depthwise-separable 3x3 convolutions with stride 1; every convolution has a bias and TensorFlow's
  ``same`` padding (for stride 2 on an even size: one row and column of zeros at the bottom and
  right only). With ``o_i`` the i-th convolution's output, ``o_1 = relu(conv_1(x))`` and
  ``o_{i+1} = conv_{i+1}(relu(o_1 + ... + o_i))``; the block returns ``relu(o_1 + ... + o_n)``;
* 112 -> 56 -> 28 -> 14 -> 7 (tiny: -> 14), an average pool over the whole map, a dense layer
  to 136 values: ``x_0, y_0, x_1, y_1, ...`` as fractions of the 112-pixel square (iBUG-68 order).
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from lbcore.errors import WeightsError

__all__ = ["INPUT_SIZE", "MEAN_RGB", "FaceLandmarkNet", "read_tfjs_weights", "load_face_landmark_net"]

INPUT_SIZE = 112
MEAN_RGB = (122.782, 117.001, 104.298)

_DTYPES = {"float32": np.float32, "int32": np.int32, "float16": np.float16}
_QUANT = {"uint8": np.uint8, "uint16": np.uint16, "float16": np.float16}


def read_tfjs_weights(manifest: str | os.PathLike[str]) -> dict[str, np.ndarray]:
    """Every tensor of a TensorFlow.js weights manifest and its binary file(s), as float32 arrays.

    Raises:
        WeightsError: one line naming the file and the problem (not JSON, not a manifest, a
            binary file missing or of the wrong length, an unknown dtype).
    """
    path = Path(manifest)
    try:
        groups = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        reason = f"not a JSON weights manifest ({type(err).__name__})" if not isinstance(err, OSError) else str(err)
        raise WeightsError(f"{path}: {reason}") from None
    if isinstance(groups, dict) and "weightsManifest" in groups:  # a model.json carries the manifest inside
        groups = groups["weightsManifest"]
    if not isinstance(groups, list) or not all(isinstance(g, dict) and "paths" in g and "weights" in g for g in groups):
        raise WeightsError(f"{path}: not a TensorFlow.js weights manifest (a list of groups with paths and weights)")
    out: dict[str, np.ndarray] = {}
    for group in groups:
        blob = b""
        for name in group["paths"]:
            part = path.parent / str(name)
            if part.name != str(name) or not part.is_file():
                raise WeightsError(f"{path}: its weights file {name!r} is not beside it")
            blob += part.read_bytes()
        offset = 0
        for w in group["weights"]:
            name, shape, dtype = str(w.get("name")), [int(s) for s in w.get("shape", [])], str(w.get("dtype"))
            count = int(np.prod(shape)) if shape else 1
            q = w.get("quantization")
            stored = _QUANT.get(str(q.get("dtype"))) if q else _DTYPES.get(dtype)
            if stored is None or dtype not in _DTYPES:
                raise WeightsError(f"{path}: tensor {name!r} has an unsupported dtype ({dtype}, quantised {q})")
            size = count * np.dtype(stored).itemsize
            if offset + size > len(blob):
                raise WeightsError(f"{path}: its weights file is {len(blob)} bytes, too short for tensor {name!r}")
            raw = np.frombuffer(blob, dtype=stored, count=count, offset=offset)
            offset += size
            if q and q.get("dtype") != "float16":
                values = raw.astype(np.float64) * float(q["scale"]) + float(q["min"])
            else:
                values = raw.astype(np.float64)
            out[name] = values.astype(np.float32).reshape(shape)
        if offset != len(blob):
            raise WeightsError(f"{path}: its weights file is {len(blob)} bytes, the manifest describes {offset}")
    return out


def _same_pad(x: torch.Tensor, stride: int) -> torch.Tensor:
    """TensorFlow's ``same`` padding for a 3x3 kernel: extra zeros go to the bottom and right."""
    h, w = x.shape[-2:]
    ph = max((-(-h // stride) - 1) * stride + 3 - h, 0)
    pw = max((-(-w // stride) - 1) * stride + 3 - w, 0)
    return F.pad(x, (pw // 2, pw - pw // 2, ph // 2, ph - ph // 2))


class _SeparableConv(nn.Module):
    """Depthwise 3x3 (with the stride) then pointwise 1x1, one bias (``tf.separableConv2d``)."""

    def __init__(self, cin: int, cout: int, stride: int) -> None:
        super().__init__()
        self.stride = stride
        self.depthwise = nn.Parameter(torch.zeros(cin, 1, 3, 3))
        self.pointwise = nn.Parameter(torch.zeros(cout, cin, 1, 1))
        self.bias = nn.Parameter(torch.zeros(cout))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.conv2d(_same_pad(x, self.stride), self.depthwise, stride=self.stride, groups=x.shape[1])
        return F.conv2d(x, self.pointwise, self.bias)


class _Conv(nn.Module):
    """A plain 3x3 convolution with a bias (the first block's first layer)."""

    def __init__(self, cin: int, cout: int, stride: int) -> None:
        super().__init__()
        self.stride = stride
        self.weight = nn.Parameter(torch.zeros(cout, cin, 3, 3))
        self.bias = nn.Parameter(torch.zeros(cout))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.conv2d(_same_pad(x, self.stride), self.weight, self.bias, stride=self.stride)


class _DenseBlock(nn.Module):
    def __init__(self, cin: int, cout: int, layers: int, first: bool) -> None:
        super().__init__()
        head: nn.Module = _Conv(cin, cout, 2) if first else _SeparableConv(cin, cout, 2)
        self.convs = nn.ModuleList([head] + [_SeparableConv(cout, cout, 1) for _ in range(layers - 1)])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        total = torch.relu(self.convs[0](x))
        for conv in self.convs[1:]:
            total = total + conv(torch.relu(total))
        return torch.relu(total)


class FaceLandmarkNet(nn.Module):
    """face-api.js's landmark network (``tiny=False``: 4 blocks of 4 layers to 256 channels;
    ``tiny=True``: 3 blocks of 3 layers to 128).

    Shape:
        ``(N, 3, 112, 112)`` RGB in ``[0, 255]`` -> ``(N, 68, 2)`` ``(x, y)`` fractions of the square.
    """

    def __init__(self, tiny: bool = False) -> None:
        super().__init__()
        self.tiny = bool(tiny)
        widths = (32, 64, 128) if tiny else (32, 64, 128, 256)
        layers = 3 if tiny else 4
        cins = (3,) + widths[:-1]
        self.blocks = nn.ModuleList([_DenseBlock(ci, co, layers, i == 0)
                                     for i, (ci, co) in enumerate(zip(cins, widths, strict=True))])
        self.fc = nn.Linear(widths[-1], 136)
        self.mean: torch.Tensor
        self.register_buffer("mean", torch.tensor(MEAN_RGB).view(1, 3, 1, 1), persistent=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = (x - self.mean) / 255.0
        for block in self.blocks:
            x = block(x)
        x = x.mean(dim=(2, 3))  # the average pool covers the whole 7x7 (tiny: 14x14) map
        return self.fc(x).view(-1, 68, 2)

    def load_tfjs(self, tensors: dict[str, np.ndarray], source: str | os.PathLike[str] = "<weights>") -> None:
        """Copy TensorFlow.js tensors (names as face-api.js's manifests) into the module, strictly."""
        params: dict[str, tuple[Any, Any]] = {}  # tensor name -> (parameter, layout change)
        for b, block in enumerate(self.blocks):
            assert isinstance(block, _DenseBlock)
            for i, conv in enumerate(block.convs):
                key = f"dense{b}/conv{i}/"
                if isinstance(conv, _Conv):  # HWIO -> OIHW
                    params[key + "filters"] = (conv.weight, lambda a: a.transpose(3, 2, 0, 1))
                else:  # depthwise HWC1 -> C1HW; pointwise 11IO -> OI11
                    params[key + "depthwise_filter"] = (conv.depthwise, lambda a: a.transpose(2, 3, 0, 1))
                    params[key + "pointwise_filter"] = (conv.pointwise, lambda a: a.transpose(3, 2, 0, 1))
                params[key + "bias"] = (conv.bias, lambda a: a)
        params["fc/weights"] = (self.fc.weight, lambda a: a.T)
        params["fc/bias"] = (self.fc.bias, lambda a: a)
        missing = sorted(set(params) - set(tensors))
        extra = sorted(set(tensors) - set(params))
        if missing or extra:
            what = f"missing {', '.join(missing[:3])}" if missing else f"unexpected {', '.join(extra[:3])}"
            kind = "tiny" if self.tiny else "full"
            raise WeightsError(f"{source}: not face-api.js's {kind} 68-point landmark model ({what})")
        with torch.no_grad():
            for name, (param, layout) in params.items():
                value = torch.from_numpy(np.ascontiguousarray(layout(tensors[name])))
                if value.shape != param.shape:
                    raise WeightsError(f"{source}: tensor {name!r} has shape {tuple(tensors[name].shape)}, "
                                       f"not the landmark model's")
                param.copy_(value)


def load_face_landmark_net(manifest: str | os.PathLike[str], tiny: bool | None = None) -> FaceLandmarkNet:
    """The network of a face-api.js landmark manifest; ``tiny=None`` tells the two apart by their tensors."""
    tensors = read_tfjs_weights(manifest)
    if tiny is None:
        tiny = "dense3/conv0/bias" not in tensors
    net = FaceLandmarkNet(tiny=tiny)
    net.load_tfjs(tensors, manifest)
    return net.eval()
