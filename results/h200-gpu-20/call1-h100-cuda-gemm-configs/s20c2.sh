#!/usr/bin/env bash
# session 20, the short form of call 1 for a small device budget (LIMIT s): CUDA build; a check of every new config
# (22-30, int8 and e4m3, three shapes, splits 1-3) against the reference, 40 s at most (a broken TMA pipeline would
# hang); the M = 197 linear benchmark with QVIT_CUDA_OPT_IN=1 (cuBLAS bf16, Triton int8 and fp8, CUDA tuned over
# every config) or, if the check failed, without; then the GPU tests of the CUDA GEMM while time is left.
set -u
QVIT_ENV_NO_INSTALL=1 . tools/device_env.sh
mkdir -p $OUT/r
cp .gpu/s20c2.sh $OUT/r/
nvidia-smi --query-gpu=name,driver_version,clocks.max.sm --format=csv > $OUT/r/nvidia-smi.csv; cat $OUT/r/nvidia-smi.csv
export TRITON_CACHE_AUTOTUNING=1 QVIT_PDL=0
t0=$(date +%s)
QVIT_BUILD_CUDA=1 QVIT_CUDA_ARCHS=90a MAX_JOBS=16 python3 -m pip install --no-build-isolation --no-deps -v -e . \
  > $OUT/r/install-cuda.log 2>&1; echo "cuda build rc=$? in $(( $(date +%s) - t0 ))s at $(el)"
python3 -c "from qvit import _ext; print('ext:', _ext.load_error() or 'loaded')"
LIMIT=${LIMIT:-330}
left() { local d=$(( start + LIMIT - 12 - $(date +%s) )); echo $(( d > 1 ? d : 1 )); }
timeout 40 python3 - > $OUT/r/smoke.log 2>&1 <<'PY'
import torch
from qvit.kernels import quant as Q
from qvit.kernels.w8a8_cuda import w8a8_linear_cuda
for m, k, n in ((197, 1024, 3072), (197, 4096, 1024), (37, 1040, 200)):
    xq, xs = Q.quantize_int8_per_token(torch.randn(m, k, device="cuda"))
    wq, ws = Q.quantize_int8_per_channel(torch.randn(n, k, device="cuda"))
    xf, xfs = Q.quantize_fp8_per_token(torch.randn(m, k, device="cuda"))
    wf, wfs = Q.quantize_fp8_per_channel(torch.randn(n, k, device="cuda"))
    ref, reff = Q.int8_matmul_ref(xq, xs, wq, ws), Q.fp8_matmul_ref(xf, xfs, wf, wfs)
    for cfg in (30, 22, 23, 24, 25, 26, 27, 28, 29):
        for s in (1, 2, 3):
            y = w8a8_linear_cuda(xq, xs, wq, ws, None, None, False, torch.float32, cfg, s)
            torch.cuda.synchronize()
            e = ((y - ref).abs().max() / ref.abs().max()).item()
            print("int8", m, k, n, cfg, s, f"{e:.2e}", "OK" if e < 1e-5 else "WRONG", flush=True)
            if cfg == 30:
                continue
            y = w8a8_linear_cuda(xf, xfs, wf, wfs, None, None, False, torch.float32, cfg, s)
            torch.cuda.synchronize()
            e = ((y.double() - reff.double()).norm() / reff.double().norm()).item()
            print("e4m3", m, k, n, cfg, s, f"{e:.2e}", "OK" if e < 2 ** -9 else "WRONG", flush=True)
PY
rc=$?; echo "check rc=$rc at $(el): $(grep -c OK $OUT/r/smoke.log) ok, $(grep -c WRONG $OUT/r/smoke.log) wrong"
grep WRONG $OUT/r/smoke.log | head -5; tail -2 $OUT/r/smoke.log | cut -c1-200
OPTIN=1; [ $rc = 0 ] && ! grep -q WRONG $OUT/r/smoke.log || OPTIN=0
P='qvit w8a8 \(int8 in\)$|qvit-cuda|qvit w8a8 fp8 fast accum \(fp8 in\)$'
QVIT_CUDA_OPT_IN=$OPTIN timeout $(left) python3 -m qvit.profiling.bench_kernels --out $OUT/r/linear --only linear \
  --ms 197 --providers "$P" > $OUT/r/linear.log 2>&1; echo "linear (opt-in $OPTIN) rc=$? at $(el)"
grep -E "^linear" $OUT/r/linear.log | cut -c1-300
if [ $OPTIN = 1 ] && [ $(left) -gt 60 ]; then
  timeout $(left) python3 -m pytest -q tests/test_gpu.py -p no:cacheprovider -k "w8a8_cuda" > $OUT/r/tests.log 2>&1
  echo "tests rc=$? at $(el)"; grep -E "passed|failed|FAILED|Error" $OUT/r/tests.log | tail -8 | cut -c1-300
fi
cd $OUT && tar czf r.tgz r && rm -rf r
