#!/usr/bin/env bash
# session 13, call 5: one H200. After PatchEmbed became patchify + one GEMM: e2e batch 256 and 1 of fp8s2t, the study's
# 8-bit and 4-bit with qvit attention and qvit's bf16 model, timm bf16 (its own nn.Conv2d patch embedding) in the
# same process.
set -u
. tools/device_env.sh
mkdir -p $OUT/r
export TRITON_CACHE_AUTOTUNING=1
timeout $(( start + ${END_S:-470} - $(date +%s) )) python3 -m qvit.profiling.bench_e2e --out $OUT/r/e2e --only qvit,timm --batches 256 1 --iters 30 \
  --warm 14 --variants "x fp8s2t+qvit-attn-fp16qk" "3 8bit+qvit-attn" "2 4bit+qvit-attn" "1 bf16" > $OUT/r/e2e.log 2>&1; echo "e2e rc=$? at $(el)"
grep -E "bench_e2e:|^warm" $OUT/r/e2e.log | sort -u | cut -c1-300
cp .gpu/s13c5.sh $OUT/r/; cd $OUT && tar czf results.tgz r && rm -rf r
