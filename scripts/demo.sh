#!/usr/bin/env bash
# The README's main command: installs what it needs, then runs the devnet demo.
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$root"
bash scripts/bootstrap.sh
export PATH="$root/tools/node_modules/.bin:$root/.venv/bin:$PATH"
# keeper demo builds the contracts itself when they are stale (keeper/artifacts.py: forge's
# output, lint warnings included, shown only if the build fails).
exec keeper demo "$@"
