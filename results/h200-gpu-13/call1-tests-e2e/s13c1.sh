#!/usr/bin/env bash
# session 13, call 1: one H200. GPU tests of the _int8_rn users (attention on-chip int8 Q/K, tail configs, quantized
# outputs; W8A8 int8-output epilogue); per-kernel attribution of fp8s2 + qvit attention at batch 256; e2e fp8s2 at
# batch 1 and 256 against timm bf16 in the same process.
set -u
. tools/device_env.sh
mkdir -p $OUT/r/tests; pids=()
for i in 0 1 2 3; do
  TRITON_CACHE_AUTOTUNING=0 QVIT_TEST_SHARD=$i/4 timeout $(( start + ${TEST_S:-190} - $(date +%s) )) python3 -m pytest -m gpu \
    tests/test_gpu.py -q -p no:cacheprovider --tb=short \
    -k "qk_int8_on_chip or tail_configs or quantized_output or quant_out" > $OUT/r/tests/gpu_tests.$i.log 2>&1 &
  pids+=($!)
done
for p in "${pids[@]}"; do wait $p; echo -n "shard rc=$? "; done; echo
for i in 0 1 2 3; do tail -1 $OUT/r/tests/gpu_tests.$i.log | cut -c1-200; done
grep -hE "^FAILED|^E  " $OUT/r/tests/*.log | head -20 | cut -c1-300
echo "tests done at $(el)"
export TRITON_CACHE_AUTOTUNING=1
timeout $(( start + ${ATTR_S:-340} - $(date +%s) )) python3 -m qvit.profiling.attribution --out $OUT/r/attr --batches 256 --iters 5 \
  --variants "x fp8s2+qvit-attn-fp16qk" > $OUT/r/attr.log 2>&1; echo "attr rc=$? at $(el)"; tail -5 $OUT/r/attr.log | cut -c1-300
timeout $(( start + ${END_S:-585} - $(date +%s) )) python3 -m qvit.profiling.bench_e2e --out $OUT/r/e2e --only qvit,timm --batches 1 256 --iters 30 \
  --warm 14 --variants "x fp8s2+qvit-attn-fp16qk" > $OUT/r/e2e.log 2>&1; echo "e2e rc=$? at $(el)"
grep -E "bench_e2e:|^warm" $OUT/r/e2e.log | sort -u | cut -c1-300
cp .gpu/s13c1.sh $OUT/r/; cd $OUT && tar czf results.tgz r && rm -rf r
