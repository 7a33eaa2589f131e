#!/usr/bin/env bash
# session 14, call 3: 2 x H200, one lane per GPU. The fp8 static-output kernels now write their scale vector
# themselves (no fill kernel after fc1 and after the attention: 7 launches per block instead of 9).
#   lane A (GPU 0): GPU tests of the three changed epilogues; e2e batch 1 / 256 of the fp8 rows and the study's int8
#                   rows with timm bf16 and bitsandbytes (NF4, LLM.int8) in the same run
#   lane B (GPU 1): GPU study (CIFAR-10 test set) of fp8s2t / w4f8s2t with int8 Q/K attention and with SDPA; then
#                   timm bf16, timm + torch.compile and torchao int8-dynamic (+ compile) in one e2e run
set -u
. tools/device_env.sh
mkdir -p $OUT/r/A/tests $OUT/r/B
export TRITON_CACHE_AUTOTUNING=1
(
  export CUDA_VISIBLE_DEVICES=0
  TRITON_CACHE_AUTOTUNING=0 timeout $(( start + 150 - $(date +%s) )) python3 -m pytest -m gpu tests/test_gpu.py -q -p no:cacheprovider \
    --tb=short -rA -k "fp8_static_out or gelu_tanh or attention_fp8_static" > $OUT/r/A/tests/gpu_tests.log 2>&1; echo "A tests rc=$? at $(el)"
  timeout $(( start + ${END_S:-555} - $(date +%s) )) python3 -m qvit.profiling.bench_e2e --out $OUT/r/A/e2e --only qvit,timm,bnb \
    --batches 1 256 --iters 30 --warm 12 --variants "x fp8s2t+qvit-attn-fp16qk" "x 4bit-fp8s2t+qvit-attn-fp16qk" \
    "3 8bit+qvit-attn" "2 4bit+qvit-attn" > $OUT/r/A/e2e.log 2>&1; echo "A e2e rc=$? at $(el)"
) > $OUT/r/A/lane.log 2>&1 &
pa=$!
(
  export CUDA_VISIBLE_DEVICES=1
  timeout $(( start + 330 - $(date +%s) )) python3 -m qvit.cli study --model results/h200-train-3/train/model-bf16.safetensors \
    --device cuda --no-ablation --data-root datasets/cifar10 --out $OUT/r/B/study --variants "x fp8s2t+sdpa-noflash" \
    "x 4bit-fp8s2t+sdpa-noflash" "x fp8s2t+qvit-attn" "x 4bit-fp8s2t+qvit-attn" > $OUT/r/B/study.log 2>&1; echo "B study rc=$? at $(el)"
  timeout $(( start + ${END_S:-555} - $(date +%s) )) python3 -m qvit.profiling.bench_e2e --out $OUT/r/B/e2e --only timm,compile,torchao \
    --batches 1 256 --iters 20 > $OUT/r/B/e2e.log 2>&1; echo "B e2e rc=$? at $(el)"
) > $OUT/r/B/lane.log 2>&1 &
pb=$!
wait $pa $pb
cat $OUT/r/A/lane.log $OUT/r/B/lane.log
grep -E "^(PASSED|FAILED)|^E  |passed|failed" $OUT/r/A/tests/gpu_tests.log | head -30 | cut -c1-200
grep -hE "bench_e2e:|^warm" $OUT/r/A/e2e.log $OUT/r/B/e2e.log | sort -u | cut -c1-300
grep "qvit study" $OUT/r/B/study.log | cut -c1-200
cp .gpu/s14c3.sh $OUT/r/; cd $OUT && tar czf results.tgz r && rm -rf r
