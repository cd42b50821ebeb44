#!/usr/bin/env bash
# Installs what the test suite needs beyond Python packages: headless Chromium (Debian's package,
# driven by Playwright without `playwright install`) and llama.cpp's OpenAI-compatible server.
set -euo pipefail
PIP=${PIP:-python -m pip}
CONSTRAINTS=${CONSTRAINTS:-constraints.txt}

if ! command -v chromium >/dev/null 2>&1 && [ ! -x /usr/bin/chromium ]; then
    if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
        apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null
    else
        echo "setup-test-deps: chromium is missing (apt-get install chromium); browser tests will fail" >&2
    fi
fi
# the versions come from the constraints file: the suite depends on their behaviour (a llama.cpp
# release can change greedy answers; Playwright the driver protocol Chromium speaks)
$PIP install -q -c "$CONSTRAINTS" playwright
# compiles llama.cpp from source on first install (~6 min on 2 cores); pip caches the wheel
$PIP install -q -c "$CONSTRAINTS" "llama-cpp-python[server]"
