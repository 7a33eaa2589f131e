#!/usr/bin/env bash
# session 12, call 1 (prepared in session 11): one H200. Install (no CUDA ext); kernel bench: ceilings, LayerNorm+quantize
# (new one-reciprocal-per-row version), the linears with the persistent kernel's two-CTA and TMA-store configs in its
# autotuner; GPU tests: every persistent config pinned (restated form), static-out kernels; e2e fp8s2/fp8s/fp8 b256/b1.
set -u
export PYTHONPATH=$PWD/.gpu/peers PYTHONUNBUFFERED=1 QVIT_COMMIT=$(cat .gpu/commit)
start=$(date +%s); el() { echo "+$(( $(date +%s) - start ))s"; }
QVIT_BUILD_CUDA=0 python3 -m pip install --no-build-isolation --no-deps -v -e . > $OUT/install.log 2>&1
echo "install rc=$? at $(el)"
mkdir -p ~/.triton/cache && tar xzf tools/triton-autotune.tgz -C ~/.triton/cache
export TRITON_CACHE_AUTOTUNING=1
mkdir -p $OUT/r
timeout $(( start + ${BENCH_S:-200} - $(date +%s) )) python3 -m qvit.profiling.bench_kernels --out $OUT/r/bench --only ceilings,lnq,linear --quick --warm 14 \
  --providers 'persistent|fast accum|_scaled_mm' > $OUT/r/bench.log 2>&1; echo "bench rc=$? at $(el)"
grep -E "^warm|^linear|^lnq|^ceil|^\[" $OUT/r/bench.log | cut -c1-700
mkdir -p $OUT/r/tests; pids=()
for i in 0 1 2 3; do
  TRITON_CACHE_AUTOTUNING=0 QVIT_TEST_SHARD=$i/4 timeout $(( start + ${TEST_S:-330} - $(date +%s) )) python3 -m pytest -m gpu \
    tests/test_gpu.py -q -p no:cacheprovider --tb=short -k "(every_config_gpu and persistent) or static_out" \
    > $OUT/r/tests/gpu_tests.$i.log 2>&1 &
  pids+=($!)
done
for p in "${pids[@]}"; do wait $p; echo -n "shard rc=$? "; done; echo
for i in 0 1 2 3; do tail -1 $OUT/r/tests/gpu_tests.$i.log | cut -c1-200; done
grep -hE "^FAILED|^E  " $OUT/r/tests/*.log | head -20 | cut -c1-300
echo "tests done at $(el)"
timeout $(( start + ${END_S:-570} - $(date +%s) )) python3 -m qvit.profiling.bench_e2e --out $OUT/r/e2e --only qvit,timm --batches 256 1 --iters 30 --warm 14 \
  --variants "x fp8s2+qvit-attn-fp16qk" "x fp8s+qvit-attn-fp16qk" "x fp8+qvit-attn-fp16qk" > $OUT/r/e2e.log 2>&1; echo "e2e rc=$? at $(el)"
grep -E "bench_e2e:" $OUT/r/e2e.log | sort -u | cut -c1-300
(cd ~/.triton/cache && find . -name '*.autotune.json' | tar czf $OUT/triton-autotune.tgz -T -)
cp .gpu/s12c1.sh $OUT/r/; cd $OUT && tar czf results.tgz r && rm -rf r
