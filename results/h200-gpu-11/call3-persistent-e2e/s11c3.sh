#!/usr/bin/env bash
# session 11, call 3: one H200. Install (no CUDA ext); GPU tests: every persistent config pinned (the GELU+residual
# combination only where it fits), the fp8 static-out kernels against the same kernel's float32 output, the fp8s /
# fp8s2 / fp8 model tests; then e2e batch 256 and 1: QVIT_PERSISTENT_GEMM=0 vs auto, each with timm in its process.
set -u
export PYTHONPATH=$PWD/.gpu/peers PYTHONUNBUFFERED=1 QVIT_COMMIT=$(cat .gpu/commit)
start=$(date +%s); el() { echo "+$(( $(date +%s) - start ))s"; }
QVIT_BUILD_CUDA=0 python3 -m pip install --no-build-isolation --no-deps -v -e . > $OUT/install.log 2>&1
echo "install rc=$? at $(el)"
mkdir -p ~/.triton/cache && tar xzf .gpu/autotune-s11c2.tgz -C ~/.triton/cache
mkdir -p $OUT/tests; pids=()
for i in 0 1 2 3; do
  TRITON_CACHE_AUTOTUNING=0 QVIT_TEST_SHARD=$i/4 timeout $(( start + ${TEST_S:-170} - $(date +%s) )) python3 -m pytest -m gpu \
    tests/test_gpu.py -q -p no:cacheprovider --tb=short -k "every_config_gpu or static_out or (model_triton_backend_matches_torch_backend and fp8)" \
    > $OUT/tests/gpu_tests.$i.log 2>&1 &
  pids+=($!)
done
for p in "${pids[@]}"; do wait $p; echo -n "shard rc=$? "; done; echo
for i in 0 1 2 3; do tail -1 $OUT/tests/gpu_tests.$i.log | cut -c1-200; done
grep -hE "^FAILED|^E  " $OUT/tests/*.log | head -20 | cut -c1-300
echo "tests done at $(el)"
export TRITON_CACHE_AUTOTUNING=1
for mode in 0 auto; do
  QVIT_PERSISTENT_GEMM=$mode timeout $(( start + ${END_S:-560} - $(date +%s) )) python3 -m qvit.profiling.bench_e2e --out $OUT/e2e-persistent-$mode \
    --only qvit,timm --batches 256 1 --iters 30 --variants "x fp8s2+qvit-attn-fp16qk" "x fp8+qvit-attn-fp16qk" \
    > $OUT/e2e-persistent-$mode.log 2>&1; echo "e2e QVIT_PERSISTENT_GEMM=$mode rc=$? at $(el)"
  grep -E "bench_e2e:" $OUT/e2e-persistent-$mode.log | sort -u | cut -c1-300
done
(cd ~/.triton/cache && find . -name '*.autotune.json' | tar czf $OUT/triton-autotune.tgz -T -)
cp .gpu/s11c3.sh $OUT/; cd $OUT && tar czf tests.tgz tests && rm -rf tests
