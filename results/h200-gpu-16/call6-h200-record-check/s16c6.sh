#!/usr/bin/env bash
# session 16, call 6: one H200. Batch 1 of rows 3 / 2 with timm bf16 from the committed autotune record
# (tools/triton-autotune.tgz = call 2's decisions) at the final kernel source: does the record reproduce calls 3 / 4
# (0.942-0.951 / 1.104-1.110 ms)? Counts the autotune files before and after (no new file: nothing retuned).
set -u
. tools/device_env.sh
mkdir -p $OUT/r
export TRITON_CACHE_AUTOTUNING=1 QVIT_PDL=0
before=$(find ~/.triton/cache -name '*.autotune.json' | wc -l)
timeout 170 python3 -m qvit.profiling.bench_e2e --out $OUT/r/e2e --only qvit,timm --batches 1 --iters 50 --warm 8 \
  --variants "3 8bit+qvit-attn" "2 4bit+qvit-attn" > $OUT/r/e2e.log 2>&1; echo "e2e rc=$? at $(el)"
echo "autotune files: $before before, $(find ~/.triton/cache -name '*.autotune.json' | wc -l) after" | tee $OUT/r/autotune-count.txt
grep -E "bench_e2e:|WARNING" $OUT/r/e2e.log | sort -u | cut -c1-200
cp .gpu/s16c6.sh $OUT/r/; cd $OUT && tar czf results.tgz r && rm -rf r
