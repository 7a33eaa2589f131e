"""Nsight Compute source page (SASS, per instruction) -> where a kernel's warps wait, as markdown.

    ncu --section WarpStateStats --section SourceCounters -o REP python -m qvit.profiling.ncu_kernels --only NAME
    ncu -i REP.ncu-rep --page source --csv --print-source sass > source.csv
    python -m qvit.profiling.ncu_source source.csv [--top 20] [--out source.md]

Per kernel in the file: the warp-stall samples by reason (ncu's `stall_*` columns, all samples), by opcode, and the
`--top` instructions by samples with their two largest reasons and execution counts. Samples are a statistical
picture: a kernel of ~10 us gives ~1,000 of them.
"""
from __future__ import annotations

import argparse
import csv
import io
import sys
from collections import Counter

SAMPLES = "Warp Stall Sampling (All Samples)"


def _num(v: str) -> float:
    try:
        return float(v.replace(",", ""))
    except (AttributeError, ValueError):
        return 0.0


def parse(text: str) -> list[dict]:
    """[{"kernel": name, "rows": [{column: value}, ...]}, ...]: one entry per `"Kernel Name",...` block."""
    kernels, cur, header = [], None, None
    for row in csv.reader(io.StringIO(text)):
        if not row:
            continue
        if row[0] == "Kernel Name":
            cur, header = {"kernel": row[1] if len(row) > 1 else "?", "rows": []}, None
            kernels.append(cur)
        elif row[0] == "Address" and cur is not None:
            header = row
        elif header is not None and len(row) == len(header):
            cur["rows"].append(dict(zip(header, row)))
    if not kernels or not any(k["rows"] for k in kernels):
        raise ValueError("no source rows (expected `ncu -i REP --page source --csv --print-source sass` output)")
    if SAMPLES not in kernels[0]["rows"][0]:
        raise ValueError(f"no {SAMPLES!r} column: profile with --section SourceCounters (and WarpStateStats)")
    return kernels


def opcode(source: str) -> str:
    """The opcode of a SASS line, predicate dropped: '@!P0 LDS.U R1, [R2]' -> 'LDS.U'."""
    parts = source.split()
    if parts and parts[0].startswith("@"):
        parts = parts[1:]
    return parts[0] if parts else "?"


def summarize(kernel: dict, top: int = 20) -> dict:
    rows = kernel["rows"]
    reasons = [c for c in rows[0] if c.startswith("stall_") and "Not Issued" not in c]
    total = sum(_num(r[SAMPLES]) for r in rows)
    by_reason = Counter({c[len("stall_"):]: sum(_num(r[c]) for r in rows) for c in reasons})
    by_op = Counter()
    for r in rows:
        by_op[opcode(r["Source"])] += _num(r[SAMPLES])
    tops = []
    for r in sorted(rows, key=lambda r: -_num(r[SAMPLES]))[:top]:
        why = sorted(((c[len("stall_"):], _num(r[c])) for c in reasons if _num(r[c]) > 0), key=lambda x: -x[1])[:2]
        tops.append({"address": r["Address"], "source": r["Source"].strip(), "samples": _num(r[SAMPLES]),
                     "reasons": why, "executed": r.get("Instructions Executed", "")})
    return {"kernel": kernel["kernel"], "instructions": len(rows), "samples": total,
            "by_reason": by_reason, "by_opcode": by_op, "top": tops}


def to_markdown(summaries: list[dict]) -> str:
    out = []
    for s in summaries:
        t = s["samples"] or 1.0
        out += [f"## {s['kernel']}: {s['instructions']} SASS instructions, {s['samples']:.0f} warp-stall samples", "",
                "Samples by reason: " + ", ".join(f"{k} {v / t:.0%}" for k, v in s["by_reason"].most_common() if v),
                "", "By opcode: " + ", ".join(f"{k} {v / t:.0%}" for k, v in s["by_opcode"].most_common(10) if v), "",
                "| samples | instruction | largest reasons | executed |", "|---:|---|---|---:|"]
        for r in s["top"]:
            why = ", ".join(f"{k} {v:.0f}" for k, v in r["reasons"])
            out.append(f"| {r['samples'] / t:.1%} | `{r['source']}` | {why} | {r['executed']} |")
        out.append("")
    return "\n".join(out)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("csv")
    ap.add_argument("--top", type=int, default=20)
    ap.add_argument("--out", default=None)
    args = ap.parse_args(argv)
    try:
        with open(args.csv) as f:
            md = to_markdown([summarize(k, args.top) for k in parse(f.read())])
    except (OSError, ValueError) as e:
        print(f"ncu_source: {args.csv}: {e}", file=sys.stderr)
        return 2
    if args.out:
        with open(args.out, "w") as f:
            f.write(md)
    else:
        print(md)
    return 0


if __name__ == "__main__":
    sys.exit(main())
