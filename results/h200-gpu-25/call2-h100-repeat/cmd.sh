# session 25, call 2: the command given to the device tool (one line there, split here at its `;`), on call 1's warm
# machine (the extension built there)
QVIT_ENV_NO_INSTALL=1 . tools/device_env.sh; mkdir -p $OUT/r
python3 -c "from qvit import _ext; print('ext:', _ext.load_error() or 'loaded')"
export TRITON_CACHE_AUTOTUNING=1 QVIT_PDL=0; linear_m197 linear2 120; mkdir -p $OUT/r/e2e2
QVIT_CUDA_OPT_IN=1 timeout 250 python3 -m qvit.profiling.bench_e2e --out $OUT/r/e2e2 --only qvit,timm \
  --linear auto,triton --batches 1 --iters 50 --warm 8 --variants "3 8bit+qvit-attn" "2 4bit+qvit-attn" \
  > $OUT/r/e2e2.log 2>&1; echo "e2e rc=$? at $(el)"; grep -E "bench_e2e:" $OUT/r/e2e2.log | cut -c1-200
cd $OUT && tar czf r2.tgz r && rm -rf r
