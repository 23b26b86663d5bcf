"""2D navigation's drift: why the one-step training return fell with more meta-training, and the fix.

The nav2d training loop (the recipe's MAML-TRPO, the same random streams as ``fastmaml train``, so its
``return_before``/``return_after`` equal the CLI's metrics.jsonl) with per-iteration diagnostics: the learned
log-std, the inner step's KL from the pre-update policy, the share of sampled actions beyond the action bound,
the adapted mean at each task's goal (in units of the bound); ``policy-N.pt`` every 25 iterations.
``--probe`` then measures counterfactuals on those policies (40 goals of the meta-test stream, seed 0 +
1,000,003): the one-step return as trained, with half the inner step, acting with the adapted mean (no
sampling noise), with the log-std raised to -1, and the adapted mean at the goal. ``--summary`` prints a
metrics.jsonl by 25 iterations.

    PYTHONPATH=src python benchmarks/nav2d_drift.py --out /work/runs/nav2d-drift-base \
        iterations=250 'env_options={normalized_actions: false}'     # the old recipe: raw action units
    PYTHONPATH=src python benchmarks/nav2d_drift.py --probe /work/runs/nav2d-drift-base \
        'env_options={normalized_actions: false}'
    PYTHONPATH=src python benchmarks/nav2d_drift.py --out /work/runs/nav2d-drift-norm iterations=200   # the recipe
    fastmaml train nav2d threads=1 seed=0 --out /work/runs/nav2d-fixed                                # the same, 500
    PYTHONPATH=src python benchmarks/nav2d_drift.py --summary /work/runs/nav2d-fixed/metrics.jsonl
    PYTHONPATH=src python benchmarks/nav2d_drift.py --steps FOLDER [--later 0.5]   # 0-3 steps of its policy-N.pt

Seed 0, one thread, CPU shared with other jobs (2.6-17 s per iteration). The old recipe's curve: ``src/`` of
``2b16d9e`` (the raw MDP is unchanged since); the fixed recipe's: ``src/`` of ``2b16d9e`` with ``af32530``,
``3258ee9`` and the recipe of ``9c16809``, through ``fastmaml train`` (its first 77 iterations, run through
this script too, gave the same returns bit for bit; ``policy-N.pt`` copied from its checkpoints).

**The old recipe (raw action units: the move is the action clipped to [-0.1, 0.1], the policy's initial std
1.0 is ten times that bound)**, stopped after 170 iterations; training tasks, mean of each block:

    iterations   before   after    log-std          inner KL  clipped
       1-25     -46.82  -27.98   [-0.11, -0.10]       2.1     0.92
      26-50     -39.15  -15.99   [-0.46, -0.48]      12.6     0.92
      51-75     -38.47  -16.34   [-0.79, -0.83]      23.4     0.91
      76-100    -39.85  -18.53   [-1.07, -1.08]      36.6     0.91
     101-125    -39.66  -19.60   [-1.23, -1.26]      51.2     0.92
     126-150    -37.76  -19.15   [-1.33, -1.36]      63.4     0.94
     151-170    -38.92  -20.14   [-1.39, -1.43]      76.6     0.94

The one-step return peaks at -16.0 and falls 3.55 points per 100 iterations after iteration 25 (the issue's
-14 then -22 by 500, 95 % intervals of a block +-0.7). ``--probe`` on its policies (meta-test goals):

    iteration  log-std          one step  half step  mean action  log-std -1  |mean| at goal / bound
           25  [-0.29, -0.28]    -14.89     -22.28       -12.69      -36.32      5.66
           50  [-0.65, -0.67]    -15.03     -22.31       -14.37      -16.23      8.52
           75  [-0.96, -0.98]    -14.66     -22.70       -15.23      -14.89      8.92
          100  [-1.18, -1.20]    -17.03     -24.28       -17.88      -17.85     11.38
          125  [-1.28, -1.31]    -17.14     -24.00       -17.73      -17.52     11.94
          150  [-1.37, -1.42]    -18.02     -24.68       -18.54      -17.92     13.06

What it rules out. The inner step does not overshoot: its KL grows as 1/sigma^2 (2 to 77 nats) but half the
step is worse at every checkpoint. The falling log-std is not the cause: raising it to -1 at iteration 150
does not recover the loss (-17.9), and the fixed recipe's log-std falls as fast (-1.45 at 150, -1.62 at
200) without any drift. Not the metric: acting with the adapted mean, without noise, loses as much
(-14.4 to -18.5). Not an error in the meta-gradient or TRPO step: tests/test_rl_gradients.py checks the
meta-gradient against plain autograd and finite differences, the Fisher-vector product against an explicit
Hessian, and the line search; the MDP, not the estimator, changes between the two runs here.

The cause: the policy's Gaussian lives in raw action units where the bound is 0.1 and the initial std 1.0,
so 92 % of sampled actions are clipped all run long and the inner step moves the mean by about 28 bounds.
Where the mean is beyond the bound the clipped action, hence the return, no longer depends on it: neither
the inner nor the outer gradient pulls the adapted mean back inside the bound at the goal, and it grows
from 5.7 to 13 bounds. The adapted policy then cannot settle at the goal: it oscillates around it at full
speed, and the return falls with it.

**The fix: the paper's MDP.** cbfinn/maml_rl runs its point environment through rllab's ``normalize``
(actions in [-1, 1], the move 0.1 times the clipped action; learn2learn's example scales the same way with
cherry's ``ActionSpaceScaler``; pytorch-maml-rl, which the old recipe followed, does not), so the initial std
equals the bound. The recipe now sets ``env_options: {normalized_actions: true}``. Same seed and settings:

    iterations   before   after        iterations   before   after
       1-25     -43.00  -20.99         251-275    -38.77  -12.71
      26-50     -38.68  -12.44         276-300    -38.36  -12.89
      51-75     -37.94  -12.10         301-325    -38.39  -13.19
      76-100    -39.41  -13.37         326-350    -40.00  -12.92
     101-125    -39.26  -13.68         351-375    -39.10  -11.97
     126-150    -37.27  -12.79         376-400    -38.32  -12.82
     151-175    -38.07  -12.84         401-425    -36.31  -13.91
     176-200    -39.08  -12.86         426-450    -38.55  -12.98
     201-225    -37.38  -13.06         451-475    -38.18  -12.88
     226-250    -39.27  -12.32         476-500    -37.98  -12.51

Flat after iteration 25: the slope of the one-step return over iterations 26-500 is -0.02 +- 0.11 per 100
iterations (95 %); the last block, -12.51 +- 0.56, is within noise of the best, -11.97 +- 0.61 (351-375); the
mean of the last 20 iterations is -12.30 (the old recipe's 500-iteration run: -22.4). The log-std falls as
before (-1.45 at 150, -1.79 at 300, -2.06/-1.96 at 500), yet the adapted mean at the
goal stays inside the bound (``--probe``: 0.71, 0.62, 0.41, 0.47 bounds at 50, 150, 300, 500; one step on
200 meta-test goals -11.99, -13.69, -12.75, -13.30).

Meta-test of the 500-iteration run (``fastmaml train``'s own evaluation: 40 goals of the test stream, 20
trajectories per step, mean +- 95 % CI over goals; the baselines are 100 TRPO iterations on the mixture):

    method                       0 steps           1 steps           2 steps           3 steps
    maml                  -34.20 +- 4.61    -12.82 +- 2.34    -37.89 +- 9.83    -19.25 +- 3.01
    pretrained            -34.71 +- 4.58    -14.60 +- 3.14     -6.94 +- 1.45     -6.59 +- 1.69
    random                -70.57 +- 3.70    -65.44 +- 3.36    -62.20 +- 2.42    -59.25 +- 1.82
    oracle                 -0.43 +- 0.10     -0.43 +- 0.10     -0.43 +- 0.10     -0.43 +- 0.10
    maml - pretrained      +0.51 +- 1.34     +1.77 +- 3.95    -30.95 +- 9.96    -12.66 +- 3.57

One step: -12.82 +- 2.34 against the old recipe's -19.63 +- 3.40 (RESULTS.md's 500-iteration run). The
pretrained policy is far stronger in this MDP too (-14.60 after one step, was -25.18), so the paired margin
over it, +1.77 +- 3.95, is no longer significant (was +5.55 +- 2.40).

What remains: the second and third steps, which MAML does not meta-train here (one inner step), overshoot
once the log-std is small: with every step at inner_lr, as ``fastmaml eval`` takes them, two steps give
-37.89 at iteration 500 (-12.94 at 50, -25.69 at 150, -38.63 at 300), worse than one. The paper's own test
(cbfinn/maml_rl ``test_maml_point.py``) takes every step after the first at half the step size; so taken
(``--steps FOLDER --later 0.5``) the same policy gives -12.82, -11.37, -12.59 after 1, 2, 3 steps (iteration
50: -11.22, -4.48, -4.48), though its later steps still lose ground as the log-std falls (two steps -3.47 at
75, -6.25 at 150, -11.20 at 300). The old recipe's policies did not overshoot (iteration 150: -18.57, -11.24,
-11.43 with equal steps): their saturated mean hid it.

A floor on the log-std trades the one for the other (``--min-log-std -0.5``, projected after each outer step,
200 iterations, the same task stream): two and three equal steps stay good (-8.70 and -7.27 at iteration 200;
halved later steps -4.89, -4.14) and one meta-test step holds (-11.43), but the one-step training return falls
below the unfloored run's on the same tasks, by 0.19 +- 0.14 at 26-50 growing to 1.66 +- 0.43 at 176-200
(blocks -12.62, -12.82, -14.22, -14.43, -13.32, -14.08, -14.52): not adopted.
"""

