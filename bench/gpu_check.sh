#!/usr/bin/env bash
# The prepared GPU check (bench/gpu_check.py): from the repository root on a machine with one CUDA GPU,
#   bash bench/gpu_check.sh [gpu_check.py options]        -> results/gpu_check/<UTC date-time>/
# Python, the first that works:
#   1. $HARDMIL_PYTHON, or .venv-cuda/bin/python, when its torch sees CUDA;
#   2. a python3 whose torch sees CUDA (a GPU machine image): used as it is, the package from src/ on PYTHONPATH
#      (nothing installed, so the image's CUDA torch stays; the check imports torch, numpy, h5py, scikit-learn,
#      PyYAML, tqdm and pytest only, and its env step lists anything missing);
#   3. otherwise `make install VENV=.venv-cuda TORCH_SPEC='torch==2.13.*'`: the same minor version as CI's CPU
#      wheel; the package index's Linux x86-64 torch wheel is a CUDA build (TORCH_SPEC=... to choose another).
# The whole check stops after HARDMIL_GPU_CHECK_LIMIT seconds (default 480, the 8-minute budget).
set -u
cd "$(dirname "$0")/.." || exit 1
t0=$SECONDS
limit=${HARDMIL_GPU_CHECK_LIMIT:-480}
export PYTHONPATH="$PWD/src${PYTHONPATH:+:$PYTHONPATH}"
sees_cuda() { "$1" -c 'import sys, torch; sys.exit(0 if torch.cuda.is_available() else 1)' 2>/dev/null; }

py=${HARDMIL_PYTHON:-}
if [ -z "$py" ] && [ -x .venv-cuda/bin/python ] && sees_cuda .venv-cuda/bin/python; then
  py=.venv-cuda/bin/python
fi
if [ -z "$py" ] && command -v python3 >/dev/null && sees_cuda python3; then
  echo "== environment: $(command -v python3) has a CUDA torch; the package from src/"
  py=python3
fi
if [ -z "$py" ]; then
  echo "== environment: make install VENV=.venv-cuda TORCH_SPEC='${TORCH_SPEC:-torch==2.13.*}'"
  make install VENV=.venv-cuda TORCH_SPEC="${TORCH_SPEC:-torch==2.13.*}" || exit 1
  py=.venv-cuda/bin/python
fi
"$py" -c 'import torch; print("== torch", torch.__version__, "CUDA", torch.version.cuda, "available", torch.cuda.is_available())'
left=$(( limit - (SECONDS - t0) - 10 ))
echo "== set-up took $(( SECONDS - t0 )) s; $left s left for the steps"
exec timeout -k 5 $(( left + 5 )) "$py" bench/gpu_check.py --budget "$left" "$@"
