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
$PIP install -q -e ".[test,report]" \
    -e plugins/lb_fan -e plugins/lb_hrnet -e plugins/lb_avssan -e plugins/lb_codecs
