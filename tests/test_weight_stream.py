"""The weight-streaming microbenchmark (`qvit.profiling.weight_stream`): each layout's kernel must sum exactly
what torch sums, or its timing measures something else; under the interpreter on tiny odd-count shapes."""
import pytest
import torch

from conftest import requires_interp


@requires_interp
@pytest.mark.parametrize("layout", ["rows", "padded", "tiled"])
@pytest.mark.parametrize("n,k,split", [(48, 96, 3), (32, 192, 2), (16, 32, 1)])
def test_stream_sums_match_torch(layout, n, k, split):
    from qvit.profiling.weight_stream import pack, reference, stream_sums
    torch.manual_seed(n + k + split)
    w = torch.randint(-128, 128, (n, k), dtype=torch.int8)
    storage, stride = pack(w, layout, 16, 32)
    got = stream_sums(storage, n, k, stride, layout, 16, 32, split)
    assert torch.equal(got, reference(w, split))


@requires_interp
def test_stream_sums_partial_row_block():
    """N not a multiple of the row block (row-major layouts only): the last, partial block's sums are right."""
    from qvit.profiling.weight_stream import pack, reference, stream_sums
    w = torch.randint(-128, 128, (40, 64), dtype=torch.int8)
    storage, stride = pack(w, "padded", 16, 32)
    assert torch.equal(stream_sums(storage, 40, 64, stride, "padded", 16, 32, 2), reference(w, 2))


def test_pack_layouts():
    from qvit.profiling.weight_stream import pack
    w = torch.arange(8 * 6, dtype=torch.int8).reshape(8, 6)
    t, stride = pack(w, "tiled", 4, 3)
    assert stride == 6 and torch.equal(t[:12], w[:4, :3].reshape(-1)) and torch.equal(t[12:24], w[:4, 3:].reshape(-1))
    p, stride = pack(w, "padded", 4, 3)
    assert p.shape == (8, 6 + 128) and stride == 134 and torch.equal(p[:, :6], w) and not p[:, 6:].any()
    with pytest.raises(ValueError, match="multiples of the"):
        pack(w, "tiled", 3, 4)
    with pytest.raises(ValueError, match="not one of"):
        pack(w, "diagonal", 4, 3)


@requires_interp
@pytest.mark.parametrize("dot", [False, True])
@pytest.mark.parametrize("m,n,k,split", [(20, 48, 96, 3), (7, 40, 64, 1)])
def test_gemm_parts_match_torch(dot, m, n, k, split):
    """The activation-side variants: the int32 products' column sums per K chunk exact (the interpreter's int8
    dot is exact), or the weight rows' and activation chunk's sums; odd M (a partial row tile) and N not a multiple
    of the tile."""
    from qvit.profiling.weight_stream import gemm_parts, gemm_parts_reference
    torch.manual_seed(m + n + k)
    x = torch.randint(-128, 128, (m, k), dtype=torch.int8)
    w = torch.randint(-128, 128, (n, k), dtype=torch.int8)
    assert torch.equal(gemm_parts(x, w, 16, 32, split, dot), gemm_parts_reference(x, w, split, dot))


def test_gemm_parts_refuses_bad_operands():
    from qvit.profiling.weight_stream import gemm_parts
    x = torch.randint(-128, 128, (4, 64), dtype=torch.int8)
    with pytest.raises(ValueError, match="expected int8 x"):
        gemm_parts(x.float(), torch.zeros(16, 64, dtype=torch.int8), 16, 32, 1, True)
    with pytest.raises(ValueError, match="not a multiple of split 3"):
        gemm_parts(x, torch.zeros(16, 64, dtype=torch.int8), 16, 32, 3, True)
