"""The MAML paper's TRPO step as its code ran it, beside fastmaml's exact one.

cbfinn/maml_rl's ``ConjugateGradientOptimizer`` builds its default Fisher-vector product as
``FiniteDifferenceHvp(num_slices)`` (``sandbox/rocky/tf/optimizers/conjugate_gradient_optimizer.py:162-164``,
from commit 8818ca7 of February 2017 to the last, 9c8e2eb). The class's first positional argument is
``base_eps``, so ``num_slices=1`` lands there: the product is a central difference of the KL's gradient
with step ``eps = 1 / ||theta||`` (not the ``1e-8 / ||theta||`` its default names) along the vector ``x``,
``(grad KL(theta + eps x) - grad KL(theta - eps x)) / (2 eps) + 1e-5 x``. A secant over a perturbation
that large is not the Hessian, and it is not linear in ``x``: conjugate gradient, the step's length
``sqrt(2 delta / d.Hd)`` (one more product, at the solution ``d``) and so the update differ from exact
TRPO's. This script measures the difference and trains with the paper's step.

    # one meta-batch of a run's checkpoint: both steps side by side
    python benchmarks/maml_rl_fisher.py compare benchmarks/partial-runs/cheetah-dir-rllab --batches 3

    # meta-train with maml_rl's step in place of fastmaml's (every other argument is `fastmaml train`'s)
    python benchmarks/maml_rl_fisher.py train cheetah-dir threads=1 seed=0 iterations=100 ...

The run folder's config.yaml does not record the replaced step; keep the command beside the run.
"""

from __future__ import annotations

import argparse
import math
import sys
import time

import numpy as np
import torch
from torch import Tensor

from fastmaml.core.params import Params
from fastmaml.rl import train as rltrain
from fastmaml.rl.trpo import Objective, TRPOConfig, conjugate_gradient, flat, trpo_step, unflat


def kl_gradient(objective: Objective, params: Params) -> Tensor:
    leaves = {n: p.detach().requires_grad_(True) for n, p in params.items()}
    _, kl = objective(leaves)
    return flat(torch.autograd.grad(kl, list(leaves.values()), materialize_grads=True))


def finite_difference_fvp(objective: Objective, params: Params, base_eps: float = 1.0, damping: float = 1e-5):
    """maml_rl's ``FiniteDifferenceHvp`` (symmetric) as its optimizer builds it: ``base_eps=1``."""
    theta = flat(params.values()).detach()
    eps = float(np.float32(base_eps / (float(theta.norm()) + 1e-8)))

    def fvp(x: Tensor) -> Tensor:
        plus = kl_gradient(objective, unflat(theta + eps * x, params))
        minus = kl_gradient(objective, unflat(theta - eps * x, params))
        return (plus - minus) / (2 * eps) + damping * x

    return fvp


def maml_rl_trpo_step(objective: Objective, params: Params, config: TRPOConfig, fisher=None,
                      base_eps: float = 1.0) -> tuple[Params, dict]:
    """``ConjugateGradientOptimizer.optimize`` with its default product: conjugate gradient on the
    finite-difference product, the initial step ``sqrt(2 max_kl / (d.Hd + 1e-8))`` (1 where that is not a number), and
    backtracking that accepts ``loss < before and kl <= max_kl`` or rejects the step."""
    leaves = {n: p.detach().requires_grad_(True) for n, p in params.items()}
    loss, _ = objective(leaves)
    grad = flat(torch.autograd.grad(loss, list(leaves.values())))
    old_loss = loss.item()
    del loss
    base = {n: p.detach() for n, p in leaves.items()}
    fvp = finite_difference_fvp(objective, base, base_eps, config.cg_damping)
    # rllab's krylov.cg tests the residual after each update, fastmaml's before: the same iterates unless the
    # gradient itself is below the tolerance (1e-10 in squared norm), where rllab takes one step more
    direction = conjugate_gradient(fvp, grad, config.cg_iters)  # maml_rl steps to theta - size * direction
    curvature = float(direction @ fvp(direction))
    size = math.sqrt(2 * config.max_kl / (curvature + 1e-8)) if curvature + 1e-8 > 0 else float("nan")
    if math.isnan(size):
        size = 1.0
    step = -size * direction
    record = {"loss": old_loss, "kl": 0.0, "ls_step": config.ls_steps, "fd_curvature": curvature}
    for k in range(config.ls_steps):
        candidate = {n: base[n] + config.ls_ratio**k * s for n, s in unflat(step, base).items()}
        with torch.no_grad():
            new_loss, new_kl = objective(candidate)
        if new_loss.item() < old_loss and new_kl.item() <= config.max_kl:
            record.update(loss_after=new_loss.item(), kl=new_kl.item(), ls_step=k)
            return candidate, record
    record["loss_after"] = old_loss
    return base, record


