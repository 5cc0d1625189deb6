#!/usr/bin/env bash
# The device check of issue 12: `pytest -m gpu`, then `python -m logvmamba.bench.gpu` with its summary.
#   workflow/scripts/gpu_check.sh [--device cuda|cpu] [--quick --out FILE.json] [...]   (arguments go to the module)
# GPU_CHECK_PYTEST_ARGS replaces the pytest selection (default: -m gpu); GPU_CHECK_SECONDS (default 450) bounds
# pytest and the module together (pytest gets at most 150 s, the module --time-budget what is left; an explicit
# --time-budget wins). Exit status non-zero when pytest or the module failed; the last line says where the JSON went.
set -u
cd "$(dirname "$0")/../.."
work="$(mktemp -d)"; trap 'rm -rf "$work"' EXIT
total=${GPU_CHECK_SECONDS:-450}; start=$SECONDS
# shellcheck disable=SC2086  # the selection is a list of words
timeout 150 python -m pytest ${GPU_CHECK_PYTEST_ARGS:--m gpu} -q -p no:cacheprovider --junitxml "$work/pytest.xml"
tests=$?; [ "$tests" -eq 5 ] && tests=0  # 5: nothing selected, not a failure
left=$(( total - (SECONDS - start) - 30 )); [ "$left" -lt 60 ] && left=60
python -m logvmamba.bench.gpu --pytest-junit "$work/pytest.xml" --pytest-exit-status "$tests" \
    --time-budget "$left" --record-path "$work/path" "$@"
bench=$?
echo "gpu_check: pytest exit status $tests, logvmamba.bench.gpu exit status $bench;" \
     "JSON: $(cat "$work/path" 2>/dev/null || echo 'not written')"
[ "$tests" -eq 0 ] && [ "$bench" -eq 0 ]
