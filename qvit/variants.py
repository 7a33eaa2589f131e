"""The study's variants, defined once: `qvit study` (accuracy), `profiling/bench_e2e.py` (speed, size),
`profiling/attribution.py` (per-kernel time) and `qvit demo` all build them from this table.

name -> (quantization preset or None, attention backend, int8 Q/K inside qvit's attention,
format of the kept layers). The kept layers (head, first and last blocks) run W8A8 in the quantized
variants: that is what brings ViT-L/16's 4-bit file to 0.28x of bf16 (results/sizes-vit-large); the
"kept float" row shows what the higher precision there is worth.

The study's 8-bit rows run FP8 e4m3 (fp8s2t: per-channel weights, static calibrated activation scales written by
the previous kernel's epilogue, GELU's tanh form into fc2's fp8 input) and its 4-bit rows the same GEMMs on int4
weights with power-of-two group-32 scales, expanded exactly to e4m3 (w4f8s2t). Session 14 measured them against
the int8 pipeline (W8A8 / w4a8p, the study's rows until then, kept as the "x ...-int8" rows) on the H200, same
model and protocol: CIFAR-10 top-1 91.15 / 90.92 against 91.11 / 90.96 (bf16 91.09; results/h200-gpu-14/call1-study),
ViT-L/16 at batch 256 1.73x / 1.72x timm bf16 against 1.39x / 1.38x (call3, same run). Q/K stay fp16 in qvit's
attention there: int8 Q/K measured slower (1.58x against 1.63x at batch 256, 1.112 against 1.050 ms at batch 1,
call2) at the same accuracy (91.11 / 90.91, call3). QAT, the layerwise ablation and exports use the int8
pipeline's 4-bit preset (FOUR_BIT): fake quantization has no fp8 grid.
"""
KEEP = ("head", "blocks.0.", "blocks.-1.")

VARIANTS = {
    "1 bf16": (None, "sdpa", False, "float"),
    "2 4bit+qvit-attn": ("w4f8s2t", "qvit", False, "int8"),
    "3 8bit+qvit-attn": ("fp8s2t", "qvit", False, "int8"),
    "4 4bit+sdpa-noflash": ("w4f8s2t", "sdpa-noflash", False, "int8"),
    "5 8bit+sdpa-noflash": ("fp8s2t", "sdpa-noflash", False, "int8"),
    # the int8 pipeline: W8A8 (per-channel int8 weights, per-token int8 activations) and w4a8p (int4 with integer
    # group scales, expanded to int8), int8 Q/K in qvit's attention
    "x 4bit-int8+qvit-attn": ("w4a8p", "qvit", True, "int8"),
    "x 8bit-int8+qvit-attn": ("w8a8", "qvit", True, "int8"),
    "x 4bit-int8+sdpa-noflash": ("w4a8p", "sdpa-noflash", False, "int8"),
    "x 8bit-int8+sdpa-noflash": ("w8a8", "sdpa-noflash", False, "int8"),
    "x 4bit+qvit-attn, kept float": ("w4a8p", "qvit", True, "float"),
    "x bf16+qvit-attn": (None, "qvit", False, "float"),
    "x bf16+sdpa-flash": (None, "sdpa-flash", False, "float"),
    "x w4a16-int4+sdpa": ("w4a16", "sdpa", False, "int8"),
    "x nf4+sdpa": ("nf4", "sdpa", False, "int8"),
    "x 8bit+qvit-attn-fp16qk": ("w8a8", "qvit", False, "int8"),
    "x fp8+sdpa-noflash": ("fp8", "sdpa-noflash", False, "int8"),
    "x fp8+qvit-attn": ("fp8", "qvit", True, "int8"),
    "x fp8+qvit-attn-fp16qk": ("fp8", "qvit", False, "int8"),
    # fc2's input at a static scale calibrated on training images, written in fp8 by fc1's epilogue
    "x fp8s+qvit-attn-fp16qk": ("fp8s", "qvit", False, "int8"),
    "x fp8s+sdpa-noflash": ("fp8s", "sdpa-noflash", False, "int8"),
    # ... and proj's input too, written in fp8 by qvit's attention kernel
    "x fp8s2+qvit-attn-fp16qk": ("fp8s2", "qvit", False, "int8"),
    # ... with GELU's tanh form where fc1's epilogue writes fc2's fp8 input (QuantConfig.gelu_tanh): rows 3 and 5;
    # rows 2 and 4 are the 4-bit model on these GEMMs (w4f8s2t). Here with Q/K quantized to int8 in qvit's attention
    "x fp8s2t+qvit-attn": ("fp8s2t", "qvit", True, "int8"),
    "x 4bit-fp8s2t+qvit-attn": ("w4f8s2t", "qvit", True, "int8"),
    # every block linear's input at a static calibrated scale (fp8s4t / w4f8s4t: QuantConfig.fp8_static_norm), so
    # each LayerNorm can run inside the GEMM that reads it (QVIT_NORM_FUSED=1, measured slower: results/h200-gpu-27);
    # fp16 Q/K in qvit's attention, as rows 2 and 3
    "x fp8s4t+qvit-attn": ("fp8s4t", "qvit", False, "int8"),
    "x 4bit-fp8s4t+qvit-attn": ("w4f8s4t", "qvit", False, "int8"),
    # 4-bit with float group scales on the direct W4A8 kernel (int4 expanded to int8 inside the GEMM)
    "x w4a8+qvit-attn": ("w4a8", "qvit", True, "int8"),
    "x w4a8+sdpa-noflash": ("w4a8", "sdpa-noflash", False, "int8"),
    # fc1's epilogue quantizes fc2's input (per token and 128 channels): one kernel and one bf16 round trip
    # fewer per block (QuantConfig.act_group)
    "x 8bit-g128+sdpa-noflash": ("w8a8g", "sdpa-noflash", False, "int8"),
    # ... and qvit's attention writing proj's int8 input (per token and head) from its epilogue
    "x 8bit-g128+qvit-attn-fp16qk": ("w8a8g", "qvit", False, "int8"),
    "x 8bit-g128+qvit-attn": ("w8a8g", "qvit", True, "int8"),
    "x 4bit-g128+sdpa-noflash": ("w4a8pg", "sdpa-noflash", False, "int8"),
}
# the 4-bit preset of QAT, the layerwise ablation and exports: the int8 pipeline's (prepare_qat refuses the fp8
# formats: fake_quant_weight has no e4m3 grid)
FOUR_BIT = VARIANTS["x 4bit-int8+qvit-attn"][0]
MAIN = tuple(k for k in VARIANTS if k[0].isdigit())
