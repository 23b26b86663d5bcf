"""ResNet-12 under MAML: vmap path == loop path == a plain autograd loop in float64; torchvision models."""

import pytest
import torch
import torch.nn.functional as F
import fastmaml as fm
from fastmaml.tasks.episodes import EpisodicTasks
from helpers import meta_gradient, reference_meta_gradient


def tiny_batch(tasks: int = 2, channels: int = 3) -> fm.TaskBatch:
    images = torch.randn(24, channels, 16, 16, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    return EpisodicTasks(images, torch.arange(4).repeat(6), ways=3, shots=2, query_shots=2).sample_tasks(
        tasks, torch.Generator().manual_seed(1)
    )


def test_resnet12_shapes_and_no_running_statistics():
    model = fm.models.ResNet12(in_channels=1, ways=7, channels=(4, 6, 8, 10))
    assert model(torch.zeros(3, 1, 28, 28)).shape == (3, 7)
    assert not list(model.buffers()), "BatchNorm must not track running statistics"
    assert sum(isinstance(m, torch.nn.Conv2d) for m in model.modules()) == 16  # 4 blocks x (3 + shortcut)
    with pytest.raises(ValueError, match="at least 16x16"):
        model(torch.zeros(2, 1, 8, 8))


def test_resnet12_maml_vmap_equals_loop_equals_autograd_float64():
    torch.manual_seed(0)
    # One inner step keeps it second-order (the outer gradient runs through the inner gradient) and
    # fast: two steps cost ~8 s under vmap on 2 CPU cores.
    model = fm.models.ResNet12(in_channels=3, ways=3, channels=(2, 2, 3, 3)).double()
    batch = tiny_batch()
    vmap = meta_gradient(fm.MAML(model, inner_lr=0.1, inner_steps=1, execution="vmap"), batch)
    loop = meta_gradient(fm.MAML(model, inner_lr=0.1, inner_steps=1, execution="loop"), batch)
    reference = reference_meta_gradient(model, batch, 0.1, 1, False, F.cross_entropy)
    assert set(vmap) == set(reference) and len(vmap) == 4 * 12 + 2  # per block: 4 convs, 4 BatchNorms (weight, bias)
    for name in reference:
        torch.testing.assert_close(vmap[name], loop[name], rtol=1e-9, atol=1e-12, msg=name)
        torch.testing.assert_close(vmap[name], reference[name], rtol=1e-9, atol=1e-12, msg=name)
    assert any(g.abs().max() > 1e-6 for g in vmap.values())


def test_torchvision_resnet18_runs_unchanged_under_maml():
    torchvision = pytest.importorskip("torchvision")
    torch.manual_seed(0)
    model = torchvision.models.resnet18(num_classes=3)  # float32: float64 costs ~15 s on 2 CPU cores
    before = {n: b.clone() for n, b in model.named_buffers()}
    batch = tiny_batch(tasks=2).to(torch.float32)
    maml = fm.MAML(model, inner_lr=0.01, inner_steps=1, execution="vmap")
    loss = maml.outer_loss(batch)
    loss.backward()
    assert torch.isfinite(loss) and model.fc.weight.grad is not None and model.conv1.weight.grad.abs().sum() > 0
    # Buffers (BatchNorm running statistics) travel beside the parameters and are never written.
    assert all(torch.equal(before[n], b) for n, b in model.named_buffers())
