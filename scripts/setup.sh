#!/usr/bin/env bash
# Create .venv and install ice-pipeline with its dev extras, without any CUDA wheels.
#
# torch is installed first, pinned to 2.13.0: on these machines pip resolves that pin to
# the local CPU build. With it in place, nothing else pulls the CUDA packages
# (torchvision 0.28.0 only asks for torch==2.13.0, which is already satisfied).
set -euo pipefail
cd "$(dirname "$0")/.."
VENV=${VENV:-.venv}
PY=${PYTHON:-python3}

start=$(date +%s)
[ -x "$VENV/bin/python" ] || "$PY" -m venv "$VENV"
pip() { "$VENV/bin/python" -m pip "$@" 2> >(grep -v "is ignored: it is neither a file nor a directory" >&2); }
pip install -q --upgrade pip
pip install -q "torch==2.13.0"
pip install -q -e ".[dev]"

if "$VENV/bin/python" -m pip list 2>/dev/null | grep -iqE '^(nvidia-|triton)'; then
  echo "setup: CUDA packages were installed; this should not happen on a CPU machine:" >&2
  "$VENV/bin/python" -m pip list 2>/dev/null | grep -iE '^(nvidia-|triton)' >&2
  exit 1
fi
echo "setup: done in $(( $(date +%s) - start ))s; activate with: source $VENV/bin/activate"
