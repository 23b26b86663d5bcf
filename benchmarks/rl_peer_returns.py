"""Post-adaptation return of fastmaml's MAML-TRPO against learn2learn's ``examples/rl/maml_trpo.py`` after
the same number of meta-iterations, from the same initial policy, on the same held-out goals.

1. The peer runs as published and saves its policy after each update (in the peer venv)::

       /work/peers-venv/bin/python benchmarks/rl_peer.py --iterations 10 --out runs/peer/rl_peer.jsonl \\
           --save-policies runs/peer/policies

2. This script (in fastmaml's environment) loads the peer's INITIAL policy (``policy-0.pt``: its 2x100
   ReLU Gaussian, xavier-initialised from seed 42; the layout is fastmaml's ``GaussianPolicy``, ``sigma``
   being ``log_std``) into fastmaml's learner, meta-trains it the same number of iterations with the
   peer's settings where they are knobs (gamma 0.95, GAE tau 1, max-KL 0.01, 10 CG iterations, damping
   1e-5, backtracking 0.5, 20 tasks x 20 episodes x 100 steps, one inner step), then evaluates both
   meta-learned policies with fastmaml's protocol: the same 40 goals from the test stream (never trained
   on by either), the same sampling noise, average return before and after 1-3 inner steps::

       PYTHONPATH=src python benchmarks/rl_peer_returns.py --peer-policies runs/peer/policies --iterations 10

The inner step each policy was meta-trained for: the peer's adaptation loss averages ``log_prob`` over the
action's 2 dimensions where fastmaml's sums them, so the peer's step of 0.1 is fastmaml's step of 0.05; its
policy is evaluated with that step (and, for the record, with 0.1).
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch

from fastmaml.rl import config as rlcfg
from fastmaml.rl.evaluate import evaluate, format_table
from fastmaml.rl.train import TEST_STREAM, build_family, build_learner, meta_step

PEER_SETTINGS = ["gamma=0.95", "gae_lambda=1.0", "max_kl=0.01", "cg_iters=10", "cg_damping=0.00001", "ls_ratio=0.5",
                 "ls_steps=15", "meta_batch_size=20", "trajectories=20", "horizon=100", "inner_steps=1"]


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
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--out", type=Path, default=None, help="also write the results here (JSON)")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    config = rlcfg.resolve("nav2d", [*PEER_SETTINGS, f"seed={args.seed}", f"iterations={args.iterations}"])
    family = build_family(config)
    ours = build_learner(config, family, args.seed)
    ours.policy.load_state_dict(peer_state(args.peer_policies / "policy-0.pt"))
    generator = torch.Generator().manual_seed(args.seed)
    curve, start = [], time.perf_counter()
    for i in range(args.iterations):
        record = meta_step(ours, family, config, generator, None, i + 1, "")
        curve.append(record["return_after"])
        print(json.dumps({k: record[k] for k in ("iteration", "return_before", "return_after", "seconds")}),
              flush=True)
    print(f"# fastmaml: {args.iterations} iterations in {time.perf_counter() - start:.1f} s")

    methods = {"fastmaml": ours}
    for name, step in (("learn2learn", 0.05), ("learn2learn, step 0.1", 0.1)):
        peer_config = rlcfg.resolve("nav2d", [*PEER_SETTINGS, f"inner_lr={step}"])
        peer = build_learner(peer_config, family, args.seed)
        peer.policy.load_state_dict(peer_state(args.peer_policies / f"policy-{args.iterations}.pt"))
        methods[name] = peer
    results = evaluate(methods, family, args.eval_tasks, 3, args.eval_seed + TEST_STREAM)
    print(f"# after {args.iterations} meta-iterations from the peer's initial policy; "
          f"{args.eval_tasks} held-out goals (seed {args.eval_seed} + {TEST_STREAM})")
    print(format_table(results))
    if args.out is not None:
        args.out.write_text(json.dumps({"fastmaml_curve": curve, **results}, indent=1))


if __name__ == "__main__":
    main()
