"""``fastmaml train RECIPE --nproc-per-node 2`` trains the same model as one process: full-length comparison.

Runs the recipe twice per dtype through the real command line, once in one process and once with
``--nproc-per-node 2`` (the sinusoid recipe's meta-batch of 25 splits 13 + 12), and prints the
largest relative parameter difference, ``max over tensors of max|two - one| / max|one|``, with the
wall time of each run. The recipe's other settings (70,000 iterations, compiled step, one thread
per process, seed 0) are kept; only the baselines are skipped (they are separate networks).

``--control`` adds a third run per dtype: one process with ``compile=false`` (the eager step: the same
meta-gradient, summed in another order), and its difference from the compiled one-process run. It
measures how far rounding alone carries two exact runs apart over the run's length, whatever splits
the sum.

    PYTHONPATH=src python benchmarks/distributed_same_model.py              # float32 and float64
    PYTHONPATH=src python benchmarks/distributed_same_model.py --iterations 2000 --dtypes float64 --control
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

from fastmaml.train.checkpoint import load_checkpoint


def train(argv: list[str]) -> float:
    """Run ``fastmaml ARGV``; its wall time in seconds."""
    start = time.perf_counter()
    subprocess.run([sys.executable, "-m", "fastmaml.cli", *argv], check=True, stdout=subprocess.DEVNULL,
                   env={**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)})
    return time.perf_counter() - start


def relative_difference(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> float:
    return max(((a[k] - b[k]).abs().max() / b[k].abs().max()).item() for k in b)


def test_loss(run_dir: Path) -> float:
    """The run's meta-test loss after one inner step (eval.json: the recipe's 600 test tasks)."""
    return json.loads((run_dir / "eval.json").read_text())["maml"]["loss"][1]["mean"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--recipe", default="sinusoid")
    parser.add_argument("--iterations", type=int, help="default: the recipe's")
    parser.add_argument("--dtypes", nargs="+", default=["float32", "float64"])
    parser.add_argument("--processes", type=int, default=2)
    parser.add_argument("--control", action="store_true", help="also one process with compile=false")
    parser.add_argument("--seed", type=int, help="default: the recipe's")
    args = parser.parse_args()
    common = ["baseline_iterations=0", *([f"iterations={args.iterations}"] if args.iterations else []),
              *([f"seed={args.seed}"] if args.seed is not None else [])]
    print("| dtype | iterations | processes | wall s (1 process) | wall s (N processes) | final loss (1 / N) | "
          "relative parameter difference | control: 1 process eager vs compiled | "
          "meta-test loss after 1 step (1 / N) |")
    print("|---|---|---|---|---|---|---|---|---|")
    with tempfile.TemporaryDirectory() as tmp:
        for dtype in args.dtypes:
            one, many = Path(tmp, f"one-{dtype}"), Path(tmp, f"many-{dtype}")
            overrides = [*common, f"dtype={dtype}"]
            t_one = train(["train", args.recipe, *overrides, "--out", str(one), "--no-progress"])
            t_many = train(["train", args.recipe, *overrides, "--out", str(many), "--no-progress",
                            "--nproc-per-node", str(args.processes)])
            a, b = (load_checkpoint(p / "checkpoint.pt") for p in (many, one))
            losses = f"{b['history'][-1]['loss']:.6g} / {a['history'][-1]['loss']:.6g}"
            control = "–"
            if args.control:
                eager = Path(tmp, f"eager-{dtype}")
                train(["train", args.recipe, *overrides, "compile=false", "--out", str(eager), "--no-progress"])
                c = load_checkpoint(eager / "checkpoint.pt")
                control = f"{relative_difference(c['algorithm'], b['algorithm']):.2e}"
            print(f"| {dtype} | {b['iteration']} | {args.processes} | {t_one:.0f} | {t_many:.0f} | {losses} | "
                  f"{relative_difference(a['algorithm'], b['algorithm']):.2e} | {control} | "
                  f"{test_loss(one):.4f} / {test_loss(many):.4f} |", flush=True)


if __name__ == "__main__":
    main()
