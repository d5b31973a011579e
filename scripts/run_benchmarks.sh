#!/usr/bin/env bash
# Every benchmark under benchmarks/ on this machine's CPU (`make bench`). Each measures Detectron2's
# implementation and the plugin's in the same run and rewrites its own block of BENCHMARKS.md.
# GPU rows: run the scripts with --device cuda on a machine that has one.
set -euo pipefail
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$ROOT"
PY=${VENV:-$ROOT/.venv}/bin/python
"$PY" benchmarks/bench_combiner.py
"$PY" benchmarks/bench_pq_eval.py --num-images 200 --repeats 5
"$PY" benchmarks/bench_inference.py --repeats 7 --profile
"$PY" benchmarks/bench_train.py --repeats 9
"$PY" benchmarks/bench_export.py
# Autocast's PQ and the threshold sweep need the quick-start model that `make demo` trains.
WEIGHTS=output/quick_start/model_final.pth
if [[ -f $WEIGHTS ]]; then
    "$PY" benchmarks/bench_autocast.py --weights "$WEIGHTS"
    "$PY" benchmarks/bench_tune.py --weights "$WEIGHTS"
else
    echo "run_benchmarks: bench_autocast.py, bench_tune.py NOT run: $WEIGHTS is missing" \
        "(run make demo first)" >&2
fi
