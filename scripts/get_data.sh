#!/usr/bin/env bash
# The dataset step of `make setup`: nothing if it is already found; else Debian's package
# dataset-fashion-mnist where apt-get can install it; else a download from the official mirror.
set -uo pipefail
PY=${PY:-.venv/bin/python}
$PY -m fmnist_exp.fetch_data 2>/dev/null && exit 0
if command -v apt-get >/dev/null && [ "$(id -u)" = 0 ]; then
  echo "Installing Debian package dataset-fashion-mnist ..."
  { apt-get install -y -qq dataset-fashion-mnist || { apt-get update -qq && apt-get install -y -qq dataset-fashion-mnist; }; } >/dev/null 2>&1
  $PY -m fmnist_exp.fetch_data && exit 0
fi
echo "Downloading Fashion-MNIST into data/fashion-mnist ..."
exec $PY -m fmnist_exp.fetch_data data.download=true
