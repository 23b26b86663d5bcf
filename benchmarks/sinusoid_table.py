"""Sinusoid K-shot table for the MAML family: query MSE after 1 and 10 steps, 600 test tasks, 95% CI.

Each cell is one `fastmaml train sinusoid` run (recipe settings: MLP 1-40-40-1, one inner step
alpha=0.01, meta-batch 25, Adam 1e-3) with ``algorithm=NAME data.shots=K data.query_shots=K``; the
evaluation is the run's own 600-task meta-test. Prints a markdown table and the commands.

    python benchmarks/sinusoid_table.py --iterations 70000 --shots 5 10 20 --algorithms maml fomaml ...

``--own-regime`` runs Reptile and iMAML in their papers' regimes instead of the recipe's one step
(``OWN_REGIME`` below; issue #12), e.g. ``--own-regime --algorithms reptile --shots 10 --iterations 30000``.
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
# Reptile: openai/supervised-reptile's sine demo (SGD 0.02 on minibatches of 10 of a task's 50 points, one
# pass = 5 steps, one task per outer step, outer SGD 0.1 annealed linearly to 0, 32 steps at test); the
# query set at meta-test stays K points. iMAML: 25 proximal steps, lambda 2, damped CG, clipped inner steps,
# the outer rate annealed (a constant rate drifts after ~2,000 iterations: RESULTS.md, "iMAML and Reptile in
# their own regimes").
OWN_REGIME = {
    "reptile": ["inner_lr=0.02", "inner_steps=5", "eval_inner_steps=32", "data.query_shots={rest}",
                "data.eval_query_shots={shots}", "meta_batch_size=1", "optimizer=sgd", "outer_lr=0.1",
                "algorithm_options.inner_batch=10", "algorithm_options.anneal=true"],
    "imaml": ["inner_lr=0.01", "inner_steps=25", "eval_inner_steps=25", "algorithm_options.lam=2",
              "algorithm_options.damping=1", "algorithm_options.max_grad_norm=10", "lr_schedule=cosine"],
}


def run(algorithm: str, shots: int, iterations: int, out: Path, seed: int,
        own_regime: bool = False) -> tuple[dict, float, list[str]]:
    command = ["fastmaml", "train", "sinusoid", f"algorithm={algorithm}", f"data.shots={shots}",
               f"data.query_shots={shots}", f"iterations={iterations}", f"seed={seed}", "baseline_iterations=0"]
    if own_regime:
        command += [o.format(shots=shots, rest=50 - shots) for o in OWN_REGIME.get(algorithm, [])]
    command += ["--out", str(out), "--no-progress"]
    start = time.perf_counter()
    subprocess.run(command, check=True, stdout=subprocess.DEVNULL)
    return json.loads((out / "eval.json").read_text())[algorithm], time.perf_counter() - start, command


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--iterations", type=int, default=70_000)
    parser.add_argument("--shots", type=int, nargs="+", default=[5, 10, 20])
    parser.add_argument("--algorithms", nargs="+", default=list(ALGORITHMS), choices=ALGORITHMS)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--own-regime", action="store_true", help="Reptile and iMAML in their papers' regimes")
    args = parser.parse_args()
    rows = ["| algorithm | K | 1 step | 10 steps | train+eval s |", "|---|---|---|---|---|"]
    with tempfile.TemporaryDirectory() as tmp:
        for algorithm in args.algorithms:
            for shots in args.shots:
                result, seconds, command = run(algorithm, shots, args.iterations, Path(tmp) / f"{algorithm}-{shots}",
                                               args.seed, args.own_regime)
                one, ten = result["loss"][1], result["loss"][10]
                rows.append(f"| {algorithm} | {shots} | {one['mean']:.3f} ± {one['ci95']:.3f} | "
                            f"{ten['mean']:.3f} ± {ten['ci95']:.3f} | {seconds:.0f} |")
                print(rows[-1], "  #", " ".join(command[:-3]), flush=True)
    print("\n".join(rows))


if __name__ == "__main__":
    sys.exit(main())
