#!/usr/bin/env bash
# The GPU check (tools/gpu_check.py) on the device machine, from the repo root:
#   here, once a session:  tools/gpu_check.sh --fetch     (wheels the machine lacks, into .whl/, git-ignored)
#   there:                 tools/gpu_check.sh [gpu_check.py options]    with .whl carried
# The machine has torch, transformers, opencv and pyyaml but not diffusers or av; videdit itself
# runs from the working tree (PYTHONPATH), so only what it imports travels.
set -euo pipefail
cd "$(dirname "$0")/.."
WHEELS=(diffusers==0.42.1 importlib_metadata==8.7.0 av==16.0.1)
if [[ "${1:-}" == "--fetch" ]]; then
    grep -qx '/.whl/' .git/info/exclude 2>/dev/null || echo '/.whl/' >> .git/info/exclude
    python3 -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
        --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 \
        -d .whl "${WHEELS[@]}"
    ls -l .whl
    exit 0
fi
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl
export PYTHONPATH="/tmp/site:$PWD" PYTHONUNBUFFERED=1
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader || true
python3 tools/gpu_check.py --out "${OUT:-/tmp}/gpu_check.json" "$@"
