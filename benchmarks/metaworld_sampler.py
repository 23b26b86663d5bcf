"""Environment steps per second on Meta-World ML1 or ML10: fastmaml's lockstep sampler against gymnasium's
``SyncVectorEnv`` over the same environments, side by side, with the same batched policy.

Both step one environment per task of a meta-batch, every task in lockstep, and evaluate the policy (2x100 tanh,
the recipes') once per time step for the whole meta-batch; the vector env adds gymnasium's wrappers and
bookkeeping (TimeLimit, order and passive checks, autoreset, batched info dicts). Repeats alternate the two so
load on the machine affects both alike; the best repeat of each is reported, and a profile of one Meta-World
step, split into MuJoCo's physics and the benchmark's own Python.

    for task in reach push pick-place; do
        python benchmarks/metaworld_sampler.py --task $task --tasks 20 --trajectories 10 --horizon 500 --repeats 2
    done
    python benchmarks/metaworld_sampler.py --benchmark ml10 --tasks 20 --trajectories 10 --horizon 500 --repeats 1

(``--benchmark ml10``: ML10's training tasks as ``ML10.sample_tasks`` draws them, 20 are 2 of each of its ten
skills.)

Measured at commit 7015a20 (metaworld 3.1.1, mujoco 3.3.0, torch 2.14 CPU, one torch thread, the shared 2-core
machine with two training runs on it; 20 tasks x 10 episodes, the recipes' meta-batch):

    ML1 reach, 20 tasks x 10 episodes x 500 steps, best of 2
    fastmaml lockstep sampler   11,742 steps/s
    gymnasium SyncVectorEnv     4,252 steps/s   (2.8x)
    one reach step: 216 us, of which physics (5 mj_step) 71 us (33%), the rest Meta-World's Python
    ML1 push, 20 tasks x 10 episodes x 500 steps, best of 2
    fastmaml lockstep sampler   11,161 steps/s
    gymnasium SyncVectorEnv     1,745 steps/s   (6.4x)
    one push step: 439 us, of which physics (5 mj_step) 49 us (11%), the rest Meta-World's Python
    ML1 pick-place, 20 tasks x 10 episodes x 500 steps, best of 2
    fastmaml lockstep sampler   10,732 steps/s
    gymnasium SyncVectorEnv     1,708 steps/s   (6.3x)
    one pick-place step: 524 us, of which physics (5 mj_step) 54 us (10%), the rest Meta-World's Python

ML10, with all its fifteen skills batched (fastmaml.rl.sawyer), both cores free (the training runs paused):

    ML10, 20 tasks x 10 episodes x 500 steps, best of 1
    fastmaml lockstep sampler   10,242 steps/s   (1 thread(s) for the physics)
    gymnasium SyncVectorEnv     3,402 steps/s   (3.0x)
    one drawer-close-v3 step: 108 us, of which physics (5 mj_step) 45 us (42%), the rest Meta-World's Python

The sampler alone on the same 20 tasks (10 episodes of 500 steps, best of 2, cores free): 10,389 steps/s against
4,770 with only reach, push and pick-place batched (the seven other skills through ``env.step``, a task's
episodes one after another), 2.2x; ML1 push and pick-place unchanged by the generalisation (12,049-12,388
against 12,099-12,392 and 12,516 against 12,079 steps/s). ML10 gains less than ML1 push: its ten skills are ten
groups of a few environments each.

The same command on reach with the batched step but every reset simulated (commit 3276881's sampler):
10,050 against 4,371 steps/s (2.3x); restoring the first reset's state saves the rest. With one episode
per task (``--trajectories 1``, no reset to save) at 3276881: reach 2.0x, push 5.0x, pick-place 5.0x.

Before fastmaml.rl.sawyer the lockstep sampler called each environment's ``step`` and ran at gymnasium's speed
(pick-place, 10 tasks: 1,835 against 1,848 steps/s): a Meta-World step is mostly the benchmark's own Python (the
contact scan of ``touching_object`` for an ``info`` entry the sampler never reads, about a third; scipy's
quaternion, a sixth; the reward's scalar numpy). The batched step computes the same observations, rewards and
success over all of a skill's environments at once (tests/test_rl_metaworld.py: equal to 1e-12), so the
sampler's time is now mostly MuJoCo's physics (a cProfile of reach: ``mj_step`` 60 %, ``mj_forward`` 10 %,
resets 9 %, fastmaml's Python and the policy the rest). Reach gains least: its own step has no contact scan and
a one-term reward.
"""

from __future__ import annotations

import argparse
import time

import numpy as np
import torch

from fastmaml.rl.metaworld import ML1, ML10
from fastmaml.rl.policies import GaussianPolicy, detach, sample


