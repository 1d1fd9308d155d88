#!/usr/bin/env bash
# Installs everything the project needs into the repository itself, idempotently:
#   .venv/               Python 3.11+ virtualenv with the package and its test extras (pinned)
#   tools/node_modules/  anvil, forge, cast (@foundry-rs/*) and solcjs, pinned by tools/package-lock.json
#   tools/bin/solc       the shim that lets forge drive solcjs (committed, not generated)
# Each part is skipped when the stamp of its inputs is unchanged, so a second run takes seconds.
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$root"

log() { printf '[bootstrap] %s\n' "$*" >&2; }
stamp_of() { cat "$@" | sha256sum | cut -d' ' -f1; }

# --- Python ---------------------------------------------------------------
py="${PYTHON:-}"
if [ -z "$py" ]; then
  for cand in python3.11 python3.12 python3.13 python3; do
    if command -v "$cand" >/dev/null 2>&1; then py="$cand"; break; fi
  done
fi
[ -n "$py" ] || { log "no python3 found"; exit 1; }
"$py" -c 'import sys; sys.exit(0 if sys.version_info >= (3, 11) else 1)' \
  || { log "Python >= 3.11 required, found $("$py" --version 2>&1)"; exit 1; }

want_py="$(stamp_of pyproject.toml requirements.lock)"
if [ ! -x .venv/bin/python ] || [ "$(cat .venv/.bootstrap-stamp 2>/dev/null)" != "$want_py" ]; then
  log "installing Python environment into .venv/"
  [ -x .venv/bin/python ] || "$py" -m venv .venv
  # The registry mirror here prints one harmless 'Location ... ignored' warning per package.
  .venv/bin/python -m pip install --quiet --disable-pip-version-check -c requirements.lock -e '.[test]' \
    2> >(grep -v '^WARNING: Location' >&2)
  echo "$want_py" > .venv/.bootstrap-stamp
fi

# --- EVM toolchain (npm registry) ------------------------------------------
want_node="$(stamp_of tools/package.json tools/package-lock.json)"
if [ ! -x tools/node_modules/.bin/forge ] || [ "$(cat tools/node_modules/.bootstrap-stamp 2>/dev/null)" != "$want_node" ]; then
  command -v npm >/dev/null 2>&1 || { log "npm is required (Node.js 18+)"; exit 1; }
  log "installing anvil, forge, cast and solcjs into tools/node_modules/"
  # --ignore-scripts: the foundry packages ship their linux binary as a dependency
  # package; their postinstall (which would try to download) is not needed.
  (cd tools && npm ci --no-audit --no-fund --ignore-scripts --loglevel=error)
  echo "$want_node" > tools/node_modules/.bootstrap-stamp
fi
for bin in anvil forge cast; do
  [ -x "tools/node_modules/.bin/$bin" ] || { log "missing tools/node_modules/.bin/$bin"; exit 1; }
done
tools/bin/solc --version >/dev/null

# --- promtool (Prometheus rule checks in tests/test_deploy.py) --------------
# Debian's prometheus package provides it. Installed only when missing and the machine can
# (root, or passwordless sudo, and apt-get); otherwise a note, and those tests are skipped
# (outside CI). Its service is not started by this script.
if ! command -v promtool >/dev/null 2>&1; then
  sudo_cmd=""
  if [ "$(id -u)" != 0 ] && command -v sudo >/dev/null 2>&1 && sudo -n true 2>/dev/null; then
    sudo_cmd="sudo -n"
  fi
  if command -v apt-get >/dev/null 2>&1 && { [ "$(id -u)" = 0 ] || [ -n "$sudo_cmd" ]; }; then
    log "installing promtool (Debian package prometheus)"
    $sudo_cmd apt-get -o DPkg::Lock::Timeout=300 update -qq >/dev/null
    DEBIAN_FRONTEND=noninteractive $sudo_cmd apt-get -o DPkg::Lock::Timeout=300 install -y -qq --no-install-recommends \
      prometheus >/dev/null
  else
    log "promtool not found and cannot be installed here (needs apt-get as root):" \
      "install Debian's prometheus package for the alert-rule tests"
  fi
fi
