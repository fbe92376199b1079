#!/usr/bin/env bash
# `make compose-up` / `make compose-down`: the shipped docker-compose.yml on a machine that can
# pull no image, with docker-compose.offline.yml for the third-party services (see that file).
#   compose.sh up     start the stack; returns once every service is healthy, or fails with the
#                     log of the service that is not (COMPOSE_TIMEOUT seconds, default 300)
#   compose.sh down   stop and remove it; volumes stay (COMPOSE_DOWN_FLAGS=-v removes them)
# Settings (environment): COMPOSE_PROJECT (default starrating), COMPOSE_ENV_FILE (default .env
# when there is one, else var/compose/compose.env, generated with random secrets on first use),
# STARRATING_GATEWAY_PORT (8000), PYTHON (the venv's, to archive the tiny test model when
# model_store/ has no .mar), DOCKER, IMAGE_PREFIX, IMAGE_TAG, BASE_IMAGE.
set -euo pipefail
cd "$(dirname "$0")/../.."

docker="${DOCKER:-docker}"
project="${COMPOSE_PROJECT:-starrating}"
prefix="${IMAGE_PREFIX:-starrating}"
tag="${IMAGE_TAG:-latest}"
base="${BASE_IMAGE:-$prefix-python:3.11-bookworm}"
timeout="${COMPOSE_TIMEOUT:-300}"
python="${PYTHON:-.venv/bin/python}"
env_file="${COMPOSE_ENV_FILE:-}"
if [ -z "$env_file" ]; then
  if [ -f .env ]; then env_file=.env; else env_file=var/compose/compose.env; fi
fi
export STARRATING_IMAGE_PREFIX="$prefix" STARRATING_IMAGE_TAG="$tag" STARRATING_BASE_IMAGE="$base"

compose() {
  docker-compose --project-name "$project" --env-file "$env_file" \
    -f docker-compose.yml -f docker-compose.offline.yml "$@"
}

ensure_env_file() {
  [ -f "$env_file" ] && return
  mkdir -p "$(dirname "$env_file")"
  (
    umask 077
    for name in STARRATING_ADMIN_TOKEN STARRATING_POSTGRES_PASSWORD GRAFANA_ADMIN_PASSWORD; do
      echo "$name=$(python3 -c 'import secrets; print(secrets.token_hex(24))')"
    done >"$env_file"
  )
  echo "compose: secrets generated in $env_file (kept for the next up)"
}

ensure_archives() {
  local store="${STARRATING_MODEL_STORE_DIR:-model_store}"
  if ls "$store"/*.mar >/dev/null 2>&1; then return; fi
  if [ "$store" != model_store ]; then
    echo "compose: no .mar archive in $store" >&2
    exit 1
  fi
  echo "compose: model_store/ has no .mar: archiving the tiny test model as versions 1.0 and 2.0"
  "$python" deploy/docker/tiny_model_store.py model_store
}

ensure_images() {
  for target in serve gateway; do
    if ! "$docker" image inspect "$prefix-$target:$tag" >/dev/null 2>&1; then
      echo "compose: image $prefix-$target:$tag is missing: run 'make images' first" >&2
      exit 1
    fi
  done
  for service in postgres prometheus; do
    local image
    image="$(compose config | python3 -c "import sys, yaml; print(yaml.safe_load(sys.stdin)['services']['$service']['image'])")"
    if ! "$docker" image inspect "$image" >/dev/null 2>&1; then
      echo "compose: building $image from Debian's packages"
      DOCKER_BUILDKIT=1 "$docker" build --network host --build-arg "BASE_IMAGE=$base" \
        --tag "$image" "deploy/docker/$service"
    fi
  done
}

# Prints "SERVICE STATE" for every service container; state is the health status where the
# container has a healthcheck, else its run state.
states() {
  local service id
  for service in $(compose config --services); do
    id="$(compose ps -q "$service" 2>/dev/null || true)"
    [ -z "$id" ] && continue
    echo "$service $("$docker" inspect --format '{{if .State.Health}}{{.State.Health.Status}}{{else}}{{.State.Status}}{{end}}' "$id")"
  done
}

fail_with_logs() {
  local service="$1" why="$2"
  echo "compose: $service is $why; its log:" >&2
  compose logs --no-color --tail 200 "$service" >&2 || true
  exit 1
}

up() {
  ensure_env_file
  ensure_archives
  ensure_images
  local start=$SECONDS
  if ! compose up -d --no-build; then
    # compose stops at a dependency that turned unhealthy: show that one's log.
    local service state
    while read -r service state; do
      [ "$state" = healthy ] || fail_with_logs "$service" "$state"
    done < <(states)
    exit 1
  fi
  local pending service state running
  while true; do
    pending=""
    while read -r service state; do
      case "$state" in
        healthy) ;;
        unhealthy | exited | dead) fail_with_logs "$service" "$state" ;;
        *) pending="$pending $service" ;;
      esac
    done < <(states)
    running="$(states | wc -l)"
    if [ -z "$pending" ] && [ "$running" -gt 0 ]; then break; fi
    if ((SECONDS - start > timeout)); then
      pending="${pending# }"
      fail_with_logs "${pending%% *}" "not healthy after ${timeout}s"
    fi
    sleep 2
  done
  echo "compose: every service healthy after $((SECONDS - start))s; gateway at" \
    "http://127.0.0.1:${STARRATING_GATEWAY_PORT:-8000} (secrets in $env_file)"
}

down() {
  ensure_env_file
  # shellcheck disable=SC2086
  compose down --remove-orphans ${COMPOSE_DOWN_FLAGS:-}
}

case "${1:-}" in
  up) up ;;
  down) down ;;
  *) echo "usage: $0 up|down" >&2; exit 2 ;;
esac
