# fmnist-exp. On a fresh machine: `make train` (the main job) or `make test` (the suite);
# both run `make setup` first, which is idempotent.
PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
# The CPU wheel on this kind of machine. On a CUDA machine: make setup TORCH=torch
TORCH  ?= torch==2.13.0
PORT   ?= 5000
STORE  := $${MLFLOW_TRACKING_URI:-sqlite:///$(CURDIR)/mlruns/mlflow.db}
ARGS   ?=
# pytest workers for `make test` (pytest-xdist); 0 runs the suite in one process
TEST_WORKERS ?= 2

.DEFAULT_GOAL := help
.PHONY: help setup data browser train test lint report ui serve predict bench screenshot tracking-server mlflow-serve clean distclean

help:  ## list the targets
	@awk -F ':.*## ' '/^[a-z-]+:.*## / {printf "  make %-10s %s\n", $$1, $$2}' $(MAKEFILE_LIST)

setup: $(VENV)/.installed data browser postgres  ## .venv + the package (editable, dev/optuna/server extras) + dataset + chromium + postgresql

$(VENV)/.installed: pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q "$(TORCH)"
	$(PY) -m pip install -q -e ".[dev,optuna,server]"
	touch $@

data: $(VENV)/.installed  ## find the dataset, else apt-get dataset-fashion-mnist, else download it
	@PY=$(PY) scripts/get_data.sh

browser:  ## chromium + chromedriver from Debian, for the web app's browser test (skipped without them)
	@scripts/apt_install.sh "the browser test" "command -v chromium && command -v chromedriver" chromium chromium-driver

postgres:  ## Debian's postgresql, for the shared tracking server and its test (skipped without it)
	@scripts/apt_install.sh "the tracking-server test" "ls /usr/lib/postgresql/*/bin/initdb" postgresql

train: setup  ## the main job: LeNet+BN on Fashion-MNIST, tracked in MLflow (ARGS="..." for overrides)
	$(PY) -m fmnist_exp $(ARGS)

test: setup  ## ruff, then the test suite on fast configs and the real dataset
	$(PY) -m ruff check src tests scripts
	$(PY) -m pytest -n $(TEST_WORKERS) --dist worksteal $(ARGS)

lint: $(VENV)/.installed  ## ruff check + format check
	$(PY) -m ruff check src tests scripts
	$(PY) -m ruff format --check src tests scripts

report: $(VENV)/.installed  ## table, seeds folded (mean +- std) and chart of the latest sweep (ARGS="sweep=<id> out=DIR ...")
	$(PY) -m fmnist_exp.report $(ARGS)

serve: $(VENV)/.installed  ## web app on http://127.0.0.1:8000 for the best run (ARGS="model_uri=... port=...")
	$(PY) -m fmnist_exp.serve $(ARGS)

predict: $(VENV)/.installed  ## classify images: make predict ARGS="inputs=photos/ [model_uri=best] [out=preds.csv]"
	$(PY) -m fmnist_exp.predict $(ARGS)

bench: setup  ## plain PyTorch loop vs bare Lightning vs the framework: s/epoch and ratios (ARGS="--device cuda --record ...")
	$(PY) scripts/benchmark.py $(ARGS)

screenshot: setup  ## docs/serve_page.png, taken by the browser test
	FMNIST_SCREENSHOT=$(CURDIR)/docs/serve_page.png $(PY) -m pytest -q tests/test_serve.py -k browser

# PORT's default (5000) is the UI's; the tracking server's own default is 5001 unless PORT is given.
tracking-server: $(VENV)/.installed  ## MLflow server on http://127.0.0.1:5001 backed by PostgreSQL (PORT=..., DIR=...)
	PY=$(PY) PORT=$(if $(filter file,$(origin PORT)),5001,$(PORT)) scripts/tracking_server.sh start

# `mlflow models serve` runs `uvicorn` by name from PATH: the venv's bin/ goes first, activated or not.
mlflow-serve: $(VENV)/.installed  ## MLflow's own server for a logged model: make mlflow-serve MODEL=runs:/<id>/model [PORT=5002]
	@test -n "$(MODEL)" || { echo "error: MODEL is required, e.g. make mlflow-serve MODEL=runs:/<run_id>/model (run ids: make ui)" >&2; exit 2; }
	MLFLOW_TRACKING_URI="$(STORE)" PATH="$(CURDIR)/$(VENV)/bin:$$PATH" $(PY) -m mlflow models serve \
	  -m "$(MODEL)" --env-manager local -h 127.0.0.1 -p $(if $(filter file,$(origin PORT)),5002,$(PORT))

ui:  ## MLflow UI on http://127.0.0.1:5000 (PORT=...) over the project's store
	$(PY) -m mlflow ui --backend-store-uri "$(STORE)" --host 127.0.0.1 --port $(PORT)

clean:  ## caches and build files (never runs, checkpoints or the tracking DB)
	rm -rf build dist .pytest_cache .ruff_cache src/*.egg-info
	find . -name __pycache__ -not -path "./$(VENV)/*" -prune -exec rm -rf {} +

distclean: clean  ## also the virtual environment
	rm -rf $(VENV)
