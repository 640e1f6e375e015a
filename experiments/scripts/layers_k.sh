#!/usr/bin/env bash
# The K-layer experiment of experiments/notebook/layers-k.md, end to end, on CPU:
#
#   bash experiments/scripts/layers_k.sh WORK [JOBS]
#
# WORK: a folder outside the repository; JOBS: processes at a time (default 2, one thread each).
# Every stage resumes, so the same command continues an interrupted run. The code is a frozen copy
# of the commit it starts from (WORK/code), so later work in the tree cannot change a running
# experiment. Ends with the table of experiments/scripts/shapes_layers_table.py in WORK/table.md.
set -euo pipefail
trap 'kill 0' INT TERM   # stopping the driver stops its process pools too
WORK=$(realpath -m "${1:?usage: layers_k.sh WORK [JOBS]}")
JOBS=${2:-2}
REPO=$(cd "$(dirname "$0")/../.." && pwd)
mkdir -p "$WORK"
if [ ! -d "$WORK/code" ]; then
  rm -rf "$WORK/code.tmp" && mkdir "$WORK/code.tmp"
  git -C "$REPO" archive HEAD | tar -x -C "$WORK/code.tmp"
  git -C "$REPO" rev-parse HEAD > "$WORK/code.tmp/COMMIT"
  mv "$WORK/code.tmp" "$WORK/code"
fi
export PYTHONPATH="$WORK/code${PYTHONPATH:+:$PYTHONPATH}" HF_HUB_OFFLINE=1
# `python -m` puts the working directory first on sys.path: run from WORK, never from a checkout.
cd "$WORK"
python -c 'import l2s, sys; sys.exit(0 if l2s.__file__.startswith(sys.argv[1]) else f"l2s comes from {l2s.__file__}, not the frozen copy")' "$WORK/code/"
l2s() { python -m l2s.cli "$@"; }
ASSETS="$WORK/code/l2s/shapes/assets"
say() { echo "[$(date -u +%H:%M:%S)] $*"; }

say "map data (the shipped classifier's recipe)"
l2s shapes make-data --out "$WORK/data" --scenes 2400 --threads 1 --quiet

say "classifiers: K = 1..4 and all layers again (k5), $JOBS at a time"
train() {
  local k=$1 layers=()
  [ "$k" = 5 ] || layers=(--layers "$k")
  l2s shapes train-classifier --data "$WORK/data" --out "$WORK/k$k" "${layers[@]}" --epochs 40 --threads 1 --quiet \
    > "$WORK/k$k.log" 2>&1 || { echo "k$k failed: see $WORK/k$k.log" >&2; return 1; }
}
export -f train l2s
export WORK
printf '%s\n' 1 2 3 4 5 | xargs -P "$JOBS" -I{} bash -c 'train {}'

say "benches: two objects and multi 3/2, steered only (the base images do not depend on the classifier)"
bench() {
  local name=$1 classifier=$2
  l2s shapes bench --parts position,multi_3_2 --modes steered --classifier "$classifier" \
    --out "$WORK/bench_$name" --results "$WORK/bench_$name.md" --threads 1 --quiet \
    > "$WORK/bench_$name.log" 2>&1 || { echo "bench $name failed: see $WORK/bench_$name.log" >&2; return 1; }
}
export -f bench
export ASSETS
printf '%s\n' "all $ASSETS/classifier" "k1 $WORK/k1/best" "k2 $WORK/k2/best" "k3 $WORK/k3/best" \
  "k4 $WORK/k4/best" "k5 $WORK/k5/best" | xargs -P "$JOBS" -I{} bash -c 'bench {}'

say "steered time per image vs K (one process, interleaved)"
[ -f "$WORK/timing.json" ] || python "$WORK/code/experiments/scripts/shapes_layers_timing.py" \
  --classifiers "all=$ASSETS/classifier,k1=$WORK/k1/best,k2=$WORK/k2/best,k3=$WORK/k3/best,k4=$WORK/k4/best" \
  --results "$WORK/timing.md"

say "table"
python "$WORK/code/experiments/scripts/shapes_layers_table.py" --reference "all=$WORK/bench_all.json" \
  --runs "k1=$WORK/bench_k1.json,k2=$WORK/bench_k2.json,k3=$WORK/bench_k3.json,k4=$WORK/bench_k4.json,k5=$WORK/bench_k5.json" \
  --timing "$WORK/timing.json" --results "$WORK/table.md"
say "done: $WORK/table.md"
