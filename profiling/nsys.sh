#!/usr/bin/env bash
# Nsight Systems traces with qvit's NVTX ranges, of full training or of inference.
#
#   bash profiling/nsys.sh train OUT_DIR [qvit train options...]   # e.g. --epochs 2
#   bash profiling/nsys.sh infer OUT_DIR [bench_e2e options...]    # e.g. --batches 1 64 --only qvit
#
# QVIT_NVTX=1 turns the model's and the training step's ranges on (they cost nothing otherwise).
# Where nsys is missing, or runs but cannot produce a report (seen on the project's H200 image:
# it wrote a .qdstrm and no .nsys-rep), this says so plainly and records the same run with
# torch.profiler instead (a chrome trace with the NVTX ranges as user annotations).
set -uo pipefail
what=${1:?train|infer}; out=${2:?OUT_DIR}; shift 2
mkdir -p "$out"
py=${PYTHON:-python3}
export QVIT_NVTX=1
case "$what" in
  train) cmd=($py -m qvit.cli train --out "$out/train" --no-progress "$@");;
  infer) cmd=($py -m qvit.profiling.bench_e2e --out "$out/e2e" "$@");;
  *) echo "unknown target $what (train|infer)" >&2; exit 2;;
esac
nsys_bin=$(command -v nsys || ls /opt/nvidia/nsight-*/*/host/target-linux-x64/nsys 2>/dev/null | head -1 || true)
if [ -n "$nsys_bin" ]; then
  "$nsys_bin" profile -t cuda,nvtx,osrt -o "$out/$what" --force-overwrite true "${cmd[@]}"
  rc=$?
  if ls "$out/$what".nsys-rep >/dev/null 2>&1; then
    "$nsys_bin" stats --report nvtx_sum,cuda_gpu_kern_sum --format csv -o "$out/$what" "$out/$what".nsys-rep >/dev/null 2>&1 || true
    echo "nsys: report $out/$what.nsys-rep (rc=$rc)"; exit $rc
  fi
  echo "nsys: ran (rc=$rc) but produced no .nsys-rep report; falling back to torch.profiler"
else
  echo "nsys: not installed on this machine; falling back to torch.profiler"
fi
if [ "$what" = train ]; then
  "${cmd[@]}" --profile-steps ${QVIT_PROFILE_STEPS:-20 30}   # -> $out/train/profile_train.txt + trace
else
  $py -m qvit.profiling.attribution --out "$out/attribution" "$@"
fi
