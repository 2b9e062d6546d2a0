#!/bin/sh
# Container entrypoint: runs `framecast "$@"`, with one optional step before `serve`.
#
# BUILD_ENGINES_ON_START=1 (the GPU image's default) builds the TensorRT engines into
# $FRAMECAST_ENGINE_CACHE_DIR before the server starts, so a plain `docker run` on a
# GPU host never builds an engine on a request. Engines are keyed by GPU, TensorRT
# version, model and shapes: with the cache on a volume, a restart finds them built.
# Under Helm the chart's init container does this step and sets the variable to 0.
set -eu

if [ "${1:-}" = "serve" ] && [ "${BUILD_ENGINES_ON_START:-0}" = "1" ]; then
    cache_dir="${FRAMECAST_ENGINE_CACHE_DIR:?BUILD_ENGINES_ON_START=1 needs FRAMECAST_ENGINE_CACHE_DIR}"
    # The engines must be built for the model the server will load: a `serve --model`
    # flag wins over $FRAMECAST_MODEL, as it does in the server's own settings.
    model="${FRAMECAST_MODEL:-}"
    previous=""
    for arg in "$@"; do
        case "$arg" in
            --model=*) model="${arg#--model=}" ;;
            *) if [ "$previous" = "--model" ]; then model="$arg"; fi ;;
        esac
        previous="$arg"
    done
    if [ -n "$model" ]; then
        framecast build-engines --model "$model" --cache-dir "$cache_dir"
    else
        framecast build-engines --cache-dir "$cache_dir"
    fi
fi

exec framecast "$@"
