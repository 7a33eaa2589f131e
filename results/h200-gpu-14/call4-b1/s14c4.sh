#!/usr/bin/env bash
# session 14, call 4: one H200, the session's last ~4 minutes of device time. Batch 1 only, nothing else on the
# host: fp8s2t and w4f8s2t (fp16 Q/K) after the scale-vector change against timm bf16 in the same process (call 3's
# batch-1 rows ran beside lane B's torch.compile on the same host and are not used).
set -u
. tools/device_env.sh
mkdir -p $OUT/r
export TRITON_CACHE_AUTOTUNING=1
timeout $(( start + ${END_S:-215} - $(date +%s) )) python3 -m qvit.profiling.bench_e2e --out $OUT/r/e2e --only qvit,timm --batches 1 \
  --iters 50 --warm 14 --variants "x fp8s2t+qvit-attn-fp16qk" "x 4bit-fp8s2t+qvit-attn-fp16qk" > $OUT/r/e2e.log 2>&1; echo "e2e rc=$? at $(el)"
grep -E "bench_e2e:|^warm" $OUT/r/e2e.log | sort -u | cut -c1-300
cp .gpu/s14c4.sh $OUT/r/; cd $OUT && tar czf results.tgz r && rm -rf r
