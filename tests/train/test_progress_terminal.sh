#!/usr/bin/env bash
# A run's output as a terminal shows it (DSTRAIN_PROGRESS=bar, stdout and stderr together): every
# checkpoint message is a line of its own, never glued to the end of the live bar
# ("eta 4sdstrain: checkpoint ..."), and the run's last bar stays on screen.
set -u
: "${DSTRAIN:?}" "${SRC:?}" "${TMPROOT:?}"
T=$TMPROOT/progress_terminal; rm -rf "$T"; mkdir -p "$T"; cd "$T"
fails=0; passes=0
check() { # check NAME COMMAND...
  local name=$1; shift
  if "$@"; then passes=$((passes+1)); else echo "FAIL: $name"; fails=$((fails+1)); fi
}
DSTRAIN_PROGRESS=bar "$DSTRAIN" train train.steps=6 checkpoint.every=2 train.seq_len=32 \
  train.micro_batch_size=2 run.dir=run > screen.bytes 2>&1
check "run exits 0" test $? -eq 0
# the screen: "\r" to column 0, ESC[K erases to the end of the line, "\n" ends it
python3 - <<'PY' > screen.txt || { echo "FAIL: python3 needed"; exit 1; }
b = open("screen.bytes", "rb").read().decode()
lines, cur, col, i = [], [], 0, 0
while i < len(b):
    c = b[i]
    if c == "\r": col = 0
    elif c == "\n": lines.append("".join(cur)); cur, col = [], 0
    elif c == "\x1b":
        j = i + 2
        while not ("@" <= b[j] <= "~"): j += 1
        if b[j] == "K": del cur[col:]
        i = j
    else:
        if col < len(cur): cur[col] = c
        else: cur.append(c)
        col += 1
    i += 1
if cur: lines.append("".join(cur))
print("\n".join(lines))
PY
check "three checkpoint messages, each a line of its own" \
  test "$(grep -c '^dstrain: checkpoint run/checkpoints/step-0000000[246] saved' screen.txt)" -eq 3
check "no message glued to a bar" bash -c '! grep -q "eta [0-9hms?]*dstrain:" screen.txt'
check "the last bar stays" grep -q '^\[####################\] step 6/6 |' screen.txt
[ $fails -eq 0 ] || cat screen.txt
echo "$passes passed, $fails failed"
[ "$fails" -eq 0 ]
