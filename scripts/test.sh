#!/usr/bin/env bash
# Run refstore's checks: lint, types, then the test suite (creates .venv if needed).
# Extra arguments go to pytest, e.g. ./scripts/test.sh -m slow  or  -k export
set -euo pipefail
source "$(dirname "$0")/_setup.sh"
cd "$ROOT"
ruff check src tests scripts
ruff format --check src tests scripts
mypy
exec python -m pytest "$@"
