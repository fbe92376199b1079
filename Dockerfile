# Images of starrating, one per target (`make images` builds them all):
#   serve    TorchServe with the starrating handler and the .mar files of model_store/
#            (compose, Kubernetes, and SageMaker hosting through `docker run IMAGE serve`)
#   gateway  the FastAPI gateway under uvicorn (no torch, transformers, MLflow or TorchServe)
#   train    a SageMaker training image, entry training/sagemaker_entry.py (the torch build of
#            pip's own index, on PyPI the CUDA one, unless TRAIN_TORCH_INDEX_URL names another
#            index)
# Each role installs its own pinned set, deploy/docker/requirements-<role>.lock (regenerate with
# deploy/docker/lock.sh), before any code is copied: code changes rebuild only the last layers.
#
# Build arguments: PYTHON_IMAGE (a Python 3.11 image with `python` and `pip` on PATH; where no
# registry can be pulled, `make base-images` builds one from Debian's packages), TORCH_VERSION,
# TORCH_INDEX_URL (serve: give it PyTorch's CPU wheel index, or pip's own index decides, which
# on PyPI is the much larger CUDA build), TRAIN_TORCH_INDEX_URL (train). That index is added to
# pip's own (its local +cpu version wins over the plain one); everything else comes through
# pip's own configuration: no index is named here. A TLS-intercepting proxy's CA bundle
# can be given to pip as the BuildKit secret `pip-ca` (`--secret id=pip-ca,src=FILE`); it never
# ends up in a layer.

ARG PYTHON_IMAGE=python:3.11-slim-bookworm

# ---------------------------------------------------------------------------------------------
FROM ${PYTHON_IMAGE} AS python-base
ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1
# One unprivileged user for every image: TorchServe writes its key file owner-only (0600) and
# the gateway, running as the same uid in its own container, reads it from a shared volume.
RUN groupadd --system --gid 10001 starrating \
    && useradd --system --uid 10001 --gid starrating --create-home --home-dir /home/starrating \
       --shell /usr/sbin/nologin starrating
WORKDIR /opt/starrating

# ---------------------------------------------------------------------------------------------
# Pinned dependencies per role. torch comes first from its own index (its dependencies pinned by
# the role's lock), then the lock itself.
FROM python-base AS deps-gateway
COPY deploy/docker/requirements-gateway.lock /tmp/requirements.lock
# numpy's and scipy's own test suites are a tenth of the image (~50 MB): dropped in the layer
# that installs them.
RUN --mount=type=secret,id=pip-ca \
    if [ -f /run/secrets/pip-ca ]; then export PIP_CERT=/run/secrets/pip-ca; fi \
    && pip install -r /tmp/requirements.lock \
    && site="$(python -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')" \
    && find "$site/numpy" "$site/scipy" -depth -type d -name tests -exec rm -rf {} +

