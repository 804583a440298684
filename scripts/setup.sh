#!/bin/sh
# Set up everything on a fresh machine (Python >= 3.10 with pip and venv): a virtual
# environment in .venv with the CPU build of torch, the core and every first-party plugin,
# and the test tools. Safe to run again (it only installs what is missing).
set -eu
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
    "$PY" -m venv .venv
fi
PIP=".venv/bin/python -m pip --disable-pip-version-check"
# setuptools' build backend warns about every editable install (five boxes of text): not useful here
export PYTHONWARNINGS="ignore"
# the last line says what to run next (a trap, so that lines appended below still run first)
trap 'rc=$?; [ "$rc" -eq 0 ] && echo "Set up. Next: .venv/bin/lb protect --example -o protected/  (or . .venv/bin/activate; lb --help)"; exit "$rc"' EXIT
$PIP install -q --upgrade pip >/dev/null
# Pin torch first: an unpinned torch could pull a multi-GB CUDA build. Never torchvision.
$PIP install -q "torch==2.13.0"
$PIP install -q -e ".[all,test,report]" \
    -e plugins/lb_fan -e plugins/lb_hrnet -e plugins/lb_avssan -e plugins/lb_codecs
# lb-onnx: onnx2torch without its torchvision requirement (only two operators need it), and
# MTCNN's ONet weights from the facenet-pytorch wheel into the weights cache (sha256-checked).
$PIP install -q "onnx>=1.14" && $PIP install -q --no-deps "onnx2torch==1.5.15" && $PIP install -q -e plugins/lb_onnx
.venv/bin/python plugins/lb_onnx/scripts/fetch_onet.py
# dlib's CNN face detector model (mmod_human_face_detector.dat) for the default face detector
# (`auto` = hog-cnn); without it `auto` falls back to dlib-hog and says so
$PIP install -q "face-recognition-models>=0.3"
# lb-dlib: dlib's 68-point model (shape_predictor_68_face_landmarks.dat, from the same package; lb-dlib
# only reads the file, it never imports the package)
$PIP install -q -e plugins/lb_dlib
# MediaPipe Face Mesh / BlazeFace: the plugin, its flatbuffer reader and the TFLite runtime its
# tests compare with; then MediaPipe's .tflite files, taken out of the mediapipe 0.10.21 wheel
# into the weights folder (skipped when already there; never installs mediapipe itself)
$PIP install -q -e "plugins/lb_mediapipe[test]"
.venv/bin/python -m lb_mediapipe.fetch || echo "warning: MediaPipe model files not fetched; the mediapipe extractor and blazeface detector need them" >&2
# lb-faceapi: face-api.js's 68-point landmark networks (full and tiny); their TensorFlow.js weight
# files are taken out of the @vladmandic/face-api npm package (a plain HTTPS download from the
# npm registry, sha512- and sha256-checked; npm itself is not needed)
$PIP install -q -e plugins/lb_faceapi
.venv/bin/python -m lb_faceapi.fetch || echo "warning: face-api.js model files not fetched; the faceapi68 extractors need them" >&2
