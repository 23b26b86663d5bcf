"""A meta-RL run folder: config, metrics, checkpoints with exact resume, baselines and evaluation."""

from __future__ import annotations

import importlib
import json
import logging
import random
import time
from collections.abc import Callable
from pathlib import Path
from typing import cast

import numpy as np
import torch
from torch import nn

from fastmaml._text import with_article
from fastmaml.core import rules
from fastmaml.core.execution import Execution
from fastmaml.rl import config as rlcfg
from fastmaml.rl.evaluate import evaluate
from fastmaml.rl.learner import MetaRL
from fastmaml.rl.policies import GaussianPolicy
from fastmaml.rl.sampler import sample_tasks
from fastmaml.rl.trpo import TRPOConfig, trpo_step
from fastmaml.train import folder
from fastmaml.train.checkpoint import load_checkpoint, random_state, restore_random_state, save_atomic, \
    write_text_atomic
from fastmaml.train.folder import BASELINE_LAST, BASELINE_METRICS, BASELINES, CONFIG, DTYPES, LAST, METRICS, \
    check_run_dir, checkpoint_path, restoring
from fastmaml.train.loop import Interrupted, LoopState, StopRequest, check_finite, run_loop

log = logging.getLogger(__name__)
RATES, SOURCE = "inner_lr or max_kl/outer_lr", "the env's rewards"  # what a non-finite update names
LOCOMOTION = {"half-cheetah-vel": "locomotion:HalfCheetahVel", "half-cheetah-dir": "locomotion:HalfCheetahDir",
              "ant-vel": "ant:AntVel", "ant-dir": "ant:AntDir",
              "ml1": "metaworld:ML1", "ml10": "metaworld:ML10"}  # fastmaml.rl.<module>:<family>
TEST_STREAM = 1_000_003  # meta-test tasks come from seed + this: a stream no training run draws from


def build_family(config: rlcfg.RLConfig):
    """The task family named by ``config.env``."""
    if config.env == "navigation2d":
        from fastmaml.rl.envs import Navigation2DTasks

        return Navigation2DTasks(horizon=config.horizon, **config.env_options)
    if config.env in LOCOMOTION:
        module, _, family = LOCOMOTION[config.env].partition(":")
        factory = getattr(importlib.import_module(f"fastmaml.rl.{module}"), family)
        return factory(horizon=config.horizon, **config.env_options)
    module, _, name = config.env.partition(":")
    if not name:
        raise ValueError(f"env={config.env!r}; use navigation2d, {', '.join(LOCOMOTION)} or "
                         "package.module:Factory for your own family")
    try:
        factory = getattr(importlib.import_module(module), name)
    except (ImportError, AttributeError) as error:
        raise ValueError(f"env={config.env!r} cannot be imported ({error}); check the module path") from None
    family = factory(**config.env_options)
    if not (hasattr(family, "sample_tasks") and hasattr(family, "make_env")):
        raise TypeError(f"env={config.env!r} built {with_article(type(family).__name__)}; a task family needs "
                        "sample_tasks(n, generator) and make_env(task)")
    return family


def build_learner(config: rlcfg.RLConfig, family, seed: int,
                  wrap: Callable[[nn.Module], nn.Module] | None = None) -> MetaRL:
    """The policy (initialised from ``seed``; ``wrap(policy)`` when given) for the family's spaces, inside
    its learner."""
    from fastmaml.rl._gym import gymnasium

    env = family.make_env(sample_tasks(family, 1, torch.Generator().manual_seed(seed))[0])
    obs_dim = int(np.prod(env.observation_space.shape))
    torch.manual_seed(seed)
    policy: nn.Module
    if isinstance(env.action_space, gymnasium().spaces.Discrete):
        from fastmaml.rl.policies import CategoricalPolicy

        policy = CategoricalPolicy(obs_dim, int(env.action_space.n), config.policy.hidden, config.policy.activation,
                                   config.policy.init)
    else:
        policy = GaussianPolicy(obs_dim, int(np.prod(env.action_space.shape)), config.policy.hidden,
                                config.policy.activation, config.policy.init_std, config.policy.init)
    if wrap is not None:
        policy = wrap(policy)
    learner = MetaRL(policy, config.inner_lr, config.inner_steps, config.first_order, config.gamma,
                     config.gae_lambda, config.trajectories, config.horizon, config.normalize_advantages,
                     cast(Execution, config.execution), inner_rule(config), config.budget).to(DTYPES[config.dtype])
    from fastmaml.rl.sampler import check_fits

    check_fits(policy, env)
    return learner


