"""What `predict --hull` costs: `srscreen predict --top 100` with and without `--hull`, in the same run.

    python benchmarks/hull_speed.py --graphs mp.h5 [--rounds 3]

Both commands run as real processes (start-up included) with the shipped Ef + Eg pair on 2 threads,
alternating, so that both see the same machine load; the median of `--rounds` each. The graph file
must have been featurized with the graph rule the shipped models record (`srscreen models`).
Results go to benchmarks/results/hull_speed.json.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--graphs", type=Path, required=True)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    from srscreen.data.graph_file import GraphFile

    with GraphFile(args.graphs) as graphs:
        n = len(graphs)
    base = [sys.executable, "-c", "from srscreen.cli import main; main()", "predict", str(args.graphs),
            "--top", "100", "--threads", "2", "-q"]
    times: dict[str, list[float]] = {"predict": [], "predict --hull": []}
    for _ in range(args.rounds):
        for name, extra in (("predict", []), ("predict --hull", ["--hull"])):
            start = time.perf_counter()
            subprocess.run([*base, *extra], check=True, stdout=subprocess.DEVNULL)
            times[name].append(time.perf_counter() - start)
    rates = {name: n / statistics.median(t) for name, t in times.items()}
    print(f"{n:,} structures, median of {args.rounds} alternating rounds, start-up included")
    for name, rate in rates.items():
        print(f"  {name:15s} {rate:,.0f} structures/s")
    ratio = rates["predict --hull"] / rates["predict"]
    print(f"  ratio --hull / plain: {ratio:.3f}")
    report = {"structures": n, "rounds": args.rounds, "times_s": times, "rates": rates, "ratio": ratio}
    (ROOT / "benchmarks" / "results" / "hull_speed.json").write_text(json.dumps(report, indent=1) + "\n")


if __name__ == "__main__":
    main()
