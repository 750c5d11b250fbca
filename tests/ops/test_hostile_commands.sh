#!/usr/bin/env bash
# Paths from a config or the command line never become commands: `dstrain submit` quotes every
# value it writes into the sbatch script and refuses control characters; `dstrain plot` refuses
# a path that would end a gnuplot command. Each case checks that the planted command did not run.
set -u
: "${DSTRAIN:?}" "${SRC:?}" "${TMPROOT:?}"
T=$TMPROOT/ops_hostile_commands; rm -rf "$T"; mkdir -p "$T"; cd "$T"
fails=0; passes=0
check() { # check NAME CONDITION...
  local name=$1; shift
  if "$@"; then passes=$((passes+1)); else echo "FAIL: $name"; fails=$((fails+1)); fi
}

# ---- submit: run.dir and the working directory with shell syntax, quoted in the script ----
mkdir -p bin 'work $(touch PWNED_CWD) `touch PWNED_TICK`'
cat > bin/srun <<'SH'
#!/bin/bash
printf '%s\n' "$@" > "$ARGS_OUT"
SH
printf '#!/bin/bash\nexit 0\n' > bin/scontrol
chmod +x bin/srun bin/scontrol
(cd 'work $(touch PWNED_CWD) `touch PWNED_TICK`' &&
 "$DSTRAIN" submit --dry-run 'run.dir=r$(touch PWNED_RUN)'"'"'q' > "$T/job.sbatch" 2> "$T/submit.err"); rc=$?
check "submit --dry-run with shell syntax in paths exits 0" test $rc -eq 0
check "submit: --output is quoted for sbatch" grep -q '^#SBATCH --output="/.*/r\$(touch PWNED_RUN)'"'"'q"/%x-%j.log$' job.sbatch
check "submit: cd is one quoted word" grep -q "^cd '/.*work \$(touch PWNED_CWD) \`touch PWNED_TICK\`'$" job.sbatch
# run the rendered script with stand-ins for srun and scontrol: the planted commands never run
(cd 'work $(touch PWNED_CWD) `touch PWNED_TICK`' &&
 PATH="$T/bin:$PATH" ARGS_OUT="$T/srun.args" SLURM_JOB_NAME=j SLURM_JOB_ID=7 \
   bash "$T/job.sbatch" > "$T/job.out" 2>&1); rc=$?
check "the rendered script runs (exit 0)" test $rc -eq 0
check "no planted command ran" bash -c '! find . -name "PWNED*" | grep -q .'
check "srun got run.dir as one argument" grep -qx "run.dir=$T/work \$(touch PWNED_CWD) \`touch PWNED_TICK\`/r\$(touch PWNED_RUN)'q/j-7" srun.args

# a newline in run.dir (or any control character) is refused
"$DSTRAIN" submit --dry-run $'run.dir=r\ntouch PWNED_NL' > nl.sbatch 2> nl.err; rc=$?
check "submit: newline in run.dir: exit 2" test $rc -eq 2
check "submit: newline in run.dir: message" grep -q 'run.dir: .*control character' nl.err
check "submit: newline in run.dir: no script" test ! -s nl.sbatch
"$DSTRAIN" submit --dry-run 'run.dir=r%j' > pct.sbatch 2> pct.err; rc=$?
check "submit: '%' in run.dir: exit 2" bash -c "[ $rc -eq 2 ] && grep -q 'file name pattern' pct.err"
mkdir $'cwd\x01x'
(cd $'cwd\x01x' && "$DSTRAIN" submit --dry-run > /dev/null 2> "$T/cwd.err"); rc=$?
check "submit: control character in the working directory: exit 2" bash -c "[ $rc -eq 2 ] && grep -q 'control character' cwd.err"

# ---- plot: a run directory or output name with a newline ----
if command -v gnuplot >/dev/null; then
  d=$'run\nsystem "touch PWNED_PLOT"\n#'
  mkdir -p "$d"
  printf '{"step": 1, "loss": 2.0, "lr": 0.001, "tokens_per_second": 10}\n' > "$d/metrics.jsonl"
  "$DSTRAIN" plot "$d" -o plot.png > plot.out 2> plot.err; rc=$?
  check "plot: newline in RUN_DIR: exit 2" test $rc -eq 2
  check "plot: newline in RUN_DIR: message" grep -q 'control character' plot.err
  mkdir -p okrun && cp "$d/metrics.jsonl" okrun/
  "$DSTRAIN" plot okrun -o $'o.png\nsystem "touch PWNED_PLOT"' > plot2.out 2> plot2.err; rc=$?
  check "plot: newline in -o: exit 2" test $rc -eq 2
  check "plot: no planted command ran" test ! -e PWNED_PLOT
  "$DSTRAIN" plot okrun -o "it's.png" > plot3.out 2>&1; rc=$?
  check "plot: a quote in the output name works" bash -c "[ $rc -eq 0 ] && [ -s \"it's.png\" ]"
fi

echo "ops/hostile_commands: $passes passed, $fails failed"
[ $fails -eq 0 ]
