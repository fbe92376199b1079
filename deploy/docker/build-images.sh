#!/usr/bin/env bash
# Builds the images (`make images`): one per Dockerfile target, IMAGE_PREFIX-TARGET:IMAGE_TAG.
# What a machine needs beyond the Dockerfile's defaults comes in as arguments, never as defaults:
#   PYTHON_IMAGE           base image (build arg; e.g. the one deploy/docker/base-image.sh makes)
#   PIP_CA_BUNDLE          CA bundle for pip behind a TLS-intercepting proxy (BuildKit secret)
#   TORCH_WHEEL            a local torch wheel, served to the build as its torch index on a
#                          loopback port, TORCH_WHEEL_PORT (47311; serve, and train unless
#                          TRAIN_TORCH_INDEX_URL is set)
#   TORCH_INDEX_URL, TRAIN_TORCH_INDEX_URL   other indexes for torch
#   DOCKER_BUILD_FLAGS     extra flags (default --network host: the build reaches PyPI and
#                          Debian, and the wheel's port, through the host's network)
#   TARGETS                default "serve gateway train"
# Prints each target's build time and image size.
set -euo pipefail
cd "$(dirname "$0")/../.."

docker="${DOCKER:-docker}"
prefix="${IMAGE_PREFIX:-starrating}"
tag="${IMAGE_TAG:-latest}"
targets="${TARGETS:-serve gateway train}"
read -r -a flags <<<"${DOCKER_BUILD_FLAGS:---network host}"
args=()
[ -n "${PYTHON_IMAGE:-}" ] && args+=(--build-arg "PYTHON_IMAGE=$PYTHON_IMAGE")
[ -n "${PIP_CA_BUNDLE:-}" ] && args+=(--secret "id=pip-ca,src=$PIP_CA_BUNDLE")
torch_index="${TORCH_INDEX_URL:-}"
train_index="${TRAIN_TORCH_INDEX_URL:-}"

server=""
cleanup() { if [ -n "$server" ]; then kill "$server" 2>/dev/null || true; fi; rm -rf "${index:-}"; }
trap cleanup EXIT
if [ -n "${TORCH_WHEEL:-}" ]; then
  # A one-package PEP 503 index: /torch/ lists the wheel (pip trusts plain HTTP on loopback).
  index="$(mktemp -d)"
  mkdir "$index/torch"
  ln -s "$(readlink -f "$TORCH_WHEEL")" "$index/torch/$(basename "$TORCH_WHEEL")"
  # A fixed port: the index URL is a build argument, so it is part of the layer cache's key.
  port="${TORCH_WHEEL_PORT:-47311}"
  if ! python3 -c "import socket; socket.socket().bind(('127.0.0.1', $port))" 2>/dev/null; then
    port="$(python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')"
    echo "images: port ${TORCH_WHEEL_PORT:-47311} is taken, serving the wheel on $port (no layer cache for torch)" >&2
  fi
  python3 -m http.server --bind 127.0.0.1 --directory "$index" "$port" >/dev/null 2>&1 &
  server=$!
  for _ in $(seq 50); do
    python3 -c "import urllib.request; urllib.request.urlopen('http://127.0.0.1:$port/torch/')" \
      2>/dev/null && break
    sleep 0.1
  done
  torch_index="${torch_index:-http://127.0.0.1:$port/}"
  train_index="${train_index:-http://127.0.0.1:$port/}"
fi
[ -n "$torch_index" ] && args+=(--build-arg "TORCH_INDEX_URL=$torch_index")
[ -n "$train_index" ] && args+=(--build-arg "TRAIN_TORCH_INDEX_URL=$train_index")

export DOCKER_BUILDKIT=1
for target in $targets; do
  image="$prefix-$target:$tag"
  start=$(date +%s)
  "$docker" build "${flags[@]}" "${args[@]}" --target "$target" --tag "$image" .
  seconds=$(($(date +%s) - start))
  size="$("$docker" image inspect --format '{{.Size}}' "$image" | awk '{printf "%.0f MB", $1/1e6}')"
  echo "images: $image built in ${seconds}s, $size"
done
