"""The functional core: parameters as dicts, update rules, the per-task function and its execution."""

from fastmaml.core.batchnorm import batch_norm, exact_batch_norm
from fastmaml.core.exact import exact_ops, needs_exact_ops, vmap_is_exact
from fastmaml.core.execution import TaskMapper
from fastmaml.core.inner import InnerSpec, adapt, default_loss, inner_step, task_loss
from fastmaml.core.params import Params, module_state, select
from fastmaml.core.objective import Objective, QueryLoss, TaskContext, surrogate
from fastmaml.core.rules import UpdateRule, adam, meta_sgd, momentum, per_step, proximal, sgd

__all__ = [
    "InnerSpec", "Objective", "Params", "QueryLoss", "TaskContext", "TaskMapper", "UpdateRule", "adam", "adapt",
    "batch_norm", "default_loss", "exact_batch_norm", "exact_ops", "inner_step", "meta_sgd", "module_state",
    "momentum", "needs_exact_ops", "per_step", "proximal", "select", "sgd", "surrogate", "task_loss",
    "vmap_is_exact",
]
