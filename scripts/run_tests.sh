#!/usr/bin/env bash
# Runs the test suite in the project's venv. Extra arguments go to pytest.
# pytest exits 5 when it collected no tests; this suite is never empty, so that is a failure.
set -uo pipefail
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
VENV=${VENV:-$ROOT/.venv}
cd "$ROOT"
"$VENV/bin/python" -m pytest "$@"
rc=$?
if [[ $rc -eq 5 ]]; then
    echo "run_tests: pytest collected no tests; the suite must never be empty" >&2
    exit 1
fi
exit $rc
