#!/usr/bin/env bash
# session 12, call 2: one H200. Install (no CUDA ext); diagnostic of the attention fp8 static-output test that failed
# in call 1 (every config pinned, the fast quotient vs one div.rn per element); kernel bench of proj/fc1/fc2 at
# M = 12,608, fp8 persistent (two-CTA and TMA-store configs in its autotuner) vs cuBLAS bf16 / fp8; e2e fp8s2 b256.
set -u
export PYTHONPATH=$PWD/.gpu/peers PYTHONUNBUFFERED=1 QVIT_COMMIT=$(cat .gpu/commit)
start=$(date +%s); el() { echo "+$(( $(date +%s) - start ))s"; }
QVIT_BUILD_CUDA=0 python3 -m pip install --no-build-isolation --no-deps -v -e . > $OUT/install.log 2>&1
echo "install rc=$? at $(el)"
mkdir -p ~/.triton/cache && tar xzf tools/triton-autotune.tgz -C ~/.triton/cache
mkdir -p $OUT/r/diag; pids=()
for i in 0 1 2 3 4 5 6 7; do
  form=fast; [ $i -ge 4 ] && form=divrn
  timeout $(( start + ${DIAG_S:-110} - $(date +%s) )) python3 tools/diag_attn_fp8.py $OUT/r/diag/$form.$((i % 4)).json $((i % 4))/4 $form \
    > $OUT/r/diag/$form.$((i % 4)).log 2>&1 & pids+=($!)
done
for p in "${pids[@]}"; do wait $p; echo -n "diag rc=$? "; done; echo "at $(el)"
cat $OUT/r/diag/fast.*.log | sort | cut -c1-260; echo; cat $OUT/r/diag/divrn.*.log | sort | cut -c1-200
export TRITON_CACHE_AUTOTUNING=1
timeout $(( start + ${BENCH_S:-330} - $(date +%s) )) python3 -m qvit.profiling.bench_kernels --out $OUT/r/bench --only ceilings,linear --quick \
  --ms 12608 --layers proj,fc1,fc2 --warm 14 --providers 'fp8 fast accum persistent|_scaled_mm fp8 \(raw, fast' > $OUT/r/bench.log 2>&1
echo "bench rc=$? at $(el)"; grep -E "^warm|^linear|^ceil|^\[" $OUT/r/bench.log | cut -c1-900
timeout $(( start + ${END_S:-575} - $(date +%s) )) python3 -m qvit.profiling.bench_e2e --out $OUT/r/e2e --only qvit,timm --batches 256 --iters 30 --warm 14 \
  --variants "x fp8s2+qvit-attn-fp16qk" > $OUT/r/e2e.log 2>&1; echo "e2e rc=$? at $(el)"
grep -E "bench_e2e:|^warm" $OUT/r/e2e.log | sort -u | cut -c1-300
cp .gpu/s12c2.sh $OUT/r/; cd $OUT && tar czf results.tgz r && rm -rf r
