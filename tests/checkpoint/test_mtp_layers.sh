#!/usr/bin/env bash
# test_mtp_layers.sh: DeepSeek-V3's multi-token-prediction layers (num_nextn_predict_layers:
# model.layers.<num_hidden_layers + i>.* in the published checkpoints) are not trained and are
# carried unchanged into every export. The V3 parity fixture gets one such layer (a few F32 and
# F16 tensors of layer 3 beside its 3 decoder layers):
#   - `dstrain info` takes the directory (no "not part of the model" refusal) and names the layer;
#   - a 3-step fine-tune from it exports model-mtp.safetensors holding exactly those tensors, byte
#     for byte in their own dtypes, mapped in the index, with num_nextn_predict_layers kept in
#     config.json, while the trained tensors did change;
#   - `dstrain export --model DIR` of the base directory carries them the same way;
#   - the same tensors with num_nextn_predict_layers 0 are still refused as extra tensors (by the
#     export, as by training), and a
#     config that promises a layer the files lack fails the export with one line.
set -euo pipefail
: "${DSTRAIN:?}" "${SRC:?}" "${TMPROOT:?}"
work="$TMPROOT/checkpoint-mtp"
rm -rf "$work" && mkdir -p "$work"
fixture="$SRC/tests/fixtures/parity/deepseek_v3_f32"
cp -r "$fixture" "$work/base"

python3 - "$work/base" <<'PY'
import json, sys
import numpy as np
from safetensors.numpy import load_file, save_file
d = sys.argv[1]
cfg = json.load(open(f"{d}/config.json"))
cfg["num_nextn_predict_layers"] = 1
json.dump(cfg, open(f"{d}/config.json", "w"), indent=2)
t = load_file(f"{d}/model.safetensors")
rng = np.random.default_rng(7)
C = cfg["hidden_size"]
t["model.layers.3.enorm.weight"] = rng.normal(size=(C,)).astype(np.float32)
t["model.layers.3.hnorm.weight"] = rng.normal(size=(C,)).astype(np.float32)
t["model.layers.3.eh_proj.weight"] = rng.normal(size=(C, 2 * C)).astype(np.float16)
t["model.layers.3.shared_head.norm.weight"] = rng.normal(size=(C,)).astype(np.float32)
save_file(t, f"{d}/model.safetensors", metadata={"format": "pt"})
PY

"$DSTRAIN" info "$work/base" >"$work/info.txt" 2>&1 || { cat "$work/info.txt"; exit 1; }
grep -q "^multi-token:  1 prediction layer (model.layers.3), kept unchanged, not trained" \
  "$work/info.txt" || { echo "FAIL: info does not name the MTP layer"; cat "$work/info.txt"; exit 1; }

"$DSTRAIN" pack --input "$fixture.eval.jsonl" --output "$work/data.h5" >/dev/null
"$DSTRAIN" train model.path="$work/base" data.train="$work/data.h5" train.steps=3 \
  train.seq_len=8 train.micro_batch_size=2 optim.lr=1e-2 checkpoint.every=0 \
  export.dtype=fp32 run.dir="$work/run" >"$work/train.log" 2>&1 ||
  { cat "$work/train.log"; exit 1; }
"$DSTRAIN" export --model "$work/base" --output "$work/copy" --dtype fp32 >"$work/export.log" 2>&1 ||
  { cat "$work/export.log"; exit 1; }

python3 - "$work" <<'PY'
import json, sys
import numpy as np
from safetensors.numpy import load_file
work = sys.argv[1]
base = load_file(f"{work}/base/model.safetensors")
mtp = {k: v for k, v in base.items() if k.startswith("model.layers.3.")}
assert len(mtp) == 4, sorted(mtp)
for out in ["run/export", "copy"]:
    d = f"{work}/{out}"
    carried = load_file(f"{d}/model-mtp.safetensors")
    assert sorted(carried) == sorted(mtp), (out, sorted(carried))
    for k, v in mtp.items():
        assert carried[k].dtype == v.dtype and np.array_equal(carried[k], v), (out, k)
    index = json.load(open(f"{d}/model.safetensors.index.json"))
    for k in mtp:
        assert index["weight_map"][k] == "model-mtp.safetensors", (out, k)
    assert json.load(open(f"{d}/config.json"))["num_nextn_predict_layers"] == 1, out
trained = {}
for name in set(json.load(open(f"{work}/run/export/model.safetensors.index.json"))["weight_map"].values()):
    trained.update(load_file(f"{work}/run/export/{name}"))
moved = sum(not np.array_equal(trained[k], base[k]) for k in base if k not in mtp)
assert moved > 10, moved
print(f"ok: {len(mtp)} MTP tensors carried unchanged into both exports; {moved} trained tensors moved")
PY

# without num_nextn_predict_layers the same tensors are extra: refused as before
python3 - "$work" <<'PY'
import json, shutil, sys
work = sys.argv[1]
shutil.copytree(f"{work}/base", f"{work}/no_mtp")
cfg = json.load(open(f"{work}/no_mtp/config.json"))
cfg["num_nextn_predict_layers"] = 0
json.dump(cfg, open(f"{work}/no_mtp/config.json", "w"))
shutil.copytree(f"{work}/base", f"{work}/missing")
cfg["num_nextn_predict_layers"] = 2  # layer 4 is promised, not there
json.dump(cfg, open(f"{work}/missing/config.json", "w"))
PY
set +e
"$DSTRAIN" export --model "$work/no_mtp" --output "$work/no_mtp_out" >"$work/no_mtp.log" 2>&1
status=$?
set -e
[ "$status" -eq 2 ] && grep -q "tensor model.layers.3.* is not part of the model" "$work/no_mtp.log" ||
  { echo "FAIL: extra layer-3 tensors taken without num_nextn_predict_layers"; cat "$work/no_mtp.log"; exit 1; }
set +e
"$DSTRAIN" export --model "$work/missing" --output "$work/missing_out" >"$work/missing.log" 2>&1
status=$?
set -e
[ "$status" -eq 2 ] && [ ! -e "$work/missing_out" ] &&
  grep -q "num_nextn_predict_layers is 2 but the weight files hold no model.layers.4" "$work/missing.log" ||
  { echo "FAIL: a missing MTP layer was not refused (exit $status)"; cat "$work/missing.log"; exit 1; }
echo "ok: refusals"
