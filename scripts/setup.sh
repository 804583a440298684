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
$PIP install -q --upgrade pip >/dev/null
# Pin torch first: an unpinned torch could pull a multi-GB CUDA build. Never torchvision.
$PIP install -q "torch==2.13.0"
$PIP install -q -e ".[test,report]" \
    -e plugins/lb_fan -e plugins/lb_hrnet -e plugins/lb_avssan -e plugins/lb_codecs
# MediaPipe Face Mesh / BlazeFace: the plugin, its flatbuffer reader and the TFLite runtime its
# tests compare with; then MediaPipe's .tflite files, taken out of the mediapipe 0.10.21 wheel
# into the weights folder (skipped when already there; never installs mediapipe itself)
$PIP install -q -e "plugins/lb_mediapipe[test]"
.venv/bin/python -m lb_mediapipe.fetch || echo "warning: MediaPipe model files not fetched; the mediapipe extractor and blazeface detector need them" >&2
