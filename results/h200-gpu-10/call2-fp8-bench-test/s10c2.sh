#!/usr/bin/env bash
# session 10, call 2: one H200. Install (no CUDA ext); kernel benchmark of the fp8 fast-accumulation GEMM with its
# epilogues beside cuBLAS fp8 (both accumulation modes) and the attention kernels the model runs (its --warm compiles
# every autotuner config in 14 processes, which the later steps reuse); the GPU test of the fp8 model on the Triton
# backend; ViT-L/16 end to end at batch 1 and 256 (timm bf16 baseline in the same process).
set -u
export PYTHONPATH=$PWD/.gpu/peers PYTHONUNBUFFERED=1 QVIT_COMMIT=$(cat .gpu/commit)
start=$(date +%s); el() { echo "+$(( $(date +%s) - start ))s"; }
QVIT_BUILD_CUDA=0 python3 -m pip install --no-build-isolation --no-deps -v -e . > $OUT/install.log 2>&1
echo "install rc=$? at $(el)"
mkdir -p ~/.triton/cache && tar xzf .gpu/autotune-s10c1.tgz -C ~/.triton/cache
export TRITON_CACHE_AUTOTUNING=1
timeout $(( start + ${BENCH_S:-270} - $(date +%s) )) python3 -m qvit.profiling.bench_kernels --out $OUT/bench --only linear,attention --quick --warm 14 \
  --providers 'fp8|_scaled_mm|qvit fp16$|quantized on chip\)$' > $OUT/bench.log 2>&1; echo "bench rc=$? at $(el)"
grep -E "^warm|^linear|^attn|^\[" $OUT/bench.log | cut -c1-600
timeout $(( start + ${TEST_S:-340} - $(date +%s) )) python3 -m pytest -m gpu tests -q -p no:cacheprovider \
  -k "model_triton_backend_matches_torch_backend and fp8" > $OUT/gpu_tests.log 2>&1; echo "test rc=$? at $(el)"; tail -2 $OUT/gpu_tests.log
timeout $(( start + ${END_S:-555} - $(date +%s) )) python3 -m qvit.profiling.bench_e2e --out $OUT/e2e --only qvit,timm --batches 256 1 --iters 50 \
  --variants "x fp8+qvit-attn" "3 8bit+qvit-attn" "2 4bit+qvit-attn" "x fp8+sdpa-noflash" > $OUT/e2e.log 2>&1; echo "e2e rc=$? at $(el)"
grep -E "bench_e2e:|^warm" $OUT/e2e.log | cut -c1-300; tail -3 $OUT/e2e.log | cut -c1-300
(cd ~/.triton/cache && find . -name '*.autotune.json' | tar czf $OUT/triton-autotune.tgz -T -)
cp $OLDPWD/.gpu/s10c2.sh $OUT/ 2>/dev/null || cp .gpu/s10c2.sh $OUT/