# TorchServe and the handler: the CPU build of torch (serving needs no GPU here).
FROM python-base AS deps-serve
# TorchServe's frontend is Java; tini forwards SIGTERM to it. Installed before any of this
# project's files are copied, so a code change does not reinstall the JDK.
# hadolint ignore=DL3008
RUN apt-get update \
    && apt-get install -y --no-install-recommends openjdk-17-jre-headless tini \
    && rm -rf /var/lib/apt/lists/*
ARG TORCH_VERSION=2.13.0
ARG TORCH_INDEX_URL=
COPY deploy/docker/requirements-serve.lock /tmp/requirements.lock
RUN --mount=type=secret,id=pip-ca \
    if [ -f /run/secrets/pip-ca ]; then export PIP_CERT=/run/secrets/pip-ca; fi \
    && pip install ${TORCH_INDEX_URL:+--extra-index-url "${TORCH_INDEX_URL}"} \
       -c /tmp/requirements.lock "torch==${TORCH_VERSION}" \
    && pip install -r /tmp/requirements.lock

# Training: the default build of torch of pip's own index (on PyPI the CUDA one) for GPU
# instances; a CPU build where TRAIN_TORCH_INDEX_URL names a CPU index (tests, CPU instances).
FROM python-base AS deps-train
ARG TORCH_VERSION=2.13.0
ARG TRAIN_TORCH_INDEX_URL=
COPY deploy/docker/requirements-train.lock /tmp/requirements.lock
RUN --mount=type=secret,id=pip-ca \
    if [ -f /run/secrets/pip-ca ]; then export PIP_CERT=/run/secrets/pip-ca; fi \
    && pip install ${TRAIN_TORCH_INDEX_URL:+--extra-index-url "${TRAIN_TORCH_INDEX_URL}"} \
       -c /tmp/requirements.lock "torch==${TORCH_VERSION}" \
    && pip install -r /tmp/requirements.lock

# ---------------------------------------------------------------------------------------------
# The project's source, gathered once; installed on top of each role's dependencies (no
# dependency resolution there; pip fetches only the build backend, setuptools).
FROM scratch AS source
COPY pyproject.toml README.md /src/
COPY starrating /src/starrating
COPY cli /src/cli
COPY training /src/training
COPY handlers /src/handlers
COPY api /src/api
COPY abtesting /src/abtesting
COPY serving /src/serving
COPY loadtests /src/loadtests

FROM deps-gateway AS app-gateway
COPY --from=source /src/ ./
RUN --mount=type=secret,id=pip-ca \
    if [ -f /run/secrets/pip-ca ]; then export PIP_CERT=/run/secrets/pip-ca; fi \
    && pip install --no-deps .

FROM deps-serve AS app-serve
COPY --from=source /src/ ./
RUN --mount=type=secret,id=pip-ca \
    if [ -f /run/secrets/pip-ca ]; then export PIP_CERT=/run/secrets/pip-ca; fi \
    && pip install --no-deps .

FROM deps-train AS app-train
COPY --from=source /src/ ./
RUN --mount=type=secret,id=pip-ca \
    if [ -f /run/secrets/pip-ca ]; then export PIP_CERT=/run/secrets/pip-ca; fi \
    && pip install --no-deps .

# ---------------------------------------------------------------------------------------------
FROM app-serve AS serve
COPY deploy/torchserve/config.properties deploy/torchserve/sagemaker.properties /etc/starrating/torchserve/
COPY --chmod=0755 deploy/torchserve/entrypoint.sh /usr/local/bin/starrating-torchserve
COPY --chown=starrating:starrating model_store/ /opt/starrating/model-store/
# TorchServe writes key_file.json into its working directory: the state folder is a volume that
# the gateway mounts read-only (compose). TEMP keeps pid/socket files out of a shared /tmp.
RUN mkdir -p /var/lib/torchserve/state /var/lib/torchserve/tmp /var/log/torchserve \
    && chown -R starrating:starrating /var/lib/torchserve /var/log/torchserve
ENV TS_CONFIG_FILE=/etc/starrating/torchserve/config.properties \
    STARRATING_MODEL_STORE=/opt/starrating/model-store \
    TEMP=/var/lib/torchserve/tmp \
    LOG_LOCATION=/var/log/torchserve \
    METRICS_LOCATION=/var/log/torchserve
WORKDIR /var/lib/torchserve/state
USER 10001:10001
# 8080 inference, 8081 management, 8082 metrics. Publish only what a deployment needs: the
# management API stays on the internal network (compose publishes none of these ports).
EXPOSE 8080 8081 8082
HEALTHCHECK --interval=15s --timeout=5s --start-period=120s --retries=3 \
    CMD ["starrating-torchserve-healthcheck"]
# tini -g forwards SIGTERM to the whole group: the torchserve launcher and its Java frontend.
ENTRYPOINT ["tini", "-g", "--", "starrating-torchserve"]
CMD ["start"]

# ---------------------------------------------------------------------------------------------
FROM app-gateway AS gateway
# STARRATING_DRAIN_DELAY_S: on SIGTERM /readyz answers 503 for 5 s while requests are still
# served, so a load balancer polling it stops sending before the listener closes (compose
# keeps this; Kubernetes, whose preStop sleep already waited, sets less).
ENV STARRATING_HOST=0.0.0.0 \
    STARRATING_PORT=8000 \
    STARRATING_HOME=/var/lib/starrating \
    STARRATING_DRAIN_DELAY_S=5
RUN mkdir -p /var/lib/starrating && chown starrating:starrating /var/lib/starrating
USER 10001:10001
EXPOSE 8000
HEALTHCHECK --interval=10s --timeout=3s --start-period=20s --retries=3 \
    CMD ["python", "-c", "import sys, urllib.request; sys.exit(urllib.request.urlopen('http://127.0.0.1:8000/healthz', timeout=2).status != 200)"]
# On SIGTERM the gateway turns unready for STARRATING_DRAIN_DELAY_S (api/drain.py), then uvicorn
# stops accepting, lets in-flight requests finish (at most --timeout-graceful-shutdown seconds)
# and exits 0: stop within delay + 20 s (compose's stop_grace_period, Kubernetes' grace period).
CMD ["uvicorn", "api.app:create_app", "--factory", "--host", "0.0.0.0", "--port", "8000", "--proxy-headers", "--no-server-header", "--timeout-graceful-shutdown", "20"]

# ---------------------------------------------------------------------------------------------
# SageMaker training image. The job's source_code channel lands in /opt/ml/input/data/code and
# the SDK's torchrun driver starts training/sagemaker_entry.py there; without SageMaker the entry
# runs it directly (`docker run IMAGE --data ... --out ...`). No USER: SageMaker mounts
# /opt/ml/model, /opt/ml/checkpoints and /opt/ml/output owned by root and the job must write into
# them.
FROM app-train AS train
ENTRYPOINT ["python", "/opt/starrating/training/sagemaker_entry.py"]
