#!/usr/bin/env bash
# The GPU runner: on a bare GPU machine with no internet (torch, Triton, timm, nvcc preinstalled),
# install qvit, build csrc/, run the GPU-marked tests and the kernel benchmarks, and write
# JSON summaries into the output folder.
#
#   bash tools/gpu_run.sh [OUT_DIR]         (default: $OUT, else ./gpu-out)
#   QVIT_GPU_STEPS="install bench tests" bash tools/gpu_run.sh   (steps, in this order; default install tests bench)
#   steps: install | tests | bench | train (QVIT_TRAIN_ARGS: extra `qvit train` options) | study
#   (QVIT_STUDY_ARGS) | qat (QVIT_QAT_PRESET, a list of w4a8p/w4a8/w8a8/w4a16/nf4/qlora, QVIT_QAT_EPOCHS,
#   QVIT_QAT_ARGS: QAT/QLoRA finetunes of the trained model + their studies)
#   | e2e (QVIT_E2E_ARGS: profiling/bench_e2e.py, ViT-L/16 end to end against the peers)
#   | demo (`qvit demo --check`: the demo's latencies vs the benchmark's, issue 9)
#   | attr (QVIT_ATTR_ARGS: profiling/attribution.py) | ncu (Nsight Compute SOL of the main kernels)
#   | ncu-gemm (Nsight Compute of the CUDA GEMM's configs beside Triton's) | sanitize (compute-sanitizer memcheck +
#   racecheck of every CUDA kernel config). QVIT_BUILD_CUDA=0 skips the CUDA build (faster install).
#   The kernel benchmark of session 7's GEMM work: QVIT_BENCH_ARGS="--only ceilings,linear --quick --providers
#   'qvit w8a8 \(int8 in\)$|qvit-cuda|_int_mm'" (~60 s instead of ~330 s for every provider).
#   QVIT_GPUS="0 1 2": several GPUs: the GPU tests sharded over them (bench on the first, alongside).
#   QVIT_WARM=N: the bench step compiles the autotuner configs in N processes first (default: cores - 2);
#   QVIT_E2E_WARM=N the same for the e2e step (default 0: session 9's 8-copy e2e warm-up, each copy building and
#   quantizing ViT-L on the CPU with a thread per core, had not finished after 264 s; threads now shared out, unmeasured).
#   QVIT_DEADLINE (a `date +%s`): the long steps are stopped at that time so that the rest still runs.
# Two GPUs: install once, then run one lane per GPU into its own folder (each a separate invocation with
# CUDA_VISIBLE_DEVICES set), e.g. training + study on GPU 0 while the tests and benchmarks run on GPU 1.
#
# Peers (bitsandbytes, torchao, sageattention) are taken from .gpu/peers when present
# (../shared/tools/gpu-prep puts them there); the git commit from .gpu/commit or $QVIT_COMMIT.
set -uo pipefail
out=${1:-${OUT:-gpu-out}}
mkdir -p "$out"
export PYTHONUNBUFFERED=1
[ -d .gpu/peers ] && export PYTHONPATH="$PWD/.gpu/peers${PYTHONPATH:+:$PYTHONPATH}"
steps=${QVIT_GPU_STEPS:-install tests bench}
# Triton autotuning decisions persist between machines: each run starts from tools/triton-autotune.tgz
# (committed from an earlier run on the same kind of card: Triton keys every entry by its version, the
# target, the kernel's source and the shape, so a changed kernel re-tunes) and leaves the decisions it
# made, old and new, in OUT_DIR/triton-autotune.tgz
export TRITON_CACHE_AUTOTUNING=${TRITON_CACHE_AUTOTUNING:-1}
tcache=${TRITON_CACHE_DIR:-$HOME/.triton/cache}
mkdir -p "$tcache"
[ -f tools/triton-autotune.tgz ] && tar xzf tools/triton-autotune.tgz -C "$tcache" 2>/dev/null
py=${PYTHON:-python3}
# the bench step first compiles every Triton autotuner config in this many processes (qvit.profiling.warm):
# on a cold machine compiling, ~2 s per config and kernel variant, dominated the first tuning (session 9)
warm=${QVIT_WARM:-$(( $(nproc) > 4 ? $(nproc) - 2 : 0 ))}
# the commit every JSON names: the device's copy of .git can be a snapshot older than the tree it runs
# (seen in session 5: HEAD at the session's start, tree at the call), so .gpu/commit, written by the submitter
# right before the call, wins over git there
[ -z "${QVIT_COMMIT:-}" ] && [ -f .gpu/commit ] && export QVIT_COMMIT=$(cat .gpu/commit)
declare -A rc
t_install=0
# QVIT_GPUS="0 1 2 3": the tests step runs one shard per listed GPU (QVIT_TEST_SHARD, tests/conftest.py), all
# but the first when a bench step follows, which then runs on the first at the same time; unset: one GPU, in order
read -r -a gpus <<< "${QVIT_GPUS:-}"
shard_pids=()
wait_shards() {
  [ ${#shard_pids[@]} -eq 0 ] && return
  rc[tests]=0
  for p in "${shard_pids[@]}"; do wait "$p" || rc[tests]=$?; done
  shard_pids=()
  for f in "$out"/gpu_tests.*.log; do echo "$f: $(tail -1 "$f")"; done
}
# lim: "timeout SECONDS" until $QVIT_DEADLINE (a `date +%s`), so that a long step ends by itself and the
# steps after it (and the packing of results) still run; nothing when no deadline is set
lim() { if [ -n "${QVIT_DEADLINE:-}" ]; then echo "timeout $(( QVIT_DEADLINE - $(date +%s) > 5 ? QVIT_DEADLINE - $(date +%s) : 5 ))"; fi; }
# bf16 copies of trained models (an fp32 model can exceed the 16 MiB a returned file may have), made right
# after the step that wrote them so that a later step's timeout cannot lose them; optimizer checkpoints dropped
to_bf16() {
  for f in "$@"; do
    [ -f "$f" ] || continue
    $py -c "import sys; from safetensors.torch import load_file, save_file; from safetensors import safe_open
p = sys.argv[1]; m = safe_open(p, 'pt').metadata(); sd = load_file(p)
save_file({k: v.bfloat16() if v.is_floating_point() else v for k, v in sd.items()}, p.replace('.safetensors', '-bf16.safetensors'), metadata=m)" \
      "$f" && [ -z "${QVIT_KEEP_FP32:-}" ] && rm -f "$f"
    rm -f "$(dirname "$f")/last.pt"
  done
}
for step in $steps; do
  case "$step" in
    install)
      t0=$(date +%s)
      QVIT_BUILD_CUDA=${QVIT_BUILD_CUDA:-1} QVIT_CUDA_ARCHS=${QVIT_CUDA_ARCHS:-90a} MAX_JOBS=${MAX_JOBS:-$(nproc)} \
        $py -m pip install --no-build-isolation --no-deps -v -e . > "$out/install.log" 2>&1
      rc[install]=$?
      t_install=$(( $(date +%s) - t0 ))
      echo "install: rc=${rc[install]} in ${t_install}s"; grep -E "qvit setup:|error" "$out/install.log" | sort -u | head -20 ;;
    tests)
      if [ ${#gpus[@]} -ge 2 ]; then
        # one shard per GPU, in the background; with a bench step the first GPU is left to the benchmarks
        tg=("${gpus[@]}"); [[ " $steps " == *" bench "* ]] && tg=("${gpus[@]:1}")
        n=${#tg[@]}; shard_pids=()
        for i in "${!tg[@]}"; do
          CUDA_VISIBLE_DEVICES=${tg[$i]} QVIT_TEST_SHARD=$i/$n $(lim) $py -m pytest -m gpu tests -q -p no:cacheprovider --durations=25 \
            --junitxml="$out/gpu_tests.$i.xml" ${QVIT_PYTEST_ARGS:-} > "$out/gpu_tests.$i.log" 2>&1 &
          shard_pids+=($!)
        done
        echo "tests: $n shards on GPUs ${tg[*]} (background)"
        [[ " $steps " == *" bench "* ]] || wait_shards
      else
        $(lim) $py -m pytest -m gpu tests -q -p no:cacheprovider --durations=25 --junitxml="$out/gpu_tests.xml" ${QVIT_PYTEST_ARGS:-} 2>&1 | tee "$out/gpu_tests.log" | tail -40
        rc[tests]=${PIPESTATUS[0]}
      fi ;;
    train)
      # the CIFAR-10 baseline (qvit train defaults unless QVIT_TRAIN_ARGS says otherwise) into $out/train
      $py -m qvit.cli train --out "$out/train" --no-progress ${QVIT_TRAIN_ARGS:-} 2>&1 | tee "$out/train.log" | tail -30
      rc[train]=${PIPESTATUS[0]}
      QVIT_KEEP_FP32=1 to_bf16 "$out/train/model.safetensors" ;;
    qat)
      # QAT (or QLoRA) finetune of the trained model, one run per preset in $QVIT_QAT_PRESET (default w4a8p;
      # "qlora": LoRA rank $QVIT_QLORA_RANK (8) on a bitsandbytes NF4 base), each followed by its study
      base=$out/train/model.safetensors; [ -f "$base" ] || base=$out/train/model-bf16.safetensors
      rc[qat]=0
      for pre in ${QVIT_QAT_PRESET:-w4a8p}; do
        if [ "$pre" = qlora ]; then flags="--qlora-rank ${QVIT_QLORA_RANK:-8}"; else flags="--qat $pre"; fi
        $(lim) $py -m qvit.cli train --out "$out/qat-$pre" --no-progress $flags --pretrained "$base" --ema-decay 0 \
          --epochs ${QVIT_QAT_EPOCHS:-15} --lr 1e-4 --warmup-epochs 1 --eval-every 5 ${QVIT_QAT_ARGS:-} 2>&1 \
          | tee "$out/qat-$pre.log" | grep -E "test_top1|QLoRA|error|Error" | tail -8
        r=${PIPESTATUS[0]}; [ "$r" = 0 ] || rc[qat]=$r
        [ "$r" = 0 ] && $(lim) $py -m qvit.cli study --model "$out/qat-$pre/model.safetensors" \
          --out "$out/qat-$pre/study" --no-ablation 2>&1 | grep "qvit study" | tail -12
        to_bf16 "$out/qat-$pre/model.safetensors"
      done ;;
    study)
      # PTQ variants + sensitivity ablation of the model trained by the train step (or $QVIT_STUDY_MODEL)
      model=${QVIT_STUDY_MODEL:-$out/train/model.safetensors}; [ -f "$model" ] || model=${model%.safetensors}-bf16.safetensors
      $(lim) $py -m qvit.cli study --model "$model" --out "$out/study" ${QVIT_STUDY_ARGS:-} 2>&1 \
        | tee "$out/study.log" | grep -v Warning | tail -40
      rc[study]=${PIPESTATUS[0]} ;;
    e2e)
      # end-to-end ViT-L/16: the five variants + timm / torch.compile / bitsandbytes / torchao, one run
      $(lim) $py -m qvit.profiling.bench_e2e --out "$out" --warm ${QVIT_E2E_WARM:-0} ${QVIT_E2E_ARGS:-} 2>&1 | tee "$out/e2e.log" | grep -E "bench_e2e:|Error" | tail -20
      rc[e2e]=${PIPESTATUS[0]} ;;
    demo)
      # issue 9: the demo's batch-1 latencies (its own request path) against the benchmark harness's timing
      # of the same models, on the committed CIFAR-10 baseline unless QVIT_DEMO_MODEL says otherwise
      $(lim) $py -m qvit.cli demo --check ${QVIT_DEMO_N:-200} --out "$out/demo_check.json" \
        --model "${QVIT_DEMO_MODEL:-results/h200-train-3/train/model-bf16.safetensors}" 2>&1 | tee "$out/demo_check.log" | tail -8
      rc[demo]=${PIPESTATUS[0]} ;;
    attr)
      # per-kernel attribution of the variants (torch.profiler, NVTX ranges, categories, launch gaps)
      $(lim) $py -m qvit.profiling.attribution --out "$out/attribution" ${QVIT_ATTR_ARGS:-} 2>&1 | tee "$out/attribution.log" | tail -14
      rc[attr]=${PIPESTATUS[0]} ;;
    ncu)
      # Nsight Compute Speed-of-Light of one launch of each main kernel; never touches the clocks
      if command -v ncu >/dev/null; then
        $(lim) ncu --clock-control none --nvtx --nvtx-include "profile/" --section SpeedOfLight --csv \
          $py -m qvit.profiling.ncu_kernels > "$out/ncu_sol.csv" 2> "$out/ncu.log"
        rc[ncu]=$?; echo "ncu: rc=${rc[ncu]}, $(grep -c '"' "$out/ncu_sol.csv" 2>/dev/null) csv lines"; tail -3 "$out/ncu.log"
      else
        echo "ncu: not installed on this machine; no Nsight Compute numbers"; rc[ncu]=0
      fi ;;
    sanitize)
      # compute-sanitizer memcheck and racecheck over one launch of every CUDA kernel config (tools/sanitize_cuda.py)
      if command -v compute-sanitizer >/dev/null; then
        rc[sanitize]=0
        for tool in memcheck racecheck; do
          $(lim) compute-sanitizer --tool $tool --error-exitcode 9 $py tools/sanitize_cuda.py > "$out/$tool.log" 2>&1 \
            || rc[sanitize]=$?
          echo "$tool: $(grep -E 'launches ran|SUMMARY' "$out/$tool.log" | tr '\n' ' ')"
        done
      else
        echo "sanitize: compute-sanitizer is not installed on this machine"; rc[sanitize]=0
      fi ;;
    ncu-gemm)
      # Nsight Compute of the CUDA W8A8 GEMM's tile configs beside the Triton kernel at M = 197, with the warp
      # stall reasons (tools/ncu_cuda_gemm.py; `python tools/ncu_table.py` turns the CSV into a table)
      if command -v ncu >/dev/null; then
        $(lim) ncu --clock-control none --nvtx --nvtx-include "profile/" --section SpeedOfLight --section WarpStateStats \
          --section LaunchStats --section Occupancy --section SchedulerStats \
          --metrics 'regex:smsp__average_warps_issue_stalled_.*_per_issue_active\.ratio' --csv \
          $py tools/ncu_cuda_gemm.py > "$out/ncu_gemm.csv" 2> "$out/ncu_gemm.log"
        rc[ncu]=$?; echo "ncu-gemm: rc=${rc[ncu]}"; tail -2 "$out/ncu_gemm.log"
      else
        echo "ncu-gemm: ncu is not installed on this machine"; rc[ncu]=0
      fi ;;
    bench)
      CUDA_VISIBLE_DEVICES=${gpus[0]:-${CUDA_VISIBLE_DEVICES:-}} $(lim) $py -m qvit.profiling.bench_kernels --out "$out" \
        --warm $warm ${QVIT_BENCH_ARGS:-} 2>&1 | tee "$out/bench.log" | tail -60
      rc[bench]=${PIPESTATUS[0]}
      wait_shards ;;
    *) echo "unknown step $step (install tests bench train study qat e2e demo attr ncu ncu-gemm sanitize)"; exit 2 ;;
  esac