from __future__ import annotations

import argparse
import json
import random
import time
from dataclasses import fields, replace
from pathlib import Path

import numpy as np
import torch

from fastmaml.rl import config as rlcfg
from fastmaml.rl import policies
from fastmaml.rl.episodes import Episodes
from fastmaml.rl.sampler import policy_output, sample_tasks
from fastmaml.rl.train import TEST_STREAM, build_family, build_learner, trpo_config
from fastmaml.rl.trpo import trpo_step


def diagnostics(learner, tasks: list, train, valid, bound: float) -> dict:
    """The inner step's size, the adapted mean at the goal and the action clipping, measured on this
    iteration's tasks and episodes (in units of the action bound where it says so)."""
    out: dict = {}
    params = learner.meta_params()
    log_std = learner.policy.log_std.detach() if hasattr(learner.policy, "log_std") else None
    if log_std is not None:
        out["log_std"] = [round(float(v), 4) for v in log_std]
    if train:
        adapted = learner.adapt_tasks(params, train)
        obs, mask = train[0].observations, train[0].mask
        before = train[0].outputs
        with torch.no_grad():
            after = policies.detach(policy_output(learner.policy, adapted, obs, batched=True))
            goals = torch.tensor([task["goal"] for task in tasks], dtype=obs.dtype).unsqueeze(1)
            at_goal = policy_output(learner.policy, adapted, goals, batched=True)[0]
        kl = (policies.kl(before, after) * mask).sum() / mask.sum()
        shift = ((after[0] - before[0]).norm(dim=-1) * mask).sum() / mask.sum()
        out.update(inner_kl=float(kl), inner_shift=float(shift) / bound,
                   goal_mean=float(at_goal.abs().mean()) / bound)
    mean, mask = valid.outputs[0], valid.mask.unsqueeze(-1)
    out["mean_abs_mu"] = float((mean.abs() * mask).sum() / mask.sum() / mean.shape[-1]) / bound
    clipped = (valid.actions.abs() > bound).to(mask.dtype)
    out["clipped"] = float((clipped * mask).sum() / mask.sum() / mean.shape[-1])
    return out


