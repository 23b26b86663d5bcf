"""How long a meta-RL run's episodes last: the policy of a run folder's checkpoint, before adaptation, on
tasks given as JSON, ``trajectories`` episodes of the run's horizon each.

maml_rl's sampler collects ``fast_batch_size x horizon`` steps per task rather than a count of trajectories,
so where episodes end early (Ant's torso leaving [0.2, 1.0] m) it samples more of them; this measures by how
much. ``--budgets`` then samples the same tasks both ways, ``budget=trajectories`` and ``budget=steps``
(maml_rl's), and prints each one's episodes and steps per task and seconds.

    python benchmarks/episode_lengths.py RUN_DIR '[{"direction": 1}, {"direction": -1}]' --repeat 4
"""

import argparse
import json
import time

import torch

from fastmaml.rl import config as rlcfg
from fastmaml.rl import train as runs
from fastmaml.rl.sampler import collect

parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
parser.add_argument("run_dir")
parser.add_argument("tasks", help="a JSON list of the family's tasks")
parser.add_argument("--repeat", type=int, default=1, help="each task this many times")
parser.add_argument("--trajectories", type=int, default=None, help="default: the run's trajectories")
parser.add_argument("--seed", type=int, default=5)
parser.add_argument("--budgets", action="store_true", help="also sample with budget=trajectories and =steps")
args = parser.parse_args()

config = rlcfg.load(f"{args.run_dir}/config.yaml")
learner = runs.load(args.run_dir)
tasks = [task for task in json.loads(args.tasks) for _ in range(args.repeat)]
params = {name: p.detach() for name, p in learner.policy.named_parameters()}
episodes = collect(runs.build_family(config), learner.policy, params, tasks, args.trajectories or config.trajectories,
                   config.horizon, torch.Generator().manual_seed(args.seed))
lengths = episodes.mask.sum(-1)
early = (lengths < config.horizon).float().mean().item()
print(f"{len(tasks)} tasks x {lengths.shape[1]} episodes of at most {config.horizon} steps: mean length "
      f"{lengths.mean().item():.1f}, shortest {int(lengths.min())}, ended early {early:.1%}")
print(f"steps per task {lengths.sum(1).mean().item():.0f}; maml_rl's threshold {config.horizon} x trajectories "
      f"would take about {config.horizon * lengths.shape[1] / lengths.mean().item():.1f} episodes")
for budget in ("trajectories", "steps") if args.budgets else ():
    start = time.perf_counter()
    episodes = collect(runs.build_family(config), learner.policy, params, tasks,
                       args.trajectories or config.trajectories, config.horizon,
                       torch.Generator().manual_seed(args.seed), budget=budget)
    seconds = time.perf_counter() - start
    print(f"budget={budget}: {episodes.ran().sum(1).mean().item():.1f} episodes and "
          f"{episodes.mask.sum((1, 2)).mean().item():.0f} steps per task, {seconds:.1f} s")
