#!/usr/bin/env bash
# One table of the project's speed claims on one GPU, in under 8 minutes; benchmarks/gpu_check.py says what each
# row measures. It needs only the project installed as the README says (pip install ., which brings torch, timm
# and accelerate). Without CUDA, or with --dry-run, the same code runs at tiny sizes on the CPU in under a minute
# (tests/test_gpu_check.py does so in `make test`).
#
#   bash benchmarks/gpu_check.sh [--dry-run] [--timm-train PATH/TO/pytorch-image-models/train.py]
#                                [--peak-tflops N] [--budget SECONDS]
#
# PYTHON picks the interpreter (default: python, else python3). Exit status 0 when every row ran and the FP16
# overflow check held, 1 when not, 2 when the project is not installed.
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
python="${PYTHON:-$(command -v python || command -v python3)}"
if ! "$python" -c "import timm_tricks" 2>/dev/null; then
    echo "gpu_check: $python cannot import timm_tricks; install the project first: pip install ." >&2
    exit 2
fi
exec "$python" "$here/gpu_check.py" "$@"
