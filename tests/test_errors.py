"""Bad input: one clear line that names the fix."""

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import fastmaml as fm


def batch(tasks=2, support=5, query=5):
    return fm.TaskBatch(torch.zeros(tasks, support, 1), torch.zeros(tasks, support, 1),
                        torch.zeros(tasks, query, 1), torch.zeros(tasks, query, 1))


@pytest.mark.parametrize("make, error, match", [
    (lambda: fm.TaskBatch(torch.zeros(2, 5, 1), torch.zeros(3, 5, 1), torch.zeros(2, 5, 1), torch.zeros(2, 5, 1)),
     ValueError, "task counts differ"),
    (lambda: fm.TaskBatch(torch.zeros(2, 5, 1), torch.zeros(2, 4, 1), torch.zeros(2, 5, 1), torch.zeros(2, 5, 1)),
     ValueError, "one target per example"),
    (lambda: fm.TaskBatch(torch.zeros(2, 5, 1), torch.zeros(2, 5, 1), torch.zeros(2, 5, 2), torch.zeros(2, 5, 1)),
     ValueError, "same shape"),
    (lambda: fm.TaskBatch(torch.zeros(5), torch.zeros(5), torch.zeros(5), torch.zeros(5)),
     ValueError, "unsqueeze"),
    (lambda: fm.TaskBatch([1], torch.zeros(5), torch.zeros(5), torch.zeros(5)), TypeError, "torch.Tensor"),
    (lambda: fm.MAML(fm.models.MLP([1, 1]), inner_steps=-1), ValueError, "inner_steps=-1"),
    (lambda: fm.MAML(fm.models.MLP([1, 1]), inner_steps=1.5), ValueError, "integer >= 0"),
    (lambda: fm.MAML(fm.models.MLP([1, 1]), inner_lr=-0.1), ValueError, "inner_lr=-0.1"),
    (lambda: fm.MAML(nn.ReLU()), ValueError, "no differentiable parameters"),
    (lambda: fm.MAML(fm.models.MLP([1, 1]).requires_grad_(False)), ValueError, "requires_grad=True"),
    (lambda: fm.MAML("model"), TypeError, "nn.Module"),
    (lambda: fm.MAML(fm.models.MLP([1, 1]), execution="gpu"), ValueError, "one of"),
    (lambda: fm.MAML(fm.models.MLP([1, 1]), loss_fn=lambda p, y: F.mse_loss(p, y, reduction="none"))
     .outer_loss(batch()), ValueError, "not a scalar"),
    (lambda: fm.MAML(fm.models.MLP([3, 1])).outer_loss(batch()), ValueError, "cannot take inputs of shape"),
    (lambda: fm.MAML(fm.models.MLP([1, 1])).outer_loss((1, 2)), TypeError, "TaskBatch"),
    (lambda: fm.fit(fm.models.MLP([1, 1]), [1, 2]), TypeError, "sample_tasks"),
    (lambda: fm.fit(fm.models.MLP([1, 1]), fm.Sinusoid(), optimizer="adam"), TypeError, "torch.optim"),
    (lambda: fm.models.MLP([1]), ValueError, "at least an input and an output"),
    (lambda: fm.Sinusoid(shots=0), ValueError, "at least one support point"),
])
def test_bad_input_raises_one_line(make, error, match):
    with pytest.raises(error, match=match) as info:
        make()
    assert "\n" not in str(info.value)


def test_non_finite_outer_loss_stops_the_run():
    from fastmaml.train.outer import meta_train

    class Diverging(fm.Sinusoid):
        def sample_tasks(self, tasks, generator):
            batch = super().sample_tasks(tasks, generator)
            return fm.TaskBatch(batch.support_x, batch.support_y * 1e30, batch.query_x, batch.query_y * 1e30)

    maml = fm.MAML(fm.models.MLP([1, 40, 1]), inner_lr=10.0)
    with pytest.raises(FloatingPointError, match="lower inner_lr or outer_lr"):
        meta_train(maml, torch.optim.Adam(maml.parameters(), 1e-3), Diverging(), torch.Generator().manual_seed(0),
                   iterations=5, meta_batch_size=4, progress=False)


@pytest.mark.parametrize("noun, phrase", [
    ("int", "an int"), ("float", "a float"), ("bool", "a bool"), ("str", "a str"), ("object", "an object"),
    ("uint8", "a uint8"), ("Tensor", "a Tensor"), ("ellipsis", "an ellipsis"),
])
def test_messages_put_the_right_article_before_a_type_name(noun, phrase):
    from fastmaml._text import with_article

    assert with_article(noun) == phrase


def test_a_recipe_file_that_is_not_a_mapping_names_its_type_with_the_right_article(tmp_path):
    from fastmaml.train import config as cfg

    (tmp_path / "r.yaml").write_text("3\n")
    with pytest.raises(ValueError, match=r"not an int; write one key: value per line"):
        cfg.resolve(str(tmp_path / "r.yaml"))
