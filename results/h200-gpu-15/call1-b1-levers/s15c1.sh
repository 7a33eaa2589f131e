#!/usr/bin/env bash
# session 15, call 1: one H200, nothing else on the host. (1) GPU tests of the two levers built in session 14 and
# never run: split-K for the fp8 GEMM at M <= 512 (QVIT_SPLITK=1) and programmatic dependent launch (QVIT_PDL=1).
# (2) Batch 1 graphed, rows 2 / 3 against timm bf16 in the same process, one process per setting: both off,
# split-K, split-K + PDL, PDL. (3) The autotune decisions, made on this unshared host, for tools/triton-autotune.tgz.
set -u
. tools/device_env.sh
mkdir -p $OUT/r
export TRITON_CACHE_AUTOTUNING=1
timeout $(( start + ${T_S:-170} - $(date +%s) )) python3 -m pytest -q -x tests/test_gpu.py -k "pdl_same_logits or split_k" \
  -p no:cacheprovider > $OUT/r/tests.log 2>&1; echo "tests rc=$? at $(el)"; tail -5 $OUT/r/tests.log
run() {  # name, deadline (s since start), env...
  local name=$1 dl=$2; shift 2
  env "$@" timeout $(( start + dl - $(date +%s) )) python3 -m qvit.profiling.bench_e2e --out $OUT/r/e2e-$name \
    --only qvit,timm --batches 1 --iters 50 --warm 14 --variants "3 8bit+qvit-attn" "2 4bit+qvit-attn" \
    > $OUT/r/e2e-$name.log 2>&1; echo "e2e $name rc=$? at $(el)"
  grep -E "bench_e2e:|^warm" $OUT/r/e2e-$name.log | sort -u | cut -c1-200
}
run off 330 QVIT_SPLITK=0 QVIT_PDL=0
run splitk 460 QVIT_SPLITK=1 QVIT_PDL=0
run splitk-pdl 540 QVIT_SPLITK=1 QVIT_PDL=1
run pdl 585 QVIT_SPLITK=0 QVIT_PDL=1
(cd ~/.triton/cache && find . -name '*.autotune.json' | tar czf - -T - ) > $OUT/r/triton-autotune.tgz 2>/dev/null
cp .gpu/s15c1.sh $OUT/r/; cd $OUT && tar czf results.tgz r && rm -rf r
