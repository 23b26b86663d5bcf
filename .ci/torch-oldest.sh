#!/usr/bin/env bash
# The test suite under the oldest torch that pyproject.toml declares (dependencies: "torch>=2.4").
# Builds a clean venv (no system site-packages) with torch 2.4 and the matching torchvision from PyPI,
# installs fastmaml[dev] there without letting pip upgrade torch, and runs pytest. Usage:
#   bash .ci/torch-oldest.sh [pytest args...]      (VENV=DIR reuses or places the venv; default under $TMPDIR)
set -euo pipefail
cd "$(dirname "$0")/.."
TORCH=2.4.1
TORCHVISION=0.19.1   # the torchvision release built for torch 2.4
grep -q "\"torch>=${TORCH%.*}\"" pyproject.toml || {
    echo "torch-oldest.sh: pyproject.toml no longer declares torch>=${TORCH%.*}; update TORCH here" >&2; exit 2; }
VENV=${VENV:-${TMPDIR:-/tmp}/fastmaml-torch-$TORCH}
[ -x "$VENV/bin/python" ] || python3 -m venv "$VENV"
PIP=("$VENV/bin/python" -m pip install --quiet --disable-pip-version-check)
CONSTRAINTS="$VENV/constraints.txt"
printf 'torch==%s\ntorchvision==%s\n' "$TORCH" "$TORCHVISION" > "$CONSTRAINTS"
"${PIP[@]}" -c "$CONSTRAINTS" "torch==$TORCH" "torchvision==$TORCHVISION"
"${PIP[@]}" -c "$CONSTRAINTS" -e '.[dev]'
"$VENV/bin/python" -c 'import torch; print("torch", torch.__version__)'
"$VENV/bin/python" -m pytest -p no:cacheprovider "$@"
