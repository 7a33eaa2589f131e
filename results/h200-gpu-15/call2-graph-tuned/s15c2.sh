#!/usr/bin/env bash
# session 15, call 2: one H200, nothing else on the host. The autotuner now times each config inside a CUDA
# graph after an L2 flush (qvit.backend.tune_bench; call 1 showed host-launch timing picking batch-1 configs
# 0.25 ms slower end to end), so every autotune decision is made afresh: the committed record's small-M entries
# were host-timed. (1) Batch 1 graphed, rows 2 / 3 against timm bf16 in the same process: split-K and PDL off,
# then both on (split-K's reduction now sums the partials in split order: bit-reproducible). (2) GPU tests:
# split-K (corrected static-output check), PDL, the new timer. (3) The autotune record made here.
set -u
. tools/device_env.sh
find ~/.triton/cache -name '*.autotune.json' -delete
mkdir -p $OUT/r
export TRITON_CACHE_AUTOTUNING=1
run() {  # name, deadline (s since start), env...
  local name=$1 dl=$2; shift 2
  env "$@" timeout $(( start + dl - $(date +%s) )) python3 -m qvit.profiling.bench_e2e --out $OUT/r/e2e-$name \
    --only qvit,timm --batches 1 --iters 50 --warm 14 --variants "3 8bit+qvit-attn" "2 4bit+qvit-attn" \
    > $OUT/r/e2e-$name.log 2>&1; echo "e2e $name rc=$? at $(el)"
  grep -E "bench_e2e:|^warm|WARNING" $OUT/r/e2e-$name.log | sort -u | cut -c1-200
}
run off 200 QVIT_SPLITK=0 QVIT_PDL=0
run splitk-pdl 350 QVIT_SPLITK=1 QVIT_PDL=1
timeout $(( start + ${T_S:-570} - $(date +%s) )) python3 -m pytest -q tests/test_gpu.py \
  -k "pdl_same_logits or split_k or tune_bench" -p no:cacheprovider > $OUT/r/tests.log 2>&1; echo "tests rc=$? at $(el)"
grep -E "passed|failed|FAILED|Error" $OUT/r/tests.log | tail -8
(cd ~/.triton/cache && find . -name '*.autotune.json' | tar czf - -T - ) > $OUT/r/triton-autotune.tgz 2>/dev/null
cp .gpu/s15c2.sh $OUT/r/; cd $OUT && tar czf results.tgz r && rm -rf r
