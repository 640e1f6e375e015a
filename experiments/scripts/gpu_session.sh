#!/usr/bin/env bash
# One session's checks on the project's lent GPU machines (experiments/notebook/gpu-sessions.md),
# from the repository root of a plain checkout there: its stock torch/transformers/triton, diffusers
# carried as a wheel in build/wheels. Each part fits one 10-minute command; every log lands in $OUT
# (default out/). Elsewhere, bench/README.md's commands do the same.
#   bash experiments/scripts/gpu_session.sh bench    # bench/gpu_flux_dev.py --quick; its exit status
#   bash experiments/scripts/gpu_session.sh tests    # l2s_fast built with CUDA, then every `gpu` test
set -uo pipefail
USAGE="usage: bash experiments/scripts/gpu_session.sh bench|tests [gpu_flux_dev.py options]   (logs in \$OUT, default out/)"
case "${1:-}" in
  -h|--help) echo "$USAGE"; exit 0 ;;
  bench|tests) ;;
  *) echo "$USAGE" >&2; exit 2 ;;
esac
OUT=${OUT:-out}; mkdir -p "$OUT"
export PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1
python3 -c "import diffusers" 2>/dev/null || {
    python3 -m pip install -q --no-index --no-deps --no-compile --target /tmp/site build/wheels/diffusers-*.whl \
        && export PYTHONPATH=/tmp/site${PYTHONPATH:+:$PYTHONPATH}; } || { echo "diffusers wheel missing"; exit 2; }
case "$1" in
  bench)
    nvidia-smi -L
    # pipefail: the script's exit status (1: a row failed, 2: bad options), not tee's
    python3 bench/gpu_flux_dev.py --quick --out "$OUT" "${@:2}" 2>&1 | tee "$OUT/bench.log" ;;
  tests)
    # The whole build log is kept (its end alone does not say why a build failed); stop if it failed.
    L2S_BUILD_CUDA=1 L2S_CUDA_ARCHS=${L2S_CUDA_ARCHS:-90} timeout 240 python3 -m pip install -q --no-build-isolation --no-deps -e . \
        >"$OUT/build.log" 2>&1 \
        || { status=$?; tail -20 "$OUT/build.log"; echo "build failed (exit $status): whole log in $OUT/build.log; no tests run"; exit 1; }
    tail -5 "$OUT/build.log"
    timeout 300 python3 -m pytest -m gpu -rA -p no:cacheprovider --continue-on-collection-errors tests/ \
        2>&1 | tee "$OUT/gpu_tests.log" | tail -40 ;;
esac
