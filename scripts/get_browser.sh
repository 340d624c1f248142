#!/usr/bin/env bash
# The browser step of `make setup`: Debian's chromium + chromium-driver for the web app's browser
# test. Needs apt-get as root; elsewhere it says so and the test skips with that reason.
set -uo pipefail
command -v chromium >/dev/null && command -v chromedriver >/dev/null && exit 0
if command -v apt-get >/dev/null && [ "$(id -u)" = 0 ]; then
  echo "Installing Debian packages chromium chromium-driver (for the browser test) ..."
  pkgs="chromium chromium-driver"
  { apt-get install -y -qq --no-install-recommends $pkgs || { apt-get update -qq && apt-get install -y -qq --no-install-recommends $pkgs; }; } >/dev/null 2>&1 \
    && exit 0
fi
echo "note: chromium/chromedriver not installed (needs apt-get as root); the browser test will skip."
