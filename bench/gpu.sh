#!/bin/sh
# The GPU benchmark (bench/gpu.py) as one command for a GPU machine without network.
#
#   bench/gpu.sh [bench/gpu.py flags]     run it; JSON to $OUT/gpu_bench.json (or runs/)
#   bench/gpu.sh --fetch-wheels [DIR]     on a machine with PyPI: download the pure-Python
#                                         packages the engine needs beyond torch (default .whl/)
#
# The GPU image has torch (and maybe tensorrt) but not diffusers or pydantic; the
# engine needs both. Before running, any of them that python3 cannot import is
# installed from the carried wheel folder ($FRAMECAST_WHEELS, default .whl/), never
# from a network, and never over a package that is already there.
set -eu
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}
WHEELS=${FRAMECAST_WHEELS:-.whl}

if [ "${1:-}" = "--fetch-wheels" ]; then
    dir=${2:-$WHEELS}
    # The GPU image runs CPython 3.12 on x86_64 (docs/backends.md); the pins are this
    # repo's tested versions (pyproject.toml allows diffusers 0.42.x only).
    "$PYTHON" -m pip download --only-binary=:all: --no-deps --python-version 3.12 --implementation cp \
        --platform manylinux2014_x86_64 -d "$dir" \
        "diffusers==0.42.1" "pydantic==2.14.4" "pydantic-core==2.50.5" "annotated-types>=0.6" \
        "typing-inspection>=0.4.4" "typing-extensions>=4.16" "importlib-metadata>=8"
    exit 0
fi

# module:wheel-name pairs; a module that imports (at a new enough version) is left alone.
missing=$("$PYTHON" - <<'EOF'
import importlib, importlib.metadata as md
wanted = {"diffusers": "diffusers", "pydantic": "pydantic", "pydantic_core": "pydantic_core",
          "annotated_types": "annotated_types", "typing_inspection": "typing_inspection",
          "importlib_metadata": "importlib_metadata"}
missing = []
for module, wheel in wanted.items():
    try:
        importlib.import_module(module)
    except ImportError:
        missing.append(wheel)
try:  # pydantic 2.14 needs typing_extensions >= 4.16
    if tuple(int(x) for x in md.version("typing_extensions").split(".")[:2]) < (4, 16):
        missing.append("typing_extensions")
except md.PackageNotFoundError:
    missing.append("typing_extensions")
print(" ".join(missing))
EOF
)
if [ -n "$missing" ]; then
    if [ ! -d "$WHEELS" ]; then
        echo "bench/gpu.sh: missing here: $missing; no $WHEELS/ to install them from" >&2
        echo "  (run bench/gpu.sh --fetch-wheels on a machine with PyPI and carry $WHEELS/)" >&2
        exit 2
    fi
    for name in $missing; do
        for wheel in "$WHEELS"/"$name"-*.whl; do
            "$PYTHON" -m pip install --quiet --no-index --no-deps "$wheel"
        done
    done
fi

PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}" exec "$PYTHON" bench/gpu.py "$@"