def outer_step(learner, config, train, valid):
    """The recipe's TRPO step on this meta-batch, as ``fastmaml train`` takes it."""
    return trpo_step(lambda p: learner.surrogate(p, train, valid), learner.meta_params(), trpo_config(config),
                     fisher=lambda p: learner.fisher(p, train, valid))


def _mean(block: list[dict], key: str) -> float:
    values = [r[key] for r in block if key in r]
    return float(np.mean(values)) if values else float("nan")


def summary(path: Path, every: int = 25) -> None:
    """The training curve of a ``metrics.jsonl`` (this script's or ``fastmaml train``'s), in blocks of ``every``."""
    records = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    print("iterations   before   after    log-std          inner KL  clipped")
    for start in range(0, len(records), every):
        block = records[start:start + every]
        log_std = np.mean([r["log_std"] for r in block], 0) if "log_std" in block[0] else [np.nan, np.nan]
        print(f"{block[0]['iteration']:4d}-{block[-1]['iteration']:<4d}  {_mean(block, 'return_before'):7.2f} "
              f"{_mean(block, 'return_after'):7.2f}   [{log_std[0]:+.2f}, {log_std[1]:+.2f}]  "
              f"{_mean(block, 'inner_kl'):8.1f}  {_mean(block, 'clipped'):7.2f}")


