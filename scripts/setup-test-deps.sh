#!/usr/bin/env bash
# Installs what the test suite needs beyond Python packages: headless Chromium (Debian's package,
# driven by Playwright without `playwright install`) and llama.cpp's OpenAI-compatible server.
set -euo pipefail
PIP=${PIP:-python -m pip}

if ! command -v chromium >/dev/null 2>&1 && [ ! -x /usr/bin/chromium ]; then
    if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
        apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null
    else
        echo "setup-test-deps: chromium is missing (apt-get install chromium); browser tests will fail" >&2
    fi
fi
$PIP install -q "playwright>=1.40"
# compiles llama.cpp from source on first install (~6 min on 2 cores); pip caches the wheel
$PIP install -q "llama-cpp-python[server]>=0.3"
