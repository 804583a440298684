"""Make tests/data/attention_reference.npz: MediaPipe's own 478 landmarks on the faces68 crops.

The TFLite runtime lacks MediaPipe's custom operators, so the reference is the mediapipe package
itself (0.10.21), run in a separate virtual environment (it needs numpy<2), never in the
project's. Two steps:

1. project venv: ``.venv/bin/python plugins/lb_mediapipe/tools/attention_reference.py crops CROPS.npz``
   - the mediapipe extractor's 192x192 crops of the four annotated faces (box from the markup),
   rounded to uint8 (MediaPipe takes 8-bit images).
2. mediapipe venv (``python3.11 -m venv V && V/bin/pip install --no-deps mediapipe==0.10.21`` plus
   absl-py, attrs, flatbuffers, numpy<2, protobuf<5, opencv-python-headless, matplotlib):
   ``V/bin/python plugins/lb_mediapipe/tools/attention_reference.py run CROPS.npz OUT.npz`` runs
   MediaPipe's ``FaceLandmarkCpu`` graph with ``WITH_ATTENTION`` true and the whole crop as the ROI
   (so MediaPipe's own resampling is the identity) and stores the normalised 478 landmarks.
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np

FACES68 = Path(__file__).resolve().parents[3] / "shared" / "data" / "faces68"
if not FACES68.is_dir():
    FACES68 = Path("/work/shared/data/faces68")


def make_crops(path: str) -> None:
    import cv2
    import torch

    from lb_mediapipe.extractor import FaceMeshExtractor
    from lbcore.extractor import affine_crop
    from lbcore.io.annotations import box_from_landmarks, read_pts
    from lbcore.types import Faces

    shell = FaceMeshExtractor(None)  # type: ignore[arg-type]  # crop rule only
    crops, names = [], []
    for pts in sorted(FACES68.glob("*.pts")):
        img = next(p for p in FACES68.glob(pts.stem + ".*") if p.suffix != ".pts")
        rgb = cv2.cvtColor(cv2.imread(str(img), cv2.IMREAD_COLOR), cv2.COLOR_BGR2RGB)
        gt = np.asarray(read_pts(pts), dtype=np.float64)
        x = torch.from_numpy(rgb).permute(2, 0, 1)[None].float()
        faces = Faces.from_lists([[box_from_landmarks(gt)]])
        c = affine_crop(x, faces.image_index, shell.crop_theta(faces.boxes), (192, 192))
        crops.append(c[0].permute(1, 2, 0).round().clamp(0, 255).to(torch.uint8).numpy())
        names.append(img.name)
    np.savez(path, crops=np.stack(crops), names=np.array(names))


def run_mediapipe(crops_path: str, out_path: str) -> None:
    import os

    import mediapipe as mp
    from google.protobuf import text_format
    from mediapipe.framework import calculator_pb2
    from mediapipe.framework.formats import rect_pb2
    from mediapipe.python import packet_creator, packet_getter
    from mediapipe.python._framework_bindings import calculator_graph, image_frame, resource_util

    resource_util.set_resource_dir(os.path.dirname(os.path.dirname(os.path.abspath(mp.__file__))))
    cfg = text_format.Parse(
        'input_stream: "image" input_stream: "roi" input_side_packet: "with_attention" '
        'output_stream: "landmarks" node { calculator: "FaceLandmarkCpu" input_stream: "IMAGE:image" '
        'input_stream: "ROI:roi" input_side_packet: "WITH_ATTENTION:with_attention" '
        'output_stream: "LANDMARKS:landmarks" }', calculator_pb2.CalculatorGraphConfig())
    data = np.load(crops_path)
    got: dict[int, object] = {}
    graph = calculator_graph.CalculatorGraph(graph_config=cfg)
    graph.observe_output_stream("landmarks", lambda _s, p: got.__setitem__(p.timestamp.value, packet_getter.get_proto(p)))
    graph.start_run({"with_attention": packet_creator.create_bool(True)})
    roi = rect_pb2.NormalizedRect(x_center=0.5, y_center=0.5, width=1.0, height=1.0, rotation=0.0)
    for i, crop in enumerate(data["crops"]):
        frame = packet_creator.create_image_frame(image_format=image_frame.ImageFormat.SRGB, data=np.ascontiguousarray(crop))
        graph.add_packet_to_input_stream("image", frame.at(i + 1))
        graph.add_packet_to_input_stream("roi", packet_creator.create_proto(roi).at(i + 1))
    graph.close()
    out = np.full((len(data["crops"]), 478, 3), np.nan, np.float32)
    for ts, lms in got.items():
        out[ts - 1] = [[p.x, p.y, p.z] for p in lms.landmark]  # type: ignore[attr-defined]
    np.savez_compressed(out_path, landmarks=out, names=data["names"], mediapipe=np.array(mp.__version__))
    print(f"{len(got)} of {len(out)} crops gave landmarks; wrote {out_path}")


if __name__ == "__main__":
    if sys.argv[1:2] == ["crops"]:
        make_crops(sys.argv[2])
    elif sys.argv[1:2] == ["run"]:
        run_mediapipe(sys.argv[2], sys.argv[3])
    else:
        sys.exit(__doc__)
