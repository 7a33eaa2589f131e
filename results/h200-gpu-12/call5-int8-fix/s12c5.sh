#!/usr/bin/env bash
# session 12, call 5: one H200. The int8 conversion test after the fix (max at -127), LayerNorm+quantize GPU tests, and the
# LayerNorm+quantize bench (copy ceiling in the same run).
set -u
export PYTHONPATH=$PWD/.gpu/peers PYTHONUNBUFFERED=1 QVIT_COMMIT=$(cat .gpu/commit)
start=$(date +%s); el() { echo "+$(( $(date +%s) - start ))s"; }
QVIT_BUILD_CUDA=0 python3 -m pip install --no-build-isolation --no-deps -v -e . > $OUT/install.log 2>&1
echo "install rc=$? at $(el)"
mkdir -p $OUT/r/tests; pids=()
for i in 0 1; do
  TRITON_CACHE_AUTOTUNING=0 QVIT_TEST_SHARD=$i/2 timeout $(( start + ${TEST_S:-70} - $(date +%s) )) python3 -m pytest -m gpu tests/test_gpu.py -q \
    -p no:cacheprovider --tb=short -k "int8_rn or (layernorm_quant_gpu and triton)" > $OUT/r/tests/gpu_tests.$i.log 2>&1 & pids+=($!)
done
for p in "${pids[@]}"; do wait $p; echo -n "shard rc=$? "; done; echo
for i in 0 1; do tail -1 $OUT/r/tests/gpu_tests.$i.log | cut -c1-200; done; grep -hE "^FAILED|^E  " $OUT/r/tests/*.log | head -8 | cut -c1-300
echo "tests done at $(el)"
mkdir -p ~/.triton/cache && tar xzf tools/triton-autotune.tgz -C ~/.triton/cache
TRITON_CACHE_AUTOTUNING=1 timeout $(( start + ${END_S:-150} - $(date +%s) )) python3 -m qvit.profiling.bench_kernels --out $OUT/r/bench --only ceilings,lnq \
  --warm 12 > $OUT/r/bench.log 2>&1; echo "bench rc=$? at $(el)"; grep -E "^warm|^lnq|^ceil|^\[" $OUT/r/bench.log | cut -c1-600
cp .gpu/s12c5.sh $OUT/r/; cd $OUT && tar czf results.tgz r && rm -rf r
