#!/usr/bin/env bash
# session 13, call 2: one H200. GPU tests of GELU's tanh form in fc1's fp8 static epilogue (both GEMM kernels, pinned
# configs) and the attention quantized-output tests call 1 did not reach; fc1 at M = 12,608: fp8 persistent with the
# erf / tanh GELU into fp8 vs the plain GEMM and cuBLAS; e2e batch 256 and 1: fp8s2t / fp8s2 with qvit attention, timm
# bf16 in the same process.
set -u
. tools/device_env.sh
mkdir -p $OUT/r/tests; pids=()
for i in 0 1 2 3; do
  TRITON_CACHE_AUTOTUNING=0 QVIT_TEST_SHARD=$i/4 timeout $(( start + ${TEST_S:-150} - $(date +%s) )) python3 -m pytest -m gpu \
    tests/test_gpu.py -q -p no:cacheprovider --tb=short -rA -k "gelu_tanh or quantized_output" > $OUT/r/tests/gpu_tests.$i.log 2>&1 &
  pids+=($!)
done
for p in "${pids[@]}"; do wait $p; echo -n "shard rc=$? "; done; echo
grep -hE "^(PASSED|FAILED|ERROR)" $OUT/r/tests/*.log | cut -c1-200
grep -hE "^E  " $OUT/r/tests/*.log | head -12 | cut -c1-300
echo "tests done at $(el)"
export TRITON_CACHE_AUTOTUNING=1
timeout $(( start + ${BENCH_S:-290} - $(date +%s) )) python3 -m qvit.profiling.bench_kernels --out $OUT/r/bench --only linear --layers fc1 \
  --ms 12608 --warm 14 --providers 'fp8 fast accum persistent|_scaled_mm fp8 \(raw, fast' > $OUT/r/bench.log 2>&1
echo "bench rc=$? at $(el)"; grep -E "^warm|^linear|^\[" $OUT/r/bench.log | cut -c1-900
timeout $(( start + ${END_S:-585} - $(date +%s) )) python3 -m qvit.profiling.bench_e2e --out $OUT/r/e2e --only qvit,timm --batches 256 1 --iters 30 \
  --warm 14 --variants "x fp8s2t+qvit-attn-fp16qk" "x fp8s2+qvit-attn-fp16qk" > $OUT/r/e2e.log 2>&1; echo "e2e rc=$? at $(el)"
grep -E "bench_e2e:|^warm" $OUT/r/e2e.log | sort -u | cut -c1-300
cp .gpu/s13c2.sh $OUT/r/; cd $OUT && tar czf results.tgz r && rm -rf r
