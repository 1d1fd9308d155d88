#!/usr/bin/env bash
# The whole test suite on a fresh clone: installs what it needs, then lint, forge tests, pytest.
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$root"
bash scripts/bootstrap.sh
export PATH="$root/tools/node_modules/.bin:$root/.venv/bin:$PATH"

echo "== ruff"
ruff check .
echo "== mypy"
# margin/ strictly ([tool.mypy] in pyproject.toml): the engine that must equal the verifier;
# keeper/ and bench/ with the default checks.
mypy margin keeper bench
echo "== forge build + test"
# FORGE_SNAPSHOT_CHECK: a gas figure that differs from the committed contracts/snapshots/ fails
# the run, so gas changes are always deliberate (re-record with plain `forge test --offline`).
# forge 1.7 prints "Failed to match snapshots" but still exits 0, so the output is checked too.
forge_log="$(mktemp)"
trap 'rm -f "$forge_log"' EXIT
(cd contracts && forge build --offline >/dev/null && FORGE_SNAPSHOT_CHECK=true forge test --offline) 2>&1 \
  | tee "$forge_log"
if grep -q "Failed to match snapshots" "$forge_log"; then
  echo "gas snapshots differ from contracts/snapshots/ (see above): re-record with" \
    "'cd contracts && forge test --offline' and commit them if the change is intended" >&2
  exit 1
fi
echo "== pytest"
# Under CI the machine's PostgreSQL must be there: its tests fail instead of being skipped.
if [ -n "${CI:-}" ]; then export KEEPER_TEST_REQUIRE_PG="${KEEPER_TEST_REQUIRE_PG:-1}"; fi
# pytest exits 5 when it collects nothing; that is a failure here, as any non-zero status is.
pytest -n 2 --dist loadfile "$@"
