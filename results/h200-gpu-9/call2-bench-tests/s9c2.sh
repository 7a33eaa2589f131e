#!/usr/bin/env bash
# session 9, call 2: one H200. Install (CUDA ext), the attention + linear benchmarks with the configs compiled
# first in 14 processes (--warm 14), then the new-config GPU tests in 10 shards on the same GPU.
set -u
export PYTHONPATH=$PWD/.gpu/peers PYTHONUNBUFFERED=1 QVIT_COMMIT=$(cat .gpu/commit)
start=$(date +%s)
QVIT_BUILD_CUDA=1 QVIT_CUDA_ARCHS=90a MAX_JOBS=16 python3 -m pip install --no-build-isolation --no-deps -v -e . > $OUT/install.log 2>&1
echo "install rc=$? at +$(( $(date +%s) - start ))s"; grep "qvit setup" $OUT/install.log | sort -u
export TRITON_CACHE_AUTOTUNING=1
mkdir -p ~/.triton/cache && tar xzf tools/triton-autotune.tgz -C ~/.triton/cache
[ -f .gpu/autotune-s9c1.tgz ] && tar xzf .gpu/autotune-s9c1.tgz -C ~/.triton/cache
timeout $(( start + ${BENCH_S:-330} - $(date +%s) )) python3 -m qvit.profiling.bench_kernels --out $OUT/bench --only ceilings,attention,linear --quick --warm 14 \
  --providers 'qvit fp16$|qvit int8 QK \((pre-quantized|quantized on chip)\)$|\+int8 out|Sage|qvit w8a8 \((int8 in|\+gelu|\+residual)\)$|qvit w4a16 (int4 g128|nf4)$|qvit w4a8 g128|bnb NF4|_scaled_mm|fp8 \(fp8 in\)' \
  > $OUT/bench.log 2>&1; echo "bench rc=$? at +$(( $(date +%s) - start ))s"
grep -E "^warm|^attn|^linear|^\[" $OUT/bench.log | cut -c1-700
(cd ~/.triton/cache && find . -name '*.autotune.json' | tar czf $OUT/triton-autotune.tgz -T -)
K='attention_tail_configs_gpu or gelu_epilogue_split or swapped_configs or w4a16_real_shapes or triton_backend_matches or attention_gpu'
mkdir -p $OUT/tests; pids=()
for i in 0 1 2 3 4 5 6 7 8 9; do
  TRITON_CACHE_AUTOTUNING=0 QVIT_TEST_SHARD=$i/10 timeout $(( start + ${END_S:-580} - $(date +%s) )) python3 -m pytest -m gpu tests -q \
    -p no:cacheprovider --durations=3 -k "$K" --junitxml=$OUT/tests/gpu_tests.$i.xml > $OUT/tests/gpu_tests.$i.log 2>&1 &
  pids+=($!)
done
for p in "${pids[@]}"; do wait $p; echo -n "shard rc=$? "; done; echo
for i in 0 1 2 3 4 5 6 7 8 9; do tail -1 $OUT/tests/gpu_tests.$i.log | cut -c1-200; done
echo "tests done at +$(( $(date +%s) - start ))s"; grep -hE "^FAILED|^ERROR" $OUT/tests/*.log | cut -c1-300
cd $OUT && tar czf tests.tgz tests && rm -rf tests
cp $OLDPWD/.gpu/s9c2.sh $OUT/ 2>/dev/null
