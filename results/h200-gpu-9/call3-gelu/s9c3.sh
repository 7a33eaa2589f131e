#!/usr/bin/env bash
# session 9, call 3: one H200. Install (no CUDA ext: Triton linears only), GPU tests of the new GELU epilogue (inline
# PTX) in 8 shards, fc1/proj linear benchmark (+GELU, +residual, int8 out) and ViT-L/16 end to end at batch 1 and 256.
set -u
export PYTHONPATH=$PWD/.gpu/peers PYTHONUNBUFFERED=1 QVIT_COMMIT=$(cat .gpu/commit)
start=$(date +%s)
QVIT_BUILD_CUDA=0 python3 -m pip install --no-build-isolation --no-deps -v -e . > $OUT/install.log 2>&1
echo "install rc=$? at +$(( $(date +%s) - start ))s"
mkdir -p ~/.triton/cache && tar xzf tools/triton-autotune.tgz -C ~/.triton/cache
K='gelu_epilogue_split or fc1_quant_out or w8a8_real_shapes'
mkdir -p $OUT/tests; pids=()
for i in 0 1 2 3 4 5 6 7; do
  TRITON_CACHE_AUTOTUNING=0 QVIT_TEST_SHARD=$i/8 timeout $(( start + ${TEST_S:-140} - $(date +%s) )) python3 -m pytest -m gpu tests -q \
    -p no:cacheprovider --durations=3 -k "$K" --junitxml=$OUT/tests/gpu_tests.$i.xml > $OUT/tests/gpu_tests.$i.log 2>&1 &
  pids+=($!)
done
for p in "${pids[@]}"; do wait $p; echo -n "shard rc=$? "; done; echo
for i in 0 1 2 3 4 5 6 7; do tail -1 $OUT/tests/gpu_tests.$i.log | cut -c1-200; done
echo "tests done at +$(( $(date +%s) - start ))s"; grep -hE "^FAILED|^ERROR|^E  " $OUT/tests/*.log | head -20 | cut -c1-300
export TRITON_CACHE_AUTOTUNING=1
timeout $(( start + ${BENCH_S:-230} - $(date +%s) )) python3 -m qvit.profiling.bench_kernels --out $OUT/bench --only linear --quick --layers fc1,proj --warm 8 \
  --providers 'qvit w8a8 \((int8 in|\+gelu|\+gelu, int8 out g128|\+residual)\)$' > $OUT/bench.log 2>&1; echo "bench rc=$? at +$(( $(date +%s) - start ))s"
grep -E "^warm|^linear|^\[" $OUT/bench.log | cut -c1-500
timeout $(( start + ${END_S:-485} - $(date +%s) )) python3 -m qvit.profiling.bench_e2e --out $OUT/e2e --only qvit,timm --batches 1 256 --iters 50 --warm 8 \
  --variants "3 8bit+qvit-attn" "x 8bit+qvit-attn-fp16qk" "2 4bit+qvit-attn" "5 8bit+sdpa-noflash" > $OUT/e2e.log 2>&1; echo "e2e rc=$? at +$(( $(date +%s) - start ))s"
grep -E "bench_e2e:|^warm" $OUT/e2e.log | cut -c1-300
(cd ~/.triton/cache && find . -name '*.autotune.json' | tar czf $OUT/triton-autotune.tgz -T -)
cd $OUT && tar czf tests.tgz tests && rm -rf tests; cp $OLDPWD/.gpu/s9c3.sh $OUT/
