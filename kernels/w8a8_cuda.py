"""W8A8 linear on the hand-written CUDA kernel (csrc/w8a8_gemm.cu), the same math and epilogue as the Triton kernel:

    y[m, n] = (sum_k xq[m, k] * wq[n, k]) * x_scale[m] * w_scale[n]  (+ bias[n])  (-> gelu)  (+ residual[m, n])

xq int8 (M, K), K a multiple of 16; x_scale float32 (M,) (per token; group-wise scales are a Triton-only path);
wq int8 (N, K); w_scale float32 (N,); bias float32 (N,) or None; residual (M, N) in the output dtype or None.
The int32 dot is exact and split-K sums int32 partials, so every tile shape and split gives the same bits.
xq and wq may instead both be float8_e4m3fn (sm_90 wgmma configs only): float32 accumulators, the products summed
by the tensor cores in place over each K slice (cuBLAS's "fast accumulation", as `w8a8_linear_fp8_fast_accum`),
the slices' float32 partials added in a fixed order; reference `qvit.kernels.quant.fp8_matmul_ref`.

Two kernels behind one op: on sm_90 (H100/H200) the warpgroup-MMA kernel (WGMMA_CONFIGS: `wgmma.mma_async` int8
from 128-byte-swizzled shared memory, one warpgroup per 64 x BN tile, BN down to 32 so that M = 197 fills the
132 SMs, or per 208 x 64 / 112 x 64 tile with the tokens in the MMA's N (the weights its A operand), so that at
M = 197 each weight tile has one reader (208 x 128: two warpgroups sharing the tokens' tile); split-K inside a
(1, 1, splits) thread-block cluster reduced through distributed shared memory); on
sm_80+ the `mma.sync` kernel (split-K through atomic int32 adds into an (M, N) workspace with one counter per
tile, both zero between launches and kept per (device, stream)).

The tile config and the number of K slices are picked per shape by timing every candidate once as a CUDA graph
of 20 launches (at the first call outside a graph capture; a capture with no timing yet takes a heuristic).
`prefer_cuda` is the `auto` linear backend's per-shape choice between this kernel and the Triton one.

Reference: `qvit.kernels.quant.int8_matmul_ref` (exact integer dot in float64).

Measured (NVIDIA H200, graphed medians, same run as the baselines: results/h200-gpu-7, NOTES.md session 7):
at M = 197 qkv / proj / fc1 / fc2 6.3 / 4.9 / 7.2 / 8.1 us against Triton W8A8 5.1 / 3.9 / 5.2 / 8.6 and cuBLAS
bf16 5.3 / 4.5 / 6.1 / 9.1: faster than both on fc2 only (K = 4096, split-K 2 in a cluster); 1.3-1.7x the
Triton time at M = 12,608. The `auto` backend's mix ran ViT-L/16 batch 1 graphed in 1.191 ms against 1.254 on
Triton alone and 1.372 for timm bf16 (8-bit + qvit attention). The first version (mma.sync, 64-byte stages,
h200-gpu-6) took 14.8-25.5 us at M = 197.
"""
from __future__ import annotations

import contextlib
import ctypes
import os

import torch

from qvit.kernels._op import fast_custom_op
from qvit.kernels.quant import check_gemm_operands

# (BLOCK_M, BLOCK_N) of the kernel's tile configs, by index (csrc/w8a8_gemm_kernels.cuh QVIT_W8A8_CONFIGS, which also
# gives each its K stage width, warps and pipeline depth)
CONFIGS = ((64, 64), (64, 128), (32, 128), (32, 64), (64, 64), (128, 128),  # mma.sync (sm_80+)
           (64, 32), (64, 64), (64, 96), (64, 128), (64, 32), (64, 64),  # wgmma (sm_90a: QVIT_W8A8_WGMMA_CONFIGS)
           (64, 32), (64, 64), (64, 96), (64, 32),  # wgmma, MMAs overlapped with the next step's wait
           (208, 64), (208, 64), (208, 64), (112, 64),  # wgmma, tokens in the MMA's N: one CTA per weight tile
           (208, 128), (208, 128),  # the same with two warpgroups sharing the token tile
           (64, 32), (64, 64), (64, 32), (64, 64),  # wgmma, 256-byte K stages (two swizzled sub-tiles)
           (64, 32), (64, 64), (64, 32), (64, 64),  # wgmma, operands by TMA into an mbarrier pipeline
           (32, 64))  # mma.sync, 256-byte K stages
