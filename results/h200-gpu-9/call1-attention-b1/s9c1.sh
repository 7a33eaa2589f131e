#!/usr/bin/env bash
# session 9, call 1: one H200. Install (CUDA ext built), the new-config GPU tests in 6 shards on the one GPU
# (compile-bound; their autotuning is not cached), then the attention and linear benchmarks alone on the GPU.
set -u
export PYTHONPATH=$PWD/.gpu/peers PYTHONUNBUFFERED=1 QVIT_COMMIT=$(cat .gpu/commit)
start=$(date +%s)
QVIT_BUILD_CUDA=1 QVIT_CUDA_ARCHS=90a MAX_JOBS=16 python3 -m pip install --no-build-isolation --no-deps -v -e . > $OUT/install.log 2>&1
echo "install rc=$? at +$(( $(date +%s) - start ))s"; grep "qvit setup" $OUT/install.log | sort -u
K='attention_tail_configs_gpu or gelu_epilogue_split or swapped_configs or w4a16 or attention_gpu or attention_int8_gpu or on_chip_gpu or quantized_output_gpu or attention_grad_gpu or backward_kernels_gpu or triton_backend_matches'
mkdir -p $OUT/tests; pids=()
for i in 0 1 2 3 4 5; do
  TRITON_CACHE_AUTOTUNING=0 QVIT_TEST_SHARD=$i/6 timeout $(( start + ${TEST_S:-300} - $(date +%s) )) python3 -m pytest -m gpu tests -q \
    -p no:cacheprovider --durations=8 -k "$K" --junitxml=$OUT/tests/gpu_tests.$i.xml > $OUT/tests/gpu_tests.$i.log 2>&1 &
  pids+=($!)
done
for p in "${pids[@]}"; do wait $p; echo "shard rc=$?"; done
for i in 0 1 2 3 4 5; do tail -1 $OUT/tests/gpu_tests.$i.log; done
echo "tests done at +$(( $(date +%s) - start ))s"; for f in $OUT/tests/gpu_tests.*.log; do grep -E "^FAILED|^ERROR" $f | cut -c1-300; done
export TRITON_CACHE_AUTOTUNING=1
mkdir -p ~/.triton/cache && tar xzf tools/triton-autotune.tgz -C ~/.triton/cache
left=$(( start + ${END_S:-575} - $(date +%s) ))
timeout $left python3 -m qvit.profiling.bench_kernels --out $OUT/bench --only ceilings,attention,linear --quick \
  --providers 'qvit fp16$|qvit int8 QK \((pre-quantized|quantized on chip)\)$|\+int8 out|Sage|qvit w8a8 \((int8 in|\+gelu|\+residual)\)$|qvit w4a16 (int4 g128|nf4)$|qvit w4a8 g128|bnb NF4|_scaled_mm|fp8 \(fp8 in\)' \
  > $OUT/bench.log 2>&1; echo "bench rc=$? at +$(( $(date +%s) - start ))s"
grep -E "^attn|^linear|^\[" $OUT/bench.log | cut -c1-600
(cd ~/.triton/cache && find . -name '*.autotune.json' | tar czf $OUT/triton-autotune.tgz -T -)
cp .gpu/s9c1.sh $OUT/
