#!/usr/bin/env bash
# The metrics endpoint in a real run: scraped with curl while training, `promtool check
# metrics` on what it serves, a real Prometheus server (loopback, 1 s scrape interval) scraping
# it and the loss read back through Prometheus' query API, hostile clients that must not change
# the run's losses, and the non-finite step guard (DSTRAIN_INJECT_NAN_STEP).
set -u
: "${DSTRAIN:?}" "${SRC:?}" "${TMPROOT:?}"
T=$TMPROOT/ops_scrape; rm -rf "$T"; mkdir -p "$T"; cd "$T"
export OMP_NUM_THREADS=1 OPENBLAS_NUM_THREADS=1 # 2 shared cores: busy-waiting threads crawl
fails=0; passes=0
check() { # check NAME CONDITION...
  local name=$1; shift
  if "$@"; then passes=$((passes+1)); else echo "FAIL: $name"; fails=$((fails+1)); fi
}
pids=()
cleanup() { for p in "${pids[@]}"; do kill "$p" 2>/dev/null; wait "$p" 2>/dev/null; done; }
trap cleanup EXIT
free_port() { python3 -c "import socket; s=socket.socket(); s.bind(('127.0.0.1',0)); print(s.getsockname()[1])"; }
losses() { python3 -c "import json,sys; [print(json.loads(x)['loss']) for x in open(sys.argv[1]) if '\"loss\"' in x]" "$1"; }
small=(train.steps=60 train.micro_batch_size=2 train.seq_len=32 export.enabled=false log.every=10)

# 1. The same run with no endpoint: the reference losses.
"$DSTRAIN" train "${small[@]}" run.dir=plain > plain.out 2>&1
check "reference run exits 0" test $? -eq 0

# 2. With the endpoint on a free loopback port, slowed to last while it is scraped.
DSTRAIN_STEP_SLEEP_MS=300 "$DSTRAIN" train "${small[@]}" run.dir=scraped \
  metrics.listen=127.0.0.1:0 > scraped.out 2> scraped.err &
train_pid=$!; pids+=("$train_pid")
url=""
for _ in $(seq 100); do
  url=$(sed -n 's|^dstrain: metrics on \(http://[^ ]*\)/metrics$|\1|p' scraped.out)
  [ -n "$url" ] && break; sleep 0.1
