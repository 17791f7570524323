#!/usr/bin/env bash
# Create the isolated virtualenv for the Avalanche peer used by benchmarks/bench_continual.py.
# The venv reuses the system torch (--system-site-packages). avalanche-lib is installed
# with --no-deps (its pins could pull another torch), then the modules it imports.
set -euo pipefail
ROOT="$(cd "$(dirname "$0")/../.." && pwd)"
VENV="$ROOT/bench-venvs/avalanche"
python -m venv --system-site-packages "$VENV"
"$VENV/bin/pip" install --quiet --no-deps "avalanche-lib==0.6.0"
"$VENV/bin/pip" install --quiet dill gputil psutil packaging typing_extensions torchmetrics \
    gdown pytorchcv wandb tensorboard qpsolvers
"$VENV/bin/python" -c "import torch, avalanche.training; print('avalanche ok, torch', torch.__version__)"