def inner_rule(config: rlcfg.RLConfig) -> rules.UpdateRule:
    """The core update rule named by ``config.inner_rule`` at ``config.inner_lr``."""
    return getattr(rules, config.inner_rule)(config.inner_lr)


def trpo_config(config: rlcfg.RLConfig) -> TRPOConfig:
    return TRPOConfig(config.max_kl, config.cg_iters, config.cg_damping, config.ls_ratio, config.ls_steps)


def meta_step(learner: MetaRL, family, config: rlcfg.RLConfig, generator: torch.Generator,
              optimizer: torch.optim.Optimizer | None, iteration: int, kept: str) -> dict:
    """One meta-iteration: sample tasks, adapt on each, update the initialisation (TRPO or Adam)."""
    start = time.perf_counter()
    tasks = sample_tasks(family, config.meta_batch_size, generator)
    train, valid = learner.sample_meta_batch(family, tasks, generator)
    if optimizer is None:
        new, record = trpo_step(lambda p: learner.surrogate(p, train, valid), learner.meta_params(),
                                trpo_config(config), fisher=lambda p: learner.fisher(p, train, valid))
        check_finite(record["loss"], new.values(), iteration, kept, "meta-RL update", RATES, SOURCE)
        with torch.no_grad():
            for name, p in learner.meta_params().items():
                p.copy_(new[name])
    else:
        optimizer.zero_grad(set_to_none=True)
        loss, kl = learner.surrogate(learner.meta_params(), train, valid)
        loss.backward()
        check_finite(loss.item(), [p.grad for p in learner.params().values() if p.grad is not None], iteration,
                     kept, "meta-RL update", RATES, SOURCE)
        optimizer.step()
        record = {"loss": loss.item(), "kl": kl.item()}
    first = train[0] if train else valid
    scores = {"return_before": first.pooled_mean(first.returns()).item(),
              "return_after": valid.pooled_mean(valid.returns()).item()}
    success_before, success_after = getattr(first, "success", None), getattr(valid, "success", None)
    if success_before is not None and success_after is not None:  # episodes that report success (Meta-World)
        scores.update(success_before=first.pooled_mean(success_before).item(),
                      success_after=valid.pooled_mean(success_after).item())
    return {"iteration": iteration, **scores, **record, "seconds": time.perf_counter() - start}


def train(config: rlcfg.RLConfig | None, run_dir: Path, *, overwrite: bool = False, resume: bool = False,
          progress: bool = True, evaluate_at_end: bool = True) -> dict | None:
    """Meta-train per ``config`` into ``run_dir`` (or continue the run there); returns the evaluation.

    Nothing is written before the config, family, policy and any checkpoint are built and checked, so a
    bad input never costs a run folder or a checkpoint. SIGINT/SIGTERM save a checkpoint and raise
    :class:`~fastmaml.train.loop.Interrupted`.
    """
    run_dir = Path(run_dir)
    check_run_dir(run_dir, overwrite, resume)
    checkpoint = None
    if resume:
        config, checkpoint = folder.read(run_dir, rlcfg.load)
    elif config is None:
        raise ValueError("train() needs a config unless resume=True")
    if config.threads:
        torch.set_num_threads(config.threads)
    random.seed(config.seed)
    np.random.seed(config.seed % 2**32)
    family = build_family(config)
    learner = build_learner(config, family, config.seed)
    optimizer = torch.optim.Adam(learner.parameters(), lr=config.outer_lr) if config.outer == "adam" else None
    generator = torch.Generator().manual_seed(config.seed)
    state = LoopState()
    if checkpoint is not None:
        state = _restore(checkpoint, learner, optimizer, generator, run_dir / LAST)
    if resume:
        folder.reopen(run_dir, state.history)
        folder.keep_missing_snapshot(run_dir, state.iteration, config.keep_every)
    else:
        folder.create(config, run_dir, overwrite)

    def save(state: LoopState) -> Path:
        save_atomic({"policy": learner.policy.state_dict(), "rule": learner.rule_state.state_dict(),
                     "optimizer": optimizer.state_dict() if optimizer else None, "iteration": state.iteration,
                     "history": state.history, "random": random_state({"train": generator})},
                    run_dir / LAST)
        return run_dir / LAST

    stop = StopRequest()
    with stop.installed():
        run_loop(MetaRLSteps(learner, family, config, generator, optimizer), state, iterations=config.iterations,
                 log_every=config.log_every, checkpoint=save, checkpoint_every=config.checkpoint_every,
                 keep_every=config.keep_every,
                 metrics_path=run_dir / METRICS, stop=stop, max_minutes=config.max_minutes, progress=progress)
    save(state)
    if config.baseline_iterations and not (run_dir / BASELINES).is_file():
        train_baselines(config, run_dir, family, progress=progress)
    (run_dir / BASELINE_LAST).unlink(missing_ok=True)  # a kill between writing baselines.pt and removing it
    return evaluate_run(run_dir) if evaluate_at_end else None


