"""profiling/ncu_source on a small hand-made `--page source --csv` file."""
import pytest

from qvit.profiling import ncu_source

CSV = '''"Kernel Name","_w8a8_kernel",
"Address","Source","Warp Stall Sampling (All Samples)","Warp Stall Sampling (Not-issued Samples)","Instructions Executed","stall_barrier","stall_long_sb","stall_wait","stall_barrier (Not Issued)"
"0x10","      BAR.SYNC.DEFER_BLOCKING 0x0","30","29","8,192","0","28","2","0"
"0x20","@!PT  LDS RZ, [RZ]","10","10","512","7","0","3","7"
"0x30","      QGMMA.64x32x32.F32.E4M3.E4M3 R24, gdesc[UR20], R24","60","50","8,192","0","0","60","0"
'''


def test_summary_of_a_source_page(tmp_path):
    (k,) = ncu_source.parse(CSV)
    s = ncu_source.summarize(k, top=2)
    assert s["kernel"] == "_w8a8_kernel" and s["instructions"] == 3 and s["samples"] == 100
    assert dict(s["by_reason"]) == {"barrier": 7, "long_sb": 28, "wait": 65}  # the Not Issued column not counted
    assert s["by_opcode"]["LDS"] == 10 and s["by_opcode"]["BAR.SYNC.DEFER_BLOCKING"] == 30  # predicate dropped
    assert [r["address"] for r in s["top"]] == ["0x30", "0x10"]
    assert s["top"][1]["reasons"] == [("long_sb", 28), ("wait", 2)]
    md = ncu_source.to_markdown([s])
    assert "wait 65%" in md and "| 60.0% | `QGMMA.64x32x32.F32.E4M3.E4M3 R24, gdesc[UR20], R24` | wait 60 | 8,192 |" in md
    p = tmp_path / "src.csv"
    p.write_text(CSV)
    assert ncu_source.main([str(p), "--top", "2", "--out", str(tmp_path / "src.md")]) == 0
    assert (tmp_path / "src.md").read_text() == md


def test_refuses_a_page_without_samples(tmp_path):
    with pytest.raises(ValueError, match="SourceCounters"):
        ncu_source.parse(CSV.replace("Warp Stall Sampling (All Samples)", "Something Else"))
    with pytest.raises(ValueError, match="no source rows"):
        ncu_source.parse('"ID","x"\n')
    p = tmp_path / "bad.csv"
    p.write_text("nothing\n")
    assert ncu_source.main([str(p)]) == 2
