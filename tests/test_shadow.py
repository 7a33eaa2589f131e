"""qvit._shadow: the repository's kernels/ folder must not stand in for Hugging Face's installed `kernels` package
(transformers, under peft, imports it) when the repository root is first on sys.path."""
import importlib.metadata
import importlib.util
import os
import sys

from qvit import _shadow


def _installed() -> bool:
    try:
        importlib.metadata.distribution("kernels")
        return True
    except importlib.metadata.PackageNotFoundError:
        return False


def test_installed_kernels_first(monkeypatch):
    root = os.path.dirname(_shadow._OURS)
    monkeypatch.setattr(sys, "path", [root] + [p for p in sys.path if p not in ("", root)])
    saved = sys.modules.pop("kernels", None)
    try:
        importlib.invalidate_caches()
        # the hazard, reproduced: with the root first, the name finds this repository's folder
        assert _shadow.is_ours(importlib.util.find_spec("kernels").origin)
        got = _shadow.installed_kernels_first()
        if not _installed():
            assert got is None and "kernels" not in sys.modules
            return
        assert got is not None and not _shadow.is_ours(got)
        import kernels
        assert kernels.__file__ == got
        assert _shadow.installed_kernels_first() == got  # bound already: left as it is
    finally:
        if saved is not None:
            sys.modules["kernels"] = saved
        else:
            sys.modules.pop("kernels", None)
    import qvit.kernels
    assert _shadow.is_ours(qvit.kernels.__file__)
