#!/usr/bin/env bash
# Run the test suite. In CI (CI=true) slow tests are deselected. pytest exits 5 when it collected
# nothing; that is a failure for us too, except when every test was deliberately deselected.
set -uo pipefail
cd "$(dirname "$0")/.."
args=("$@")
if [ "${CI:-}" = "true" ]; then args=(-m "not slow" "${args[@]}"); fi
.venv/bin/python -m pytest "${args[@]}"
rc=$?
if [ $rc -eq 5 ]; then echo "pytest: no tests ran" >&2; fi
exit $rc