def compare(args: argparse.Namespace) -> None:
    torch.set_num_threads(args.threads)
    learner = rltrain.load(args.run, args.which)
    config = rltrain.rlcfg.load(f"{args.run}/config.yaml")
    family = rltrain.build_family(config)
    generator = torch.Generator().manual_seed(args.seed)
    trpo = rltrain.trpo_config(config)
    theta = flat(learner.meta_params().values()).detach()
    print(f"{args.run} ({args.which}): ||theta|| = {float(theta.norm()):.3f}, finite-difference step "
          f"1/||theta|| = {1 / float(theta.norm()):.4f}")
    for batch in range(args.batches):
        tasks = rltrain.sample_tasks(family, config.meta_batch_size, generator)
        train, valid = learner.sample_meta_batch(family, tasks, generator)
        print(f"batch {batch}: {compare_steps(learner, train, valid, trpo)}", flush=True)


def compare_steps(learner, train, valid, trpo: TRPOConfig) -> str:
    """fastmaml's exact step and maml_rl's on one meta-batch, from the same parameters."""

    def objective(p):
        return learner.surrogate(p, train, valid)

    params = {n: p.detach() for n, p in learner.meta_params().items()}
    start = time.perf_counter()
    exact, exact_record = trpo_step(objective, params, trpo, fisher=lambda p: learner.fisher(p, train, valid))
    exact_seconds = time.perf_counter() - start
    start = time.perf_counter()
    paper, paper_record = maml_rl_trpo_step(objective, params, trpo)
    paper_seconds = time.perf_counter() - start
    d_exact = flat(exact.values()) - flat(params.values())
    d_paper = flat(paper.values()) - flat(params.values())
    cosine = float(d_exact @ d_paper / (d_exact.norm() * d_paper.norm() + 1e-30))
    return (f"exact: line-search step {exact_record['ls_step']}, KL {exact_record['kl']:.4f}, "
            f"loss {exact_record['loss_after']:.5f}, |step| {float(d_exact.norm()):.4f}, {exact_seconds:.1f} s; "
            f"maml_rl: line-search step {paper_record['ls_step']}, KL {paper_record['kl']:.4f}, "
            f"loss {paper_record['loss_after']:.5f}, |step| {float(d_paper.norm()):.4f}, "
            f"d.Hd {paper_record['fd_curvature']:.4g}, {paper_seconds:.1f} s; cosine {cosine:.3f}")


def main(argv: list[str]) -> int:
    if argv[:1] == ["train"]:
        rltrain.trpo_step = maml_rl_trpo_step  # meta_step calls it by this module's name
        from fastmaml.cli import main as cli

        return cli(argv)
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)
    cmp = sub.add_parser("compare", help="both steps on meta-batches of a run's checkpoint")
    cmp.add_argument("run")
    cmp.add_argument("--which", default="last", help="'last' or a kept iteration")
    cmp.add_argument("--batches", type=int, default=2)
    cmp.add_argument("--seed", type=int, default=0)
    cmp.add_argument("--threads", type=int, default=1)
    sub.add_parser("train", help="`fastmaml train` with maml_rl's step")
    args = parser.parse_args(argv)
    if args.command == "compare":
        args.which = int(args.which) if args.which.isdigit() else args.which
        compare(args)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
