"""Every stock layer family: the vmap, loop and auto paths give a plain autograd loop's meta-gradient.

Float64, two inner steps, second and first order, within 1e-9 relative (issue #14). The reference
(:func:`helpers.reference_meta_gradient`) runs the module as written with ``torch.autograd.grad``, on
torch's math attention backend (the fused CPU kernel has no double backward, so it cannot be a second-
order reference). A new layer family is one line in ``FAMILIES``; a few families are also checked
against central finite differences of the meta-loss.
"""

from __future__ import annotations

import copy
import warnings
from typing import NamedTuple

import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.attention import SDPBackend, sdpa_kernel

import fastmaml as fm
from fastmaml.core import norms
from fastmaml.core.embedding import embedding_bag
from fastmaml.core.exact import needs_exact_ops, vmap_is_exact
from helpers import reference_meta_gradient

LR, STEPS, TASKS, SUPPORT, QUERY = 0.1, 2, 3, 4, 4
D, L = 6, 5  # model width and sequence length of the sequence models


class Seq(nn.Module):
    """``nn.Sequential`` that passes on only the first output of layers returning tuples (RNNs, MHA)."""

    def __init__(self, *layers: nn.Module) -> None:
        super().__init__()
        self.layers = nn.ModuleList(layers)

    def forward(self, x):
        for layer in self.layers:
            x = layer(x)
            x = x[0] if isinstance(x, tuple) else x
        return x


class SelfAttention(nn.Module):
    """``nn.MultiheadAttention`` as self-attention, with or without a causal mask and weights."""

    def __init__(self, need_weights: bool = False, causal: bool = False) -> None:
        super().__init__()
        self.attention = nn.MultiheadAttention(D, 2, batch_first=True)
        self.need_weights, self.causal = need_weights, causal

    def forward(self, x):  # (examples, L, D)
        mask = nn.Transformer.generate_square_subsequent_mask(x.shape[-2], dtype=x.dtype) if self.causal else None
        return self.attention(x, x, x, need_weights=self.need_weights, attn_mask=mask)[0]


class SDPA(nn.Module):
    """``F.scaled_dot_product_attention`` called directly: causal, a boolean mask, or grouped-query heads."""

    def __init__(self, mode: str) -> None:
        super().__init__()
        self.mode = mode
        self.q, self.kv = nn.Linear(D, D), nn.Linear(D, D if mode != "gqa" else 3)

    def forward(self, x):  # (examples, L, D) -> heads of size 3
        q = self.q(x).unflatten(-1, (-1, 3)).transpose(-3, -2)
        k = self.kv(x).unflatten(-1, (-1, 3)).transpose(-3, -2)
        if self.mode == "causal":
            out = F.scaled_dot_product_attention(q, k, k, is_causal=True)
        elif self.mode == "mask":
            mask = torch.ones(x.shape[-2], x.shape[-2], dtype=torch.bool).tril(1)
            out = F.scaled_dot_product_attention(q, k, k, attn_mask=mask, scale=0.3)
        else:
            out = F.scaled_dot_product_attention(q, k, k, enable_gqa=True)
        return out.transpose(-3, -2).flatten(-2)


class Unrolled(nn.Module):
    """A recurrent cell (``nn.LSTMCell``, ``nn.GRUCell``, ``nn.RNNCell``) unrolled over the sequence."""

    def __init__(self, cell: type[nn.Module]) -> None:
        super().__init__()
        self.cell = cell(D, D)

    def forward(self, x):  # (examples, L, D) -> (examples, D)
        state = None
        for t in range(x.shape[1]):
            state = self.cell(x[:, t], state)
        return state[0] if isinstance(state, tuple) else state


class Decoder(nn.Module):
    def __init__(self, **options) -> None:
        super().__init__()
        self.layer = nn.TransformerDecoderLayer(D, 2, 2 * D, dropout=0.0, batch_first=True, **options)

    def forward(self, x):
        return self.layer(x, x, tgt_is_causal=False)


