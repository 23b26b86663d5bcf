"""The token-sequence task family, its transformer, and the README's transformer example."""

import re
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

import fastmaml as fm
from fastmaml.tasks import TokenSequences
from helpers import reference_meta_gradient

README = Path(__file__).parents[1] / "docs" / "tutorials" / "your-own-model.md"  # the transformer example


def test_episodes_have_the_promised_shapes_labels_and_seeding():
    tasks = TokenSequences(ways=3, shots=2, query_shots=4, length=7, vocab=5)
    batch = tasks.sample_tasks(6, torch.Generator().manual_seed(0))
    assert batch.support_x.shape == (6, 6, 7) and batch.query_x.shape == (6, 12, 7)
    assert batch.support_x.dtype == torch.int64 and 0 <= batch.support_x.min() and batch.support_x.max() < 5
    assert batch.support_y[0].tolist() == [0, 0, 1, 1, 2, 2]
    assert batch.query_y[0].tolist() == [0] * 4 + [1] * 4 + [2] * 4
    again = tasks.sample_tasks(6, torch.Generator().manual_seed(0))
    assert torch.equal(batch.support_x, again.support_x) and torch.equal(batch.query_x, again.query_x)
    assert not torch.equal(batch.support_x, tasks.sample_tasks(6, torch.Generator().manual_seed(1)).support_x)


def test_without_noise_every_example_is_a_rotation_of_its_class_prototype():
    tasks = TokenSequences(ways=4, shots=3, query_shots=3, length=9, vocab=50, noise=0.0)
    batch = tasks.sample_tasks(2, torch.Generator().manual_seed(0))
    x = torch.cat([batch.support_x.unflatten(1, (4, 3)), batch.query_x.unflatten(1, (4, 3))], 2)  # (2, 4, 6, 9)
    for task in range(2):
        for cls in range(4):
            first = x[task, cls, 0].tolist()
            rotations = [first[i:] + first[:i] for i in range(9)]
            assert all(example.tolist() in rotations for example in x[task, cls])
    assert not torch.equal(x[0, 0, 0].sort().values, x[0, 1, 0].sort().values)


@pytest.mark.parametrize("bad", [dict(ways=0), dict(shots=1.5), dict(vocab=1), dict(noise=1.5), dict(length=True)])
def test_bad_arguments_name_the_fix(bad):
    with pytest.raises(ValueError, match="must be|at least 2|probability"):
        TokenSequences(**bad)


def test_the_transformer_meta_gradient_is_exact_on_both_paths():
    """Second order, float64, against a plain autograd loop on the math attention backend."""
    torch.manual_seed(0)
    model = fm.models.SequenceTransformer(vocab=6, ways=3, dim=8, heads=2).double()
    batch = TokenSequences(ways=3, shots=1, query_shots=2, length=5, vocab=6).sample_tasks(
        2, torch.Generator().manual_seed(0))
    with torch.nn.attention.sdpa_kernel([torch.nn.attention.SDPBackend.MATH]):
        expected = reference_meta_gradient(model, batch, 0.4, 2, False, F.cross_entropy)
    for execution in ("vmap", "loop"):
        model.zero_grad(set_to_none=True)
        fm.MAML(model, 0.4, 2, execution=execution).outer_loss(batch).backward()
        for name, p in model.named_parameters():
            torch.testing.assert_close(p.grad, expected[name], rtol=1e-9, atol=1e-12)


def test_the_readme_transformer_example_runs(capsys):
    """The README's code block, as written, with fewer iterations and test tasks."""
    text = README.read_text()
    code = re.search(r"<!-- transformer-example -->\n```python\n(.*?)```", text, re.S).group(1)
    short = code.replace("range(400)", "range(3)").replace("tasks, 200, 5,", "tasks, 4, 5,")
    assert short.count("range(3)") == 1 and short.count("tasks, 4, 5,") == 1
    exec(compile(short, str(README), "exec"), {})
    accuracies = eval(capsys.readouterr().out.strip().splitlines()[-1])
    assert len(accuracies) == 6 and all(0 <= a <= 100 for a in accuracies)
