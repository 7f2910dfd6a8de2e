#!/usr/bin/env bash
# The paper's program on mnist-5k — the MLP sweeps and the grid's MNIST half (MLP-5 and ResNet-20) — as a background
# job that survives losing its machine:
#   nohup nice -n 19 tools/reproduce_mnist5k.sh >> reproduction/reproduce.log 2>&1 &     (WORKERS=cores by default)
# Works in the git-ignored reproduction/ (its own store, journal and records, and a snapshot of the code, stamped with
# the checkout's commit and diff, so editing the checkout does not change a running job). Before training it imports
# the runs committed under docs/reproduction/runs, and the interrupted ones under docs/reproduction/unfinished with
# their resume states (tools/carry_runs.py); the sweep's workers continue every interrupted run from its last epoch
# (ncflow.sweeps.worker), so a fresh machine goes on where the last one stopped, mid-run included; every 10 minutes
# and at the end it exports finished runs (and interrupted ones with their newest resume state) there again. Re-run it after any interruption (docs/reproduction.md, "Running it").
set -uo pipefail
cd "$(dirname "$0")/.."
CHECKOUT="$PWD"
mkdir -p reproduction docs/reproduction/runs docs/reproduction/unfinished
cd reproduction
rm -rf code && mkdir code && cp -r "$CHECKOUT/ncflow" "$CHECKOUT/ncshared" "$CHECKOUT/analysis" code/
export PYTHONPATH="$PWD/code" NCFLOW_RECORD_DIR="$PWD/records" OMP_NUM_THREADS=1 MKL_NUM_THREADS=1
python -m ncshared.provenance --stamp code --checkout "$CHECKOUT"
STORE="sqlite:///$PWD/mlflow.db"
RUNS="$CHECKOUT/docs/reproduction/runs" UNFINISHED="$CHECKOUT/docs/reproduction/unfinished"
echo "=== start $(date -u +%FT%TZ) on $(getconf _NPROCESSORS_ONLN) cores"
python "$CHECKOUT/tools/carry_runs.py" import --tracking-uri "$STORE" --from "$RUNS" --unfinished "$UNFINISHED"
export_runs() { python "$CHECKOUT/tools/carry_runs.py" export --tracking-uri "$STORE" --out "$RUNS" --unfinished "$UNFINISHED"; }
# Export every 10 minutes too: a job ended with its machine leaves what it finished, and where it was, in the checkout.
( while sleep 600; do export_runs; done ) &
exporter=$!
# One worker per core, one thread per run and deterministic kernels (`--set`: how the machine computes, no part of a
# condition), so a resumed or repeated run is the same bit for bit on the same kind of machine.
nice -n 10 python -m ncflow.cli reproduce --dataset mnist-5k --grid-data mnist-5k --tracking-uri "$STORE" \
  --storage optuna.journal --workers "${WORKERS:-$(getconf _NPROCESSORS_ONLN)}" --set threads=1 --set deterministic=true --out report --quiet
status=$?
kill "$exporter" 2>/dev/null
export_runs
echo "=== end $(date -u +%FT%TZ) status $status"
exit $status
