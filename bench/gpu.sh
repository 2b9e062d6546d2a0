#!/bin/sh
# The GPU benchmark (bench/gpu.py) as one command for a GPU machine without network.
#
#   bench/gpu.sh [bench/gpu.py flags]          check what the benchmark imports, install what is
#                                              missing from the carried wheels, run it; JSON to
#                                              $OUT/gpu_bench.json (or runs/) and on stdout
#   bench/gpu.sh --fetch-wheels [--dest DIR] [--python-version 3.12] [--for image|bare]
#                                              on a machine with PyPI: the wheels the target lacks
#                                              (default .whl/, for the lent GPU image), checked
#                                              against the 64 MiB a device call carries
#
# The lent GPU image has torch 2.11 but neither diffusers nor pydantic (bench/gpu_image.txt
# lists what it has). bench/gpu_wheels.py imports each needed distribution in its own
# interpreter and installs the failing ones from $FRAMECAST_WHEELS (default .whl/) into a
# fresh folder put first on PYTHONPATH: never from a network, never over the image's own.
set -eu
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}
WHEELS=${FRAMECAST_WHEELS:-.whl}

if [ "${1:-}" = "--fetch-wheels" ]; then
    shift
    exec "$PYTHON" bench/gpu_wheels.py fetch --dest "$WHEELS" "$@"
fi

SITE=${FRAMECAST_SITE:-$(mktemp -d "${TMPDIR:-/tmp}/framecast-site.XXXXXX")}
"$PYTHON" bench/gpu_wheels.py install --python "$PYTHON" --wheels "$WHEELS" --target "$SITE"
PYTHONPATH="$PWD:$SITE${PYTHONPATH:+:$PYTHONPATH}" exec "$PYTHON" bench/gpu.py "$@"
