#!/usr/bin/env bash
# The command line a newcomer meets first: --version, a suggestion for a mistyped command,
# `dstrain train --help` listing the config keys, help that points to tools/tokenize_jsonl.py,
# and a .gitignore that keeps build directories and runs out of git.
set -u
: "${DSTRAIN:?}" "${SRC:?}" "${TMPROOT:?}"
T=$TMPROOT/train_getting_started; rm -rf "$T"; mkdir -p "$T"; cd "$T"
fails=0; passes=0
check() { # check NAME COMMAND...
  local name=$1; shift
  if "$@"; then passes=$((passes+1)); else echo "FAIL: $name"; fails=$((fails+1)); fi
}

"$DSTRAIN" --version > version.out 2>&1
check "--version exits 0" test $? -eq 0
check "--version: name, version and backends" \
  grep -Eq "^dstrain [0-9]+\.[0-9]+\.[0-9]+ \(CPU backend.*CUDA backend: (built|not built)" version.out
for typo in trian tarin evl genrate expot; do
  "$DSTRAIN" $typo > typo.out 2> typo.err; rc=$?
  check "$typo exits 2" test $rc -eq 2
done
"$DSTRAIN" trian > typo.out 2> typo.err
check "trian: did you mean train?" grep -q 'unknown command "trian": did you mean train?' typo.err
"$DSTRAIN" genrate > typo.out 2> typo.err
check "genrate: did you mean generate?" grep -q "did you mean generate?" typo.err
"$DSTRAIN" xylophone > typo.out 2> typo.err
check "nothing close: no suggestion, the usage" bash -c '! grep -q "did you mean" typo.err && grep -q "^usage: dstrain" typo.err'

"$DSTRAIN" train --help > help.out 2>&1
check "train --help exits 0" test $? -eq 0
check "train --help lists the config keys" test "$(grep -Ec '^  (model|data|train|optim|checkpoint|run)\.' help.out)" -ge 30
check "train --help shows optim.lr with its default" grep -Eq "^  optim.lr .*default" help.out
"$DSTRAIN" --help > usage.out
check "the usage points to tools/tokenize_jsonl.py" grep -q "tools/tokenize_jsonl.py" usage.out

if git -C "$SRC" rev-parse --git-dir > /dev/null 2>&1; then
  check ".gitignore: build directories" \
    bash -c "git -C '$SRC' check-ignore -v --no-index build-anything/x | grep -q '^.gitignore:'"
  check ".gitignore: runs/" bash -c "git -C '$SRC' check-ignore -v --no-index runs/x | grep -q '^.gitignore:'"
  check ".gitignore: sources are not ignored" bash -c "! git -C '$SRC' check-ignore -q --no-index trainer/main.c"
fi
echo "$passes passed, $fails failed"
[ "$fails" -eq 0 ]
