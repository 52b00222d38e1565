#!/usr/bin/env bash
# Install the headless browser the demo page's test drives (tests/inference/test_demo_page.py):
# Debian's chromium and chromium-driver, through apt-get, only when one of them is missing.
# Safe to re-run: with both present it does nothing and prints nothing. Needs root (or sudo)
# for apt-get; on a system without apt-get it says what to install and exits 1.
set -euo pipefail

if command -v chromium >/dev/null 2>&1 && command -v chromedriver >/dev/null 2>&1; then
    exit 0
fi
if ! command -v apt-get >/dev/null 2>&1; then
    echo "install_browser.sh: no apt-get here; install Chromium and a matching chromedriver, then rerun the tests" >&2
    exit 1
fi
sudo=""
if [ "$(id -u)" -ne 0 ]; then
    if ! command -v sudo >/dev/null 2>&1; then
        echo "install_browser.sh: apt-get needs root; run it as root or install sudo" >&2
        exit 1
    fi
    sudo="sudo"
fi
export DEBIAN_FRONTEND=noninteractive
log=$(mktemp)
trap 'rm -f "$log"' EXIT
if ! { $sudo apt-get update -qq && $sudo apt-get install -y -qq --no-install-recommends chromium chromium-driver; } >"$log" 2>&1; then
    tail -n 20 "$log" >&2
    echo "install_browser.sh: apt-get could not install chromium and chromium-driver (the log's end is above)" >&2
    exit 1
fi
echo "install_browser.sh: $(chromium --version 2>/dev/null | head -n 1), $(chromedriver --version | head -n 1)"