class Bags(nn.Module):
    """``nn.EmbeddingBag`` over (examples, L) tokens: 2-D input, or three uneven bags per example
    (one empty) through 1-D input and offsets."""

    def __init__(self, mode: str, offsets: bool = False) -> None:
        super().__init__()
        self.bag = nn.EmbeddingBag(7, D, mode=mode, padding_idx=0)
        self.offsets = offsets

    def forward(self, x):  # (examples, L)
        if not self.offsets:
            return self.bag(x)
        starts = torch.tensor([0, 2, 2]) + L * torch.arange(x.shape[0]).unsqueeze(-1)  # (examples, 3)
        return self.bag(x.flatten(), starts.flatten()).reshape(x.shape[0], 3 * D)


class TwinBags(nn.Module):
    """:class:`Bags` written out bag by bag with indexing (the reference: the fused kernel has no double
    backward, and this shares no code with fastmaml's formulation)."""

    def __init__(self, mode: str, offsets: bool = False) -> None:
        super().__init__()
        self.bag = nn.Module()
        self.bag.weight = nn.Parameter(torch.empty(7, D))
        self.mode, self.offsets = mode, offsets

    def reduce(self, tokens):
        rows = [self.bag.weight[t] for t in tokens.tolist() if t != 0]  # padding_idx=0 is left out
        if not rows:
            return self.bag.weight.new_zeros(D)
        rows = torch.stack(rows)
        return {"sum": rows.sum(0), "mean": rows.mean(0), "max": rows.amax(0)}[self.mode]

    def forward(self, x):
        bounds = [(0, L)] if not self.offsets else [(0, 2), (2, 2), (2, L)]
        return torch.stack([torch.cat([self.reduce(row[a:b]) for a, b in bounds]) for row in x])


class Case(NamedTuple):
    make: object  # () -> nn.Module
    shape: tuple[int, ...]  # one example's input shape
    vocab: int = 0  # > 0: integer inputs in [0, vocab)
    twin: object = None  # () -> a module with the same parameters the reference runs instead (no fused kernel)


def mlp(*layers: nn.Module, width: int = D) -> Case:
    """Layers between two linear maps, on (L, D) sequences (each model gets its own copy of ``layers``)."""
    return Case(lambda: Seq(nn.Linear(D, width), *copy.deepcopy(layers), nn.Linear(width, 1)), (L, D))


def conv(dims: int, *layers: nn.Module, channels: int = 4, side: int = 4) -> Case:
    """A ``dims``-d convolution, then ``layers``, then a linear head over the flattened features."""
    convolution = (nn.Conv1d, nn.Conv2d, nn.Conv3d)[dims - 1]
    shape = (2,) + (side,) * dims
    return Case(lambda: Seq(convolution(2, channels, 2), *copy.deepcopy(layers), nn.Flatten(), nn.LazyLinear(1)), shape)


def evaluating(case: Case) -> Case:
    """``case``'s model in eval mode (normalisations use their running statistics)."""
    return case._replace(make=lambda: case.make().eval())


def sequence(*layers: nn.Module) -> Case:
    return Case(lambda: Seq(*copy.deepcopy(layers), nn.Linear(D, 1)), (L, D))


def _has_gqa() -> bool:
    try:
        F.scaled_dot_product_attention(*[torch.zeros(1, 1, 1)] * 3, enable_gqa=True)
    except TypeError:  # grouped-query attention arrived in torch 2.5
        return False
    return True


NEEDS_GQA = {"sdpa-gqa"} if not _has_gqa() else set()

