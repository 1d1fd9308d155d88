#!/usr/bin/env bash
# The whole test suite on a fresh clone: installs what it needs, then lint, forge tests, pytest.
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$root"
bash scripts/bootstrap.sh
export PATH="$root/tools/node_modules/.bin:$root/.venv/bin:$PATH"

echo "== ruff"
ruff check .
echo "== forge build + test"
# FORGE_SNAPSHOT_CHECK: a gas figure that differs from the committed contracts/snapshots/ fails
# the run, so gas changes are always deliberate (re-record with plain `forge test --offline`).
(cd contracts && forge build --offline >/dev/null && FORGE_SNAPSHOT_CHECK=true forge test --offline)
echo "== pytest"
# pytest exits 5 when it collects nothing; that is a failure here, as any non-zero status is.
pytest -n 2 --dist loadfile "$@"