def policy_act(policy: GaussianPolicy, generator: torch.Generator):
    def act(obs: torch.Tensor):
        with torch.no_grad():
            output = detach(policy(obs))  # the expanded log-std keeps requires_grad under no_grad
        return sample(output, generator), output

    return act


def lockstep(family: ML1 | ML10, tasks: list[dict], policy: GaussianPolicy, trajectories: int, horizon: int) -> float:
    start = time.perf_counter()
    family.rollout(policy_act(policy, torch.Generator().manual_seed(0)), tasks, trajectories, horizon)
    return len(tasks) * trajectories * horizon / (time.perf_counter() - start)


def vector(envs, policy: GaussianPolicy, trajectories: int, horizon: int) -> float:
    act, start = policy_act(policy, torch.Generator().manual_seed(0)), time.perf_counter()
    for _ in range(trajectories):  # each task's episodes one after another, as the lockstep sampler runs them
        obs, _ = envs.reset()
        for _ in range(horizon):
            actions, _ = act(torch.as_tensor(obs, dtype=torch.float32))
            obs, *_ = envs.step(np.clip(actions.numpy(), -1, 1))
    return envs.num_envs * trajectories * horizon / (time.perf_counter() - start)


def profile_step(family: ML1 | ML10, task: dict, steps: int = 500) -> tuple[float, float]:
    """Seconds per step of one environment, and of its physics alone (5 mj_step and mj_rnePostConstraint)."""
    import mujoco

    env = family.make_env(task).unwrapped
    env.reset()
    actions = np.random.default_rng(0).uniform(-1, 1, (steps, 4))
    start = time.perf_counter()
    for a in actions:
        env.step(a)
    whole = (time.perf_counter() - start) / steps
    env.reset()
    start = time.perf_counter()
    for _ in range(steps):
        mujoco.mj_step(env.model, env.data, nstep=env.frame_skip)
        mujoco.mj_rnePostConstraint(env.model, env.data)
    return whole, (time.perf_counter() - start) / steps


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--benchmark", choices=("ml1", "ml10"), default="ml1",
                        help="ml1: one skill (--task); ml10: ML10's training tasks, spread over its 10 skills")
    parser.add_argument("--task", default="pick-place", help="ML1's skill")
    parser.add_argument("--tasks", type=int, default=10, help="the meta-batch: one environment per task")
    parser.add_argument("--trajectories", type=int, default=10, help="episodes per task (the recipes': 10)")
    parser.add_argument("--horizon", type=int, default=500)
    parser.add_argument("--threads", type=int, default=1, help="threads for fastmaml's physics (0: every core)")
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    import gymnasium

    # one thread for the tiny policy: on a loaded machine torch's default threads wait on each other (an MLP
    # call of 0.1 ms took 2.4 ms with 2 threads on the shared 2-core machine), for both samplers alike
    torch.set_num_threads(1)
    if args.benchmark == "ml10":
        family: ML1 | ML10 = ML10(horizon=args.horizon, threads=args.threads)
    else:
        family = ML1(args.task, horizon=args.horizon, threads=args.threads)
    tasks = family.sample_tasks(args.tasks, torch.Generator().manual_seed(0))
    torch.manual_seed(0)
    policy = GaussianPolicy(39, 4, (100, 100), "tanh")
    envs = gymnasium.vector.SyncVectorEnv([lambda task=task: family.make_env(task) for task in tasks])
    family.rollout(policy_act(policy, torch.Generator()), tasks, 1, 1)  # its environments built, as envs' are
    ours, theirs = [], []
    for _ in range(args.repeats):  # alternated: the machine's load falls on both alike
        ours.append(lockstep(family, tasks, policy, args.trajectories, args.horizon))
        theirs.append(vector(envs, policy, args.trajectories, args.horizon))
    whole, physics = profile_step(family, tasks[0])
    name = "ML10" if args.benchmark == "ml10" else f"ML1 {args.task}"
    print(f"{name}, {args.tasks} tasks x {args.trajectories} episodes x {args.horizon} steps, "
          f"best of {args.repeats}")
    print(f"fastmaml lockstep sampler   {max(ours):,.0f} steps/s   ({family.threads} thread(s) for the physics)")
    print(f"gymnasium SyncVectorEnv     {max(theirs):,.0f} steps/s   ({max(ours) / max(theirs):.1f}x)")
    print(f"one {tasks[0]['skill']} step: {whole * 1e6:.0f} us, of which physics (5 mj_step) {physics * 1e6:.0f} us "
          f"({physics / whole:.0%}), the rest Meta-World's Python")


if __name__ == "__main__":
    main()
