#!/usr/bin/env bash
# Installs what fastdehaze needs on a fresh machine and builds it (idempotent; rerun after a pull).
#   - torch (default torch==2.14.1; override with FASTDEHAZE_TORCH, e.g. "torch==2.13.0" for the
#     small CPU build), numpy, ninja;
#   - the package itself, editable, with its test/benchmark extras, built against that torch:
#     the C++ CPU extensions always; the CUDA extensions whenever torch is a CUDA build and a CUDA
#     toolkit (nvcc) is found, even without a GPU (FORCE_CUDA=1; sm_90 unless TORCH_CUDA_ARCH_LIST
#     says otherwise). Set FASTDEHAZE_NO_CUDA=1 to skip them.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
PY="${PYTHON:-python3}"
PIP=("$PY" -m pip install -q --disable-pip-version-check)

"${PIP[@]}" "${FASTDEHAZE_TORCH:-torch==2.14.1}" numpy ninja "setuptools>=64" wheel

if [ -z "${CUDA_HOME:-}" ]; then
  for d in /usr/local/cuda /usr/local/cuda-13.0 /opt/cuda "$(dirname "$(dirname "$(command -v nvcc 2>/dev/null || echo /x/x)")")"; do
    if [ -x "$d/bin/nvcc" ]; then export CUDA_HOME="$d"; break; fi
  done
fi
if [ -z "${FORCE_CUDA:-}" ] && [ -z "${FASTDEHAZE_NO_CUDA:-}" ] && [ -n "${CUDA_HOME:-}" ] \
   && "$PY" -c "import sys, torch; sys.exit(torch.version.cuda is None)"; then
  export FORCE_CUDA=1
fi
export TORCH_CUDA_ARCH_LIST="${TORCH_CUDA_ARCH_LIST:-9.0}"
export MAX_JOBS="${MAX_JOBS:-$(nproc)}"
echo "fastdehaze setup: CUDA_HOME=${CUDA_HOME:-none} FORCE_CUDA=${FORCE_CUDA:-0} MAX_JOBS=$MAX_JOBS"
"${PIP[@]}" --no-build-isolation -e ".[test]"
"$PY" -c "import fastdehaze; print(fastdehaze.backend_report())"
