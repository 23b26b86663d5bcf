"""Post-adaptation return of fastmaml's MAML-TRPO against learn2learn's ``examples/rl/maml_trpo.py`` after
the same number of meta-iterations, from the same initial policy, on the same held-out goals.

1. The peer runs as published and saves its policy after each update (in the peer venv)::

       /work/peers-venv/bin/python benchmarks/rl_peer.py --iterations 10 --out runs/peer/rl_peer.jsonl \\
           --save-policies runs/peer/policies

2. This script (in fastmaml's environment) loads the peer's INITIAL policy (``policy-0.pt``: its 2x100
   ReLU Gaussian, xavier-initialised from seed 42; the layout is fastmaml's ``GaussianPolicy``, ``sigma``
   being ``log_std``) into fastmaml's learner, meta-trains it the same number of iterations with the
   peer's settings where they are knobs (gamma 0.95, GAE tau 1, max-KL 0.01, 10 CG iterations, damping
   1e-5, backtracking 0.5, 20 tasks x 20 episodes x 100 steps, one inner step of the peer's size), then
   evaluates both
   meta-learned policies with fastmaml's protocol: the same 40 goals from the test stream (never trained
   on by either), the same sampling noise, average return before and after 1-3 inner steps::

       PYTHONPATH=src python benchmarks/rl_peer_returns.py --peer-policies runs/peer/policies --iterations 10

The action scale: the script wraps its environment in cherry's ``ActionSpaceScaler``, which maps the
policy's action a to 0.1 * a before the environment clips it to [-0.1, 0.1] (as rllab's ``normalize`` did
for the MAML paper), whereas fastmaml's ``Navigation2D`` (like pytorch-maml-rl's) takes the action
unscaled. So that both libraries meet the same MDP, both policies act here through :class:`Scaled`, which
multiplies the Gaussian's mean and standard deviation by 0.1: the same actions as the peer's wrapper, and
the same log-likelihood gradients with respect to the network's weights (log N(0.1 a; 0.1 mu, 0.1 sigma)
differs from log N(a; mu, sigma) by a constant).

The inner step: the peer's adaptation loss averages ``log_prob`` over the action's 2 dimensions where
fastmaml's sums them, so the peer's step of 0.1 is fastmaml's step of 0.05. Both are meta-trained and
evaluated with that step (``--inner-lr``; the nav2d recipe's 0.1 is pytorch-maml-rl's, on summed log-probs).
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import math

import torch
from torch import nn

from fastmaml.rl import config as rlcfg
from fastmaml.rl.evaluate import evaluate, format_table
from fastmaml.rl.learner import MetaRL
from fastmaml.rl.train import TEST_STREAM, build_family, build_learner, meta_step

PEER_SETTINGS = ["gamma=0.95", "gae_lambda=1.0", "max_kl=0.01", "cg_iters=10", "cg_damping=0.00001", "ls_ratio=0.5",
                 "ls_steps=15", "meta_batch_size=20", "trajectories=20", "horizon=100", "inner_steps=1"]


class Scaled(nn.Module):
    """A Gaussian policy whose actions are ``scale`` times the wrapped policy's (mean and std alike)."""

    def __init__(self, policy: nn.Module, scale: float = 0.1) -> None:
        super().__init__()
        self.policy, self.log_scale = policy, math.log(scale)

    def forward(self, obs: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        mean, log_std = self.policy(obs)
        return mean * math.exp(self.log_scale), log_std + self.log_scale


def scaled_learner(config, family, seed: int, state: dict, scale: float) -> MetaRL:
    """fastmaml's learner for ``config`` with the policy acting through :class:`Scaled`, from ``state``."""

    def wrap(policy: nn.Module) -> nn.Module:
        policy.load_state_dict(state)
        return Scaled(policy, scale)

    return build_learner(config, family, seed, wrap)


def peer_state(path: Path) -> dict:
    """The peer's ``DiagNormalPolicy`` state_dict in ``GaussianPolicy``'s names."""
    state = torch.load(path, map_location="cpu")
    return {("log_std" if name == "sigma" else name): value for name, value in state.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--peer-policies", type=Path, required=True, help="rl_peer.py --save-policies folder")
    parser.add_argument("--iterations", type=int, required=True)
    parser.add_argument("--seed", type=int, default=42, help="fastmaml's task and sampling seed (the peer's: 42)")
    parser.add_argument("--eval-seed", type=int, default=0, help="the held-out goals: seed + the test stream")
    parser.add_argument("--eval-tasks", type=int, default=40)
    parser.add_argument("--scale", type=float, default=0.1,
                        help="action scale of both policies (0.1: the peer's ActionSpaceScaler; 1: unscaled)")
    parser.add_argument("--inner-lr", type=float, default=0.05, help="0.05: the peer's step (see above)")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--out", type=Path, default=None, help="also write the results here (JSON)")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    settings = [*PEER_SETTINGS, f"inner_lr={args.inner_lr}"]
    config = rlcfg.resolve("nav2d", [*settings, f"seed={args.seed}", f"iterations={args.iterations}"])
    family = build_family(config)
    ours = scaled_learner(config, family, args.seed, peer_state(args.peer_policies / "policy-0.pt"), args.scale)
    generator = torch.Generator().manual_seed(args.seed)
    curve, start = [], time.perf_counter()
    for i in range(args.iterations):
        record = meta_step(ours, family, config, generator, None, i + 1, "")
        curve.append(record["return_after"])
        print(json.dumps({k: record[k] for k in ("iteration", "return_before", "return_after", "seconds")}),
              flush=True)
    print(f"# fastmaml: {args.iterations} iterations in {time.perf_counter() - start:.1f} s")

    peer = scaled_learner(config, family, args.seed, peer_state(args.peer_policies / f"policy-{args.iterations}.pt"),
                          args.scale)
    methods = {"fastmaml": ours, "learn2learn": peer}
    results = evaluate(methods, family, args.eval_tasks, 3, args.eval_seed + TEST_STREAM)
    print(f"# after {args.iterations} meta-iterations from the peer's initial policy; "
          f"{args.eval_tasks} held-out goals (seed {args.eval_seed} + {TEST_STREAM})")
    print(format_table(results))
    if args.out is not None:
        args.out.write_text(json.dumps({"fastmaml_curve": curve, **results}, indent=1))


if __name__ == "__main__":
    main()
