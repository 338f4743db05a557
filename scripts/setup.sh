#!/usr/bin/env bash
# Installs what fastdehaze needs on a fresh machine and builds it. Incremental: a rerun with
# nothing changed rebuilds nothing; a changed source or header rebuilds only what depends on it.
#   - torch (default torch==2.14.1; override with FASTDEHAZE_TORCH, e.g. "torch==2.13.0" for the
#     small CPU build), numpy, ninja: pip runs only when one of them is missing or the torch
#     version differs from the pin;
#   - the package itself, editable, with its test/benchmark extras, WITHOUT extensions
#     (FASTDEHAZE_FAMILIES=none): pip runs only when setup.py, the python or the torch changed, or
#     the editable install of this checkout is missing (stamp: build/.setup-stamp);
#   - the extensions, in place, one process per family in parallel (scripts/build_ext.py;
#     setuptools + ninja skip what is up to date): the C++ CPU extensions always; the CUDA ones
#     whenever torch is a CUDA build and a CUDA toolkit (nvcc) is found, even without a GPU
#     (FORCE_CUDA=1; sm_90 unless TORCH_CUDA_ARCH_LIST says otherwise). FASTDEHAZE_NO_CUDA=1
#     skips them. FASTDEHAZE_FAMILIES=a,b builds only those families.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
PY="${PYTHON:-python3}"
PIP=("$PY" -m pip install -q --disable-pip-version-check)
TORCH_REQ="${FASTDEHAZE_TORCH:-torch==2.14.1}"
t_start=$(date +%s)

# 1. torch, numpy, ninja, setuptools, wheel: skip pip when all are there at the pinned torch.
if ! "$PY" - "$TORCH_REQ" <<'EOF'
import sys
from importlib import metadata
req = sys.argv[1]
try:
    have = {n: metadata.version(n) for n in ("torch", "numpy", "ninja", "setuptools", "wheel")}
except metadata.PackageNotFoundError:
    sys.exit(1)
if "==" in req and req.split("==", 1)[0].strip() == "torch":
    sys.exit(have["torch"].split("+")[0] != req.split("==", 1)[1].strip().split("+")[0])
sys.exit(0 if req.strip() == "torch" else 1)  # any other spec (>=, a URL): let pip decide
EOF
then
  "${PIP[@]}" "$TORCH_REQ" numpy ninja "setuptools>=64" wheel
fi

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
NPROC="$(nproc)"
echo "fastdehaze setup: CUDA_HOME=${CUDA_HOME:-none} FORCE_CUDA=${FORCE_CUDA:-0} NO_CUDA=${FASTDEHAZE_NO_CUDA:-0} cores=$NPROC"

# 2. editable install (metadata, the kernels/ mapping, console script, test extras), no extensions.
mkdir -p build
stamp="$("$PY" - <<'EOF'
import hashlib, sys
from importlib import metadata
h = hashlib.sha256(open("setup.py", "rb").read() + open("pyproject.toml", "rb").read())
h.update(sys.executable.encode() + sys.version.encode())
try:
    h.update(metadata.version("torch").encode())
except metadata.PackageNotFoundError:
    pass
print(h.hexdigest())
EOF
)"
installed_here="$("$PY" - <<'EOF'
import json, os, pathlib
from importlib import metadata
try:
    d = metadata.distribution("fastdehaze")
    url = json.loads(d.read_text("direct_url.json") or "{}").get("url", "")
    print(int(url.startswith("file://") and pathlib.Path(url[7:]).resolve() == pathlib.Path.cwd().resolve()))
except metadata.PackageNotFoundError:
    print(0)
EOF
)"
if [ "$installed_here" != 1 ] || [ ! -f build/.setup-stamp ] || [ "$(cat build/.setup-stamp)" != "$stamp" ]; then
  echo "fastdehaze setup: pip install -e .[test] (metadata; extensions come next)"
  FASTDEHAZE_FAMILIES=none "${PIP[@]}" --no-build-isolation -e ".[test]"
  echo "$stamp" > build/.setup-stamp
else
  echo "fastdehaze setup: editable install up to date (build/.setup-stamp)"
fi

# 3. the extensions, in place, one process per family (incremental).
fams=()
if [ -n "${FASTDEHAZE_FAMILIES:-}" ] && [ "${FASTDEHAZE_FAMILIES}" != none ]; then IFS=, read -r -a fams <<< "$FASTDEHAZE_FAMILIES"; fi
if [ "${FASTDEHAZE_FAMILIES:-}" != none ]; then
  env -u FASTDEHAZE_FAMILIES "$PY" scripts/build_ext.py --quiet "${fams[@]}"
fi
"$PY" -c "import fastdehaze; print(fastdehaze.backend_report())"
echo "fastdehaze setup: done in $(( $(date +%s) - t_start ))s"
