"""Build script: maps the design card's folders onto the `qvit` namespace and builds csrc/.

The card's top-level folders become sub-packages of `qvit` so that nothing shadows a
well-known PyPI name (HF's `kernels` package, for one):

    kernels/   -> qvit.kernels      vit/       -> qvit.vit
    train/     -> qvit.train        profiling/ -> qvit.profiling

The CUDA extension `qvit._C` is built from csrc/ when a CUDA toolkit (nvcc) and a CUDA
build of torch are both present. It never looks at `torch.cuda.is_available()`: a build
machine without a GPU still builds it. QVIT_BUILD_CUDA=1 forces the build (and fails loudly
if it cannot), QVIT_BUILD_CUDA=0 skips it.
"""
import glob
import os
import sys

from setuptools import setup

PACKAGE_DIR = {
    "qvit": "qvit",
    "qvit.kernels": "kernels",
    "qvit.vit": "vit",
    "qvit.train": "train",
    "qvit.profiling": "profiling",
}


def _say(msg):
    # pip hides build output unless -v; stderr lines still reach the user on failure.
    print(f"qvit setup: {msg}", file=sys.stderr)


def cuda_extension():
    """Return ([ext], cmdclass) or ([], {}) with one line saying why it was skipped."""
    flag = os.environ.get("QVIT_BUILD_CUDA", "auto").strip().lower()
    if flag in ("0", "false", "no", "off"):
        _say("skipping the CUDA extension: QVIT_BUILD_CUDA=0")
        return [], {}
    force = flag in ("1", "true", "yes", "on")
    try:
        import torch
        from torch.utils.cpp_extension import CUDA_HOME, BuildExtension, CUDAExtension
    except ImportError as e:  # torch is a declared build requirement; this is a broken env
        if force:
            raise RuntimeError(f"QVIT_BUILD_CUDA=1 but torch cannot be imported: {e}") from e
        _say(f"skipping the CUDA extension: torch is not importable at build time ({e})")
        return [], {}
    reason = None
    if torch.version.cuda is None:
        reason = f"torch {torch.__version__} is a CPU-only build"
    elif CUDA_HOME is None or not os.path.exists(os.path.join(CUDA_HOME, "bin", "nvcc")):
        reason = "no CUDA toolkit found (nvcc not on CUDA_HOME or PATH)"
    else:
        # torch's CUDA headers include the toolkit's library headers: a bare nvcc is not enough
        incs = [os.path.join(CUDA_HOME, "include"), os.path.join(CUDA_HOME, "targets", "x86_64-linux", "include"),
                os.path.join(CUDA_HOME, "targets", "sbsa-linux", "include")]
        incs += [p for p in os.environ.get("CPATH", "").split(os.pathsep) if p]
        missing = [h for h in ("cuda_runtime.h", "cusparse.h", "cublas_v2.h")
                   if not any(os.path.exists(os.path.join(d, h)) for d in incs)]
        if missing:
            reason = f"the CUDA toolkit at {CUDA_HOME} is incomplete ({', '.join(missing)} not found)"
    if reason:
        if force:
            raise RuntimeError(f"QVIT_BUILD_CUDA=1 but the CUDA extension cannot be built: {reason}")
        _say(f"skipping the CUDA extension: {reason}; qvit installs with its Triton and PyTorch backends")
        return [], {}

    archs = os.environ.get("QVIT_CUDA_ARCHS", "80;90a").split(";")
    gencode = []
    for a in archs:
        a = a.strip()
        if a:
            gencode += [f"-gencode=arch=compute_{a},code=sm_{a}"]
    here = os.path.dirname(os.path.abspath(__file__))
    sources = sorted(glob.glob(os.path.join("csrc", "*.cu"))) + sorted(glob.glob(os.path.join("csrc", "*.cpp")))
    _say(f"building the CUDA extension qvit._C from {len(sources)} files for sm_{', sm_'.join(archs)}")
    ext = CUDAExtension(
        name="qvit._C",
        sources=sources,
        include_dirs=[os.path.join(here, "csrc")],
        extra_compile_args={
            "cxx": ["-O3"],
            "nvcc": ["-O3", "-lineinfo",
                     "-U__CUDA_NO_HALF_OPERATORS__", "-U__CUDA_NO_HALF_CONVERSIONS__",
                     "-U__CUDA_NO_BFLOAT16_OPERATORS__", "-U__CUDA_NO_BFLOAT16_CONVERSIONS__"] + gencode,
        },
    )
    return [ext], {"build_ext": BuildExtension.with_options(use_ninja=True)}


ext_modules, cmdclass = cuda_extension()

setup(
    packages=list(PACKAGE_DIR),
    package_dir=PACKAGE_DIR,
    ext_modules=ext_modules,
    cmdclass=cmdclass,
)
