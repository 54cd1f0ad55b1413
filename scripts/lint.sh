#!/usr/bin/env bash
# Style gate (the lead calls it from .ci/run): ruff lint + format check, mypy over src/, size limits.
# Configuration lives in pyproject.toml ([tool.ruff], [tool.mypy]); sizes in scripts/check_sizes.py.
set -euo pipefail
cd "$(dirname "$0")/.."
python -m ruff check src tests benchmarks scripts
python -m ruff format --check src tests benchmarks scripts
python -m mypy
python scripts/check_sizes.py src