FAMILIES: dict[str, Case] = {
    # normalisations
    "batchnorm1d": Case(lambda: Seq(nn.Linear(D, D), nn.BatchNorm1d(D), nn.Tanh(), nn.Linear(D, 1)), (D,)),
    "batchnorm2d": conv(2, nn.BatchNorm2d(4), nn.Tanh()),
    "batchnorm3d": conv(3, nn.BatchNorm3d(4), nn.Tanh(), side=3),
    "batchnorm2d-eval": evaluating(conv(2, nn.BatchNorm2d(4), nn.Tanh())),
    "batchnorm2d-batch-stats-only": conv(2, nn.BatchNorm2d(4, track_running_stats=False), nn.Tanh()),
    "layernorm": mlp(nn.LayerNorm(D), nn.Tanh()),
    "layernorm-2d-no-bias": mlp(nn.LayerNorm((L, D), bias=False)),
    "layernorm-no-affine": mlp(nn.LayerNorm(D, elementwise_affine=False), nn.Tanh()),
    "groupnorm": conv(1, nn.GroupNorm(2, 4), nn.Tanh(), side=5),
    "instancenorm1d": conv(1, nn.InstanceNorm1d(4, affine=True), nn.Tanh(), side=5),
    "instancenorm2d": conv(2, nn.InstanceNorm2d(4, affine=True, track_running_stats=True), nn.Tanh()),
    "instancenorm3d": conv(3, nn.InstanceNorm3d(4), nn.Tanh(), side=3),
    "instancenorm1d-eval": evaluating(conv(1, nn.InstanceNorm1d(4, affine=True, track_running_stats=True), side=5)),
    "rmsnorm": mlp(nn.RMSNorm(D), nn.Tanh()),
    # attention
    "multihead-attention": sequence(SelfAttention()),
    "multihead-attention-causal": sequence(SelfAttention(causal=True)),
    "multihead-attention-weights": sequence(SelfAttention(need_weights=True)),
    "transformer-encoder": sequence(nn.TransformerEncoderLayer(D, 2, 2 * D, dropout=0.0, batch_first=True)),
    "transformer-encoder-norm-first-gelu": sequence(
        nn.TransformerEncoderLayer(D, 2, 2 * D, dropout=0.0, activation="gelu", batch_first=True, norm_first=True)),
    "transformer-decoder": sequence(Decoder()),
    "sdpa-causal": sequence(SDPA("causal")),
    "sdpa-masked": sequence(SDPA("mask")),
    "sdpa-gqa": sequence(SDPA("gqa")),
    # recurrent (the loop runs them; auto must pick it)
    "lstm": sequence(nn.LSTM(D, D, batch_first=True)),
    "gru": sequence(nn.GRU(D, D, num_layers=2, batch_first=True)),
    "rnn": sequence(nn.RNN(D, D, batch_first=True)),
    "lstm-cell": sequence(Unrolled(nn.LSTMCell)),
    "gru-cell": sequence(Unrolled(nn.GRUCell)),
    "rnn-cell": sequence(Unrolled(nn.RNNCell)),
    # embeddings
    "embedding": Case(lambda: Seq(nn.Embedding(7, D), nn.Tanh(), nn.Linear(D, 1)), (L,), vocab=7),
    "embedding-layernorm": Case(lambda: Seq(nn.Embedding(7, D), nn.LayerNorm(D), nn.Linear(D, 1)), (L,), vocab=7),
    **{f"embedding-bag-{mode}{'-offsets' * offsets}": Case(
        lambda mode=mode, offsets=offsets: Seq(Bags(mode, offsets), nn.Tanh(), nn.LazyLinear(1)), (L,), vocab=7,
        twin=lambda mode=mode, offsets=offsets: Seq(TwinBags(mode, offsets), nn.Tanh(), nn.LazyLinear(1)))
       for mode in ("sum", "mean", "max") for offsets in (False, True)},
    # convolutions and pooling
    "conv1d": conv(1, nn.Tanh(), side=5),
    "conv2d": conv(2, nn.Tanh()),
    "conv3d": conv(3, nn.Tanh(), side=3),
    "conv-transpose2d": conv(2, nn.ConvTranspose2d(4, 2, 2), nn.Tanh()),
    "maxpool1d": conv(1, nn.Tanh(), nn.MaxPool1d(2), side=5),
    "maxpool2d": conv(2, nn.Tanh(), nn.MaxPool2d(2, 1)),
    "maxpool3d": conv(3, nn.Tanh(), nn.MaxPool3d(2), side=3),
    "avgpool2d": conv(2, nn.Tanh(), nn.AvgPool2d(2, 1)),
    "adaptive-avgpool2d": conv(2, nn.Tanh(), nn.AdaptiveAvgPool2d(2)),
    "adaptive-maxpool1d": conv(1, nn.Tanh(), nn.AdaptiveMaxPool1d(2), side=5),
    "lppool2d": conv(2, nn.Softplus(), nn.LPPool2d(2, 2)),
    # activations
    **{name: mlp(layer) for name, layer in {
        "relu": nn.ReLU(), "leaky-relu": nn.LeakyReLU(0.1), "elu": nn.ELU(), "selu": nn.SELU(), "celu": nn.CELU(),
        "gelu": nn.GELU(), "gelu-tanh": nn.GELU("tanh"), "silu": nn.SiLU(), "mish": nn.Mish(),
        "softplus": nn.Softplus(), "tanh": nn.Tanh(), "sigmoid": nn.Sigmoid(), "hardswish": nn.Hardswish(),
        "hardtanh": nn.Hardtanh(), "prelu": nn.PReLU(), "softmax": nn.Softmax(-1), "log-softmax": nn.LogSoftmax(-1),
        "logsigmoid": nn.LogSigmoid(), "softsign": nn.Softsign(),
    }.items()},
    "glu": Case(lambda: Seq(nn.Linear(D, 2 * D), nn.GLU(), nn.Linear(D, 1)), (L, D)),
}


