#!/usr/bin/env bash
# session 11, call 1 (prepared in session 10): one H200. Install (no CUDA ext); GPU tests of the persistent TMA GEMM,
# the fp8 static-out epilogue and the fp8s model; kernel bench of persistent vs one-tile-per-CTA vs cuBLAS fp8;
# then e2e (same warm machine) of fp8 / fp8s / int8 with and without QVIT_PERSISTENT_GEMM.
set -u
export PYTHONPATH=$PWD/.gpu/peers PYTHONUNBUFFERED=1 QVIT_COMMIT=$(cat .gpu/commit)
start=$(date +%s); el() { echo "+$(( $(date +%s) - start ))s"; }
QVIT_BUILD_CUDA=0 python3 -m pip install --no-build-isolation --no-deps -v -e . > $OUT/install.log 2>&1
echo "install rc=$? at $(el)"
mkdir -p ~/.triton/cache && tar xzf tools/triton-autotune.tgz -C ~/.triton/cache
export TRITON_CACHE_AUTOTUNING=1
timeout $(( start + ${BENCH_S:-230} - $(date +%s) )) python3 -m qvit.profiling.bench_kernels --out $OUT/bench --only linear --quick --warm 14 \
  --providers 'persistent|fast accum|_scaled_mm' > $OUT/bench.log 2>&1; echo "bench rc=$? at $(el)"
grep -E "^warm|^linear|^\[" $OUT/bench.log | cut -c1-700
mkdir -p $OUT/tests; pids=()
for i in 0 1 2 3; do
  TRITON_CACHE_AUTOTUNING=0 QVIT_TEST_SHARD=$i/4 timeout $(( start + ${TEST_S:-380} - $(date +%s) )) python3 -m pytest -m gpu tests -q \
    -p no:cacheprovider -k "persistent or static_out or fp8s" > $OUT/tests/gpu_tests.$i.log 2>&1 &
  pids+=($!)
done
for p in "${pids[@]}"; do wait $p; echo -n "shard rc=$? "; done; echo
for i in 0 1 2 3; do tail -1 $OUT/tests/gpu_tests.$i.log | cut -c1-200; done; grep -hE "^FAILED|^E  " $OUT/tests/*.log | head -10 | cut -c1-300
echo "tests done at $(el)"
timeout $(( start + ${END_S:-560} - $(date +%s) )) python3 -m qvit.profiling.bench_e2e --out $OUT/e2e --only qvit,timm --batches 256 1 --iters 30 \
  --variants "x fp8s2+qvit-attn-fp16qk" "x fp8s+qvit-attn-fp16qk" "x fp8+qvit-attn-fp16qk" "x 8bit+qvit-attn-fp16qk" > $OUT/e2e.log 2>&1; echo "e2e rc=$? at $(el)"
grep -E "bench_e2e:" $OUT/e2e.log | sort -u | cut -c1-300
(cd ~/.triton/cache && find . -name '*.autotune.json' | tar czf $OUT/triton-autotune.tgz -T -)
cd $OUT && tar czf tests.tgz tests && rm -rf tests; cp $OLDPWD/.gpu/s11c1.sh $OUT/
# call 2 (same warm machine, right after): QVIT_PERSISTENT_GEMM=1 python3 -m qvit.profiling.bench_e2e --out $OUT/e2e-persistent
#   --only qvit,timm --batches 256 1 --iters 30 --variants "x fp8s+qvit-attn-fp16qk" "x fp8+qvit-attn-fp16qk" "x 8bit+qvit-attn-fp16qk"
