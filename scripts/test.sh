#!/usr/bin/env bash
# Install l2s with its pinned requirements (CPU torch first), then run the tests.
set -euo pipefail
cd "$(dirname "$0")/.."
# CPU torch first, from PyTorch's CPU index (PyPI's torch for Linux is a CUDA build); same pin as requirements.txt.
python -m pip install -q "torch==2.13.0" --index-url https://download.pytorch.org/whl/cpu
python -m pip install -q -r requirements.txt
python -m pip install -q --no-build-isolation -e .
python -m pytest -q "$@"
# With no arguments, the CPU benchmarks too, as plain tests (one round each, no timing): each asserts
# that what it times is right, so a fast but wrong path fails here.
if [ "$#" -eq 0 ]; then
    python -m pytest -q bench/ --benchmark-disable
fi