def probe(folder: Path, config: rlcfg.RLConfig, tasks_count: int = 40) -> None:
    """Counterfactuals on the ``policy-N.pt`` a training run saved: the one-step return on fresh goals as
    trained, with half the inner step, acting with the adapted mean, with the log-std raised to -1; and the
    adapted mean at the goal in units of the action bound. Every column sees the same goals and noise."""
    family = build_family(config)
    bound = getattr(family, "bound", 0.1)
    tasks = sample_tasks(family, tasks_count, torch.Generator().manual_seed(config.seed + TEST_STREAM))
    goals = torch.tensor([task["goal"] for task in tasks]).unsqueeze(1)
    print("iteration  log-std          one step  half step  mean action  log-std -1  |mean| at goal / bound")
    for path in sorted(folder.glob("policy-*.pt"), key=lambda p: int(p.stem.split("-")[1])):
        state = torch.load(path)

        def one_step(inner_lr: float = config.inner_lr, log_std: float | None = None, mean_action: bool = False,
                     state: dict = state) -> tuple[float, float]:
            learner = build_learner(replace(config, inner_lr=inner_lr), family, config.seed)
            learner.policy.load_state_dict(state)
            if log_std is not None:
                with torch.no_grad():
                    learner.policy.log_std.fill_(log_std)
            generator = torch.Generator().manual_seed(7)
            train, valid = learner.sample_meta_batch(family, tasks, generator)
            adapted = learner.adapt_tasks(learner.meta_params(), train)
            with torch.no_grad():
                at_goal = float(policy_output(learner.policy, adapted, goals.to(valid.observations.dtype),
                                              batched=True)[0].abs().mean()) / bound
            if not mean_action:
                return float(valid.returns().mean()), at_goal

            def act(obs: torch.Tensor):
                with torch.no_grad():
                    output = policies.detach(policy_output(learner.policy, adapted, obs, batched=True))
                return output[0], output

            return float(family.rollout(act, tasks, config.trajectories, config.horizon).returns().mean()), at_goal

        trained, at_goal = one_step()
        log_std = state["log_std"].tolist()
        print(f"{path.stem.split('-')[1]:>9}  [{log_std[0]:+.2f}, {log_std[1]:+.2f}]  {trained:8.2f}  "
              f"{one_step(config.inner_lr / 2)[0]:9.2f}  {one_step(mean_action=True)[0]:11.2f}  "
              f"{one_step(log_std=-1.0)[0]:10.2f}  {at_goal:8.2f}", flush=True)


def _task(episodes: Episodes, i: int) -> Episodes:
    """Task ``i`` of a meta-batch's episodes, keeping a task dimension of 1."""
    def pick(value):
        if value is None:
            return None
        return tuple(v[i:i + 1] for v in value) if isinstance(value, tuple) else value[i:i + 1]

    return Episodes(*(pick(getattr(episodes, f.name)) for f in fields(Episodes)))