WGMMA_CONFIGS = range(6, 30)  # their split-K runs in a thread-block cluster: at most 8 slices, no workspace
_MAX_CLUSTER = 8
# Opt-in (QVIT_CUDA_OPT_IN=1): the tokens-in-N configs (16-21) and the TMA-fed ones (26-29) join the tuner's
# candidates, and `auto` times fp8 layers on this kernel. All are GPU-tested (every config and split, int8 and e4m3);
# 16-21 and the e4m3 form measured slower than the older tiles / Triton's fast-accum kernel at every ViT-L M = 197
# shape on an H100 (results/h200-gpu-19), and 26-29 (operands by TMA into an mbarrier pipeline: no cp.async, no CTA
# barrier per K step) slower than the cp.async config of the same tile (results/h200-gpu-20), so by default the tuner
# does not spend time on them. Pinned configs and explicit fp8 calls run regardless (the GPU tests and the sanitizer
# pin them). The 256-byte-stage configs (22-25 wgmma, 30 mma.sync) are in the default set: a 256-byte-stage wgmma
# config was the tuner's first choice at all four M = 197 shapes on the H100 (results/h200-gpu-20).
OPT_IN_CONFIGS = tuple(range(16, 22)) + tuple(range(26, 30))
SPLITS = (1, 2, 3, 4, 6, 8, 12, 16)
_BK = 64  # K bytes: split-K slices are whole multiples of this unit, whatever the config's stage width
_MAX_COUNTERS = 1 << 15  # output tiles a split-K launch may have (split-K only pays when tiles are few)
_MAX_SPLIT_MN = 1 << 23  # M * N a split-K launch may have: its int32 workspace stays <= 32 MiB per stream
_OUT_CODE = {torch.float16: 0, torch.bfloat16: 1, torch.float32: 2}
_counters: dict = {}
_choice: dict = {}
# Fixed epilogues (csrc/w8a8_gemm_epi.inc): where a launch matches one -- bfloat16 output, a wgmma config with tokens
# in M (FIXED_EPI_CONFIGS), N % 4 == 0 and even strides, a bias, and one K slice with the residual or GELU or neither,
# or split-K with the residual -- the kernel instantiated for that epilogue runs instead of the one that reads the
# choices at run time (the same bits; 520-1,440 SASS instructions instead of 1,776-2,104, tools/sass_cuda.py; 0.6-1.3
# us faster at every M = 197 ViT-L shape on an H100, results/h200-gpu-21). `runtime_epilogue()` turns it off, for
# the tests that compare the two and the benchmark that times both.
FIXED_EPI_CONFIGS = tuple(c for c in WGMMA_CONFIGS if CONFIGS[c][0] == 64)
_fixed_epi = [True]


def _opt_in() -> bool:
    v = os.environ.get("QVIT_CUDA_OPT_IN", "0")
    if v not in ("0", "1"):
        raise ValueError(f"QVIT_CUDA_OPT_IN must be 0 or 1, got {v!r}")
    return v == "1"


@contextlib.contextmanager
def runtime_epilogue():
    """Inside: every launch runs the run-time epilogue kernel, never a fixed one (the tuner keeps separate
    choices for the two)."""
    prev = _fixed_epi[0]
    _fixed_epi[0] = False
    try:
        yield
    finally:
        _fixed_epi[0] = prev


def fixed_epilogue(m: int, n: int, cfg: int, splits: int, out_dtype, bias: bool, residual: bool, gelu: bool,
                   pair: bool = True, res_vec: bool = True) -> bool:
    """Whether a launch of these arguments runs a fixed-epilogue kernel (the rule of csrc/ops.cpp; pair: the output
    and residual row strides and pointers even; res_vec: the residual's row stride a multiple of 4 elements and its
    pointer 8-byte aligned, for the unsplit residual epilogue's staging copies)."""
    return (_fixed_epi[0] and out_dtype == torch.bfloat16 and pair and n % 4 == 0 and bias and cfg in FIXED_EPI_CONFIGS
            and ((splits == 1 and not residual) or (splits == 1 and residual and res_vec and not gelu)
                 or (splits > 1 and residual and not gelu)))


