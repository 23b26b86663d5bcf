"""``benchmarks/maml_rl_fisher.py``, maml_rl's TRPO step (benchmarks/cheetah_dir_gap.md, cause 5), in float64:
its finite-difference product is the exact Fisher-vector product in the limit of a small step and a secant at
maml_rl's step of ``1 / ||theta||``; with a small step the whole update is fastmaml's exact TRPO step; its
``train`` command meta-trains through ``fastmaml train``."""

import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

pytest.importorskip("gymnasium")

from fastmaml.rl import GaussianPolicy, MetaRL  # noqa: E402
from fastmaml.rl.envs import Navigation2DTasks  # noqa: E402
from fastmaml.rl.trpo import TRPOConfig, flat, trpo_step  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "benchmarks" / "maml_rl_fisher.py"


def _script():
    spec = importlib.util.spec_from_file_location("maml_rl_fisher", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _meta_batch():
    torch.manual_seed(0)
    policy = GaussianPolicy(2, 2, (6,), activation="tanh", init_std=0.5).double()
    learner = MetaRL(policy, inner_lr=0.5, trajectories=3, horizon=5, execution="vmap").double()
    family = Navigation2DTasks()
    generator = torch.Generator().manual_seed(1)
    train, valid = learner.sample_meta_batch(family, family.sample_tasks(3, generator), generator)
    return learner, train, valid


def test_finite_difference_product_is_the_fisher_product_for_a_small_step_and_a_secant_at_maml_rls():
    fisher = _script()
    learner, train, valid = _meta_batch()
    params = {n: p.detach() for n, p in learner.params().items()}

    def objective(p):
        return learner.surrogate(p, train, valid)

    _, exact = learner.fisher({n: p.clone().requires_grad_(True) for n, p in params.items()}, train, valid)
    v = torch.randn(flat(params.values()).shape, dtype=torch.float64, generator=torch.Generator().manual_seed(3))
    norm = float(flat(params.values()).norm())
    small = fisher.finite_difference_fvp(objective, params, base_eps=1e-5 * norm, damping=0.0)
    torch.testing.assert_close(small(v), exact(v), rtol=1e-6, atol=1e-9)
    secant = fisher.finite_difference_fvp(objective, params, base_eps=1.0, damping=0.0)(v)
    assert (secant - exact(v)).norm() > 1e-3 * exact(v).norm()
    # the damping is added as maml_rl's optimizer adds its reg_coeff
    damped = fisher.finite_difference_fvp(objective, params, base_eps=1.0, damping=1e-5)(v)
    torch.testing.assert_close(damped, secant + 1e-5 * v, rtol=1e-12, atol=0)


def test_maml_rl_step_with_a_small_difference_is_the_exact_trpo_step():
    fisher = _script()
    learner, train, valid = _meta_batch()

    def objective(p):
        return learner.surrogate(p, train, valid)

    config = TRPOConfig(max_kl=1e-3, cg_iters=5)
    norm = float(flat(learner.params().values()).detach().norm())
    exact, exact_record = trpo_step(objective, learner.params(), config,
                                    fisher=lambda p: learner.fisher(p, train, valid))
    paper, paper_record = fisher.maml_rl_trpo_step(objective, learner.params(), config, base_eps=1e-5 * norm)
    assert paper_record["ls_step"] == exact_record["ls_step"] < config.ls_steps
    for name in exact:
        torch.testing.assert_close(paper[name], exact[name], rtol=1e-5, atol=1e-8)
    assert paper_record["kl"] <= config.max_kl and paper_record["loss_after"] < paper_record["loss"]


def test_train_command_meta_trains_with_maml_rls_step(tmp_path):
    run = tmp_path / "run"
    out = subprocess.run([sys.executable, str(SCRIPT), "train", "nav2d", "threads=1", "iterations=2",
                          "meta_batch_size=2", "trajectories=2", "horizon=5", "policy.hidden=[4]",
                          "baseline_iterations=0", "eval_tasks=2", "eval_inner_steps=1", "--out", str(run),
                          "--no-progress"], cwd=ROOT, capture_output=True, text=True, timeout=300,
                         env={**os.environ, "PYTHONPATH": str(ROOT / "src")})
    assert out.returncode == 0, out.stderr[-2000:]
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    steps = [row for row in rows if "fd_curvature" in row]
    assert [row["iteration"] for row in steps] == [1, 2]
    assert all(row["kl"] <= 0.01 for row in steps)
