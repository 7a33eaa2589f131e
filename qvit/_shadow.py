"""The repository's top-level `kernels/` folder (the design card's layout; installed as `qvit.kernels`) is also
importable as a top-level package named `kernels` whenever the repository root is on sys.path: `python -m pytest`
or `python -m qvit...` run from a checkout put it first. Hugging Face's `kernels` distribution has that name too,
and transformers (imported by peft) imports it when it is installed: it then found this folder and failed
(`cannot import name 'CUDAProperties' from 'kernels'`, CI on 2026-12-06, transformers 5.25 + kernels 0.19).
`installed_kernels_first()` imports the installed distribution under its own name before anything else can.
"""
from __future__ import annotations

import importlib.machinery
import importlib.metadata
import importlib.util
import os
import sys

_OURS = os.path.realpath(os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "kernels"))


def is_ours(path: str | None) -> bool:
    """Whether a module file `path` is in this repository's kernels/ folder."""
    return bool(path) and os.path.realpath(os.path.dirname(path)) == _OURS


def installed_kernels_first() -> str | None:
    """Load the installed `kernels` distribution as sys.modules["kernels"] if one is installed and the name is not
    already bound to it; returns the path it was loaded from (None when there is none, or it does not import: then
    nothing changes, and whatever imports it fails as it would have). Never touches `qvit.kernels`."""
    have = sys.modules.get("kernels")
    if have is not None and not is_ours(getattr(have, "__file__", None)):
        return getattr(have, "__file__", None)
    try:
        site = str(importlib.metadata.distribution("kernels").locate_file(""))
    except importlib.metadata.PackageNotFoundError:
        return None
    spec = importlib.machinery.PathFinder.find_spec("kernels", [site])
    if spec is None or spec.origin is None or is_ours(spec.origin):
        return None
    module = importlib.util.module_from_spec(spec)
    sys.modules["kernels"] = module
    try:
        spec.loader.exec_module(module)
    except Exception:  # noqa: BLE001  (a broken install is left for its importer to report)
        if have is not None:
            sys.modules["kernels"] = have
        else:
            sys.modules.pop("kernels", None)
        return None
    return spec.origin
