"""In-model batch-1 tuning (`qvit.profiling.tune_in_model`): the coordinate descent, the key it records for a call
(Triton's own), and a decision written to Triton's autotune disk cache that a fresh autotuner then uses without
timing anything. The Triton parts run a two-config toy kernel under the interpreter."""
import pytest
import torch

from conftest import requires_interp


def test_coordinate_descent_finds_each_keys_best():
    from qvit.profiling.tune_in_model import coordinate_descent
    cost = {"qkv": {"a": 3.0, "b": 1.0, "c": 2.0}, "fc2": {"x": 5.0, "y": 4.0}}
    current = {"qkv": "a", "fc2": "x"}
    calls = []

    def time_fn():
        calls.append(dict(current))
        return sum(cost[k][current[k]] for k in cost)

    log = []
    chosen, t = coordinate_descent({k: list(v) for k, v in cost.items()}, current, time_fn, rounds=2, log=log)
    assert chosen == {"qkv": "b", "fc2": "y"} and t == 5.0
    assert calls[0] == {"qkv": "a", "fc2": "x"} and len(calls) == 1 + 2 + 1 + 2 + 1  # start, round 1, round 2
    assert log[0] == {"start": 8.0} and {e["config"] for e in log[1:3]} == {"b", "c"}


def test_coordinate_descent_keeps_a_tie():
    """A candidate only as fast as the current choice does not replace it (no churn on noise-free ties)."""
    from qvit.profiling.tune_in_model import coordinate_descent
    chosen, _ = coordinate_descent({"k": ["a", "b"]}, {"k": "a"}, lambda: 1.0, rounds=3)
    assert chosen == {"k": "a"}


def _toy(monkeypatch, tmp_path, bench_calls):
    import triton
    import triton.language as tl
    monkeypatch.setenv("TRITON_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.setenv("TRITON_CACHE_AUTOTUNING", "1")

    def bench(fn, quantiles=None, **kw):  # BLOCK 16 "faster" than 32
        bench_calls.append(1)
        fn()
        return [1.0, 1.0, 1.0]

    configs = [triton.Config({"BLOCK": 16}), triton.Config({"BLOCK": 32})]

    @triton.autotune(configs=configs, key=["n"], do_bench=bench)
    @triton.jit
    def _double(x_ptr, y_ptr, n, BLOCK: tl.constexpr):
        offs = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
        tl.store(y_ptr + offs, tl.load(x_ptr + offs, mask=offs < n) * 2, mask=offs < n)

    def call(x):
        y = torch.empty_like(x)
        _double[lambda m: (triton.cdiv(x.numel(), m["BLOCK"]),)](x, y, x.numel())
        return y

    return _double, call


@requires_interp
def test_recording_gives_tritons_key_and_candidates(monkeypatch, tmp_path):
    from qvit.profiling.tune_in_model import recording
    calls = []
    tuner, call = _toy(monkeypatch, tmp_path, calls)
    x = torch.randn(40)
    with recording() as seen:
        assert torch.equal(call(x), x * 2)
    ((name, (t, key, cands)),) = seen.items()
    assert t is tuner and name == ("_double", key) and key in tuner.cache
    assert [c.kwargs["BLOCK"] for c in cands] == [16, 32]


def test_saved_decision_is_what_tritons_disk_cache_reads_back(monkeypatch, tmp_path):
    """The decision file is the one `Autotuner.check_disk_cache` finds for the key (the same hash of Triton
    build, backend, kernel source, environment, key and candidates), replacing what the autotuner wrote there,
    and reading it back gives the chosen config (BLOCK 32 although the timer ranked 16 first). Triton itself
    reads it: its check_disk_cache runs on a real JITFunction with the GPU driver and backend stubbed (the
    interpreter never caches autotuning)."""
    import json
    import types

    import triton
    import triton.compiler.compiler as C
    from triton.runtime import autotuner as A
    from triton.runtime.jit import JITFunction

    from qvit.profiling.tune_in_model import save_decision
    monkeypatch.setenv("TRITON_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.setattr(C, "make_backend", lambda target: types.SimpleNamespace(hash=lambda: "backend"))
    monkeypatch.setattr(A, "driver", types.SimpleNamespace(active=types.SimpleNamespace(get_current_target=lambda: 0)))

    def _toy_kernel(x_ptr, n, BLOCK):
        pass

    configs = [triton.Config({"BLOCK": 16}), triton.Config({"BLOCK": 32}), triton.Config({"BLOCK": 64})]
    state = types.SimpleNamespace(fn=JITFunction(_toy_kernel), cache={}, configs_timings=None)
    key = (40, "torch.float32")

    def bench():  # what the autotuner's timer would have found: 16 fastest
        state.configs_timings = {c: [t] for c, t in zip(configs, (1.0, 2.0, 3.0))}
        state.cache[key] = configs[0]

    assert A.Autotuner.check_disk_cache(state, key, configs, bench) is False  # timed and written
    assert state.cache[key] is configs[0]
    with pytest.raises(ValueError, match="measured faster"):
        save_decision(state, key, configs, configs[1], {configs[0]: [1.1, 1.0], configs[1]: [1.2]})
    path = save_decision(state, key, configs, configs[1], {configs[0]: [1.3], configs[1]: [1.3, 1.2],
                                                           configs[2]: [1.2]})
    rows = json.load(open(path))["configs_timings"]
    assert [(r[0]["kwargs"]["BLOCK"], r[1]) for r in rows] == [(32, [1.2]), (16, [1.3]), (64, [1.2])]
    state.cache.clear()
    assert A.Autotuner.check_disk_cache(state, key, configs, lambda: pytest.fail("timed again")) is True
    assert state.cache[key].kwargs == {"BLOCK": 32}  # the tie with 64 goes to the chosen one, written first


def test_tune_in_model_needs_the_disk_cache_and_a_gpu(monkeypatch, capsys):
    from qvit.profiling import tune_in_model
    monkeypatch.delenv("TRITON_CACHE_AUTOTUNING", raising=False)
    rc = tune_in_model.main(["--out", "unused"])
    assert rc == 2
    err = capsys.readouterr().err
    assert ("needs a CUDA GPU" in err) if not torch.cuda.is_available() else ("TRITON_CACHE_AUTOTUNING=1" in err)