def shape_key(m: int, n: int, k: int, out_dtype, gelu: bool, residual: bool, bias: bool, device_index: int, qdtype,
              fixed: bool | None = None) -> tuple:
    """The key the tuner (`_choice`, `_tune_times`) and `prefer_cuda` keep a shape's choice under; fixed: whether
    fixed epilogues are allowed (default: as now, outside or inside `runtime_epilogue()`)."""
    return (m, n, k, out_dtype, bool(gelu), bool(residual), bool(bias), device_index, qdtype,
            _fixed_epi[0] if fixed is None else bool(fixed))


def _normalize_splits(k: int, splits: int) -> int:
    """The split count the kernel runs for K (no empty K slice): ceil(KT / ceil(KT / splits))."""
    kt = -(-k // _BK)
    s = max(1, min(splits, kt))
    per = -(-kt // s)
    return -(-kt // per)


def _tiles(m: int, n: int, cfg: int) -> int:
    bm, bn = CONFIGS[cfg]
    return -(-m // bm) * -(-n // bn)


def configs_for(device=None) -> list[int]:
    """The tile configs the kernel can run on this device: the wgmma ones need compute capability 9.0 (sm_90a)."""
    cap = torch.cuda.get_device_capability(device)
    return [c for c in range(len(CONFIGS)) if c not in WGMMA_CONFIGS or cap == (9, 0)]


def candidates(m: int, n: int, k: int, configs=None, fp8: bool = False) -> list[tuple[int, int]]:
    """(config, splits) pairs worth timing for this shape (configs: the device's, default the mma.sync ones;
    fp8: only the wgmma configs, the ones with an e4m3 form)."""
    out = []
    opt_in = _opt_in()
    for cfg in (configs if configs is not None else [c for c in range(len(CONFIGS)) if c not in WGMMA_CONFIGS]):
        if (fp8 and cfg not in WGMMA_CONFIGS) or (cfg in OPT_IN_CONFIGS and not opt_in):
            continue
        tiles = _tiles(m, n, cfg)
        for s in SPLITS:
            s2 = _normalize_splits(k, s)
            if s2 != s or (s > 1 and tiles * s > 8 * 132 * 4):
                continue
            if s > 1 and (s > _MAX_CLUSTER if cfg in WGMMA_CONFIGS else (tiles > _MAX_COUNTERS or m * n > _MAX_SPLIT_MN)):
                continue
            out.append((cfg, s))
    return out


def heuristic(m: int, n: int, k: int, fp8: bool = False) -> tuple[int, int]:
    """Used only inside a CUDA-graph capture before any timing: enough CTAs for ~2 per SM of a 132-SM GPU
    (fp8: the 64 x 32 wgmma tile, split-K capped by its cluster)."""
    if fp8:
        cfg, top = WGMMA_CONFIGS[0], _MAX_CLUSTER
    else:
        cfg, top = (0 if m > 32 else 3), 16
    tiles = _tiles(m, n, cfg)
    s = 1
    while (tiles * s < 264 and s < top and _normalize_splits(k, s * 2) == s * 2 and tiles <= _MAX_COUNTERS
           and m * n <= _MAX_SPLIT_MN):
        s *= 2
    return cfg, s


def _validate(xq, x_scale, wq, w_scale, bias, residual, out_dtype):
    op = "w8a8_linear_cuda"
    qdtype = torch.float8_e4m3fn if isinstance(xq, torch.Tensor) and xq.dtype == torch.float8_e4m3fn else torch.int8
    m, k, n = check_gemm_operands(op, xq, x_scale, wq, w_scale, qdtype)
    if k % 16:
        raise ValueError(f"{op}: K={k} must be a multiple of 16 (the kernel loads 16-byte chunks)")
    if x_scale.shape != (m,):
        raise ValueError(f"{op}: x_scale must be ({m},) (per token; group-wise scales run on the Triton backend), "
                         f"got {tuple(x_scale.shape)}")
    if w_scale.shape != (n,):
        raise ValueError(f"{op}: w_scale must be ({n},), got {tuple(w_scale.shape)}")
    if bias is not None and (bias.shape != (n,) or bias.dtype != torch.float32):
        raise ValueError(f"{op}: bias must be float32 ({n},), got {bias.dtype} {tuple(bias.shape)}")
    if residual is not None and (residual.shape != (m, n) or residual.dtype != out_dtype):
        raise ValueError(f"{op}: residual must be {out_dtype} ({m}, {n}), got {residual.dtype} {tuple(residual.shape)}")
    if out_dtype not in _OUT_CODE:
        raise TypeError(f"{op}: out_dtype must be one of {tuple(_OUT_CODE)}, got {out_dtype}")
    for name, t in (("xq", xq), ("x_scale", x_scale), ("wq", wq), ("w_scale", w_scale), ("bias", bias),
                    ("residual", residual)):
        if t is not None and not t.is_cuda:
            raise ValueError(f"{op}: {name} must be a CUDA tensor, got {t.device}")
    devs = {t.device for t in (xq, x_scale, wq, w_scale, bias, residual) if t is not None}
    if len(devs) != 1:
        raise ValueError(f"{op}: all tensors must be on one device, got {sorted(map(str, devs))}")
    if xq.stride(1) != 1 or wq.stride(1) != 1:
        raise ValueError(f"{op}: xq and wq must be contiguous along K")
    if xq.data_ptr() % 16 or wq.data_ptr() % 16 or xq.stride(0) % 16 or wq.stride(0) % 16:
        raise ValueError(f"{op}: rows of xq and wq must start on 16-byte boundaries")
    for name, t in (("x_scale", x_scale), ("w_scale", w_scale), ("bias", bias)):
        if t is not None and not t.is_contiguous():
            raise ValueError(f"{op}: {name} must be contiguous")


def _split_buffers(device: torch.device, mn: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(workspace, counters) for split-K on the current stream: an int32 (>= M * N) workspace and one counter per
    output tile, zero between launches (the kernel's last CTA per tile re-zeroes what it used). Kept per (device,
    stream) so that launches on one stream, which run in order, share them; grown when a larger M * N comes."""
    stream = torch.cuda.current_stream(device).cuda_stream
    key = (device.index, stream)
    got = _counters.get(key)
    if got is None or got[0].numel() < mn:
        ws = torch.zeros(max(mn, got[0].numel() if got else 0), dtype=torch.int32, device=device)
        cnt = got[1] if got else torch.zeros(_MAX_COUNTERS, dtype=torch.int32, device=device)
        got = _counters[key] = (ws, cnt)
    return got


def _run(xq, x_scale, wq, w_scale, bias, residual, gelu, y, cfg, splits):
    from qvit import _ext
    lib = _ext.lib()
    m, k = xq.shape
    n = wq.shape[0]
    part = cnt = None
    if splits > 1 and cfg not in WGMMA_CONFIGS:  # the wgmma configs reduce their K slices inside a cluster
        if _tiles(m, n, cfg) > _MAX_COUNTERS or m * n > _MAX_SPLIT_MN:
            raise ValueError(f"w8a8_linear_cuda: split-K needs at most {_MAX_COUNTERS} output tiles and M * N <= "
                             f"{_MAX_SPLIT_MN}, got {_tiles(m, n, cfg)} tiles and M * N = {m * n}; use splits=1")
        part, cnt = _split_buffers(xq.device, m * n)
    stream = torch.cuda.current_stream(xq.device).cuda_stream
    rc = lib.qvit_w8a8_gemm(
        _OUT_CODE[y.dtype], cfg, splits, xq.data_ptr(), x_scale.data_ptr(), wq.data_ptr(), w_scale.data_ptr(),
        bias.data_ptr() if bias is not None else None, residual.data_ptr() if residual is not None else None,
        y.data_ptr(), part.data_ptr() if part is not None else None, cnt.data_ptr() if cnt is not None else None,
        m, n, k, xq.stride(0), wq.stride(0), residual.stride(0) if residual is not None else 0, y.stride(0),
        int(bool(gelu)), int(xq.dtype == torch.float8_e4m3fn), int(_fixed_epi[0]), ctypes.c_void_p(stream))
    _ext.check(rc, "w8a8_linear_cuda")


_TUNE_REPS = 20
_RETIME_TOP, _RETIME_ROUNDS = 4, 3  # the tuner's second pass: its fastest candidates re-timed in alternation
_tune_streams: dict = {}
_tune_times: dict = {}  # {shape key: {(config, splits): ms of _TUNE_REPS graphed launches}}: the tuner's table
_tune_retimed: dict = {}  # {shape key: the (config, splits) whose table entry is the second pass's}


def _graph_times(dev, fns: dict, rounds: int = 1) -> dict:
    """{name: ms} for each callable run as a CUDA graph of _TUNE_REPS calls, on one side stream per device (so
    split-K buffers made by the warm-up call, outside the capture, are reused), the fastest of two replays. With
    rounds > 1 every graph is captured first, then replayed `rounds` times in turn (two timed replays each, the
    fastest of all kept): a candidate timed alone, seconds apart from the others, carries whatever the GPU's
    clock and L2 state were at that moment (h200-gpu-25: one config of fc1 at M = 197 timed 5.06-5.12 us in two
    processes and 5.44 in a third, where the tuner took a 5.31-us pick that then measured 5.51). Eager launches
    through Python take longer than the kernels at M = 197: event times of eager loops rank the host, not the
    kernels (session 7's tuner picked a 16.6-us config over a 7-us one that way)."""
    cur = torch.cuda.current_stream(dev)
    side = _tune_streams.get(dev.index)
    if side is None:
        side = _tune_streams[dev.index] = torch.cuda.Stream(dev)
    side.wait_stream(cur)
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    graphs, times = {}, {name: float("inf") for name in fns}

    def timed(name, g):
        for _ in range(2):
            start.record(side)
            g.replay()
            end.record(side)
            end.synchronize()
            times[name] = min(times[name], start.elapsed_time(end))

    with torch.cuda.stream(side):
        for name, fn in fns.items():
            fn()  # warm-up: autotuning, first-launch costs, this stream's split-K buffers
            g = torch.cuda.CUDAGraph()
            g.capture_begin()
            for _ in range(_TUNE_REPS):
                fn()
            g.capture_end()
            g.replay()
            if rounds == 1:
                timed(name, g)  # and released: one graph's memory pool alive at a time
            else:
                graphs[name] = g
        for _ in range(rounds if graphs else 0):
            for name, g in graphs.items():
                timed(name, g)
    graphs.clear()
    cur.wait_stream(side)
    return times


def _tune(key, args, m, n, k):
    """Time every candidate (config, splits) on these very tensors (_graph_times), then re-time the
    _RETIME_TOP fastest in alternation (_RETIME_ROUNDS rounds, their first-pass times replaced); remember and
    return the fastest."""
    dev = args[0].device
    fp8 = args[0].dtype == torch.float8_e4m3fn
    fns = {(cfg, s): (lambda cfg=cfg, s=s: _run(*args, cfg, s))
           for cfg, s in candidates(m, n, k, configs_for(dev), fp8)}
    times = _graph_times(dev, fns)
    top = sorted(times, key=times.get)[:_RETIME_TOP]
    if len(top) > 1:
        times.update(_graph_times(dev, {c: fns[c] for c in top}, _RETIME_ROUNDS))
    best = min(top, key=times.get)
    _choice[key] = best
    _tune_times[key] = times
    _tune_retimed[key] = set(top) if len(top) > 1 else set()
    return best


_prefer: dict = {}


def prefer_cuda(xq, x_scale, wq, w_scale, bias, residual, gelu, out_dtype) -> bool:
    """The `auto` linear backend's per-shape choice between the Triton W8A8 kernel and this one: both timed
    per shape (and epilogue) as CUDA graphs on these tensors (_graph_times, _RETIME_ROUNDS rounds in alternation),
    the faster remembered.
    False (Triton) where the CUDA kernel cannot run (no extension, per-group scales, not sm_90), inside a CUDA
    graph capture or torch.compile trace before a timing exists, and for M > 4096 (the large-M path is Triton's:
    h200-gpu-7 measured this kernel 1.3-1.7x slower there)."""
    if (xq.ndim != 2 or x_scale.ndim != 1 or not xq.is_cuda or xq.shape[1] % 16 or xq.shape[0] > 4096
            or xq.shape[0] == 0):
        return False
    m, k = xq.shape
    n = wq.shape[0]
    fp8 = xq.dtype == torch.float8_e4m3fn
    if fp8 and not _opt_in():
        return False  # the e4m3 form is opt-in: slower than the Triton kernel at M = 197 (OPT_IN_CONFIGS' note)
    if x_scale.shape != (m,) or xq.dtype not in (torch.int8, torch.float8_e4m3fn) or wq.dtype != xq.dtype:
        return False  # one scale for all tokens, or operands this kernel does not take: the Triton kernel's
    key = shape_key(m, n, k, out_dtype, gelu, residual is not None, bias is not None, xq.device.index, xq.dtype)
    got = _prefer.get(key)
    if got is not None:
        return got
    if torch.compiler.is_compiling() or torch.cuda.is_current_stream_capturing():
        return False
    from qvit import _ext
    if _ext.load_error() or torch.cuda.get_device_capability(xq.device) != (9, 0):
        _prefer[key] = False
        return False
    from qvit.kernels.w8a8_linear import w8a8_linear, w8a8_linear_fp8_fast_accum
    args = (xq, x_scale, wq, w_scale, bias, residual, gelu, out_dtype)
    triton = w8a8_linear_fp8_fast_accum if fp8 else w8a8_linear  # fp8: the same in-place accumulation
    times = _graph_times(xq.device, {"triton": lambda: triton(*args), "cuda": lambda: w8a8_linear_cuda(*args)},
                         _RETIME_ROUNDS)
    _prefer[key] = times["cuda"] < times["triton"]
    return _prefer[key]


def _fake(xq, x_scale, wq, w_scale, bias=None, residual=None, gelu=False, out_dtype=torch.float16, config=-1,
          splits=0):
    return xq.new_empty((xq.shape[0], wq.shape[0]), dtype=out_dtype)


@fast_custom_op("qvit::w8a8_linear_cuda", _fake)
def w8a8_linear_cuda(xq: torch.Tensor, x_scale: torch.Tensor, wq: torch.Tensor, w_scale: torch.Tensor,
                     bias: torch.Tensor | None = None, residual: torch.Tensor | None = None, gelu: bool = False,
                     out_dtype: torch.dtype = torch.float16, config: int = -1, splits: int = 0) -> torch.Tensor:
    """y = epilogue(xq @ wq^T) on the CUDA kernel; see the module docstring. config (index into CONFIGS) and
    splits (K slices) pin the launch; -1 / 0 let the per-shape tuner choose."""
    _validate(xq, x_scale, wq, w_scale, bias, residual, out_dtype)
    m, k = xq.shape
    n = wq.shape[0]
    if residual is not None and residual.stride(1) != 1:
        residual = residual.contiguous()
    y = torch.empty((m, n), dtype=out_dtype, device=xq.device)
    if m == 0:
        return y
    args = (xq, x_scale, wq, w_scale, bias, residual, gelu, y)
    key = shape_key(m, n, k, out_dtype, gelu, residual is not None, bias is not None, xq.device.index, xq.dtype)
    with torch.cuda.device(xq.device):
        cfg, s = _plan(args, key, config, splits)
        _run(*args, cfg, s)
    return y


def _plan(args, key, config, splits):
    """(tile config, splits): pinned by the caller, else remembered or timed for this shape (key[:3] = M, N, K)."""
    m, n, k = key[:3]
    fp8 = len(key) > 8 and key[8] == torch.float8_e4m3fn
    if config >= 0 or splits > 0:
        cfg = config if config >= 0 else heuristic(m, n, k, fp8)[0]
        if not 0 <= cfg < len(CONFIGS):
            raise ValueError(f"w8a8_linear_cuda: config={config} is not one of 0..{len(CONFIGS) - 1}")
        s = splits if splits > 0 else 1
        if _normalize_splits(k, s) != s:
            raise ValueError(f"w8a8_linear_cuda: splits={s} leaves an empty K slice at K={k} "
                             f"(use {_normalize_splits(k, s)})")
        if cfg in WGMMA_CONFIGS and s > _MAX_CLUSTER:
            raise ValueError(f"w8a8_linear_cuda: splits={s} exceeds {_MAX_CLUSTER} for the wgmma config {cfg} "
                             f"(its K slices meet in one thread-block cluster)")
        if fp8 and cfg not in WGMMA_CONFIGS:
            raise ValueError(f"w8a8_linear_cuda: config={cfg} has no float8_e4m3fn form; the wgmma configs "
                             f"{WGMMA_CONFIGS.start}..{WGMMA_CONFIGS.stop - 1} do")
        if args is not None and cfg not in configs_for(args[0].device):
            raise ValueError(f"w8a8_linear_cuda: config={cfg} is a wgmma config: it needs an sm_90 GPU, got "
                             f"compute capability {torch.cuda.get_device_capability(args[0].device)}")
    else:
        choice = _choice.get(key)
        if choice is None:
            choice = heuristic(m, n, k, fp8) if torch.cuda.is_current_stream_capturing() else _tune(key, args, m, n, k)
        cfg, s = choice
    return cfg, s
