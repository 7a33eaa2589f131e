#!/usr/bin/env bash
# session 12, call 4: one H200. Install (no CUDA ext); GPU tests: attention fp8 static output (config pinned, restated),
# the int8 conversion (cvt.rni + cvt.pack.sat), LayerNorm+quantize, fp8 GEMMs; kernel bench: ceilings, LayerNorm+quantize
# (int8 on the new conversion), the four linears at M = 12,608 (persistent int8/fp8, fused epilogues, cuBLAS bf16/fp8);
# e2e batch 256: fp8s2, 8-bit and 4-bit with qvit attention, timm bf16 in the same process.
set -u
export PYTHONPATH=$PWD/.gpu/peers PYTHONUNBUFFERED=1 QVIT_COMMIT=$(cat .gpu/commit)
start=$(date +%s); el() { echo "+$(( $(date +%s) - start ))s"; }
QVIT_BUILD_CUDA=0 python3 -m pip install --no-build-isolation --no-deps -v -e . > $OUT/install.log 2>&1
echo "install rc=$? at $(el)"
mkdir -p ~/.triton/cache && tar xzf tools/triton-autotune.tgz -C ~/.triton/cache
mkdir -p $OUT/r/tests; pids=()
for i in 0 1 2 3; do
  TRITON_CACHE_AUTOTUNING=0 QVIT_TEST_SHARD=$i/4 timeout $(( start + ${TEST_S:-170} - $(date +%s) )) python3 -m pytest -m gpu \
    tests/test_gpu.py -q -p no:cacheprovider --tb=short \
    -k "attention_fp8_static_out or int8_rn or (layernorm_quant_gpu and triton) or fp8_w8a8_real_shapes" \
    > $OUT/r/tests/gpu_tests.$i.log 2>&1 &
  pids+=($!)
done
for p in "${pids[@]}"; do wait $p; echo -n "shard rc=$? "; done; echo
for i in 0 1 2 3; do tail -1 $OUT/r/tests/gpu_tests.$i.log | cut -c1-200; done
grep -hE "^FAILED|^E  " $OUT/r/tests/*.log | head -20 | cut -c1-300
echo "tests done at $(el)"
export TRITON_CACHE_AUTOTUNING=1
timeout $(( start + ${BENCH_S:-370} - $(date +%s) )) python3 -m qvit.profiling.bench_kernels --out $OUT/r/bench --only ceilings,lnq,linear --quick \
  --ms 12608 --warm 14 --providers 'persistent|_scaled_mm fp8 \(raw, fast' > $OUT/r/bench.log 2>&1
echo "bench rc=$? at $(el)"; grep -E "^warm|^linear|^lnq|^ceil|^\[" $OUT/r/bench.log | cut -c1-900
timeout $(( start + ${END_S:-585} - $(date +%s) )) python3 -m qvit.profiling.bench_e2e --out $OUT/r/e2e --only qvit,timm --batches 256 --iters 30 --warm 14 \
  --variants "x fp8s2+qvit-attn-fp16qk" "3 8bit+qvit-attn" "2 4bit+qvit-attn" > $OUT/r/e2e.log 2>&1; echo "e2e rc=$? at $(el)"
grep -E "bench_e2e:|^warm" $OUT/r/e2e.log | sort -u | cut -c1-300
(cd ~/.triton/cache && find . -name '*.autotune.json' | tar czf $OUT/r/triton-autotune.tgz -T -)
cp .gpu/s12c4.sh $OUT/r/; cd $OUT && tar czf results.tgz r && rm -rf r
