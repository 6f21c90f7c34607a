#!/usr/bin/env bash
# Every GPU check and benchmark in one run, for a CUDA machine with the package installed.
#   OUT=results STORE=data/nmnist EXPERIMENT_SECONDS=300 bash scripts/gpu_checks.sh
# 1. the DALI GPU graph equals the torch reference exactly (data resident on the GPU, fed from host,
#    and streamed from the store by shards);
# 2. `tmkt bench loader` (GPU samples/s, data-wait share of a training step);
# 3. `tmkt bench train` per backbone (bf16), eager and compiled, resident and streaming (budget
#    STREAM_BYTES: the data-wait share of a step when the split streams);
# 4. one training epoch of SCALE_SIZE N-MNIST recordings streaming under a quarter of the split
#    (`benches.scale.streaming_epoch`: samples/s and the data-wait share of a step);
# 5. the method comparison grid on STORE within EXPERIMENT_SECONDS, then its report (tar under OUT).
set -uo pipefail
OUT=${OUT:-gpu-results}
STORE=${STORE:-data/nmnist}
BUDGET=${EXPERIMENT_SECONDS:-300}
EPOCHS=${EPOCHS:-60}
BACKBONE=${BACKBONE:-vgg_snn}
STREAM_BYTES=${STREAM_BYTES:-20000000}
PARALLEL=${PARALLEL:-8}
# the rest of configs/nmnist-small.toml are the TrainConfig defaults
TRAIN_ARGS=${TRAIN_ARGS:-"eval_split=unused"}
BENCH=${BENCH:-1}
# the streaming epoch at scale: links to these N-MNIST files (the built-in simulator's when absent)
SCALE_SIZE=${SCALE_SIZE:-70000}
SCALE_SEEDS=${SCALE_SEEDS:-shared/data/nmnist}
PY=${PY:-python3}
export PYTHONUNBUFFERED=1
mkdir -p "$OUT"
log="$OUT/log.txt"
step() { echo "== $(date +%T) $*" | tee -a "$log"; }

step "environment"
{ nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv; $PY -c "
import torch, nvidia.dali as dali, zarr, icechunk, spikingjelly
print('torch', torch.__version__, 'cuda', torch.cuda.is_available(), torch.cuda.get_device_name() if torch.cuda.is_available() else '')
print('dali', dali.__version__, 'zarr', zarr.__version__, 'icechunk', icechunk.__version__)"; } >>"$log" 2>&1

step "loader exactness on the GPU"
for resident in on off; do
  TMKT_TEST_DEVICE=cuda TMKT_TEST_RESIDENT=$resident timeout 240 $PY -m pytest -q -p no:cacheprovider --noconftest \
    tests/test_loader.py -k "equals_the_reference or modes_fix or set_ratio or partial_batch or deterministic" \
    >>"$log" 2>&1
  echo "resident=$resident exit $?" | tee -a "$log"
done
TMKT_TEST_DEVICE=cuda timeout 300 $PY -m pytest -q -p no:cacheprovider --noconftest tests/test_streaming.py \
  -k "equal_the_reference or pure_event or ahead" >>"$log" 2>&1
echo "streaming exit $?" | tee -a "$log"

if [ "$BENCH" = 1 ]; then
step "bench loader"
timeout 180 $PY -m flows.cli bench loader --store "34x34=$STORE" --json "$OUT/bench_loader.json" --seconds 3 \
  >>"$log" 2>&1 || echo "bench loader failed: $?" | tee -a "$log"

step "bench train"
timeout 600 $PY -m flows.cli bench train --store "$STORE" --json "$OUT/bench_train.json" --steps 20 --warmup 3 \
  --compile >>"$log" 2>&1 || echo "bench train failed: $?" | tee -a "$log"
timeout 240 $PY -m flows.cli bench train --store "$STORE" --json "$OUT/bench_train_stream.json" --steps 20 \
  --warmup 3 --backbones vgg_snn,cnn3 --max-resident-bytes "$STREAM_BYTES" \
  >>"$log" 2>&1 || echo "bench train (streaming) failed: $?" | tee -a "$log"
fi

step "one training epoch of ${SCALE_SIZE} recordings streaming under a quarter of the split"
timeout 900 $PY -c "
import json, sys; from pathlib import Path; from benches.scale import streaming_epoch
r = streaming_epoch($SCALE_SIZE, Path('$OUT'), 'cuda', Path('$SCALE_SEEDS'))
Path('$OUT/scale_stream_epoch.json').write_text(json.dumps(r, indent=2)); print(json.dumps(r))
" >>"$log" 2>&1 || echo "streaming epoch at scale failed: $?" | tee -a "$log"

step "experiment grid (${BUDGET}s)"
deadline=$(( $(date +%s) + BUDGET ))
grid() {
  left=$(( deadline - $(date +%s) ))
  if [ "$left" -le 10 ]; then echo "skipped (time): $*" | tee -a "$log"; return; fi
  # shellcheck disable=SC2086
  timeout "$left" $PY -m flows.cli experiment --store "$STORE" --out exp --parallel "$PARALLEL" "$@" \
    epochs="$EPOCHS" backbone="$BACKBONE" checkpoint_every=0 $TRAIN_ARGS >>"$log" 2>&1
  echo "grid $* exit $?" | tee -a "$log"
}
grid --methods tmkt,event --seeds 0,1,2 --per-class 0
grid --methods tmkt,event --seeds 0,1,2 --per-class 5,10,25
grid --methods finetune,he2024 --seeds 0,1,2 --per-class 0
grid --methods tsm,tsm+mag,tsm+mrp --seeds 0,1,2 --per-class 0
$PY -m flows.cli experiment --store "$STORE" --out exp --report-only >>"$log" 2>&1
tar czf "$OUT/exp.tgz" --exclude='ckpt.pt' --exclude='tb' exp 2>>"$log"
cp exp/results.md exp/summary.json "$OUT/" 2>/dev/null
step "done"
