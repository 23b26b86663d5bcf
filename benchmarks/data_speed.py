"""Episode sampling cost and the 600-task evaluation time on Omniglot 5-way 1-shot (issue #3).

    python benchmarks/data_speed.py ../shared/data/omniglot [RUN_DIR]

Prints: the first (decode) and cached load times, the median time to sample a 32-task 5-way 1-shot
meta-batch with 15 query examples per class (rotations on), and, given a finished run folder, the time
of its 600-task meta-test with 3 inner steps.
"""

from __future__ import annotations

import statistics
import sys
import tempfile
import time

import torch

import fastmaml.data.images as images_module
from fastmaml.data import episodic_tasks
from fastmaml.train.run import evaluate_run


def main(root: str, run_dir: str | None = None) -> None:
    torch.set_num_threads(1)
    with tempfile.TemporaryDirectory() as cache:
        for label in ("first load (decode + cache)", "cached load"):
            images_module._MEMORY.clear()
            start = time.perf_counter()
            tasks = episodic_tasks("omniglot", root, "train", ways=5, shots=1, query_shots=15, rotations=True,
                                   cache_dir=cache)
            print(f"{label}: {time.perf_counter() - start:.2f} s")
    generator = torch.Generator().manual_seed(0)
    times = []
    for _ in range(200):
        start = time.perf_counter()
        tasks.sample_tasks(32, generator)
        times.append(time.perf_counter() - start)
    print(f"sample 32 tasks 5-way 1-shot 15 query: median {1e3 * statistics.median(times):.2f} ms, "
          f"min {1e3 * min(times):.2f} ms")
    if run_dir is not None:
        start = time.perf_counter()
        result = evaluate_run(run_dir, num_tasks=600)
        accuracy = next(iter(result.values()))["accuracy"][-1]
        print(f"600-task evaluation: {time.perf_counter() - start:.1f} s "
              f"({accuracy['mean']:.2f} ± {accuracy['ci95']:.2f} %)")


if __name__ == "__main__":
    main(*sys.argv[1:3])
