#!/bin/sh
# Entry point of the `serve` image: TorchServe in the foreground with every .mar registered.
#   start (default)  compose and Kubernetes: config $TS_CONFIG_FILE, archives $STARRATING_MODEL_STORE
#   serve            SageMaker hosting (SageMaker runs `docker run IMAGE serve`): archives from
#                    /opt/ml/model, /ping and /invocations on port 8080 through
#                    starrating-sagemaker-front (/ping 200 only once the model has predicted)
#   anything else    run as a command (e.g. `sh` to look around)
set -eu

mode="${1:-start}"
case "$mode" in
  start)
    store="${STARRATING_MODEL_STORE:?STARRATING_MODEL_STORE must name the model store}"
    config="${TS_CONFIG_FILE:?TS_CONFIG_FILE must name a TorchServe config.properties}"
    ;;
  serve)
    store="${SAGEMAKER_MODEL_DIR:-/opt/ml/model}"
    config="${STARRATING_TS_CONFIG_DIR:-/etc/starrating/torchserve}/sagemaker.properties"
    # torchserve reads TS_CONFIG_FILE before --ts-config: this mode must use its own file.
    unset TS_CONFIG_FILE
    ;;
  *)
    exec "$@"
    ;;
esac

if ! ls "$store"/*.mar >/dev/null 2>&1; then
  echo "starrating-torchserve: no .mar archive in $store (build one with 'starrating archive')" >&2
  exit 1
fi
# Workers per version and torch threads per worker from the CPUs this container may use (its
# cgroup quota and affinity, not the host's cores), shared among the versions in the store; a
# STARRATING_HANDLER_THREADS set by the operator wins. TorchServe keeps the last value of a key.
layout="$(starrating-serving-layout "$store")"
workers="${layout% *}"
export STARRATING_HANDLER_THREADS="${STARRATING_HANDLER_THREADS:-${layout#* }}"
sized="${TMPDIR:-/tmp}/starrating-torchserve.properties"
{ cat "$config"; printf '\ndefault_workers_per_model=%s\n' "$workers"; } >"$sized"
config="$sized"
unset TS_CONFIG_FILE

if [ "$mode" = serve ]; then
  # SageMaker names the port in SAGEMAKER_BIND_TO_PORT where it is not 8080 (multi-container).
  exec starrating-sagemaker-front --ts-config "$config" --model-store "$store" \
    --port "${SAGEMAKER_BIND_TO_PORT:-8080}"
fi
exec torchserve --foreground --ts-config "$config" --model-store "$store"
