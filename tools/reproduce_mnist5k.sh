#!/usr/bin/env bash
# The paper's MLP program on mnist-5k as a background job that survives losing its machine:
#   nohup tools/reproduce_mnist5k.sh >> reproduction/reproduce.log 2>&1 &
# Works in the git-ignored reproduction/ (its own store, journal and records, and a snapshot of the code, so
# editing the checkout does not change a running job). Before training it imports the finished runs committed
# under docs/reproduction/runs (tools/carry_runs.py), so a fresh machine resumes where the last one stopped; after,
# it exports every finished run there again. Re-run it after any interruption.
set -uo pipefail
cd "$(dirname "$0")/.."
CHECKOUT="$PWD"
mkdir -p reproduction docs/reproduction/runs
cd reproduction
rm -rf code && mkdir code && cp -r "$CHECKOUT/ncflow" "$CHECKOUT/analysis" code/
export PYTHONPATH="$PWD/code" NCFLOW_RECORD_DIR="$PWD/records" OMP_NUM_THREADS=1 MKL_NUM_THREADS=1
STORE="sqlite:///$PWD/mlflow.db"
echo "=== start $(date -u +%FT%TZ) on $(getconf _NPROCESSORS_ONLN) cores"
python "$CHECKOUT/tools/carry_runs.py" import --tracking-uri "$STORE" --from "$CHECKOUT/docs/reproduction/runs"
export_runs() { python "$CHECKOUT/tools/carry_runs.py" export --tracking-uri "$STORE" --out "$CHECKOUT/docs/reproduction/runs"; }
# Export every 10 minutes too: a job ended with its machine leaves what it finished in the checkout.
( while sleep 600; do export_runs; done ) &
exporter=$!
nice -n 10 python -m ncflow.cli reproduce --dataset mnist-5k --tracking-uri "$STORE" --storage optuna.journal \
  --workers "${WORKERS:-2}" --out report --quiet
status=$?
kill "$exporter" 2>/dev/null
export_runs
echo "=== end $(date -u +%FT%TZ) status $status"
exit $status
