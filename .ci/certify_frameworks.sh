#!/usr/bin/env bash
# Certify every bundled framework adapter, each framework in its own virtual environment
# (their pins clash: verl wants transformers<5.11, TRL 1.16 comes with 5.2x, torchrl wants
# tensordict 0.14 where verl pins 0.10). Usage: certify_frameworks.sh OUT_DIR [FRAMEWORK ...]
# Exits non-zero unless every certification exits 0 (every deviation declared, none stale,
# no error). Environments are kept in .venv-<framework> and reused when present. With
# RUN_ADAPTER_TESTS=1 it also runs tests/test_adapter_<framework>.py in that environment.
set -euo pipefail
cd "$(dirname "$0")/.."
out="${1:?usage: certify_frameworks.sh OUT_DIR [FRAMEWORK ...]}"
shift
frameworks=("$@")
[ ${#frameworks[@]} -gt 0 ] || frameworks=(trl verl openrlhf torchrl liger skyrl)
mkdir -p "$out"
status=0
for fw in "${frameworks[@]}"; do
  venv=".venv-$fw"
  if [ ! -x "$venv/bin/rlconform" ]; then
    python3 -m venv "$venv"
    "$venv/bin/pip" install -q torch==2.13.0
    "$venv/bin/pip" install -q -e ".[test]"
    "$venv/bin/rlconform" setup "$fw"
  fi
  variants=$("$venv/bin/python" -c "
from conformance.loading import registered_adapters
print(' '.join(sorted(n for n in registered_adapters() if n == '$fw' or n.startswith('$fw-'))))")
  for name in $variants; do
    echo "== certify $name"
    if ! "$venv/bin/rlconform" certify "$name" --out "$out" -q; then
      status=1
    fi
  done
  if [ -n "${RUN_ADAPTER_TESTS:-}" ] && [ -f "tests/test_adapter_$fw.py" ]; then
    echo "== tests/test_adapter_$fw.py"
    "$venv/bin/python" -m pytest -q -p no:cacheprovider "tests/test_adapter_$fw.py" || status=1
  fi
done
exit $status
