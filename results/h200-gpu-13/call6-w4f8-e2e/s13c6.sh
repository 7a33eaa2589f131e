#!/usr/bin/env bash
# session 13, call 6: one H200, the last ~4 minutes of the session's device time. The GPU test of the power-of-two 4-bit
# expansion, then e2e batch 256 of the 4-bit model on fp8s2t's GEMMs (w4f8s2t) against timm bf16 in the same process.
set -u
. tools/device_env.sh
mkdir -p $OUT/r/tests
TRITON_CACHE_AUTOTUNING=0 timeout 40 python3 -m pytest -m gpu tests/test_gpu.py -q -p no:cacheprovider --tb=short -rA \
  -k "expand_int4_pow2" > $OUT/r/tests/gpu_tests.log 2>&1; echo "tests rc=$? at $(el)"; grep -E "^(PASSED|FAILED)|^E  " $OUT/r/tests/gpu_tests.log | head -8 | cut -c1-200
export TRITON_CACHE_AUTOTUNING=1
timeout $(( start + ${END_S:-222} - $(date +%s) )) python3 -m qvit.profiling.bench_e2e --out $OUT/r/e2e --only qvit,timm --batches 256 --iters 20 \
  --warm 14 --variants "x 4bit-fp8s2t+qvit-attn-fp16qk" > $OUT/r/e2e.log 2>&1; echo "e2e rc=$? at $(el)"
grep -E "bench_e2e:|^warm" $OUT/r/e2e.log | sort -u | cut -c1-300
cp .gpu/s13c6.sh $OUT/r/; cd $OUT && tar czf results.tgz r && rm -rf r
