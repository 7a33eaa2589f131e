"""Nsight Compute CSV (`ncu --csv --nvtx ...` of profiling/ncu_kernels.py or tools/ncu_cuda_gemm.py) -> a markdown
table, one row per profiled launch, named by its innermost NVTX range.

    python tools/ncu_table.py ncu.csv > ncu.md
"""
import csv
import re
import sys

METRICS = [("Duration", "duration"), ("Compute (SM) Throughput", "SM %"), ("Memory Throughput", "memory"),
           ("DRAM Throughput", "DRAM %"), ("Issue Slots Busy", "issue %"),
           ("Warp Cycles Per Issued Instruction", "cycles/instr"), ("No Eligible", "no eligible %"),
           ("Achieved Occupancy", "occupancy %"), ("Registers Per Thread", "regs")]


def _kernel(full: str) -> str:
    """'void qvit::(anonymous namespace)::w8a8_gemm_kernel<...>(...)' -> 'w8a8_gemm_kernel'."""
    full = full.replace("<unnamed>", "").replace("(anonymous namespace)", "")
    base = full.split("<")[0].split("(")[0] if not full.startswith("void") else full[5:].split("<")[0]
    return base.rsplit("::", 1)[-1].strip()


def parse(path):
    lines = open(path).read().splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith('"ID"'))
    rows = list(csv.reader(lines[start:]))
    idx = {h: i for i, h in enumerate(rows[0])}
    out = {}
    for r in rows[1:]:
        if len(r) <= idx["Metric Value"]:
            continue
        name = re.findall(r"domain>:([^:]+):", r[4])[-1] if "domain>:" in r[4] else r[idx["Kernel Name"]]
        key = (r[idx["ID"]], name, _kernel(r[idx["Kernel Name"]]), r[idx["Block Size"]], r[idx["Grid Size"]])
        out.setdefault(key, {})[r[idx["Metric Name"]]] = (r[idx["Metric Value"]], r[idx["Metric Unit"]])
    return out


def main(path):
    data = parse(path)
    head = ["launch", "kernel", "block", "grid"] + [h for _, h in METRICS]
    print("| " + " | ".join(head) + " |")
    print("|" + "---|" * len(head))
    for (_, name, kern, block, grid), m in data.items():
        cells = []
        for key, _ in METRICS:
            v, unit = m.get(key, ("", ""))
            cells.append(f"{v} {unit}".strip() if unit not in ("%", "") else v)
        print("| " + " | ".join([name, f"`{kern}`", block, grid] + cells) + " |")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1]))
