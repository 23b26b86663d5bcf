"""Per-step BatchNorm for MAML++ (Antoniou, Edwards, Storkey 2018, arXiv:1810.09502, section 4).

BNWB: every BatchNorm layer gets one weight and bias per inner step, learned in the outer loop only.
BNRS: every BatchNorm layer that tracks running statistics gets one running mean/variance per step.

A *slot* is the number of inner updates already applied to the parameters: the support forward of
step i and the query forward after i updates use slot i, so there are ``inner_steps + 1`` slots.
(Departure: the reference code keeps ``inner_steps`` slots and runs the query forward after k updates
with slot k - 1.) More steps at test time than in training reuse the last slot.

Running statistics are never written during a forward (the core's BatchNorm only reads them). During
``outer_loss`` in training mode, the batch statistics each layer sees in the query forward at slot k
are returned from the per-task function as outputs, averaged over tasks, and folded into slot k's
buffers with the layer's momentum after the meta-batch. Nothing else writes them: no statistic moves
between slots, tasks see only their own batch, and evaluation (``task_losses``, ``adapt``) never
changes them, so there is no backup to restore (the reference's shallow backup was overwritten).
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.overrides import TorchFunctionMode

from fastmaml.core.params import Params

STEPS = "#steps"  # suffix of the per-step entries that travel in the params / buffers dicts
_ARGS = ("input", "running_mean", "running_var", "weight", "bias", "training")


def batch_norms(model: nn.Module) -> dict[str, nn.modules.batchnorm._BatchNorm]:
    return {name: m for name, m in model.named_modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)}


def _prefix(layer: str) -> str:
    return f"{layer}." if layer else ""


class _Recorder(TorchFunctionMode):
    """Records (mean, unbiased var) of the input of every tagged BatchNorm call in training mode."""

    def __init__(self) -> None:
        super().__init__()
        self.tags: dict[int, tuple[str, int, Tensor]] = {}  # id(running_mean) -> (layer, slot, tensor)
        self.stats: dict[tuple[str, int], tuple[Tensor, Tensor]] = {}

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if func is F.batch_norm:
            bound = {**dict(zip(_ARGS, args)), **kwargs}
            tag = self.tags.get(id(bound.get("running_mean")))
            if tag is not None and bound.get("training", False):
                x = bound["input"].detach()  # (N, C, *spatial)
                dims = [0, *range(2, x.dim())]
                self.stats[tag[:2]] = (
                    x.mean(dims),
                    x.var(dims),
                )  # (C,) each; unbiased, as torch's running_var
        return func(*args, **kwargs)


class PerStepNorm(nn.Module):
    """The per-step BatchNorm weights (parameters) and running statistics (buffers) of one model."""

    def __init__(self, model: nn.Module, slots: int, weights: bool, statistics: bool) -> None:
        super().__init__()
        self.slots = slots
        norms = batch_norms(model)
        self.weight_names = tuple(
            _prefix(layer) + kind
            for layer, m in norms.items()
            if weights and m.affine
            for kind in ("weight", "bias")
        )
        own = dict(model.named_parameters())
        self.weights = nn.ParameterDict(
            {
                name.replace(".", "/"): nn.Parameter(own[name].detach().unsqueeze(0).repeat(slots, 1))
                for name in self.weight_names
            }
        )  # (slots, C) each
        self.stat_layers = tuple(layer for layer, m in norms.items() if statistics and m.track_running_stats)
        # nn.BatchNorm increments num_batches_tracked in place in training mode, which torch.func.grad
        # refuses; with a momentum it is never read, so the forwards see None instead.
        self.counters = tuple(
            _prefix(layer) + "num_batches_tracked"
            for layer, m in norms.items()
            if m.track_running_stats and m.momentum is not None
        )
        self.momentum: dict[str, float] = {}
        for layer in self.stat_layers:
            m = norms[layer]
            if m.momentum is None:
                raise ValueError(
                    f"BatchNorm {layer!r} has momentum=None (cumulative average); "
                    "give it a momentum or set per_step_bn_statistics=False"
                )
            self.momentum[layer] = float(m.momentum)
            for stat in ("running_mean", "running_var"):
                self.register_buffer(
                    self._buffer(layer, stat), getattr(m, stat).detach().unsqueeze(0).repeat(slots, 1)
                )
        self.recorder: _Recorder | None = None

    @staticmethod
    def _buffer(layer: str, stat: str) -> str:
        return f"{stat}:{layer.replace('.', '/')}"

    def extend(self, params: Params, buffers: Params) -> tuple[Params, Params]:
        """Add the per-step entries (``name#steps``) to a model's params and buffers dicts."""
        params = {
            **params,
            **{name + STEPS: self.weights[name.replace(".", "/")] for name in self.weight_names},
        }
        buffers = dict(buffers)
        for layer in self.stat_layers:
            for stat in ("running_mean", "running_var"):
                buffers[_prefix(layer) + stat + STEPS] = getattr(self, self._buffer(layer, stat))
        return params, buffers

    def slot_state(self, params: Params, buffers: Params, slot: int, query: bool) -> tuple[Params, Params]:
        """The core's ``slot_state`` hook: replace each per-step entry by its slice for ``slot``.

        Only query forwards are tagged for the recorder: support forwards run inside the inner loop's
        ``torch.func.grad``, whose tensors cannot leave it (and their statistics are not the ones kept).
        """
        slot = min(slot, self.slots - 1)
        params, buffers = dict(params), dict(buffers)
        buffers.update({name: None for name in self.counters if name in buffers})  # type: ignore[misc]
        for name in self.weight_names:
            steps = params.pop(name + STEPS, None)
            if steps is not None:  # absent when a caller passes plain model parameters
                params[name] = steps[slot]
        for layer in self.stat_layers:
            for stat in ("running_mean", "running_var"):
                steps = buffers.pop(_prefix(layer) + stat + STEPS, None)
                if steps is not None:
                    buffers[_prefix(layer) + stat] = value = steps[slot]
                    if stat == "running_mean" and query and self.recorder is not None:
                        self.recorder.tags[id(value)] = (layer, slot, value)
        return params, buffers

    @contextlib.contextmanager
    def recording(self) -> Iterator[_Recorder]:
        """Record the query-forward batch statistics of each (layer, slot) within this context."""
        self.recorder = _Recorder()
        try:
            with self.recorder:
                yield self.recorder
        finally:
            self.recorder = None

    def collected(self, recorder: _Recorder, steps: int) -> list[Tensor]:
        """The recorded statistics as a flat list, (layer, slot, mean/var) order, for the task mapper."""
        out: list[Tensor] = []
        for layer in self.stat_layers:
            for slot in range(min(steps, self.slots - 1) + 1):
                if (layer, slot) not in recorder.stats:
                    raise RuntimeError(
                        f"BatchNorm {layer!r} saw no query batch at step {slot}; "
                        "per-step statistics need every BatchNorm called once per forward"
                    )
                out.extend(recorder.stats[(layer, slot)])
        return out

    @torch.no_grad()
    def update_statistics(self, stats: list[Tensor], steps: int) -> None:
        """Fold the meta-batch's statistics (each (tasks, C), in :meth:`collected` order) into the buffers."""
        values = iter(stats)
        for layer in self.stat_layers:
            for slot in range(min(steps, self.slots - 1) + 1):
                for stat in ("running_mean", "running_var"):
                    getattr(self, self._buffer(layer, stat))[slot].lerp_(
                        next(values).mean(0), self.momentum[layer]
                    )
