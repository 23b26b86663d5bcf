"""Seconds per meta-iteration of fastmaml's MAML-TRPO on the nav2d recipe's workload (20 tasks x 20
trajectories x 100 steps, 2x100 ReLU policy, exact second-order TRPO with 10 CG iterations).

Wall and CPU seconds (``time.process_time``) are both printed: on a CPU shared with other jobs the wall
time measures them too, and CPU seconds are what compares with learn2learn's (benchmarks/rl_peer.py).

    PYTHONPATH=src python benchmarks/rl_speed.py --iterations 3 --threads 1
"""

from __future__ import annotations

import argparse
import json
import time

import torch

from fastmaml.rl import config as rlcfg
from fastmaml.rl.train import build_family, build_learner, meta_step


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--iterations", type=int, default=3)
    parser.add_argument("--warmup", type=int, default=1)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("overrides", nargs="*", help="recipe overrides, e.g. execution=loop")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    config = rlcfg.resolve("nav2d", args.overrides)
    family = build_family(config)
    learner = build_learner(config, family, config.seed)
    generator = torch.Generator().manual_seed(config.seed)
    for i in range(args.warmup + args.iterations):
        wall, cpu = time.perf_counter(), time.process_time()
        record = meta_step(learner, family, config, generator, None, i + 1, "")
        record.update(wall_s=time.perf_counter() - wall, cpu_s=time.process_time() - cpu, warmup=i < args.warmup)
        print(json.dumps({k: record[k] for k in ("iteration", "warmup", "wall_s", "cpu_s", "return_after")}),
              flush=True)


if __name__ == "__main__":
    main()
