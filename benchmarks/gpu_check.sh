#!/usr/bin/env bash
# Every GPU measurement of the project in one command, into one results file (≤ 8 minutes on one H100):
#   bash benchmarks/gpu_check.sh [RESULTS_FILE]        (default: $OUT/gpu_check.txt, else benchmarks/gpu_check.txt)
# 1. streaming collapse statistics: no host sync per batch; the in-memory case; the ImageNet-1k-sized stream and the
#    K = 32,000 vocabulary at N = 1,000,000 (benchmarks/bench_streaming.py);
# 2. collapse_metrics against the per-sample reference and a training epoch (benchmarks/bench_metrics.py);
# 3. packed training against one run per process (benchmarks/bench_pack.py);
# 4. the projected wall time of the paper's MNIST MLP program (benchmarks/bench_program.py; needs optuna).
# A device machine may lack MLflow and Optuna: wheels in .gpu_wheels/ (`pip download mlflow optuna -d .gpu_wheels`)
# are installed first when present. Each step has its own time limit; a step that fails is recorded and the next runs.
set -uo pipefail
cd "$(dirname "$0")/.."
RESULTS="${1:-${OUT:-benchmarks}/gpu_check.txt}"
mkdir -p "$(dirname "$RESULTS")"
if [ -d .gpu_wheels ]; then python -m pip install -q --no-index --find-links .gpu_wheels mlflow optuna || true; fi
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
step() {  # step SECONDS TITLE COMMAND...
  local limit=$1 title=$2; shift 2
  echo "=== $title ($(date -u +%FT%TZ))" >>"$RESULTS"
  local started=$SECONDS
  timeout "$limit" "$@" >>"$RESULTS" 2>&1
  echo "=== $title: exit $? after $((SECONDS - started)) s" >>"$RESULTS"
}
{
  echo "gpu_check $(date -u +%FT%TZ) on $(hostname)"
  nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader 2>&1
  python -c "import torch; print('torch', torch.__version__, 'cuda', torch.version.cuda)"
} >"$RESULTS" 2>&1
step 150 "streaming statistics" python benchmarks/bench_streaming.py --device cuda --case sync,inmemory,imagenet,vocab \
  --vocab-samples 1000000
step 60 "collapse_metrics" python benchmarks/bench_metrics.py --device cuda
step 120 "packs" python benchmarks/bench_pack.py --device cuda
step 90 "paper program projection" python benchmarks/bench_program.py --device cuda
echo "results: $RESULTS"
