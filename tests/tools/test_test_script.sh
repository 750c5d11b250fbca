#!/usr/bin/env bash
# tools/test.sh with cmake and ctest replaced by stubs: a failing release suite must not stop the
# sanitizer suite from running, both results are printed at the end, and the exit status is
# non-zero when either half failed (zero only when both passed); --fast runs the release half.
set -u
: "${SRC:?}" "${TMPROOT:?}"
T=$TMPROOT/tools_test_script; rm -rf "$T"; mkdir -p "$T/repo/tools" "$T/bin"
fails=0; passes=0
check() { # check NAME COMMAND...
  local name=$1; shift
  if "$@"; then passes=$((passes+1)); else echo "FAIL: $name"; fails=$((fails+1)); fi
}
cp "$SRC/tools/test.sh" "$T/repo/tools/test.sh"
# cmake: configure and build succeed. ctest: logs the build directory it ran in and exits with
# the status named for that directory in FAIL_IN (release: build, sanitizer: build-sanitize).
cat > "$T/bin/cmake" <<'STUB'
#!/usr/bin/env bash
exit 0
STUB
cat > "$T/bin/ctest" <<'STUB'
#!/usr/bin/env bash
dir=$(basename "$PWD")
echo "$dir" >> "$LOG"
case " ${FAIL_IN:-} " in *" $dir "*) exit 8;; esac
exit 0
STUB
chmod +x "$T/bin/cmake" "$T/bin/ctest"
run() { # run FAIL_IN [ARGS...]: sets out, rc and ran
  local fail_in=$1; shift
  rm -rf "$T/repo/build" "$T/repo/build-sanitize" "$T/log"
  mkdir -p "$T/repo/build" "$T/repo/build-sanitize"
  out=$(PATH="$T/bin:$PATH" LOG="$T/log" FAIL_IN="$fail_in" bash "$T/repo/tools/test.sh" "$@" 2>&1)
  rc=$?
  ran=$(tr '\n' ' ' < "$T/log" 2>/dev/null)
}

run "build"
check "release fails: the sanitizer suite still runs" test "$ran" = "build build-sanitize "
check "release fails: exit status non-zero" test "$rc" -ne 0
check "release fails: its result printed" grep -q "release build (build/): *FAILED" <<< "$out"
check "release fails: the sanitizer result printed" \
  grep -q "ASan + UBSan build (build-sanitize/): passed" <<< "$out"

run "build-sanitize"
check "sanitizer fails: both ran" test "$ran" = "build build-sanitize "
check "sanitizer fails: exit status non-zero" test "$rc" -ne 0
check "sanitizer fails: release result printed" grep -q "release build (build/): *passed" <<< "$out"
check "sanitizer fails: its result printed" \
  grep -q "ASan + UBSan build (build-sanitize/): FAILED" <<< "$out"

run ""
check "both pass: exit 0" test "$rc" -eq 0
check "both pass: both ran" test "$ran" = "build build-sanitize "

run "build" --fast
check "--fast: the release suite alone" test "$ran" = "build "
check "--fast: a release failure is the exit status" test "$rc" -ne 0
check "--fast: says the sanitizer half did not run" grep -q "not run (--fast)" <<< "$out"
run "" --fast
check "--fast: passing release exits 0" test "$rc" -eq 0

echo "$passes passed, $fails failed"
[ "$fails" -eq 0 ]
