"""Sampler speed on HalfCheetah: environment steps per second for one meta-batch of trajectories.

The workload is one sampling pass of the MAML paper's HalfCheetah protocol: ``--tasks`` tasks (40) x
``--trajectories`` (20) x ``--horizon`` (100) steps with the paper's policy (2 x 100 ReLU, Gaussian),
the same policy weights for every sampler, actions drawn by the sampler from the policy. Samplers:

- ``fastmaml``: ``HalfCheetahVel.rollout``, what ``fastmaml train cheetah-vel`` runs: every trajectory of
  every task in lockstep, one ``mujoco.rollout`` call per step on MuJoCo's thread pool (``--threads``).
- ``gymnasium-sync``: gymnasium's ``SyncVectorEnv`` over one ``HalfCheetah-v5`` per trajectory of all
  tasks (tasks x trajectories envs in one vector, the policy once per step for all of them), the task's
  reward wrapper of ``HalfCheetahVel.make_env``.
- ``subprocess``: learn2learn's sampler pattern (its ``examples/rl/maml_trpo.py``: one worker process per
  core behind an async vector env, the task's episodes split over the workers, the policy evaluated on
  the workers' observations each step), here with gymnasium's ``AsyncVectorEnv`` — learn2learn's own
  vector env needs old gym and a mujoco-py HalfCheetah, which do not install on this Python.

Run from the repository root (commit and results: benchmarks/RESULTS.md, "MuJoCo sampler")::

    PYTHONPATH=src python benchmarks/rl_sampler.py --repeats 3
"""

from __future__ import annotations

import argparse
import os
import platform
import subprocess
import time

import numpy as np
import torch

from fastmaml.rl import policies
from fastmaml.rl._gym import gymnasium
from fastmaml.rl.locomotion import HalfCheetahVel


def make_policy(seed: int = 0) -> policies.GaussianPolicy:
    torch.manual_seed(seed)
    return policies.GaussianPolicy(17, 6, hidden=(100, 100))


def act_fn(policy, generator):
    def act(obs: torch.Tensor):
        with torch.no_grad():
            output = policy(obs)
        return policies.sample(output, generator), output

    return act


def run_fastmaml(family, policy, tasks, trajectories, horizon, seed):
    generator = torch.Generator().manual_seed(seed)
    episodes = family.rollout(act_fn(policy, generator), tasks, trajectories, horizon, torch.float32, generator)
    return len(tasks) * trajectories * horizon, float(episodes.returns().mean())


def _vector_rollout(vector, policy, generator, horizon, episodes_per_env, seed):
    returns = []
    for episode in range(episodes_per_env):
        obs, _ = vector.reset(seed=seed + episode)
        total = np.zeros(vector.num_envs)
        for _ in range(horizon):
            actions = policies.sample(policy(torch.as_tensor(obs, dtype=torch.float32)), generator)
            obs, reward, _, _, _ = vector.step(np.clip(actions.numpy(), -1, 1))
            total += reward
        returns.append(total)
    return float(np.mean(returns))


def run_sync(family, policy, tasks, trajectories, horizon, seed):
    gym = gymnasium()
    fns = [(lambda task=task: family.make_env(task)) for task in tasks for _ in range(trajectories)]
    vector = gym.vector.SyncVectorEnv(fns, autoreset_mode=gym.vector.AutoresetMode.DISABLED)
    with torch.no_grad():
        mean = _vector_rollout(vector, policy, torch.Generator().manual_seed(seed), horizon, 1, seed)
    vector.close()
    return len(tasks) * trajectories * horizon, mean


def run_subprocess(family, policy, tasks, trajectories, horizon, seed, workers):
    gym = gymnasium()
    steps, means = 0, []
    generator = torch.Generator().manual_seed(seed)
    vector = None
    with torch.no_grad():
        for task in tasks:  # learn2learn sets the task on its workers, then samples its episodes
            if vector is not None:
                vector.close()
            vector = gym.vector.AsyncVectorEnv([(lambda task=task: family.make_env(task))] * workers,
                                               autoreset_mode=gym.vector.AutoresetMode.DISABLED)
            per_worker = -(-trajectories // workers)
            means.append(_vector_rollout(vector, policy, generator, horizon, per_worker, seed))
            steps += per_worker * workers * horizon
    vector.close()
    return steps, float(np.mean(means))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--tasks", type=int, default=40)
    parser.add_argument("--trajectories", type=int, default=20)
    parser.add_argument("--horizon", type=int, default=100)
    parser.add_argument("--threads", type=int, default=0, help="MuJoCo threads of the fastmaml sampler (0: all)")
    parser.add_argument("--workers", type=int, default=os.cpu_count() or 1, help="processes of the subprocess one")
    parser.add_argument("--samplers", nargs="+", default=["fastmaml", "gymnasium-sync", "subprocess"])
    parser.add_argument("--repeats", type=int, default=3, help="passes per sampler; the fastest is reported")
    args = parser.parse_args()
    torch.set_num_threads(1)  # the policy: one thread, so that MuJoCo's threads have the cores
    family = HalfCheetahVel(threads=args.threads)
    tasks = family.sample_tasks(args.tasks, torch.Generator().manual_seed(0))
    policy = make_policy()
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True).stdout.strip()
    print(f"# commit {commit}, {platform.machine()}, {os.cpu_count()} cpus, torch {torch.__version__}, "
          f"{args.tasks} tasks x {args.trajectories} trajectories x {args.horizon} steps, best of {args.repeats}")
    print("| sampler | env steps / s | seconds per meta-batch | mean return (random-init policy) |")
    print("|---|---:|---:|---:|")
    for name in args.samplers:
        best = None
        for repeat in range(args.repeats):
            start = time.perf_counter()
            if name == "fastmaml":
                steps, mean = run_fastmaml(family, policy, tasks, args.trajectories, args.horizon, repeat)
            elif name == "gymnasium-sync":
                steps, mean = run_sync(family, policy, tasks, args.trajectories, args.horizon, repeat)
            else:
                steps, mean = run_subprocess(family, policy, tasks, args.trajectories, args.horizon, repeat,
                                             args.workers)
            seconds = time.perf_counter() - start
            if best is None or seconds < best[0]:
                best = (seconds, steps, mean)
        seconds, steps, mean = best
        print(f"| {name} | {steps / seconds:,.0f} | {seconds:.2f} | {mean:.1f} |", flush=True)


if __name__ == "__main__":
    main()
