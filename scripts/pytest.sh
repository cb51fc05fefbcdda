#!/usr/bin/env bash
# Run the test suite: in parallel (pytest-xdist, one process per core plus one: most tests wait on subprocesses
# and the broker), soak runs deselected. Arguments go to pytest (`scripts/pytest.sh tests/workers -x`).
# pytest exits 5 when it collected nothing: a failure for us too.
set -uo pipefail
cd "$(dirname "$0")/.."
workers=$(( $(nproc) + 1 ))
.venv/bin/python -m pytest -n "${PYTEST_WORKERS:-$workers}" -m "not soak" "$@"
rc=$?
if [ $rc -eq 5 ]; then echo "pytest: no tests ran" >&2; fi
exit $rc
