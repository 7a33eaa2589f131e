#!/usr/bin/env bash
# session 10, call 1: one H200. Install (no CUDA ext), ncu of the attention kernels (qvit fp16/bf16, cuDNN, FLASH at
# B=64 S=197), GPU tests of session 9's unmeasured configs in 8 shards, then the kernel benchmark of those providers.
set -u
export PYTHONPATH=$PWD/.gpu/peers PYTHONUNBUFFERED=1 QVIT_COMMIT=$(cat .gpu/commit)
start=$(date +%s); el() { echo "+$(( $(date +%s) - start ))s"; }
QVIT_BUILD_CUDA=0 python3 -m pip install --no-build-isolation --no-deps -v -e . > $OUT/install.log 2>&1
echo "install rc=$? at $(el)"
mkdir -p ~/.triton/cache && tar xzf tools/triton-autotune.tgz -C ~/.triton/cache
export TRITON_CACHE_AUTOTUNING=1
timeout 100 ncu --clock-control none --nvtx --nvtx-include "profile/" --section SpeedOfLight --section WarpStateStats \
  --section LaunchStats --section Occupancy --section MemoryWorkloadAnalysis --section SchedulerStats --section ComputeWorkloadAnalysis --csv \
  python3 -m qvit.profiling.ncu_kernels --only 'attention|sdpa' > $OUT/ncu_attn.csv 2> $OUT/ncu_attn.log
echo "ncu rc=$? at $(el)"; tail -3 $OUT/ncu_attn.log | cut -c1-300
K='prefetch or w4a8p or fp8_w8a8_real or layernorm_quant_gpu or gelu_epilogue or fast_accum'
mkdir -p $OUT/tests; pids=()
for i in 0 1 2 3 4 5 6 7; do
  TRITON_CACHE_AUTOTUNING=0 QVIT_TEST_SHARD=$i/8 timeout $(( start + ${TEST_S:-260} - $(date +%s) )) python3 -m pytest -m gpu tests -q \
    -p no:cacheprovider --durations=3 -k "$K" --junitxml=$OUT/tests/gpu_tests.$i.xml > $OUT/tests/gpu_tests.$i.log 2>&1 &
  pids+=($!)
done
for p in "${pids[@]}"; do wait $p; echo -n "shard rc=$? "; done; echo
for i in 0 1 2 3 4 5 6 7; do tail -1 $OUT/tests/gpu_tests.$i.log | cut -c1-200; done
echo "tests done at $(el)"; grep -hE "^FAILED|^ERROR|^E  " $OUT/tests/*.log | head -20 | cut -c1-300
timeout $(( start + ${END_S:-520} - $(date +%s) )) python3 -m qvit.profiling.bench_kernels --out $OUT/bench --only ceilings,lnq,linear --quick --warm 14 \
  --providers 'fp8|_scaled_mm|w4a8p|qvit w8a8 \((int8 in|\+residual|\+gelu)\)$' > $OUT/bench.log 2>&1; echo "bench rc=$? at $(el)"
grep -E "^warm|^linear|^lnq|^ceil|^\[" $OUT/bench.log | cut -c1-400
(cd ~/.triton/cache && find . -name '*.autotune.json' | tar czf $OUT/triton-autotune.tgz -T -)
cd $OUT && tar czf tests.tgz tests && rm -rf tests; cp $OLDPWD/.gpu/s10c1.sh $OUT/