done
wait_shards
(cd "$tcache" && find . -name '*.autotune.json' | tar czf - -T - ) > "$out/triton-autotune.tgz" 2>/dev/null
# what is left: the fp32 model of the train step (kept above for the study/qat steps) as bf16 too
to_bf16 "$out"/*/model.safetensors
$py - "$out" "$t_install" "${rc[install]:-}" "${rc[tests]:-}" "${rc[bench]:-}" "${rc[train]:-}" "${rc[study]:-}" "${rc[qat]:-}" "${rc[e2e]:-}" "${rc[attr]:-}" "${rc[ncu]:-}" "${rc[demo]:-}" "${rc[sanitize]:-}" <<'PY'
import json, os, sys, xml.etree.ElementTree as ET
out, t_install, rc_i, rc_t, rc_b, rc_tr, rc_st, rc_q, rc_e, rc_a, rc_n, rc_d, rc_s = sys.argv[1:]
s = {"install_rc": rc_i or None, "install_seconds": int(t_install), "tests_rc": rc_t or None, "bench_rc": rc_b or None,
     "train_rc": rc_tr or None, "study_rc": rc_st or None, "qat_rc": rc_q or None, "e2e_rc": rc_e or None, "attr_rc": rc_a or None, "ncu_rc": rc_n or None,
     "demo_rc": rc_d or None, "sanitize_rc": rc_s or None}
try:
    import torch
    s.update(card=torch.cuda.get_device_name(0), torch=torch.__version__, cuda=torch.version.cuda)
except Exception as e:
    s["card"] = f"unknown ({e})"
try:
    import triton; s["triton"] = triton.__version__
except Exception:
    pass
s["commit"] = os.environ.get("QVIT_COMMIT") or (open(".gpu/commit").read().strip() if os.path.exists(".gpu/commit") else None)
try:
    from qvit import _ext; s["cuda_ext"] = _ext.load_error() or "loaded"
except Exception as e:
    s["cuda_ext"] = f"import failed: {e}"
import glob
xs = sorted(glob.glob(os.path.join(out, "gpu_tests*.xml")))  # one file, or one per shard
if xs:
    s["tests"] = dict.fromkeys(("tests", "failures", "errors", "skipped"), 0)
    s["failed_tests"] = []
    s["test_shards"] = len(xs)
    for x in xs:
        r = ET.parse(x).getroot(); ts = r if r.tag == "testsuite" else r.find("testsuite")
        for k in s["tests"]:
            s["tests"][k] += int(ts.get(k, 0))
        s["failed_tests"] += [f"{c.get('classname')}::{c.get('name')}" for c in ts.iter("testcase")
                              if c.find("failure") is not None or c.find("error") is not None]
    s["tests"]["passed"] = s["tests"]["tests"] - s["tests"]["failures"] - s["tests"]["errors"] - s["tests"]["skipped"]
s["passed"] = all(v in (None, "", "0") for v in (rc_i, rc_t, rc_b, rc_tr, rc_st, rc_q, rc_e, rc_a, rc_n, rc_d, rc_s))
json.dump(s, open(os.path.join(out, "gpu_summary.json"), "w"), indent=1)
print(json.dumps(s))
PY
