"""``F.embedding_bag`` from ``F.embedding`` and reductions: differentiable to every order.

The fused kernel's backward (``_embedding_bag_backward``) has no derivative in torch 2.14.1, so a
second-order meta-gradient through ``nn.EmbeddingBag`` fails on every path. :mod:`fastmaml.core.exact`
routes ``F.embedding_bag`` here whenever it is active; ``max_norm`` (which renormalises the weight in
place) and sparse gradients stay on the native kernel.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

_native_embedding_bag = F.embedding_bag


def embedding_bag(
    input: Tensor,
    weight: Tensor,
    offsets: Tensor | None = None,
    max_norm: float | None = None,
    norm_type: float = 2.0,
    scale_grad_by_freq: bool = False,
    mode: str = "mean",
    sparse: bool = False,
    per_sample_weights: Tensor | None = None,
    include_last_offset: bool = False,
    padding_idx: int | None = None,
) -> Tensor:
    """``F.embedding_bag`` with the same arguments; entries equal to ``padding_idx`` are left out of
    each bag's reduction and an empty bag gives zeros, as the native kernel does."""
    if max_norm is not None or sparse or mode not in ("sum", "mean", "max") or input.dim() not in (1, 2):
        return _native_embedding_bag(input, weight, offsets, max_norm, norm_type, scale_grad_by_freq, mode, sparse,
                                     per_sample_weights, include_last_offset, padding_idx)
    vectors = F.embedding(input, weight, scale_grad_by_freq=scale_grad_by_freq)  # (*input, D)
    keep = torch.ones_like(input, dtype=torch.bool) if padding_idx is None else input != padding_idx
    if input.dim() == 1:
        if offsets is None:
            raise ValueError("offsets has to be a 1D Tensor but got None; pass offsets with a 1-D input")
        bags = offsets.numel() - 1 if include_last_offset else offsets.numel()
        positions = torch.arange(input.numel(), device=input.device)
        bag = torch.searchsorted(offsets[:bags].contiguous(), positions, right=True) - 1  # (entries,)
        if include_last_offset:
            keep = keep & (positions < offsets[-1])
        keep = keep & (bag >= 0)
        bag = bag.clamp(min=0)
    if mode == "max":
        masked = vectors.masked_fill(~keep.unsqueeze(-1), float("-inf"))
        if input.dim() == 2:
            out = masked.amax(-2)
        else:
            out = masked.new_full((bags, weight.shape[1]), float("-inf"))
            out = out.scatter_reduce(0, bag.unsqueeze(-1).expand_as(masked), masked, "amax")
        return torch.where(torch.isinf(out), torch.zeros_like(out), out)  # empty bags
    scale = keep.to(weight.dtype)
    if per_sample_weights is not None:
        scale = scale * per_sample_weights
    vectors = vectors * scale.unsqueeze(-1)
    if input.dim() == 2:
        total, count = vectors.sum(-2), keep.sum(-1, keepdim=True)
    else:
        total = vectors.new_zeros(bags, weight.shape[1]).index_add(0, bag, vectors)
        count = keep.to(torch.int64).new_zeros(bags).index_add(0, bag, keep.to(torch.int64)).unsqueeze(-1)
    if mode == "sum":
        return total
    return total / count.clamp(min=1).to(weight.dtype)
