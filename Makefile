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
	$(BIN)/lint-imports

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

# Load test against a RUNNING stack (`starrating serve`): bounded, headless; the CSV summary goes
# to docs/loadtest/, the HTML report to var/loadtest/.
LOADTEST_HOST  ?= http://127.0.0.1:8000
LOADTEST_USERS ?= 20
LOADTEST_TIME  ?= 60s
loadtest: venv
	mkdir -p docs/loadtest var/loadtest
	$(BIN)/locust -f loadtests/locustfile.py --headless --host $(LOADTEST_HOST) \
	  --users $(LOADTEST_USERS) --spawn-rate 5 --run-time $(LOADTEST_TIME) --only-summary \
	  --csv docs/loadtest/locust --html var/loadtest/report.html

# Soak (minutes; starts its own stack, not part of `make test`): errors, latency and memory of
# every process under sustained locust traffic; the report goes to docs/soak.md.
SOAK_DURATION ?= 300
SOAK_USERS    ?= 6
soak: venv
	$(BIN)/python -m loadtests.soak --duration $(SOAK_DURATION) --users $(SOAK_USERS) \
	  --report docs/soak.md --json var/soak.json

# The benchmarks (minutes; they start their own servers): results as JSON in docs/bench/.
bench: venv
	$(BIN)/starrating bench serving --json docs/bench/serving.json
	$(BIN)/starrating bench training --json docs/bench/training.json

clean:
	rm -rf $(VENV) build *.egg-info .mypy_cache .ruff_cache .pytest_cache
