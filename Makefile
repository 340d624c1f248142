# fmnist-exp. On a fresh machine: `make train` (the main job) or `make test` (the suite); both run
# `make setup` first, which installs only what is missing or changed.
PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
# torch, installed before the locked packages. From PyPI it is the build your platform resolves (on
# Linux x86_64 the CUDA build, several GB); TORCH_INDEX=cpu takes PyTorch's CPU-only wheels instead.
# Giving either (make setup TORCH_INDEX=cpu) reinstalls torch in an existing .venv when it differs from
# the choice recorded in .venv/.torch; later calls without them keep the recorded choice.
TORCH       ?= torch==2.13.0
TORCH_INDEX ?=
TORCH_ARGS  := "$(TORCH)" $(if $(TORCH_INDEX),--index-url https://download.pytorch.org/whl/$(TORCH_INDEX))
TORCH_GIVEN := $(filter-out file,$(origin TORCH) $(origin TORCH_INDEX))
PORT   ?= 5000
STORE  := $${MLFLOW_TRACKING_URI:-sqlite:///$(CURDIR)/mlruns/mlflow.db}
# where hparams_search=optuna keeps its studies by default (beside the sqlite tracking store)
SEARCH_STORE ?= sqlite:///$(CURDIR)/mlruns/optuna.db
ARGS   ?=
# pytest workers for `make test` (pytest-xdist); 0 runs the suite in one process
TEST_WORKERS ?= 2

.DEFAULT_GOAL := help
.PHONY: help setup data test-deps browser postgres train test lint lock report ui dashboard serve predict eval bench screenshot tracking-server mlflow-serve clean distclean FORCE

help:  ## list the targets
	@awk -F ':.*## ' '/^[a-z-]+:.*## / {printf "  make %-15s %s\n", $$1, $$2}' $(MAKEFILE_LIST)

setup: $(VENV)/.installed data  ## .venv with torch, the locked packages (requirements.lock) and this package, editable + the dataset

# torch first, so the locked packages find it; the file records which torch was asked for.
$(VENV)/.torch: FORCE
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	@if [ ! -f $@ ] || { [ -n "$(TORCH_GIVEN)" ] && [ "$$(cat $@)" != '$(TORCH_ARGS)' ]; }; then \
	  echo 'Installing $(TORCH_ARGS) ...'; \
	  $(PY) -m pip install -q --force-reinstall $(TORCH_ARGS) && echo '$(TORCH_ARGS)' > $@; \
	fi

$(VENV)/.installed: pyproject.toml requirements.lock $(VENV)/.torch
	$(PY) -m pip install -q -r requirements.lock
	$(PY) -m pip install -q --no-deps -e .
	touch $@

data: $(VENV)/.installed  ## find the dataset, else apt-get dataset-fashion-mnist, else download it
	@PY=$(PY) scripts/get_data.sh

test-deps: $(VENV)/.dev-installed browser postgres  ## what only the tests need: requirements-dev.lock, a browser, PostgreSQL

# pytest, ruff, optuna-dashboard and the PostgreSQL driver: the extras dev, dashboard and server
$(VENV)/.dev-installed: $(VENV)/.installed requirements-dev.lock
	$(PY) -m pip install -q -r requirements-dev.lock
	touch $@

browser:  ## chromium + chromedriver from Debian, for the web app's browser test
	@scripts/apt_install.sh "the browser test" "command -v chromium && command -v chromedriver" chromium chromium-driver

postgres:  ## Debian's postgresql, for the shared tracking server and its test
	@scripts/apt_install.sh "the tracking-server test" "ls /usr/lib/postgresql/*/bin/initdb" postgresql

train: setup  ## the main job: LeNet+BN on Fashion-MNIST, tracked in MLflow (ARGS="..." for overrides)
	$(PY) -m fmnist_exp $(ARGS)

test: setup test-deps  ## ruff, then the test suite on fast configs and the real dataset
	$(PY) -m ruff check src tests scripts
	$(PY) -m pytest -n $(TEST_WORKERS) --dist worksteal $(ARGS)

lint: $(VENV)/.dev-installed  ## ruff check + format check
	$(PY) -m ruff check src tests scripts
	$(PY) -m ruff format --check src tests scripts

LOCK_ARGS := -q --upgrade --strip-extras --unsafe-package torch --no-emit-index-url --no-emit-find-links
lock: $(VENV)/.installed  ## refresh requirements.lock and requirements-dev.lock: the newest versions pyproject.toml allows
	$(PY) -m pip install -q pip-tools
	$(PY) -m piptools compile $(LOCK_ARGS) -o requirements.lock pyproject.toml
	$(PY) -m piptools compile $(LOCK_ARGS) --extra dev --extra dashboard --extra server -c requirements.lock \
	  -o requirements-dev.lock pyproject.toml
	$(PY) scripts/lock_filter.py requirements.lock requirements-dev.lock

report: $(VENV)/.installed  ## tables, seeds folded (mean +- std) and chart of the latest sweep (ARGS="sweep=<id> out=DIR ...")
	$(PY) -m fmnist_exp.report $(ARGS)

eval: $(VENV)/.installed  ## a model's test accuracy, measured again (ARGS="model_uri=runs:/<id>/model")
	$(PY) -m fmnist_exp.eval $(ARGS)

serve: $(VENV)/.installed  ## web app on http://127.0.0.1:8000 for the best run (ARGS="model_uri=... port=...")
	$(PY) -m fmnist_exp.serve $(ARGS)

predict: $(VENV)/.installed  ## classify images: make predict ARGS="inputs=photos/ [model_uri=best] [out=preds.csv]"
	$(PY) -m fmnist_exp.predict $(ARGS)

bench: setup  ## the framework vs a plain PyTorch loop (eager and compiled) and bare Lightning, both overhead-bound regimes (ARGS="--device cuda --record ...")
	$(PY) scripts/benchmark.py $(ARGS)

screenshot: setup browser  ## docs/serve_page.png, taken by the browser test
	FMNIST_SCREENSHOT=$(CURDIR)/docs/serve_page.png $(PY) -m pytest -q tests/test_serve.py -k browser

# PORT's default (5000) is the UI's; the tracking server's own default is 5001 unless PORT is given.
tracking-server: $(VENV)/.dev-installed postgres  ## MLflow server on http://127.0.0.1:5001 backed by PostgreSQL (PORT=..., DIR=...)
	PY=$(PY) PORT=$(if $(filter file,$(origin PORT)),5001,$(PORT)) scripts/tracking_server.sh start

# `mlflow models serve` runs `uvicorn` by name from PATH: the venv's bin/ goes first, activated or not.
mlflow-serve: $(VENV)/.installed  ## MLflow's own server for a logged model: make mlflow-serve MODEL=runs:/<id>/model [PORT=5002]
	@test -n "$(MODEL)" || { echo "error: MODEL is required, e.g. make mlflow-serve MODEL=runs:/<run_id>/model (run ids: make ui)" >&2; exit 2; }
	MLFLOW_TRACKING_URI="$(STORE)" PATH="$(CURDIR)/$(VENV)/bin:$$PATH" $(PY) -m mlflow models serve \
	  -m "$(MODEL)" --env-manager local -h 127.0.0.1 -p $(if $(filter file,$(origin PORT)),5002,$(PORT))

ui: $(VENV)/.installed  ## MLflow UI on http://127.0.0.1:5000 (PORT=...): prints the address of the runs table, best test/acc first
	$(PY) -m fmnist_exp.ui port=$(PORT) $(ARGS)

dashboard: $(VENV)/.dev-installed  ## optuna-dashboard on http://127.0.0.1:8080 over the studies of hparams_search=optuna (PORT=...)
	$(VENV)/bin/optuna-dashboard "$(SEARCH_STORE)" --host 127.0.0.1 --port $(if $(filter file,$(origin PORT)),8080,$(PORT))

clean:  ## caches and build files (never runs, checkpoints or the tracking DB)
	rm -rf build dist .pytest_cache .ruff_cache src/*.egg-info
	find . -name __pycache__ -not -path "./$(VENV)/*" -prune -exec rm -rf {} +

distclean: clean  ## also the virtual environment
	rm -rf $(VENV)
