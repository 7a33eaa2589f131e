#!/usr/bin/env bash
# session 14, call 2: one H200. Candidates for the study's 8-bit / 4-bit rows on the fp8 GEMMs: fp8s2t and w4f8s2t
# with Q/K in fp16 or quantized to int8 inside qvit's attention, and with SDPA (FLASH disabled); e2e batch 1 and 256
# against timm bf16 in the same process, then the GPU study (CIFAR-10 test set) of the four new rows.
set -u
. tools/device_env.sh
mkdir -p $OUT/r
export TRITON_CACHE_AUTOTUNING=1
timeout $(( start + ${E2E_S:-340} - $(date +%s) )) python3 -m qvit.profiling.bench_e2e --out $OUT/r/e2e --only qvit,timm --batches 1 256 \
  --iters 30 --warm 14 --variants "x fp8s2t+qvit-attn-fp16qk" "x fp8s2t+qvit-attn" "x 4bit-fp8s2t+qvit-attn-fp16qk" \
  "x 4bit-fp8s2t+qvit-attn" "x fp8s2t+sdpa-noflash" "x 4bit-fp8s2t+sdpa-noflash" > $OUT/r/e2e.log 2>&1; echo "e2e rc=$? at $(el)"
grep -E "bench_e2e:|^warm" $OUT/r/e2e.log | sort -u | cut -c1-300
timeout $(( start + ${END_S:-560} - $(date +%s) )) python3 -m qvit.cli study --model results/h200-train-3/train/model-bf16.safetensors \
  --device cuda --no-ablation --data-root .gpu/data/cifar10 --out $OUT/r/study --variants "x fp8s2t+qvit-attn" \
  "x 4bit-fp8s2t+qvit-attn" "x fp8s2t+sdpa-noflash" "x 4bit-fp8s2t+sdpa-noflash" > $OUT/r/study.log 2>&1; echo "study rc=$? at $(el)"
grep "qvit study" $OUT/r/study.log | cut -c1-200
cp .gpu/s14c2.sh $OUT/r/; cd $OUT && tar czf results.tgz r && rm -rf r
