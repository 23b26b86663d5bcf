"""Sinusoid K-shot table for the MAML family: query MSE after 1 and 10 steps, 600 test tasks, 95% CI.

Each cell is one `fastmaml train sinusoid` run (recipe settings: MLP 1-40-40-1, one inner step
alpha=0.01, meta-batch 25, Adam 1e-3) with ``algorithm=NAME data.shots=K data.query_shots=K``; the
evaluation is the run's own 600-task meta-test. Prints a markdown table and the commands.

    python benchmarks/sinusoid_table.py --iterations 70000 --shots 5 10 20 --algorithms maml fomaml ...
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ALGORITHMS = ("maml", "fomaml", "anil", "metasgd", "reptile", "imaml", "mamlpp")


def run(algorithm: str, shots: int, iterations: int, out: Path, seed: int) -> tuple[dict, float, list[str]]:
    command = ["fastmaml", "train", "sinusoid", f"algorithm={algorithm}", f"data.shots={shots}",
               f"data.query_shots={shots}", f"iterations={iterations}", f"seed={seed}", "baseline_iterations=0",
               "--out", str(out), "--no-progress"]
    start = time.perf_counter()
    subprocess.run(command, check=True, stdout=subprocess.DEVNULL)
    return json.loads((out / "eval.json").read_text())[algorithm], time.perf_counter() - start, command


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--iterations", type=int, default=70_000)
    parser.add_argument("--shots", type=int, nargs="+", default=[5, 10, 20])
    parser.add_argument("--algorithms", nargs="+", default=list(ALGORITHMS), choices=ALGORITHMS)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    rows = ["| algorithm | K | 1 step | 10 steps | train+eval s |", "|---|---|---|---|---|"]
    with tempfile.TemporaryDirectory() as tmp:
        for algorithm in args.algorithms:
            for shots in args.shots:
                result, seconds, command = run(algorithm, shots, args.iterations, Path(tmp) / f"{algorithm}-{shots}",
                                               args.seed)
                one, ten = result["loss"][1], result["loss"][10]
                rows.append(f"| {algorithm} | {shots} | {one['mean']:.3f} ± {one['ci95']:.3f} | "
                            f"{ten['mean']:.3f} ± {ten['ci95']:.3f} | {seconds:.0f} |")
                print(rows[-1], "  #", " ".join(command[:-3]), flush=True)
    print("\n".join(rows))


if __name__ == "__main__":
    sys.exit(main())