def steps(folder: Path, config: rlcfg.RLConfig, later: float, tasks_count: int = 40, count: int = 3) -> None:
    """The meta-test return after 0..``count`` inner steps of each ``policy-N.pt`` (``fastmaml eval``'s goals
    and noise), the first step at ``inner_lr`` and every later one at ``later`` times it (1: ``fastmaml
    eval``; 0.5: the paper's test, cbfinn/maml_rl's ``test_maml_point.py``)."""
    family = build_family(config)
    tasks = sample_tasks(family, tasks_count, torch.Generator().manual_seed(config.seed + TEST_STREAM))
    print(f"iteration  returns after 0..{count} steps (later steps at {later} x inner_lr)")
    for path in sorted(folder.glob("policy-*.pt"), key=lambda p: int(p.stem.split("-")[1])):
        first = build_learner(config, family, config.seed)
        then = build_learner(replace(config, inner_lr=config.inner_lr * later), family, config.seed)
        for learner in (first, then):
            learner.policy.load_state_dict(torch.load(path))
        generator = torch.Generator().manual_seed(config.seed + TEST_STREAM + 1)
        current = {n: p.detach().unsqueeze(0).expand(len(tasks), *p.shape) for n, p in first.params().items()}
        returns = []
        for k in range(count + 1):
            episodes = first.sample(family, tasks, current, generator, batched=True)
            returns.append(float(episodes.returns().mean()))
            if k < count:
                learner = first if k == 0 else then
                adapted = [learner.adapt_tasks({n: p[i] for n, p in current.items()}, [_task(episodes, i)])
                           for i in range(len(tasks))]
                current = {n: torch.cat([a[n] for a in adapted]) for n in current}
        print(f"{path.stem.split('-')[1]:>9}  " + "  ".join(f"{r:7.2f}" for r in returns), flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", help="a folder for metrics.jsonl and policy-N.pt (outside the repository)")
    parser.add_argument("--summary", type=Path, help="print the curve of this metrics.jsonl by 25 iterations and stop")
    parser.add_argument("--probe", type=Path, help="counterfactuals on the policy-N.pt saved in this folder, then stop")
    parser.add_argument("--steps", type=Path, help="meta-test returns, 0-3 steps, of the policy-N.pt here")
    parser.add_argument("--later", type=float, default=1.0, help="--steps: later steps at this times inner_lr")
    parser.add_argument("--probe-tasks", type=int, default=40, help="goals of the meta-test stream --probe uses")
    parser.add_argument("--min-log-std", type=float, help="project the log-std onto >= this after each outer step")
    parser.add_argument("--recipe", default="nav2d")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("overrides", nargs="*", help="recipe overrides, e.g. iterations=200")
    args = parser.parse_args()
    if args.summary is not None:
        summary(args.summary)
        return
    torch.set_num_threads(args.threads)
    config = rlcfg.resolve(args.recipe, args.overrides)
    if args.probe is not None:
        probe(args.probe, config, args.probe_tasks)
        return
    if args.steps is not None:
        steps(args.steps, config, args.later, args.probe_tasks)
        return
    if args.out is None:
        parser.error("give --out FOLDER (or --summary FILE, --probe FOLDER)")
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    random.seed(config.seed)
    np.random.seed(config.seed % 2**32)
    family = build_family(config)
    learner = build_learner(config, family, config.seed)
    generator = torch.Generator().manual_seed(config.seed)
    bound = getattr(family, "bound", 0.1)
    (out / "config.json").write_text(json.dumps(vars(config), default=str, indent=1))
    with (out / "metrics.jsonl").open("w") as f:
        for iteration in range(1, config.iterations + 1):
            start = time.perf_counter()
            tasks = sample_tasks(family, config.meta_batch_size, generator)
            train, valid = learner.sample_meta_batch(family, tasks, generator)
            record = {"iteration": iteration, "return_before": float(train[0].returns().mean()) if train else None,
                      "return_after": float(valid.returns().mean()), **diagnostics(learner, tasks, train, valid, bound)}
            new, step = outer_step(learner, config, train, valid)
            with torch.no_grad():
                for name, p in learner.meta_params().items():
                    p.copy_(new[name])
                if args.min_log_std is not None:
                    learner.policy.log_std.clamp_(min=args.min_log_std)
            record.update(step, seconds=time.perf_counter() - start)
            f.write(json.dumps(record) + "\n")
            f.flush()
            if iteration % 25 == 0:
                torch.save(learner.policy.state_dict(), out / f"policy-{iteration}.pt")


if __name__ == "__main__":
    main()
