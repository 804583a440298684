"""Export an lbcore extractor's network to ONNX (what the offline tests and measurements load).

``python -m lb_onnx.export SPEC OUT.onnx`` writes the network part of an extractor (the crop,
normalisation and decoding stay outside the graph; the matching description says them):

* ``fan...`` (lb-fan, e.g. ``fan-demo``): normalised crop -> last stack's heat-maps;
  description ``fan-demo`` for the demo model.
* ``example-regressor`` (examples/lb_example_regressor): normalised crop -> 68 x (x, y) in
  crop units; :func:`regressor_description` gives its description.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import torch

__all__ = ["export_network", "export_module", "regressor_description", "main"]


class _FANHead(torch.nn.Module):
    def __init__(self, fan: torch.nn.Module) -> None:
        super().__init__()
        self.fan = fan

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fan(x)[-1]


class _RegressorHead(torch.nn.Module):
    def __init__(self, reg: Any) -> None:
        super().__init__()
        self.features = reg.features
        self.head = reg.head

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x).flatten(1))


def _network(extractor: Any) -> tuple[torch.nn.Module, int]:
    name = type(extractor).__name__
    if name == "FANExtractor":
        return _FANHead(extractor.net), int(extractor.input_size[0])
    if name == "CoordinateRegressor":
        return _RegressorHead(extractor), int(extractor.input_size)
    raise ValueError(f"no ONNX export recipe for {name} (known: FANExtractor, CoordinateRegressor)")


def export_module(module: torch.nn.Module, path: str | Path, size: int, *, dynamic: bool = True,
                  outputs: tuple[str, ...] = ("output",), opset: int = 17) -> Path:
    """``torch.onnx.export`` (TorchScript exporter) of a module taking ``(N, 3, size, size)``;
    ``dynamic=False`` fixes the batch to 1, as many published files do."""
    import warnings

    x = torch.zeros(2 if dynamic else 1, 3, size, size)
    axes = {"input": {0: "batch"}, **{o: {0: "batch"} for o in outputs}} if dynamic else None
    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore")  # the exporter's notes on its own deprecation
        torch.onnx.export(module.eval(), (x,), str(path), dynamo=False, input_names=["input"],
                          output_names=list(outputs), dynamic_axes=axes, opset_version=opset)
    return Path(path)


def export_network(extractor: Any, path: str | Path, *, dynamic_batch: bool = True, opset: int = 17) -> Path:
    """Write the extractor's network to ``path`` with ``torch.onnx.export`` (TorchScript exporter)."""
    net, size = _network(extractor)
    return export_module(net, path, size, dynamic=dynamic_batch, opset=opset)


def regressor_description(extractor: Any) -> dict[str, Any]:
    """The description of an exported ``CoordinateRegressor`` (its crop, scaling and output)."""
    n = int(extractor.input_size)
    return {
        "name": "example-regressor", "scheme": "ibug68", "input_size": n,
        "crop": {"rule": "box", "side": "mean", "enlarge": float(extractor.context), "align": "area"},
        "normalise": {"channels": "RGB", "divide": 127.5, "mean": 1.0, "std": 1.0},
        "decode": {"kind": "coords", "coords_output": 0, "coords_dim": 2, "coords_scale": float(n),
                   "coords_shift": -0.5, "heatmap_output": None,
                   "render_size": int(extractor.heatmap_size), "render_sigma": float(extractor.sigma)},
    }


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    if len(args) != 2:
        print("usage: python -m lb_onnx.export SPEC OUT.onnx", file=sys.stderr)
        return 2
    from lbcore.plugins import get_plugin_manager

    ext = get_plugin_manager().build("extractors", args[0])
    print(export_network(ext, args[1]))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