done
check "the run prints its metrics URL" test -n "$url"
port=${url##*:}
for _ in $(seq 100); do grep -q '"step": 3,' scraped/metrics.jsonl 2>/dev/null && break; sleep 0.1; done
curl -sf "$url/metrics" > scrape1.txt
check "curl scrapes /metrics" test -s scrape1.txt
check "every required metric is there" bash -c "for m in dstrain_step dstrain_tokens_total \
  dstrain_loss dstrain_learning_rate dstrain_grad_norm dstrain_tokens_per_second \
  dstrain_step_duration_seconds_bucket dstrain_data_wait_seconds_total \
  dstrain_checkpoint_last_success_timestamp_seconds dstrain_nonfinite_steps_total; do \
  grep -q \"^\$m[ {]\" scrape1.txt || { echo missing \$m; exit 1; }; done"
check "the scraped step is a step of the run" python3 -c "
import re; s=int(re.search(r'^dstrain_step (\d+)', open('scrape1.txt').read(), re.M).group(1)); assert 3 <= s <= 60, s"
check "promtool check metrics passes" bash -c "promtool check metrics < scrape1.txt"
check "healthz" test "$(curl -sf "$url/healthz")" = ok

# a real Prometheus server scraping the trainer every second
pport=$(free_port)
cat > prometheus.yml <<YML
global: {scrape_interval: 1s, evaluation_interval: 1s}
scrape_configs:
  - job_name: dstrain
    static_configs: [{targets: ['127.0.0.1:$port']}]
YML
prometheus --config.file=prometheus.yml --storage.tsdb.path="$T/tsdb" \
  --web.listen-address=127.0.0.1:$pport > prometheus.log 2>&1 &
prom_pid=$!; pids+=("$prom_pid")
# hostile clients while both run
python3 "$SRC/tests/ops/hostile_clients.py" "$port" > hostile.out 2>&1
check "hostile clients are answered and closed" test $? -eq 0 || cat hostile.out
value=""
for _ in $(seq 60); do
  value=$(curl -sf "http://127.0.0.1:$pport/api/v1/query?query=dstrain_loss" | python3 -c "
import json,sys; r=json.load(sys.stdin)['data']['result']; print(r[0]['value'][1] if r else '')" 2>/dev/null)
  [ -n "$value" ] && break; sleep 0.5
done
echo "prometheus read dstrain_loss = $value"
check "Prometheus reads the loss back through its query API" test -n "$value"
check "that loss is one of the run's losses" python3 -c "
import json; v=float('$value' or 'nan')
l=[json.loads(x)['loss'] for x in open('scraped/metrics.jsonl') if '\"loss\"' in x]
assert any(abs(v-x) <= 1e-6*abs(x) for x in l), (v, l[:5])"
up=$(curl -sf "http://127.0.0.1:$pport/api/v1/query?query=up" | python3 -c "
import json,sys; r=json.load(sys.stdin)['data']['result']; print(r[0]['value'][1] if r else '')" 2>/dev/null)
check "Prometheus sees the target up" test "$up" = 1
wait "$train_pid"; rc=$?
check "the scraped run finishes" test $rc -eq 0 || tail -5 scraped.err
kill "$prom_pid"; wait "$prom_pid" 2>/dev/null
losses plain/metrics.jsonl > plain.loss; losses scraped/metrics.jsonl > scraped.loss
check "scraping and hostile clients leave the losses unchanged" cmp -s plain.loss scraped.loss
check "60 losses" test "$(wc -l < scraped.loss)" -eq 60
check "the port is closed after the run" bash -c "! curl -s --max-time 2 $url/healthz"

# 3. metrics.listen beyond loopback needs metrics.allow_remote.
"$DSTRAIN" train "${small[@]}" train.steps=1 run.dir=remote metrics.listen=0.0.0.0:0 \
  > remote.out 2> remote.err; rc=$?
check "non-loopback listen refused (exit 2)" test $rc -eq 2
check "refusal names the key" grep -q "metrics.allow_remote" remote.err

# 4. Non-finite steps are skipped and counted; a run of them stops the run.
DSTRAIN_INJECT_NAN_STEP=3:2 "$DSTRAIN" train "${small[@]}" train.steps=8 run.dir=nan2 \
  > nan2.out 2> nan2.err; rc=$?
check "two non-finite steps: the run finishes" test $rc -eq 0
check "skipped steps counted in metrics.jsonl" python3 -c "
import json; l=[json.loads(x) for x in open('nan2/metrics.jsonl') if '\"loss\"' in x]
assert len(l)==8, len(l)
assert [x['step'] for x in l if x.get('skipped')]==[3,4], l
assert all(x['loss'] is None for x in l if x.get('skipped'))
assert l[-1]['nonfinite_steps']==2 and l[1]['nonfinite_steps']==0, l"
check "a warning per skipped step" test "$(grep -c '^dstrain: warning: step [34]: the loss is not finite' nan2.err)" -eq 2
DSTRAIN_INJECT_NAN_STEP=3:100 "$DSTRAIN" train "${small[@]}" train.steps=20 run.dir=nanstop \
  train.max_nonfinite=4 > nanstop.out 2> nanstop.err; rc=$?
check "train.max_nonfinite in a row stops the run (exit 1)" test $rc -eq 1
check "the stop says why" grep -q "^dstrain: error: step 6: 4 steps in a row had a non-finite" nanstop.err
check "stopped after step 6" python3 -c "
import json; l=[json.loads(x) for x in open('nanstop/metrics.jsonl') if '\"loss\"' in x]
assert [x['step'] for x in l]==[1,2,3,4,5,6] and l[-1]['nonfinite_steps']==4, l"
# a skipped step changes no weight: 5 steps whose last is skipped == 4 steps
const=(optim.schedule=constant optim.warmup_steps=0 run.save_final=true checkpoint.every=0)
"$DSTRAIN" train "${small[@]}" "${const[@]}" train.steps=4 run.dir=four > /dev/null 2>&1
DSTRAIN_INJECT_NAN_STEP=5 "$DSTRAIN" train "${small[@]}" "${const[@]}" train.steps=5 \
  run.dir=fiveskip > /dev/null 2>&1
check "a skipped step leaves the weights as they were" cmp -s four/final.safetensors fiveskip/final.safetensors

echo "$passes passed, $fails failed"
[ "$fails" -eq 0 ]
