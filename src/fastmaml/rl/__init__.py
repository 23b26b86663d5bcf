"""Meta-reinforcement learning (MAML paper, arXiv:1703.03400, section 5.3): MAML-TRPO with exact
second-order meta-gradients on any gymnasium task family; the ``rl`` extra.

``import fastmaml.rl`` needs gymnasium only for the environments (:mod:`fastmaml.rl.envs`) and the generic
sampler, which import it when used.
"""

from fastmaml.rl.learner import MetaRL
from fastmaml.rl.policies import CategoricalPolicy, GaussianPolicy

__all__ = ["CategoricalPolicy", "GaussianPolicy", "MetaRL"]
