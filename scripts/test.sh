#!/usr/bin/env bash
# Install l2s with its pinned requirements (CPU torch from requirements.txt first), then run the tests.
set -euo pipefail
cd "$(dirname "$0")/.."
python -m pip install -q -r requirements.txt
python -m pip install -q --no-build-isolation -e .
python -m pytest -q "$@"
