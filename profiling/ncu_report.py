"""Nsight Compute CSV (SpeedOfLight section, `--csv` output of the gpu_run `ncu` step) -> markdown table.

    python -m qvit.profiling.ncu_report results/RUN/ncu_sol.csv [--out results/RUN/ncu_sol.md]

One row per profiled launch: the NVTX range that named it (qvit.profiling.ncu_kernels), the kernel,
grid and block, its duration and the Speed-of-Light percentages (compute/SM throughput, memory
throughput, DRAM, L1, L2): the bound of each kernel, measured.
"""
from __future__ import annotations

import argparse
import csv
import io
import re
import sys

SOL_SECTION = "GPU Speed Of Light Throughput"
COLUMNS = [("Duration", "duration"), ("Compute (SM) Throughput", "SM %"), ("Memory Throughput", "memory %"),
           ("DRAM Throughput", "DRAM %"), ("L1/TEX Cache Throughput", "L1 %"), ("L2 Cache Throughput", "L2 %")]


def parse(text: str) -> list[dict]:
    """Rows of ncu's CSV (its ==PROF== / ==WARNING== lines and program output dropped), one dict per launch."""
    lines = [ln for ln in text.splitlines(keepends=True) if ln.startswith('"')]
    if not lines:
        raise ValueError("no CSV rows in the ncu output (was it run with --csv? did any launch match the NVTX filter?)")
    launches: dict[str, dict] = {}
    for r in csv.DictReader(io.StringIO("".join(lines))):
        rng = next((v for k, v in r.items() if k and k.startswith("thread Domain")), "") or ""
        names = re.findall(r"<default domain>:([^:]+):", rng)
        d = launches.setdefault(r["ID"], {"range": names[-1] if names else "", "kernel": r["Kernel Name"],
                                          "grid": r["Grid Size"], "block": r["Block Size"]})
        name = r.get("Metric Name")
        # one name in several sections ("Memory Throughput": % in Speed of Light, byte/s in Memory Workload
        # Analysis): the Speed-of-Light value, which the table's columns mean
        if name and (name not in d or r.get("Section Name") == SOL_SECTION):
            d[name] = (r["Metric Value"].replace(",", ""), r.get("Metric Unit", ""))
    return list(launches.values())


def to_markdown(rows: list[dict], title: str = "Nsight Compute Speed of Light") -> str:
    out = [f"# {title}", "", "| range | kernel | grid | block | " + " | ".join(c[1] for c in COLUMNS) + " |",
           "|---|---|---|---|" + "---|" * len(COLUMNS)]
    for r in rows:
        cells = []
        for metric, _ in COLUMNS:
            v, unit = r.get(metric, ("", ""))
            cells.append(f"{v} {unit}".strip() if metric == "Duration" else v)
        out.append(f"| {r['range']} | `{r['kernel'][:48]}` | {r['grid']} | {r['block']} | " + " | ".join(cells) + " |")
    return "\n".join(out) + "\n"


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("csv")
    ap.add_argument("--out", default=None, help="markdown file (default: the CSV's name with .md)")
    args = ap.parse_args(argv)
    try:
        rows = parse(open(args.csv).read())
    except (OSError, ValueError) as e:
        print(f"ncu_report: {args.csv}: {e}", file=sys.stderr)
        return 2
    out = args.out or args.csv.rsplit(".", 1)[0] + ".md"
    with open(out, "w") as f:
        f.write(to_markdown(rows))
    print(f"ncu_report: {len(rows)} launches -> {out}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
