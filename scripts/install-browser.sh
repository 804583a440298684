#!/bin/sh
# What the end-to-end page test (tests/test_web_browser.py) needs: Debian's headless Chromium
# and its matching driver (chromium, chromium-driver), and Selenium in .venv. Safe to run again
# (installs only what is missing). Without root or apt-get the browser cannot be installed: it
# says so and the test skips with that reason.
set -eu
cd "$(dirname "$0")/.."
if ! command -v chromium >/dev/null 2>&1 || ! command -v chromedriver >/dev/null 2>&1; then
    if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
        echo "install-browser: installing chromium and chromium-driver (Debian packages)" >&2
        apt-get update -qq
        DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium chromium-driver >/dev/null
    else
        echo "install-browser: cannot install chromium (needs root and apt-get); the browser test will skip" >&2
    fi
fi
if [ ! -x .venv/bin/python ]; then
    sh scripts/setup.sh  # the project's environment first (selenium goes into it)
fi
if ! .venv/bin/python -c "import selenium" 2>/dev/null; then
    .venv/bin/python -m pip --disable-pip-version-check install -q "selenium>=4.20,<5"
fi
