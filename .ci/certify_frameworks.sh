#!/usr/bin/env bash
# Certify every bundled framework adapter, each framework in its own virtual environment
# (their pins clash: verl wants transformers<5.11, TRL 1.16 comes with 5.2x, torchrl wants
# tensordict 0.14 where verl pins 0.10). Usage: certify_frameworks.sh OUT_DIR [FRAMEWORK ...]
# Exits non-zero unless every certification exits 0 (every deviation declared, none stale,
# no error). Environments are kept in .venv-<framework> and reused when present. With
# RUN_ADAPTER_TESTS=1 it also runs tests/test_adapter_<framework>.py in that environment.
# Then it runs every reproduction script under $REPRO_DIR/<variant>/ (default reports/repro;
# conformance/repro.py writes them) in that environment and fails if one does not reproduce its
# deviation (exit status != 0: the framework changed, or the script broke); a variant without
# such a directory has nothing to run. With WRITE_REPRO=1 the scripts of each variant are first
# rewritten from the reports just made (python -m conformance.repro; reports/regenerate.sh).
set -euo pipefail
cd "$(dirname "$0")/.."
out="${1:?usage: certify_frameworks.sh OUT_DIR [FRAMEWORK ...]}"
shift
frameworks=("$@")
repro_dir="${REPRO_DIR:-reports/repro}"
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
  if [ -n "${WRITE_REPRO:-}" ] && [ -n "$variants" ]; then
    echo "== reproduction scripts of $fw -> $repro_dir"
    # shellcheck disable=SC2086
    "$venv/bin/python" -m conformance.repro --reports "$out" --out "$repro_dir" \
      --adapters $variants || status=1
  fi
  for name in $variants; do
    [ -d "$repro_dir/$name" ] || continue
    for script in "$repro_dir/$name"/*.py; do
      [ -e "$script" ] || continue
      # -I: not this checkout's packages from the working directory; the script inlines them
      if ! "$venv/bin/python" -I "$script" > /dev/null 2>&1; then
        echo "repro: $script does not reproduce (run: $venv/bin/python $script)" >&2
        status=1
      fi
    done
  done
  if [ -n "${RUN_ADAPTER_TESTS:-}" ] && [ -f "tests/test_adapter_$fw.py" ]; then
    echo "== tests/test_adapter_$fw.py"
    # the tests read the reports just written instead of certifying every variant again
    RLCONFORM_REPORTS_DIR="$out" "$venv/bin/python" -m pytest -q -p no:cacheprovider \
      "tests/test_adapter_$fw.py" || status=1
  fi
done
exit $status
