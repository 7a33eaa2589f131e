"""The study's variants, defined once: `qvit study` (accuracy), `profiling/bench_e2e.py` (speed, size),
`profiling/attribution.py` (per-kernel time) and `qvit demo` all build them from this table.

name -> (quantization preset or None, attention backend, int8 Q/K inside qvit's attention,
format of the kept layers). The kept layers (head, first and last blocks) run W8A8 in the quantized
variants: that is what brings ViT-L/16's 4-bit file to 0.28x of bf16 (results/sizes-vit-large); the
"kept float" row shows what the higher precision there is worth.
"""
KEEP = ("head", "blocks.0.", "blocks.-1.")

VARIANTS = {
    "1 bf16": (None, "sdpa", False, "float"),
    "2 4bit+qvit-attn": ("w4a8p", "qvit", True, "int8"),
    "3 8bit+qvit-attn": ("w8a8", "qvit", True, "int8"),
    "4 4bit+sdpa-noflash": ("w4a8p", "sdpa-noflash", False, "int8"),
    "5 8bit+sdpa-noflash": ("w8a8", "sdpa-noflash", False, "int8"),
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
    # ... with GELU's tanh form where fc1's epilogue writes fc2's fp8 input (QuantConfig.gelu_tanh)
    "x fp8s2t+qvit-attn-fp16qk": ("fp8s2t", "qvit", False, "int8"),
    # 4-bit weights on the e4m3 grid (power-of-two group scales, QuantConfig weight='int4', act='fp8') with fp8s2t's
    # activations and GELU: the 4-bit model on fp8s2t's GEMMs
    "x 4bit-fp8s2t+qvit-attn-fp16qk": ("w4f8s2t", "qvit", False, "int8"),
    # the same two with Q/K quantized to int8 inside qvit's attention, and with SDPA (FLASH disabled) instead
    "x fp8s2t+qvit-attn": ("fp8s2t", "qvit", True, "int8"),
    "x 4bit-fp8s2t+qvit-attn": ("w4f8s2t", "qvit", True, "int8"),
    "x fp8s2t+sdpa-noflash": ("fp8s2t", "sdpa-noflash", False, "int8"),
    "x 4bit-fp8s2t+sdpa-noflash": ("w4f8s2t", "sdpa-noflash", False, "int8"),
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
FOUR_BIT = VARIANTS["2 4bit+qvit-attn"][0]  # the study's 4-bit preset (QAT, ablation, exports)
MAIN = tuple(k for k in VARIANTS if k[0].isdigit())