def problem(case: Case, seed: int = 0):
    """A float64 model and a meta-batch of regression tasks with targets shaped like its outputs."""
    torch.manual_seed(seed)
    model = case.make().double()
    g = torch.Generator().manual_seed(seed + 1)
    n = SUPPORT + QUERY
    if case.vocab:
        x = torch.randint(case.vocab, (TASKS, n, *case.shape), generator=g)
    else:
        x = torch.randn(TASKS, n, *case.shape, generator=g, dtype=torch.float64)
    with torch.no_grad():
        out = model(x[0])  # (n, *outputs); also materialises lazy layers
    y = torch.randn(TASKS, n, *out.shape[1:], generator=g, dtype=torch.float64)
    return model, fm.TaskBatch(x[:, :SUPPORT], y[:, :SUPPORT], x[:, SUPPORT:], y[:, SUPPORT:])


def reference(model, batch, first_order, case=None):
    if case is not None and case.twin is not None:
        twin = case.twin().double()
        with torch.no_grad():
            twin(batch.support_x[0])  # materialise lazy layers
        twin.load_state_dict(model.state_dict())
        model = twin
    with sdpa_kernel([SDPBackend.MATH]):
        return reference_meta_gradient(model, batch, LR, STEPS, first_order, F.mse_loss)


def fastmaml_gradient(model, batch, first_order, execution):
    model.zero_grad(set_to_none=True)
    maml = fm.MAML(model, LR, STEPS, first_order, F.mse_loss, execution=execution)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        maml.outer_loss(batch).backward()
    fallbacks = [str(w.message) for w in caught if "vmap cannot run" in str(w.message)]
    assert not fallbacks, f"auto tried vmap and fell back: {fallbacks}"
    return maml, {n: p.grad.clone() for n, p in model.named_parameters()}


