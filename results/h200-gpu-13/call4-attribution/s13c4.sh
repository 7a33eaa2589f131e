#!/usr/bin/env bash
# session 13, call 4: one H200 (warm: call 3's compiled kernels on disk). Per-kernel attribution of fp8s2t + qvit attention
# at batch 256 (torch.profiler, eager forwards).
set -u
. tools/device_env.sh
mkdir -p $OUT/r
export TRITON_CACHE_AUTOTUNING=1
timeout $(( start + ${END_S:-330} - $(date +%s) )) python3 -m qvit.profiling.attribution --out $OUT/r/attr --batches 256 --iters 5 \
  --variants "x fp8s2t+qvit-attn-fp16qk" > $OUT/r/attr.log 2>&1; echo "attr rc=$? at $(el)"; tail -3 $OUT/r/attr.log | cut -c1-300
cp .gpu/s13c4.sh $OUT/r/; cd $OUT && tar czf results.tgz r && rm -rf r
