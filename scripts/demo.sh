#!/usr/bin/env bash
# Install l2s, then steer one prompt on the embedded default model; outputs land in ./l2s-out.
set -euo pipefail
cd "$(dirname "$0")/.."
python -m pip install -q -r requirements.txt
python -m pip install -q --no-build-isolation -e .
l2s generate "${1:-a red circle to the left of a blue square}" --out l2s-out
