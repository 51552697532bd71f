#!/usr/bin/env bash
# The main job on an embedded default: a CCMP-like 6-hourly collection arriving in
# three batches, each caught up by `refstore sync` (local granules, local Icechunk repo,
# SQLite ledger; no account, no network). Creates .venv on first use.
set -euo pipefail
source "$(dirname "$0")/_setup.sh"
cd "$ROOT"
exec python scripts/demo.py "$@"
