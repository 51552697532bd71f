# Sourced by demo.sh and test.sh: find Python >= 3.12, create .venv, install refstore.
# Re-running is cheap: the install is skipped while pyproject.toml is unchanged.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
VENV="$ROOT/.venv"

py_ok() { "$1" -c 'import sys; sys.exit(0 if sys.version_info >= (3, 12) else 1)' 2>/dev/null; }

find_python() {
  local c
  for c in "${REFSTORE_PYTHON:-}" python3.12 python3.13 python3; do
    [ -n "$c" ] && command -v "$c" >/dev/null 2>&1 && py_ok "$(command -v "$c")" && { command -v "$c"; return 0; }
  done
  local roots=()
  command -v pyenv >/dev/null 2>&1 && roots+=("$(pyenv root)/versions")
  roots+=("$HOME/.pyenv/versions" "/root/.pyenv/versions" "/usr/local/bin" "/opt/python")
  for r in "${roots[@]}"; do
    # 3.12 first: the stack's tested pins (icechunk 2.3, virtualizarr 2.8) were measured on it.
    for c in $(ls -d "$r"/3.12*/bin/python3 "$r"/python3.12 2>/dev/null | sort -rV) \
             $(ls -d "$r"/3.1[3-9]*/bin/python3 "$r"/python3.1[3-9] 2>/dev/null | sort -rV); do
      py_ok "$c" && { echo "$c"; return 0; }
    done
  done
  return 1
}

if [ ! -x "$VENV/bin/python" ] || ! py_ok "$VENV/bin/python"; then
  PY="$(find_python)" || {
    echo "refstore: no Python >= 3.12 found (icechunk >= 2.3 and virtualizarr >= 2.8 need it)." >&2
    echo "  hint: install Python 3.12+ (e.g. 'pyenv install 3.12') or set REFSTORE_PYTHON=/path/to/python3.12" >&2
    exit 2
  }
  echo "refstore: creating .venv with $PY ($("$PY" -V 2>&1))" >&2
  rm -rf "$VENV"
  "$PY" -m venv "$VENV"
fi

STAMP="$VENV/.refstore-installed"
WANT="$(cat "$ROOT/pyproject.toml" | sha256sum | cut -c1-16)"
if [ "$(cat "$STAMP" 2>/dev/null || true)" != "$WANT" ]; then
  echo "refstore: installing dependencies into .venv (about a minute the first time)" >&2
  "$VENV/bin/python" -m pip install --quiet --disable-pip-version-check --upgrade pip 2>&1 | grep -v "^WARNING: Location" >&2 || true
  "$VENV/bin/python" -m pip install --quiet --disable-pip-version-check -e "$ROOT[test]" 2>&1 | grep -v "^WARNING: Location" >&2 || true
  "$VENV/bin/python" -c "import refstore, icechunk, virtualizarr, moto" || {
    echo "refstore: the install into .venv failed; see the pip output above." >&2
    exit 2
  }
  echo "$WANT" > "$STAMP"
fi
export PATH="$VENV/bin:$PATH"
