#!/usr/bin/env bash
# session 12, call 3: one H200. Diagnostic of test_attention_fp8_static_out_gpu (failed in call 1): every config pinned
# against the float32 reference (8 processes), then the test replicated (poisoned outputs, autotuned) in one.
set -u
export PYTHONPATH=$PWD/.gpu/peers PYTHONUNBUFFERED=1 QVIT_COMMIT=$(cat .gpu/commit)
start=$(date +%s); el() { echo "+$(( $(date +%s) - start ))s"; }
QVIT_BUILD_CUDA=0 python3 -m pip install --no-build-isolation --no-deps -v -e . > $OUT/install.log 2>&1
echo "install rc=$? at $(el)"
mkdir -p $OUT/r; pids=()
for i in 0 1 2 3 4 5 6 7; do
  timeout $(( start + ${DIAG_S:-100} - $(date +%s) )) python3 tools/diag_attn_fp8.py $OUT/r/pinned.$i.json $i/8 > $OUT/r/pinned.$i.log 2>&1 & pids+=($!)
done
TRITON_CACHE_AUTOTUNING=0 timeout $(( start + ${REP_S:-200} - $(date +%s) )) python3 tools/diag_attn_fp8.py $OUT/r/replica.json 0/1000 replica > $OUT/r/replica.log 2>&1; echo "replica rc=$?"
for p in "${pids[@]}"; do wait $p; echo -n "diag rc=$? "; done; echo "at $(el)"
cat $OUT/r/pinned.*.log | grep pinned | sort -k3,3 -k5n | cut -c1-200; cat $OUT/r/replica.log | cut -c1-600
cp .gpu/s12c3.sh $OUT/r/; cd $OUT && tar czf results.tgz r && rm -rf r
