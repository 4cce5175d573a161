#!/usr/bin/env bash
# GPU check: the model benchmark on CUDA, then the real pipeline stages (generate -> evaluate, both
# built-in datasets) with Lightning's accelerator="auto", which picks the GPU when there is one.
#
#     bench/gpu.sh [OUT_DIR]     (PYTHON=... chooses the interpreter, default python3;
#                                 MODEL_BENCH=0 skips the model benchmark)
#
# Runs the stage scripts directly (no dvc) against throw-away MLflow and Optuna SQLite stores, so
# it needs only the Python packages, not a DVC repo. Prints the model figures and, per dataset,
# the wall time of sweep and train, the accelerator Lightning used, and the evaluation metrics.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}
out=${1:-bench/out/gpu}
mkdir -p "$out"
work=$(mktemp -d)
export MLFLOW_TRACKING_URI="sqlite:///$work/mlflow.db" VIGIL_OPTUNA_STORAGE="sqlite:///$work/optuna.db"
export PYTHONUNBUFFERED=1 MLFLOW_SKIP_PIP_REQUIREMENTS_CHECK=true DVC_NO_ANALYTICS=1

"$PYTHON" -c "import torch; print('torch', torch.__version__, 'cuda', torch.cuda.is_available(),
      torch.cuda.get_device_name(0) if torch.cuda.is_available() else '')"
if [ "${MODEL_BENCH:-1}" != 0 ]; then
    "$PYTHON" bench/model.py --device cuda --sizes 64 256 --batches 1 32 256 --seconds 2 \
        --json "$out/model_gpu.json" | tee "$out/model_gpu.txt"
fi

timed() {  # timed LABEL CMD...: run CMD, log its output, print its wall time
    local label=$1 start end; shift
    start=$(date +%s%N)
    "$@" > "$out/$label.log" 2>&1 || { tail -40 "$out/$label.log"; exit 1; }
    end=$(date +%s%N)
    printf '%-22s %7d ms\n' "$label" $(( (end - start) / 1000000 ))
}
timed generate "$PYTHON" pipelines/generate.py
for d in capsules print; do
    timed "prepare-$d" "$PYTHON" pipelines/prepare.py --dataset "$d" --no-progress
    timed "sweep-$d" "$PYTHON" pipelines/sweep.py --dataset "$d"
    timed "train-$d" "$PYTHON" pipelines/train.py --dataset "$d"
    grep -h "GPU available" "$out/train-$d.log" | head -1
    timed "evaluate-$d" "$PYTHON" pipelines/evaluate.py --dataset "$d"
    "$PYTHON" -c "import json,sys; m=json.load(open(sys.argv[1])); print(sys.argv[2], {k: round(v, 4) for k, v in m.items() if k in ('image_auroc','pixel_auroc','frame_auroc','recall_at_precision')})" "reports/$d/metrics.json" "$d"
done
