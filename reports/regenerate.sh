#!/usr/bin/env bash
# Regenerate the committed reports: certify refimpl and every bundled framework adapter (each
# framework in its own environment), write the reproduction script of every gradient- and
# value-class finding under reports/repro/<adapter>/ in that environment and run it there, then
# one comparison from the JSON reports, and the README's table of findings from them.
# Usage: bash reports/regenerate.sh   (from anywhere; about 10 minutes on a fresh machine)
set -uo pipefail
cd "$(dirname "$0")/.."
[ -x .venv/bin/rlconform ] || { python3 -m venv .venv && .venv/bin/pip install -q torch==2.13.0 && .venv/bin/pip install -q -e .; }
.venv/bin/rlconform certify refimpl --out reports -q
WRITE_REPRO=1 REPRO_DIR=reports/repro bash .ci/certify_frameworks.sh reports
status=$?
.venv/bin/rlconform compare reports/*.json --out reports
.venv/bin/python -m conformance.findings --readme README.md reports/*.json
exit $status
