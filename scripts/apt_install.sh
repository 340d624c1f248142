#!/usr/bin/env bash
# Optional Debian packages for `make test-deps`: scripts/apt_install.sh "<what they are for>" <test> <pkg>...
# Nothing to do when <test> (a shell command) succeeds; else apt-get install where it runs as root;
# elsewhere a note, and the tests that need the packages skip with that reason.
set -uo pipefail
purpose=$1; check=$2; shift 2
bash -c "$check" >/dev/null 2>&1 && exit 0
if command -v apt-get >/dev/null && [ "$(id -u)" = 0 ]; then
  echo "Installing Debian packages $* ($purpose) ..."
  { apt-get install -y -qq --no-install-recommends "$@" || { apt-get update -qq && apt-get install -y -qq --no-install-recommends "$@"; }; } >/dev/null 2>&1 \
    && exit 0
fi
echo "note: could not install $* (needs apt-get as root): $purpose will be skipped."
