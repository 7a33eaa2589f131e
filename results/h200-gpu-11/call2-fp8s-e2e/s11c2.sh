#!/usr/bin/env bash
# session 11, call 2: one H200. Install (no CUDA ext); GPU tests: every persistent config pinned (call 1: config 0
# failed, message lost to the deadline) and the fp8 static-out kernels (tiled + persistent); then ViT-L/16 e2e at
# batch 256 and 1 with QVIT_PERSISTENT_GEMM=auto (the new default), configs compiled first in 14 processes (--warm).
set -u
export PYTHONPATH=$PWD/.gpu/peers PYTHONUNBUFFERED=1 QVIT_COMMIT=$(cat .gpu/commit)
start=$(date +%s); el() { echo "+$(( $(date +%s) - start ))s"; }
QVIT_BUILD_CUDA=0 python3 -m pip install --no-build-isolation --no-deps -v -e . > $OUT/install.log 2>&1
echo "install rc=$? at $(el)"
mkdir -p ~/.triton/cache && tar xzf .gpu/autotune-s11c1.tgz -C ~/.triton/cache
mkdir -p $OUT/tests; pids=()
for i in 0 1 2 3; do
  TRITON_CACHE_AUTOTUNING=0 QVIT_TEST_SHARD=$i/4 timeout $(( start + ${TEST_S:-150} - $(date +%s) )) python3 -m pytest -m gpu \
    tests/test_gpu.py -q -p no:cacheprovider --tb=short -k "every_config_gpu or static_out_real_shapes" > $OUT/tests/gpu_tests.$i.log 2>&1 &
  pids+=($!)
done
for p in "${pids[@]}"; do wait $p; echo -n "shard rc=$? "; done; echo
for i in 0 1 2 3; do tail -1 $OUT/tests/gpu_tests.$i.log | cut -c1-200; done
grep -hE "^FAILED|^E  |Error" $OUT/tests/*.log | head -20 | cut -c1-400
echo "tests done at $(el)"
export TRITON_CACHE_AUTOTUNING=1
timeout $(( start + ${END_S:-565} - $(date +%s) )) python3 -m qvit.profiling.bench_e2e --out $OUT/e2e --only qvit,timm --batches 256 1 --iters 30 \
  --warm 14 --variants "x fp8s2+qvit-attn-fp16qk" "x fp8s+qvit-attn-fp16qk" "x fp8+qvit-attn-fp16qk" "x 8bit+qvit-attn-fp16qk" \
  > $OUT/e2e.log 2>&1; echo "e2e rc=$? at $(el)"
grep -E "bench_e2e:|^warm" $OUT/e2e.log | sort -u | cut -c1-300; tail -3 $OUT/e2e.log | cut -c1-300
(cd ~/.triton/cache && find . -name '*.autotune.json' | tar czf $OUT/triton-autotune.tgz -T -)
cp .gpu/s11c2.sh $OUT/; cd $OUT && tar czf tests.tgz tests && rm -rf tests