class MetaRLSteps:
    """Meta-RL's part of the one loop (:func:`fastmaml.train.loop.run_loop`): one :func:`meta_step` per
    iteration, each iteration's record a metrics line, the progress bar showing the returns before and after
    adaptation averaged since its last update (the one return of a learner without inner steps). One process:
    a signal during an iteration stops the loop after it (``solo``)."""

    solo = True

    def __init__(self, learner: MetaRL, family, config: rlcfg.RLConfig, generator: torch.Generator,
                 optimizer: torch.optim.Optimizer | None) -> None:
        self.learner, self.family, self.config, self.generator, self.optimizer = (
            learner, family, config, generator, optimizer)
        self.record: dict = {}
        self.recent: list[dict] = []

    def step(self, iteration: int, stopping: bool, out_of_time: bool, kept: str) -> tuple[bool, bool]:
        self.record = meta_step(self.learner, self.family, self.config, self.generator, self.optimizer, iteration,
                                kept)
        return stopping, out_of_time

    def lines(self, iteration: int, due: bool, kept: str) -> tuple[list[dict], dict[str, float] | None]:
        self.recent.append(self.record)
        if not due:
            return [self.record], None
        shown = {"before": float(np.mean([r["return_before"] for r in self.recent])),
                 "after": float(np.mean([r["return_after"] for r in self.recent]))}
        if not self.learner.inner_steps:  # the pretrained baseline: no step, one return
            shown = {"return": shown["after"]}
        self.recent = []
        return [self.record], shown

    def settle(self, kept: str) -> None:
        """Each meta-step checks its own update before it reaches the policy: nothing is left to check."""

    def running(self) -> tuple[float, int]:
        return 0.0, 0  # every iteration is its own line: no block in progress


def _restore(checkpoint: dict, learner: MetaRL, optimizer, generator: torch.Generator, where: Path) -> LoopState:
    with restoring(str(where)):
        learner.policy.load_state_dict(checkpoint["policy"])
        learner.rule_state.load_state_dict(checkpoint.get("rule", {}))
        if optimizer is not None:
            optimizer.load_state_dict(checkpoint["optimizer"])
        restore_random_state(checkpoint["random"], {"train": generator})
        return LoopState(checkpoint["iteration"], history=list(checkpoint["history"]))


