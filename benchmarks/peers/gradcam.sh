#!/usr/bin/env bash
# Create the virtualenv of the pytorch-grad-cam peer (`grad-cam` on PyPI) used by
# benchmarks/bench_xai.py. It reuses the system torch (--system-site-packages), so
# nothing big is downloaded. The peer is never imported by inspectkit itself.
set -euo pipefail
ROOT="$(cd "$(dirname "$0")/../.." && pwd)"
VENV="$ROOT/bench-venvs/grad-cam"
VERSION="${GRADCAM_VERSION:-1.5.7}"
python -m venv --system-site-packages "$VENV"
# --no-deps keeps the system torch; the peer's remaining deps are installed by hand.
"$VENV/bin/pip" install --quiet --no-deps "grad-cam==$VERSION" ttach
"$VENV/bin/pip" install --quiet opencv-python-headless
"$VENV/bin/python" -c "import pytorch_grad_cam, cv2; print('grad-cam', '$VERSION', 'cv2', cv2.__version__)"
