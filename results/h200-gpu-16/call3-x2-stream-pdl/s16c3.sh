#!/usr/bin/env bash
# session 16, call 3: 2 x H200. (1) profiling/weight_stream: DRAM streaming of the four linears' weights in the
# GEMM's tile order, row-major vs rows padded by 128 B vs tiled, 64-256 programs (fc2 at M = 197 did not get
# faster with more CTAs in call 2's Nsight Compute run). (2) Batch 1 graphed of rows 3 / 2 with QVIT_PDL=0 and =1
# again, in the other order and on both GPUs (call 1, one sample each on GPU 0: row 2 1.113 -> 1.023 ms,
# row 3 0.944 -> 1.000 ms with PDL). Call 2's autotune decisions (same source) unpacked.
set -u
. tools/device_env.sh
tar xzf .gpu/autotune-c2.tgz -C ~/.triton/cache
mkdir -p $OUT/r
export TRITON_CACHE_AUTOTUNING=1
run() {  # gpu, name, deadline (s since start), env...
  local gpu=$1 name=$2 dl=$3; shift 3
  env CUDA_VISIBLE_DEVICES=$gpu "$@" timeout $(( start + dl - $(date +%s) )) python3 -m qvit.profiling.bench_e2e \
    --out $OUT/r/e2e-$name --only qvit,timm --batches 1 --iters 50 --warm 6 \
    --variants "3 8bit+qvit-attn" "2 4bit+qvit-attn" > $OUT/r/e2e-$name.log 2>&1; echo "e2e $name rc=$? at $(el)"
}
(export CUDA_VISIBLE_DEVICES=0
 timeout 90 python3 -m qvit.profiling.weight_stream --out $OUT/r/ws64 > $OUT/r/ws64.log 2>&1; echo "ws64 rc=$? at $(el)"
 timeout 90 python3 -m qvit.profiling.weight_stream --block-n 32 --out $OUT/r/ws32 > $OUT/r/ws32.log 2>&1
 echo "ws32 rc=$? at $(el)"
 run 0 pdl-g0 330 QVIT_PDL=1; run 0 off-g0 540 QVIT_PDL=0) &
(sleep 20; run 1 off-g1 300 QVIT_PDL=0; run 1 pdl-g1 540 QVIT_PDL=1) &
wait
cat $OUT/r/ws64/weight_stream.md $OUT/r/ws32/weight_stream.md 2>/dev/null; tail -3 $OUT/r/ws64.log
for f in $OUT/r/e2e-*.log; do echo "== $f"; grep -E "bench_e2e:|WARNING" $f | sort -u | cut -c1-200; done
cp .gpu/s16c3.sh $OUT/r/; cd $OUT && tar czf results.tgz r && rm -rf r
