"""learn2learn's ``examples/rl/maml_trpo.py`` (MAML-TRPO on its Particles2D 2D navigation) timed per
meta-iteration, for the side-by-side in benchmarks/RESULTS.md ("Meta-RL").

The peer runs as published (``/work/shared/peers/learn2learn-rl/``: its policy, environment and
defaults: 20 tasks x 20 episodes x 100 steps, 2x100 ReLU policy, one inner step of 0.1, 10
sampling worker processes), with two changes so that it runs with the releases pip installs, both
made here without editing the script:

1. cherry-rl 0.2.0 moved the wrappers the script calls ``ch.envs.ActionSpaceScaler``, ``ch.envs.Torch``
   and ``ch.envs.Runner`` to ``cherry.wrappers``; they are aliased back.
2. Its episodes never end: ``Particles2DEnv.step`` returns ``done`` as a numpy bool, and gym 0.25.2's
   ``TimeLimit`` only truncates when ``terminated is False`` (an identity test a numpy ``False`` fails),
   so no episode ever reaches its 100-step limit and cherry's ``Runner`` samples forever (this is why
   the first meta-iteration "never finished"). ``done`` is converted to a Python bool.

gym is pinned to 0.25.2, the last release with the 4-tuple ``step`` API the script uses.

Run in the peer venv (learn2learn, cherry-rl, gym==0.25.2), from the repository root::

    nice -n 10 /work/peers-venv/bin/python benchmarks/rl_peer.py --iterations 3 --out runs/rl_peer.jsonl

Each line of ``--out``: the iteration, wall and CPU seconds since the start (of the main process, which
runs the policy and the TRPO update, and, separately, of its worker processes, which step the
environments; read from /proc), and the peer's printed ``adaptation_reward`` (mean return of the
post-adaptation episodes of that iteration's tasks). On a shared CPU compare CPU seconds: wall time there
measures the other users too.
"""

from __future__ import annotations

import argparse
import io
import json
import os
import sys
import time
from pathlib import Path

PEER = Path(__file__).resolve().parents[2] / "shared" / "peers" / "learn2learn-rl"


class _Clock(io.TextIOBase):
    """Stdout that notes when the script prints each iteration's reward."""

    def __init__(self, out: Path, save_policies: Path | None = None, last: int | None = None) -> None:
        self.out, self.buffer, self.start, self.iteration = out, "", time.perf_counter(), None
        self.save_policies, self.last = save_policies, last

    def write(self, text: str) -> int:
        self.buffer += text
        while "\n" in self.buffer:
            line, self.buffer = self.buffer.split("\n", 1)
            if line.startswith("Iteration"):
                self.iteration = int(line.split()[1])
            elif line.startswith("adaptation_reward"):
                now = time.perf_counter()
                record = {"iteration": self.iteration, "seconds_since_start": now - self.start,
                          "cpu_seconds_since_start": time.process_time(),
                          "worker_cpu_seconds_since_start": _children_cpu(),
                          "adaptation_reward": float(line.split()[1])}
                with self.out.open("a") as f:
                    f.write(json.dumps(record) + "\n")
                sys.__stdout__.write(json.dumps(record) + "\n")
                sys.__stdout__.flush()
                if self.save_policies is not None and POLICIES:
                    # printed after sampling, before this iteration's update: the policy has had
                    # `iteration` TRPO updates (policy-0.pt is the initialisation)
                    import torch

                    torch.save(POLICIES[0].state_dict(), self.save_policies / f"policy-{self.iteration}.pt")
                if self.iteration == self.last:
                    raise _Done
        return len(text)


POLICIES: list = []  # the script's policy (its TRPO updates are in place), recorded at construction


class _Done(Exception):
    """Raised once the last requested policy is saved: the script's next update would be wasted work."""


def _children_cpu() -> float:
    """CPU seconds (user + system) of this process's live children, from /proc/PID/stat."""
    total, me, tick = 0.0, os.getpid(), os.sysconf("SC_CLK_TCK")
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            fields = open(f"/proc/{entry}/stat").read().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[1]) == me:  # fields[1]: the parent pid; fields[11], fields[12]: utime, stime
            total += (int(fields[11]) + int(fields[12])) / tick
    return total


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--iterations", type=int, default=3)
    parser.add_argument("--seed", type=int, default=42)
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--meta-bsz", type=int, default=20, help="the script's meta_bsz (tasks per iteration)")
    parser.add_argument("--adapt-bsz", type=int, default=20, help="the script's adapt_bsz (episodes per task)")
    parser.add_argument("--workers", type=int, default=10, help="the script's num_workers")
    parser.add_argument("--save-policies", type=Path, default=None,
                        help="folder for policy-K.pt, the policy's state_dict after K updates, K = 0..iterations "
                             "(benchmarks/rl_peer_returns.py evaluates them); the run stops after the last")
    args = parser.parse_args()
    import cherry

    for name in ("ActionSpaceScaler", "Torch", "Runner"):
        setattr(cherry.envs, name, getattr(cherry.wrappers, name))
    from learn2learn.gym.envs.particles import particles_2d

    step = particles_2d.Particles2DEnv.step

    def step_with_python_bool(self, action):
        state, reward, done, info = step(self, action)
        return state, reward, bool(done), info

    # patched before the script forks its AsyncVectorEnv workers, which inherit it
    particles_2d.Particles2DEnv.step = step_with_python_bool
    sys.path.insert(0, str(PEER))
    import maml_trpo

    class RecordedPolicy(maml_trpo.DiagNormalPolicy):
        def __init__(self, *args, **kwargs):
            super().__init__(*args, **kwargs)
            POLICIES.append(self)

    maml_trpo.DiagNormalPolicy = RecordedPolicy  # deepcopies (the per-task clones) skip __init__
    if args.save_policies is not None:
        args.save_policies.mkdir(parents=True, exist_ok=True)

    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text("")
    clock = _Clock(args.out, args.save_policies, args.iterations if args.save_policies is not None else None)
    sys.stdout = clock
    try:
        # Each record is written when the script prints the iteration's reward, after sampling; the TRPO
        # update of iteration k ends when iteration k+1's sampling starts, so per-iteration time is the
        # difference of consecutive records (the first one also includes the start-up).
        maml_trpo.main(num_iterations=args.iterations + 1, seed=args.seed, meta_bsz=args.meta_bsz,
                       adapt_bsz=args.adapt_bsz, num_workers=args.workers)
    except _Done:
        sys.stdout = sys.__stdout__
        import multiprocessing

        for worker in multiprocessing.active_children():  # the script's sampling workers
            worker.terminate()
        os._exit(0)  # skip the script's remaining teardown
    finally:
        sys.stdout = sys.__stdout__


if __name__ == "__main__":
    main()