@pytest.mark.parametrize("first_order", [False, True], ids=["second-order", "first-order"])
@pytest.mark.parametrize("family", list(FAMILIES))
def test_every_path_matches_plain_autograd(family, first_order):
    if family in NEEDS_GQA:
        pytest.skip("F.scaled_dot_product_attention(enable_gqa=...) needs torch >= 2.5")
    case = FAMILIES[family]
    model, batch = problem(case)
    expected = reference(model, batch, first_order, case)
    scale = max(g.abs().max().item() for g in expected.values())
    assert scale > 0
    paths = ("vmap", "loop", "auto") if vmap_is_exact(model) else ("loop", "auto")
    for execution in paths:
        maml, got = fastmaml_gradient(model, batch, first_order, execution)
        for name, g in expected.items():
            torch.testing.assert_close(got[name], g, rtol=1e-9, atol=1e-12 * scale,
                                       msg=lambda m, e=execution, n=name: f"{family} {e} {n}: {m}")
    # auto: never vmap where it is inexact; otherwise the size rule of decide() (tested in test_execution)
    auto = "loop" if not vmap_is_exact(model) else "vmap" if not fm.core.execution.has_conv(model) else None
    assert maml.mapper.execution == (auto or fm.core.execution.decide(model, *batch.tensors()))


def meta_loss(model, batch):
    return fm.MAML(model, LR, STEPS, False, F.mse_loss, execution="loop").outer_loss(batch).item()


FINITE_DIFFERENCES = ["layernorm", "instancenorm1d", "batchnorm2d", "transformer-encoder-norm-first-gelu"]


@pytest.mark.parametrize("family", FINITE_DIFFERENCES)
def test_second_order_matches_finite_differences(family):
    """The vmapped meta-gradient along a random direction against central differences of the meta-loss,
    extrapolated twice (Richardson: truncation error O(h^6), about 1e-11 here; one level left 5e-9 on instance
    norm). What is left is rounding: eps |L| / h amplified by the extrapolation, which other CPUs' kernels make
    larger (1.4e-9 relative on the transformer on CI's machine), so the bound is 1e-8; dropping the second-order
    terms moves these four by 10 % to 300 %."""
    model, batch = problem(FAMILIES[family])
    _, grads = fastmaml_gradient(model, batch, False, "vmap")
    params = dict(model.named_parameters())
    g = torch.Generator().manual_seed(2)
    direction = {n: torch.randn(p.shape, generator=g, dtype=p.dtype) for n, p in params.items()}
    analytic = sum((grads[n] * direction[n]).sum() for n in params).item()

    def along(h):
        with torch.no_grad():
            for n, p in params.items():
                p.add_(h * direction[n])
        try:
            return meta_loss(model, batch)
        finally:
            with torch.no_grad():
                for n, p in params.items():
                    p.sub_(h * direction[n])

    def central(h):
        return (along(h) - along(-h)) / (2 * h)

    h = 1e-4
    d1, d2, d4 = central(h), central(h / 2), central(h / 4)
    numeric = (16 * (4 * d4 - d2) / 3 - (4 * d2 - d1) / 3) / 15
    assert numeric == pytest.approx(analytic, rel=1e-8)


def test_vmap_tasks_draw_different_dropout_masks():
    """Identical tasks differ only by their dropout draws: every task's query loss must differ."""
    torch.manual_seed(0)
    model = Seq(nn.Linear(D, 16), nn.Dropout(0.5), nn.Linear(16, 1)).double()
    x = torch.randn(1, 8, D, dtype=torch.float64).expand(4, 8, D)
    y = torch.randn(1, 8, 1, dtype=torch.float64).expand(4, 8, 1)
    maml = fm.MAML(model, LR, 1, False, F.mse_loss, execution="vmap")
    losses, _ = maml.task_losses(fm.TaskBatch(x[:, :4], y[:, :4], x[:, 4:], y[:, 4:]))
    assert len(set(losses.tolist())) == 4


