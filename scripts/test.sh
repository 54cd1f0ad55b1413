#!/usr/bin/env bash
# The test suite in its two environments (the README's test command; .ci/run runs exactly this).
#
#   oracle  constraints/oracle.txt pins every package to the last versions where the reference peft works
#           inside transformers (transformers 5.23.0 + peft 0.21.2): every comparison against the reference runs.
#   newest  nothing pinned but torch: whatever the package registry serves today, as users get it.
#
# Each environment is a virtualenv in the checkout (.venv-oracle, .venv-newest), created when missing and
# brought up to date on every run. torch comes first, pinned, from constraints/torch.txt: a bare `torch`
# requirement with no torch installed would pull several GB of CUDA packages.
#
# Usage: bash scripts/test.sh [oracle|newest|both] [extra pytest arguments]
set -euo pipefail
cd "$(dirname "$0")/.."
which_envs=${1:-both}
shift || true
case "$which_envs" in
  oracle) envs=(oracle) ;;
  newest) envs=(newest) ;;
  both) envs=(oracle newest) ;;
  *) echo "scripts/test.sh: unknown environment '$which_envs' (use oracle, newest or both)" >&2; exit 2 ;;
esac
PYTHON=${PYTHON:-python3}
export HF_HUB_OFFLINE=1 PIP_DISABLE_PIP_VERSION_CHECK=1

prepare() {  # $1: environment name
  local venv=".venv-$1"
  [ -x "$venv/bin/python" ] || "$PYTHON" -m venv "$venv"
  "$venv/bin/python" -m pip install --quiet -c constraints/torch.txt torch
  if [ "$1" = oracle ]; then
    "$venv/bin/python" -m pip install --quiet -c constraints/torch.txt -c constraints/oracle.txt -e ".[test]"
  else
    "$venv/bin/python" -m pip install --quiet --upgrade --upgrade-strategy eager -c constraints/torch.txt -e ".[test]"
  fi
  "$venv/bin/python" -c "import torch, transformers, peft; print(f'[$1] torch {torch.__version__}, transformers {transformers.__version__}, peft {peft.__version__}')"
}

for env in "${envs[@]}"; do
  start=$SECONDS
  prepare "$env"
  echo "[$env] environment ready in $((SECONDS - start)) s"
done

if [ -f scripts/lint.sh ] && [ "$which_envs" != oracle ]; then
  start=$SECONDS
  PATH="$PWD/.venv-newest/bin:$PATH" bash scripts/lint.sh
  echo "[lint] passed in $((SECONDS - start)) s"
fi

status=0
for env in "${envs[@]}"; do
  start=$SECONDS
  rc=0
  ".venv-$env/bin/python" -m pytest -n 2 tests "$@" || rc=$?
  echo "[$env] tests finished in $((SECONDS - start)) s (exit $rc)"
  [ "$rc" -eq 0 ] || status=$rc
done
exit "$status"
