#!/usr/bin/env bash
# The whole suite (make test) as two concurrent pytest runs: the tests that build a
# pristine Debian root (marker `chroot`: debootstrap, apt and PyInstaller inside it, mostly
# waiting on the network and the disk, ~5 minutes) and the long modules that mostly wait on
# timeouts and the kernel (marker `beside`: the matrix and the stress runs, ~9 minutes) run
# beside everything else, so the suite takes about as long as the rest alone. Their output
# follows the main run's, and the last line counts both. With arguments (pytest node ids),
# just those, in one ordinary run.
# SUITE narrows the two runs to a directory (make e2e: SUITE=tests/e2e); by default, the
# testpaths of pyproject.toml (tests/unit and tests/e2e).
set -u
cd "$(dirname "$0")/.."
PY=${PY:-.venv/bin/python}
if [ $# -gt 0 ]; then
  exec "$PY" -m pytest "$@"
fi
beside_log=$(mktemp /tmp/isolation-tests-chroot.XXXXXX)
main_log=$(mktemp /tmp/isolation-tests-main.XXXXXX)
trap 'rm -f "$beside_log" "$main_log"' EXIT
"$PY" -m pytest -m "chroot or beside" -p no:cacheprovider ${SUITE:-} >"$beside_log" 2>&1 &
beside=$!
"$PY" -m pytest -m "not chroot and not beside" ${SUITE:-} 2>&1 | tee "$main_log"
main=${PIPESTATUS[0]}
wait "$beside"
chroot=$?
echo
echo "----- the tests run beside the rest (markers chroot and beside) -----"
cat "$beside_log"
# pytest's summary line, e.g. "==== 3 failed, 550 passed, 1 error in 900.1s ===="
count() { grep -E '^=+ .* in [0-9.]+s' "$1" | tail -1 | grep -oE "[0-9]+ $2" | grep -oE '^[0-9]+' || echo 0; }
passed=$(( $(count "$main_log" passed) + $(count "$beside_log" passed) ))
failed=$(( $(count "$main_log" failed) + $(count "$beside_log" failed) \
          + $(count "$main_log" error) + $(count "$beside_log" error) ))
[ "$main" -eq 0 ] && [ "$chroot" -eq 0 ] || [ "$failed" -gt 0 ] || failed=1  # a run that died counts
echo
echo "tests: $passed passed, $failed failed"
[ "$main" -eq 0 ] && [ "$chroot" -eq 0 ]
