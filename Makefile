# Two commands on a fresh machine: `make demo` and `make test`. Both build .venv first.
PYTHON ?= python3.11
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed
# torch first and pinned: a CPU wheel found on this machine's disk (see README, "Install").
TORCH  ?= torch==2.13.0

.PHONY: venv demo test lint unit loadtest soak bench images clean

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet $(TORCH)
	$(BIN)/pip install --quiet -e '.[dev]'
	touch $@

venv: $(STAMP)

demo: venv
	$(BIN)/starrating demo

lint: venv
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy

test: lint
	$(BIN)/pytest

unit: venv
	$(BIN)/pytest -m "not slow"

# Container images (needs a Docker engine): one per Dockerfile target, e.g. starrating-serve:latest.
IMAGE_PREFIX ?= starrating
IMAGE_TAG    ?= latest
images:
	for target in serve gateway train; do \
	  docker build --target $$target --tag $(IMAGE_PREFIX)-$$target:$(IMAGE_TAG) . || exit 1; \
	done

clean:
	rm -rf $(VENV) build *.egg-info .mypy_cache .ruff_cache .pytest_cache
