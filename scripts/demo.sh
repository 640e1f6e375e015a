#!/usr/bin/env bash
# Install l2s, then steer one prompt on the embedded default model; outputs land in ./l2s-out.
set -euo pipefail
cd "$(dirname "$0")/.."
# CPU torch first, from PyTorch's CPU index (PyPI's torch for Linux is a CUDA build); same pin as requirements.txt.
python -m pip install -q "torch==2.13.0" --index-url https://download.pytorch.org/whl/cpu
python -m pip install -q -r requirements.txt
python -m pip install -q --no-build-isolation -e .
l2s generate "${1:-a red circle to the left of a blue square}" --out l2s-out