def train_baselines(config: rlcfg.RLConfig, run_dir: Path, family, *, progress: bool = True) -> None:
    """The paper's baselines: a policy trained by TRPO on the task mixture (no adaptation in training)
    and a random initialisation; both are fine-tuned at test time by the same inner steps.

    The pretrained policy's iterations run in the one loop with their own progress bar, metrics
    (``baseline-metrics.jsonl``) and checkpoints (``baseline-checkpoint.pt``, every ``checkpoint_every`` and on
    SIGINT/SIGTERM), so ``--resume`` continues them exactly; ``baselines.pt`` replaces the checkpoint at the end.
    """
    pretrained = build_learner(config, family, config.seed + 1)
    mixture = MetaRL(pretrained.policy, config.inner_lr, 0, config.first_order, config.gamma, config.gae_lambda,
                     config.trajectories, config.horizon, config.normalize_advantages,
                     cast(Execution, config.execution), budget=config.budget)  # no inner step: no rule
    generator = torch.Generator().manual_seed(config.seed + 2)
    state, where = LoopState(), run_dir / BASELINE_LAST
    if where.is_file():
        state = _restore(load_checkpoint(where), mixture, None, generator, where)
    folder.reopen(run_dir, state.history, BASELINE_METRICS)

    def save(state: LoopState) -> Path:
        save_atomic({"policy": pretrained.policy.state_dict(), "iteration": state.iteration,
                     "history": state.history, "random": random_state({"train": generator})}, where)
        return where

    log.info("the pretrained baseline: %d TRPO iterations on the task mixture (%s)", config.baseline_iterations,
             BASELINE_METRICS)
    stop = StopRequest()
    with stop.installed():
        try:
            run_loop(MetaRLSteps(mixture, family, config, generator, None), state,
                     iterations=config.baseline_iterations, log_every=config.log_every, checkpoint=save,
                     checkpoint_every=config.checkpoint_every, metrics_path=run_dir / BASELINE_METRICS, stop=stop,
                     progress=progress)
        except Interrupted as stopped:
            stopped.args = (f"interrupted at iteration {stopped.iteration} of the pretrained baseline's "
                            f"{config.baseline_iterations}; resume with fastmaml train --resume {run_dir}",)
            raise
    random_init = build_learner(config, family, config.seed + 1)  # the pretrained policy's untrained weights
    save_atomic({"pretrained": pretrained.policy.state_dict(), "random": random_init.policy.state_dict()},
                run_dir / BASELINES)
    where.unlink(missing_ok=True)


def load(run_dir: str | Path, which: str | int = "last") -> MetaRL:
    """The meta-trained learner of a meta-RL run folder, ready to ``adapt`` and ``act``: its last checkpoint
    (``which`` "last", or "best": a meta-RL run keeps no meta-validation best), or the one kept at iteration
    ``which`` (``keep_every``)."""
    run_dir = Path(run_dir)
    check_run_dir(run_dir, overwrite=False, resume=True)
    path = checkpoint_path(run_dir, which)
    config = rlcfg.load(run_dir / CONFIG)
    family = build_family(config)
    learner = build_learner(config, family, config.seed)
    checkpoint = load_checkpoint(path)
    if "policy" not in checkpoint:
        raise ValueError(f"{path} holds no policy; it was not written by `fastmaml train` for meta-RL")
    learner.policy.load_state_dict(checkpoint["policy"])
    learner.rule_state.load_state_dict(checkpoint.get("rule", {}))
    return learner


def baselines(run_dir: Path, config: rlcfg.RLConfig, family) -> dict[str, MetaRL]:
    saved = load_checkpoint(run_dir / BASELINES)
    out = {}
    for name in ("pretrained", "random"):
        learner = build_learner(config, family, config.seed + 1)
        learner.policy.load_state_dict(saved[name])
        out[name] = learner
    return out


def evaluate_run(run_dir: str | Path, num_tasks: int | None = None, inner_steps: int | None = None,
                 out: str | Path | None = None, mean_episodes: int | None = None, iteration: int | None = None
                 ) -> dict:
    """Meta-test the run and its baselines on fresh tasks (their own seed stream); writes ``eval.json`` (or ``out``).
    ``mean_episodes``: mean-action episodes per task and step (default: the run's ``eval_mean_episodes``).
    ``iteration``: meta-test the policy the run kept then (``keep_every``) instead of its last."""
    run_dir = Path(run_dir)
    learner = load(run_dir, "last" if iteration is None else iteration)
    config = rlcfg.load(run_dir / CONFIG)
    family = build_family(config)
    methods = {"maml": learner}
    if (run_dir / BASELINES).is_file():
        methods.update(baselines(run_dir, config, family))
    for method in methods.values():  # the meta-test's adaptation batch and later steps may differ from training's
        method.trajectories = config.test_trajectories
        method.rule = rules.later_steps_scaled(method.rule, config.eval_step_scale)
    steps = config.eval_inner_steps if inner_steps is None else inner_steps
    tasks = config.eval_tasks if num_tasks is None else num_tasks
    mean_episodes = config.eval_mean_episodes if mean_episodes is None else mean_episodes
    results = evaluate(methods, family, tasks, steps, config.seed + TEST_STREAM, mean_episodes)
    write_text_atomic(json.dumps(results, indent=1), folder.results_path(run_dir, out, tasks, steps, iteration))
    return results
