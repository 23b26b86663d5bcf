"""The layer matrix's CUDA leg: on a GPU, every stock layer family's meta-gradient (float64, two inner steps,
second and first order) on every execution path matches plain autograd computed on the CPU.

Runs where CUDA exists (``benchmarks/gpu.py`` runs it on a lent GPU); skipped elsewhere. The same families
and tolerances as tests/test_layer_matrix.py, whose CPU leg runs everywhere.
"""

from __future__ import annotations

import pytest
import torch

import fastmaml as fm
from fastmaml.core.exact import vmap_is_exact
from test_layer_matrix import FAMILIES, NEEDS_GQA, fastmaml_gradient, problem, reference

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")


@pytest.mark.parametrize("first_order", [False, True], ids=["second-order", "first-order"])
@pytest.mark.parametrize("family", list(FAMILIES))
def test_every_path_on_cuda_matches_plain_autograd_on_the_cpu(family, first_order):
    if family in NEEDS_GQA:
        pytest.skip("F.scaled_dot_product_attention(enable_gqa=...) needs torch >= 2.5")
    case = FAMILIES[family]
    model, batch = problem(case)
    expected = reference(model, batch, first_order, case)  # on the CPU
    scale = max(g.abs().max().item() for g in expected.values())
    model, batch = model.cuda(), batch.to("cuda")
    paths = ("vmap", "loop", "auto") if vmap_is_exact(model) else ("loop", "auto")
    for execution in paths:
        maml, got = fastmaml_gradient(model, batch, first_order, execution)
        for name, g in expected.items():
            torch.testing.assert_close(got[name].cpu(), g, rtol=1e-9, atol=1e-12 * scale,
                                       msg=lambda m, e=execution, n=name: f"{family} {e} {n} on cuda: {m}")
    # auto on a GPU: vmap wherever it is exact, whatever the task size
    assert maml.mapper.execution == ("vmap" if vmap_is_exact(model) else "loop")


def test_conv4_with_batchnorm_on_cuda_at_omniglot_size():
    """The paper's network and task shape (5-way 1-shot, 15 query images per class), float64."""
    torch.manual_seed(0)
    model = fm.models.Conv4(1, 5).double()
    g = torch.Generator().manual_seed(1)
    labels = torch.arange(5)
    batch = fm.TaskBatch(torch.rand(4, 5, 1, 28, 28, generator=g, dtype=torch.float64), labels.expand(4, 5),
                         torch.rand(4, 75, 1, 28, 28, generator=g, dtype=torch.float64),
                         labels.repeat_interleave(15).expand(4, 75))
    cpu = fm.MAML(model, 0.4, 2, execution="loop")
    cpu.outer_loss(batch).backward()
    expected = {n: p.grad.clone() for n, p in model.named_parameters()}
    model.zero_grad(set_to_none=True)
    gpu = fm.MAML(model.cuda(), 0.4, 2)
    gpu.outer_loss(batch.to("cuda")).backward()
    assert gpu.mapper.execution == "vmap"
    for name, p in model.named_parameters():
        torch.testing.assert_close(p.grad.cpu(), expected[name], rtol=1e-9, atol=1e-13)
