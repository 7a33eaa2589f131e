#!/usr/bin/env bash
# session 13, call 3: one H200. e2e batch 256 and 1: fp8s2t / fp8s2 with qvit attention, timm bf16 in the same process.
set -u
. tools/device_env.sh
mkdir -p $OUT/r
export TRITON_CACHE_AUTOTUNING=1
timeout $(( start + ${END_S:-420} - $(date +%s) )) python3 -m qvit.profiling.bench_e2e --out $OUT/r/e2e --only qvit,timm --batches 256 1 --iters 30 \
  --warm 14 --variants "x fp8s2t+qvit-attn-fp16qk" "x fp8s2+qvit-attn-fp16qk" > $OUT/r/e2e.log 2>&1; echo "e2e rc=$? at $(el)"
grep -E "bench_e2e:|^warm" $OUT/r/e2e.log | sort -u | cut -c1-300
cp .gpu/s13c3.sh $OUT/r/; cd $OUT && tar czf results.tgz r && rm -rf r
