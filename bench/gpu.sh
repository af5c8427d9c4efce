#!/usr/bin/env bash
# Figures 1 and 2 on one CUDA GPU, in one prepared run that finishes within 8 minutes on an H200.
#
#   bash bench/gpu.sh                 # after: .venv/bin/pip install -e '.[bench,gpu]'
#   PY=python3 bash bench/gpu.sh      # another interpreter (e.g. a GPU image's own PyTorch)
#
# Ours runs on the .pt2 export through PyTorch on CUDA; with onnxruntime-gpu installed
# (CUDAExecutionProvider) the ONNX fast path and a bare ORT CUDA forward are added. On a machine
# without network, wheels placed in .whl/ (git-ignored) are installed into a private folder first.
# Prints the ratios; writes $OUT/gpu_results.json (OUT defaults to var/bench). Exit 1 when a
# correctness check fails, 124 when the time limit (GPU_BENCH_TIMEOUT, default 470 s) is hit.
set -euo pipefail
cd "$(dirname "$0")/.."
if [ -z "${PY:-}" ]; then
  if [ -x .venv/bin/python ]; then PY=.venv/bin/python; else PY=python3; fi
fi
if compgen -G ".whl/*.whl" >/dev/null; then
  "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
    --target /tmp/etm-bench-site .whl/*.whl
  export PYTHONPATH="/tmp/etm-bench-site${PYTHONPATH:+:$PYTHONPATH}"
fi
export PYTHONUNBUFFERED=1 OMP_NUM_THREADS=1
OUT_DIR="${OUT:-var/bench}"
mkdir -p "$OUT_DIR"
"$PY" -c 'import torch; print("torch", torch.__version__, "cuda", torch.cuda.is_available(),
  torch.cuda.get_device_name(0) if torch.cuda.is_available() else "")'
exec timeout "${GPU_BENCH_TIMEOUT:-470}" "$PY" -m bench.gpu --out "$OUT_DIR/gpu_results.json" "$@"
