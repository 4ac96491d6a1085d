#!/usr/bin/env bash
# The whole suite (make test) as three concurrent pytest runs: the rest; the tests that
# build a pristine Debian root (marker `chroot`: debootstrap, apt and PyInstaller inside it,
# mostly waiting on the network and the disk) with the long modules of marker `beside`; and
# the longest modules of all (marker `aside`: the matrix and its like), which mostly wait on
# probe timeouts and the kernel too. The suite takes about as long as the longest of the
# three. Their output follows the main run's, and the last line counts all three. With
# arguments (pytest node ids), just those, in one ordinary run.
# SUITE narrows the runs to a directory (make e2e: SUITE=tests/e2e); by default, the
# testpaths of pyproject.toml (tests/unit and tests/e2e).
set -u
cd "$(dirname "$0")/.."
PY=${PY:-.venv/bin/python}
if [ $# -gt 0 ]; then
  exec "$PY" -m pytest "$@"
fi
beside_log=$(mktemp /tmp/isolation-tests-beside.XXXXXX)
aside_log=$(mktemp /tmp/isolation-tests-aside.XXXXXX)
main_log=$(mktemp /tmp/isolation-tests-main.XXXXXX)
trap 'rm -f "$beside_log" "$aside_log" "$main_log"' EXIT
"$PY" -m pytest -m "(chroot or beside) and not aside" -p no:cacheprovider ${SUITE:-} >"$beside_log" 2>&1 &
beside=$!
"$PY" -m pytest -m "aside" -p no:cacheprovider ${SUITE:-} >"$aside_log" 2>&1 &
aside=$!
"$PY" -m pytest -m "not chroot and not beside and not aside" ${SUITE:-} 2>&1 | tee "$main_log"
main=${PIPESTATUS[0]}
wait "$beside"
beside_rc=$?
wait "$aside"
aside_rc=$?
for part in "chroot or beside:$beside_log" "aside:$aside_log"; do
  echo
  echo "----- the tests run beside the rest (-m ${part%%:*}) -----"
  cat "${part#*:}"
done
# pytest's summary line, e.g. "==== 3 failed, 550 passed, 1 error in 900.1s ===="
count() { grep -E '^=+ .* in [0-9.]+s' "$1" | tail -1 | grep -oE "[0-9]+ $2" | grep -oE '^[0-9]+' || echo 0; }
passed=0
failed=0
for log in "$main_log" "$beside_log" "$aside_log"; do
  passed=$(( passed + $(count "$log" passed) ))
  failed=$(( failed + $(count "$log" failed) + $(count "$log" error) ))
done
# pytest exits 5 when a run selects nothing (SUITE=tests/unit has no `aside` test): not a failure
ok() { [ "$1" -eq 0 ] || [ "$1" -eq 5 ]; }
ok "$main" && ok "$beside_rc" && ok "$aside_rc" || [ "$failed" -gt 0 ] || failed=1  # a run that died counts
echo
echo "tests: $passed passed, $failed failed"
ok "$main" && ok "$beside_rc" && ok "$aside_rc"
