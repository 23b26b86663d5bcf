"""Why iMAML diverged on the sinusoid: the curvature of its CG system and the error of its meta-gradient.

For sinusoid tasks (K=10, amplitude U[0.1, 5]) and a 1-40-40-1 ReLU MLP, runs the proximal inner loop
from theta, then builds the full Hessian H of the support loss at phi (float64) and reports, per task:

- ``|g_prox|``: the norm of the proximal gradient at phi (0 when the inner problem is solved), against
  its value at theta;
- ``min eig``: the smallest eigenvalue of I + H / lam (negative: indefinite; CG's premise fails);
- ``CG err``: || g_cg - g_exact || / || g_exact || where g_exact = (I + H/lam)^-1 grad L_query(phi) by a
  dense solve, for fastmaml's CG (``cg_steps``, truncated at negative curvature, with ``damping``);
  ``plain CG err`` is the same without truncation (the textbook recurrence; what the issue saw).

theta is either the initialisation or the weights of a finished run (``--run DIR``: its checkpoint).

    python benchmarks/imaml_curvature.py --lam 2 --inner-steps 8 --inner-lr 0.01 --tasks 8
"""

from __future__ import annotations

import argparse
import sys

import torch
import torch.nn.functional as F

import fastmaml as fm
from fastmaml.algorithms.imaml import conjugate_gradient
from fastmaml.core.rules import clip_by_global_norm


def flat(params: dict) -> torch.Tensor:
    return torch.cat([p.reshape(-1) for p in params.values()])


def unflat(vector: torch.Tensor, like: dict) -> dict:
    out, i = {}, 0
    for name, p in like.items():
        out[name] = vector[i:i + p.numel()].reshape(p.shape)
        i += p.numel()
    return out


def plain_cg(a: torch.Tensor, b: torch.Tensor, steps: int) -> torch.Tensor:
    """Textbook CG, no safeguard: what an unguarded implementation returns on an indefinite system."""
    x, r = torch.zeros_like(b), b.clone()
    p, rr = r.clone(), r @ r
    for _ in range(steps):
        ap = a @ p
        alpha = rr / (p @ ap)
        x, r = x + alpha * p, r - alpha * ap
        rr, rr_old = r @ r, rr
        p = r + rr / rr_old * p
    return x


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--lam", type=float, default=2.0)
    parser.add_argument("--inner-steps", type=int, default=8)
    parser.add_argument("--inner-lr", type=float, default=0.01)
    parser.add_argument("--max-grad-norm", type=float, default=0.0)
    parser.add_argument("--cg-steps", type=int, default=5)
    parser.add_argument("--damping", type=float, default=0.0)
    parser.add_argument("--tasks", type=int, default=8)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--run", default=None, help="a finished sinusoid run folder: take theta from it")
    args = parser.parse_args()
    torch.manual_seed(args.seed)
    model = fm.models.MLP([1, 40, 40, 1]).double()
    if args.run is not None:
        model.load_state_dict({k.removeprefix("model."): v for k, v in fm.load(args.run).state_dict().items()
                               if k.startswith("model.")})
    theta = {n: p.detach().clone() for n, p in model.named_parameters()}
    generator = torch.Generator().manual_seed(args.seed)
    tasks = fm.Sinusoid(shots=10, dtype=torch.float64).sample_tasks(args.tasks, generator)
    print("| task | amplitude of y | support loss theta -> phi | \\|g_prox\\| theta -> phi | min eig I+H/lam "
          "| CG err (fastmaml) | truncated | plain CG err |")
    print("|---|---|---|---|---|---|---|---|")
    for i in range(args.tasks):
        print(row(i, model, theta, tasks[i], args), flush=True)  # tasks[i]: a one-task batch


def row(i: int, model: torch.nn.Module, theta: dict, task: fm.TaskBatch, args: argparse.Namespace) -> str:
    """One task's line of the table."""
    sx, sy, qx, qy = task.support_x[0], task.support_y[0], task.query_x[0], task.query_y[0]  # (shots, 1)

    def loss(params: dict, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return F.mse_loss(torch.func.functional_call(model, params, (x,)), y)

    phi, lam = dict(theta), args.lam
    for _ in range(args.inner_steps):
        g = torch.func.grad(loss)(phi, sx, sy)
        step = {n: g[n] + lam * (phi[n] - theta[n]) for n in phi}
        if args.max_grad_norm:
            step = clip_by_global_norm(step, args.max_grad_norm)
        phi = {n: phi[n] - args.inner_lr * step[n] for n in phi}
    g_start = flat(torch.func.grad(loss)(theta, sx, sy))
    g_end = torch.func.grad(loss)(phi, sx, sy)
    prox = flat({n: g_end[n] + lam * (phi[n] - theta[n]) for n in phi})
    hessian = torch.func.hessian(lambda v: loss(unflat(v, phi), sx, sy))(flat(phi))
    eye = torch.eye(hessian.shape[0], dtype=torch.float64)
    a = eye + hessian / lam
    b = flat(torch.func.grad(loss)(phi, qx, qy))
    exact = torch.linalg.solve(a, b)
    shifted = a + args.damping * eye
    ours = conjugate_gradient(lambda v: unflat(shifted @ flat(v), phi), unflat(b, phi), args.cg_steps)
    plain = plain_cg(a, b, args.cg_steps)

    def err(g: torch.Tensor) -> float:
        return ((g - exact).norm() / exact.norm()).item()

    return (f"| {i} | {sy.abs().max().item():.2f} | {loss(theta, sx, sy).item():.3f} -> "
            f"{loss(phi, sx, sy).item():.3f} | {g_start.norm().item():.2f} -> {prox.norm().item():.2f} | "
            f"{torch.linalg.eigvalsh(a)[0].item():.3f} | {err(flat(ours.x)):.2f} | "
            f"{bool(ours.negative_curvature)} | {err(plain):.2f} |")

if __name__ == "__main__":
    sys.exit(main())
