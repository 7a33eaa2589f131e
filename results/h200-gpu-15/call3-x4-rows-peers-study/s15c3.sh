#!/usr/bin/env bash
# session 15, call 3: 4 x H200, one lane per GPU; autotuning timed in CUDA graphs (qvit.backend.tune_bench), so
# batch-1 choices no longer follow host load from the other lanes.
#   A (GPU 0): e2e of the five study rows, batch 1 and 256, with timm bf16 and bitsandbytes (NF4, LLM.int8)
#   B (GPU 1): e2e of timm bf16, timm + torch.compile, torchao int8-dynamic (+ compile), batch 1 and 256
#   C (GPU 2): GPU study (CIFAR-10 test set) of the five rows as now defined
#   D (GPU 3): eager attribution at batch 1 of rows 3 / 2 (per-kernel durations, weights from DRAM)
set -u
. tools/device_env.sh
find ~/.triton/cache -name '*.autotune.json' -delete
tar xzf .gpu/autotune-c2.tgz -C ~/.triton/cache  # call 2's graph-timed decisions (same source)
mkdir -p $OUT/r/A $OUT/r/B $OUT/r/C $OUT/r/D
export TRITON_CACHE_AUTOTUNING=1
ROWS=("1 bf16" "2 4bit+qvit-attn" "3 8bit+qvit-attn" "4 4bit+sdpa-noflash" "5 8bit+sdpa-noflash")
(CUDA_VISIBLE_DEVICES=0 timeout $(( start + 545 - $(date +%s) )) python3 -m qvit.profiling.bench_e2e --out $OUT/r/A/e2e \
  --only qvit,timm,bnb --batches 1 256 --iters 30 --warm 12 --variants "${ROWS[@]}" > $OUT/r/A/e2e.log 2>&1
 echo "A e2e rc=$? at $(el)") &
(CUDA_VISIBLE_DEVICES=1 timeout $(( start + 545 - $(date +%s) )) python3 -m qvit.profiling.bench_e2e --out $OUT/r/B/e2e \
  --only timm,compile,torchao --batches 1 256 --iters 20 > $OUT/r/B/e2e.log 2>&1; echo "B e2e rc=$? at $(el)") &
(CUDA_VISIBLE_DEVICES=2 timeout $(( start + 500 - $(date +%s) )) python3 -m qvit.cli study \
  --model results/h200-train-3/train/model-bf16.safetensors --device cuda --no-ablation --data-root datasets/cifar10 \
  --out $OUT/r/C/study --variants "${ROWS[@]}" > $OUT/r/C/study.log 2>&1; echo "C study rc=$? at $(el)") &
(CUDA_VISIBLE_DEVICES=3 timeout $(( start + 400 - $(date +%s) )) python3 -m qvit.profiling.attribution --out $OUT/r/D/attr \
  --batches 1 --iters 5 --variants "3 8bit+qvit-attn" "2 4bit+qvit-attn" > $OUT/r/D/attr.log 2>&1
 echo "D attribution rc=$? at $(el)") &
wait
grep -hE "bench_e2e:|^warm" $OUT/r/A/e2e.log $OUT/r/B/e2e.log | sort -u | cut -c1-300
grep "qvit study" $OUT/r/C/study.log | cut -c1-200
tail -5 $OUT/r/D/attr.log | cut -c1-300
(cd ~/.triton/cache && find . -name '*.autotune.json' | tar czf - -T - ) > $OUT/r/triton-autotune.tgz 2>/dev/null
cp .gpu/s15c3.sh $OUT/r/; cd $OUT && tar czf results.tgz r && rm -rf r
