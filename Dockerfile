# syntax=docker/dockerfile:1.7
# Images of starrating, one per target (`make images` builds them all):
#   serve    TorchServe with the starrating handler and the .mar files of model_store/
#            (compose, Kubernetes, and SageMaker hosting through `docker run IMAGE serve`)
#   gateway  the FastAPI gateway under uvicorn
#   train    a SageMaker training image (CUDA build of torch), entry training/train.py
# Dependencies are pinned in deploy/docker/requirements.lock and installed before any code is
# copied, so code changes rebuild only the last layers.

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
# Pinned dependencies with the CPU build of torch (serving needs no GPU here).
FROM python-base AS deps-cpu
ARG TORCH_VERSION=2.13.0
ARG TORCH_INDEX_URL=https://download.pytorch.org/whl/cpu
COPY deploy/docker/requirements.lock /tmp/requirements.lock
RUN pip install --index-url "${TORCH_INDEX_URL}" "torch==${TORCH_VERSION}" \
    && pip install -r /tmp/requirements.lock

# Pinned dependencies with PyPI's default (CUDA) build of torch for GPU training.
FROM python-base AS deps-cuda
ARG TORCH_VERSION=2.13.0
COPY deploy/docker/requirements.lock /tmp/requirements.lock
RUN pip install "torch==${TORCH_VERSION}" \
    && pip install -r /tmp/requirements.lock

# ---------------------------------------------------------------------------------------------
# The project's source, gathered once; installed on top of either dependency stage (no
# dependency resolution there).
FROM scratch AS source
COPY pyproject.toml README.md /src/
COPY starrating /src/starrating
COPY training /src/training
COPY handlers /src/handlers
COPY api /src/api
COPY serving /src/serving
COPY loadtests /src/loadtests

FROM deps-cpu AS app-cpu
COPY --from=source /src/ ./
RUN pip install --no-deps .

FROM deps-cuda AS app-cuda
COPY --from=source /src/ ./
RUN pip install --no-deps .

# ---------------------------------------------------------------------------------------------
FROM app-cpu AS serve
# hadolint ignore=DL3008
RUN apt-get update \
    && apt-get install -y --no-install-recommends openjdk-17-jre-headless tini \
    && rm -rf /var/lib/apt/lists/*
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
FROM app-cpu AS gateway
ENV STARRATING_HOST=0.0.0.0 \
    STARRATING_PORT=8000 \
    STARRATING_HOME=/var/lib/starrating
RUN mkdir -p /var/lib/starrating && chown starrating:starrating /var/lib/starrating
USER 10001:10001
EXPOSE 8000
HEALTHCHECK --interval=10s --timeout=3s --start-period=20s --retries=3 \
    CMD ["python", "-c", "import sys, urllib.request; sys.exit(urllib.request.urlopen('http://127.0.0.1:8000/healthz', timeout=2).status != 200)"]
CMD ["uvicorn", "api.app:create_app", "--factory", "--host", "0.0.0.0", "--port", "8000", "--proxy-headers", "--no-server-header"]

# ---------------------------------------------------------------------------------------------
# SageMaker training image. The job's source_code channel lands in /opt/ml/input/data/code and
# the SDK's torchrun driver starts training/train.py there; without SageMaker the entry runs it
# directly (`docker run IMAGE --data ... --out ...`). No USER: SageMaker mounts /opt/ml/model,
# /opt/ml/checkpoints and /opt/ml/output owned by root and the job must write into them.
FROM app-cuda AS train
ENTRYPOINT ["python", "/opt/starrating/training/train.py"]