@pytest.mark.parametrize("first_order", [False, True])
def test_dropout_loop_matches_reference_under_one_seed(first_order):
    """The loop draws dropout masks in the reference's order (per task: support steps, then query), so
    under one seed the two see the same masks and must agree exactly. (Attention's own dropout draws in
    another order under torch.func transforms, so this holds for ``nn.Dropout`` layers only.)"""
    case = mlp(nn.Dropout(0.3), nn.Tanh(), nn.Dropout(0.2))
    model, batch = problem(case)
    maml = fm.MAML(model, LR, STEPS, first_order, F.mse_loss, execution="loop")
    maml.outer_loss(batch)  # the one-off input check draws from the generator too
    torch.manual_seed(5)
    expected = reference(model, batch, first_order)
    model.zero_grad(set_to_none=True)
    torch.manual_seed(5)
    maml.outer_loss(batch).backward()
    for name, g in expected.items():
        torch.testing.assert_close(model.get_parameter(name).grad, g, rtol=1e-9, atol=1e-12)


def test_routing_is_on_only_where_a_model_needs_it():
    assert not needs_exact_ops(fm.models.MLP([1, 4, 1]))
    assert needs_exact_ops(nn.Sequential(nn.Linear(2, 2), nn.LayerNorm(2)))
    assert needs_exact_ops(nn.TransformerEncoderLayer(4, 2, batch_first=True))
    assert needs_exact_ops(Seq(nn.Linear(2, 2)))  # its own forward may call anything
    assert not vmap_is_exact(sequence(nn.LSTM(D, D)).make()) and vmap_is_exact(fm.models.MLP([1, 4, 1]))


@pytest.mark.parametrize("mode", ["sum", "mean", "max"])
@pytest.mark.parametrize("padding_idx", [None, 3])
def test_plain_embedding_bag_matches_the_native_kernel(mode, padding_idx):
    """2-D input, 1-D input with offsets (one empty bag), with a last offset, and per-sample weights."""
    g = torch.Generator().manual_seed(0)
    weight = torch.randn(7, 3, generator=g, dtype=torch.float64)
    flat = torch.randint(7, (9,), generator=g)
    inputs = [{"input": torch.randint(7, (4, 5), generator=g)}, {"input": flat, "offsets": torch.tensor([0, 2, 2, 6])},
              {"input": flat, "offsets": torch.tensor([0, 2, 2, 6, 9]), "include_last_offset": True}]
    for args in inputs:
        options = [{}] if mode != "sum" else [{}, {"per_sample_weights": torch.rand(args["input"].shape, generator=g,
                                                                                     dtype=torch.float64)}]
        for extra in options:
            torch.testing.assert_close(
                embedding_bag(weight=weight, mode=mode, padding_idx=padding_idx, **args, **extra),
                F.embedding_bag(weight=weight, mode=mode, padding_idx=padding_idx, **args, **extra), rtol=0, atol=1e-14)


def test_plain_norms_match_the_native_kernels_and_never_write_running_stats():
    x = torch.randn(3, 4, 5, dtype=torch.float64)
    w, b = torch.rand(4, dtype=torch.float64), torch.rand(4, dtype=torch.float64)
    mean, var = torch.rand(4, dtype=torch.float64), torch.rand(4, dtype=torch.float64) + 0.5
    mean_before, var_before = mean.clone(), var.clone()  # copies taken before any call
    for use_input_stats in (True, False):
        stats = mean.clone(), var.clone()
        expected = F.instance_norm(x, *stats, w, b, use_input_stats)
        if use_input_stats:  # the native functional does write them: the check below can fail
            assert not torch.equal(stats[0], mean_before) and not torch.equal(stats[1], var_before)
        torch.testing.assert_close(norms.instance_norm(x, mean, var, w, b, use_input_stats), expected)
        torch.testing.assert_close(norms.native_instance_norm(x, mean, var, w, b, use_input_stats), expected)
        assert torch.equal(mean, mean_before) and torch.equal(var, var_before), f"written ({use_input_stats=})"
    ln_w, ln_b = torch.rand(4, 5, dtype=torch.float64), torch.rand(4, 5, dtype=torch.float64)
    torch.testing.assert_close(norms.layer_norm(x, [4, 5], ln_w, ln_b), F.layer_norm(x, [4, 5], ln_w, ln_b))
    torch.testing.assert_close(norms.layer_norm(x, [5]), F.layer_norm(x, [5]))
