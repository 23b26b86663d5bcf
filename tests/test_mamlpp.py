"""MAML++: each fix against an independent computation; all off is MAML; BatchNorm statistics never leak."""

import pytest
import torch
from torch import nn

import fastmaml as fm
from algo_helpers import assert_close, batch, bn_mlp, grads, mlp
from fastmaml.algorithms import FOMAML, MAMLPlusPlus
from fastmaml.algorithms.mamlpp import msl_weights
from fastmaml.core import inner

OFF = {
    "multi_step_loss": False,
    "first_order_fraction": 0.0,
    "learned_lr": False,
    "per_step_bn_weights": False,
    "per_step_bn_statistics": False,
    "cosine_annealing": False,
}


@pytest.mark.parametrize("steps", [1, 3])
def test_all_fixes_off_is_maml_exactly(steps):
    data = batch()
    plus = MAMLPlusPlus(bn_mlp(), inner_lr=0.2, inner_steps=steps, **OFF)
    maml = fm.MAML(bn_mlp(), inner_lr=0.2, inner_steps=steps)
    plus.begin_iteration(0, 100)
    loss_plus, loss_maml = plus.outer_loss(data), maml.outer_loss(data)
    assert torch.equal(loss_plus, loss_maml)
    got, want = grads(plus, loss_plus), grads(maml, loss_maml)
    assert got.keys() == want.keys() and all(torch.equal(got[n], want[n]) for n in got)
    assert plus.scheduler(torch.optim.Adam(plus.parameters()), 100) is None


# -- MSL -----------------------------------------------------------------------------------------------


def test_msl_weights_anneal_from_uniform_towards_the_final_step():
    assert msl_weights(4, 0.0) == [0.25] * 4
    final = msl_weights(4, 1.0)
    assert final[:3] == [0.03 / 4] * 3 and final[3] == pytest.approx(1 - 3 * 0.03 / 4)
    for progress in (0.0, 0.3, 0.7, 1.0):
        assert sum(msl_weights(4, progress)) == pytest.approx(1.0)
    assert msl_weights(4, 0.3)[3] < msl_weights(4, 0.7)[3]


def test_msl_outer_loss_is_the_weighted_per_step_query_loss_then_the_final_one():
    data = batch()
    algo = MAMLPlusPlus(mlp(), inner_lr=0.2, inner_steps=3, **{**OFF, "multi_step_loss": True})
    algo.begin_iteration(5, 100)  # halfway through the first 10% of training
    tracked, _ = algo.task_losses(data, track=True)
    want = (tracked[:, 1:] @ torch.tensor(msl_weights(3, 0.5), dtype=torch.float64)).mean()
    torch.testing.assert_close(algo.outer_loss(data), want, atol=1e-14, rtol=0)
    algo.begin_iteration(10, 100)
    torch.testing.assert_close(algo.outer_loss(data), tracked[:, -1].mean(), atol=1e-14, rtol=0)


def test_msl_with_one_step_is_the_final_loss_without_the_query_forward_before_adaptation(monkeypatch):
    data = batch()
    msl = MAMLPlusPlus(mlp(), inner_lr=0.2, inner_steps=1, **{**OFF, "multi_step_loss": True})
    off = MAMLPlusPlus(mlp(), inner_lr=0.2, inner_steps=1, **OFF)
    msl.begin_iteration(0, 100)
    tracks = []
    original = inner.task_loss

    def task_loss(*args, track=False, **kwargs):
        tracks.append(track)
        return original(*args, track=track, **kwargs)

    monkeypatch.setattr(inner, "task_loss", task_loss)
    loss_msl, loss_off = msl.outer_loss(data), off.outer_loss(data)
    assert tracks and not any(tracks)  # every task of both: no query forward before adaptation
    assert torch.equal(loss_msl, loss_off)
    got, want = grads(msl, loss_msl), grads(off, loss_off)
    assert all(torch.equal(got[n], want[n]) for n in want)


# -- derivative-order annealing ------------------------------------------------------------------------


def test_derivative_order_is_first_order_for_the_first_fraction_then_second_order():
    data = batch()
    algo = MAMLPlusPlus(mlp(), inner_lr=0.2, inner_steps=2, **{**OFF, "first_order_fraction": 0.25})
    fomaml, maml = FOMAML(mlp(), inner_lr=0.2, inner_steps=2), fm.MAML(mlp(), inner_lr=0.2, inner_steps=2)
    algo.begin_iteration(24, 100)
    assert algo.first_order
    assert_close(grads(algo, algo.outer_loss(data)), grads(fomaml, fomaml.outer_loss(data)))
    algo.begin_iteration(25, 100)
    assert not algo.first_order
    assert_close(grads(algo, algo.outer_loss(data)), grads(maml, maml.outer_loss(data)))
    always = MAMLPlusPlus(mlp(), first_order=True, **{**OFF, "first_order_fraction": 0.25})
    always.begin_iteration(99, 100)
    assert always.first_order


# -- LSLR ----------------------------------------------------------------------------------------------


def test_learned_per_step_rates_start_as_maml_and_each_step_has_its_own():
    data = batch()
    algo = MAMLPlusPlus(mlp(), inner_lr=0.2, inner_steps=2, **{**OFF, "learned_lr": True})
    maml = fm.MAML(mlp(), inner_lr=0.2, inner_steps=2)
    got = grads(algo, algo.outer_loss(data))
    assert_close({n: g for n, g in got.items() if n.startswith("model.")}, grads(maml, maml.outer_loss(data)))
    rates = {n: g for n, g in got.items() if n.startswith("rule_state.")}
    assert len(rates) == 6 and all(g.shape == (2,) for g in rates.values())
    assert all(g.abs().min() > 0 for g in rates.values())
    before, _ = algo.task_losses(data, track=True)
    with torch.no_grad():
        algo.rule_state["0/weight"][1] += 0.5  # the second step's rate only
    after, _ = algo.task_losses(data, track=True)
    assert torch.equal(before[:, :2], after[:, :2]) and not torch.equal(before[:, 2], after[:, 2])


# -- BNWB ----------------------------------------------------------------------------------------------


def test_per_step_bn_weights_are_outer_only_and_split_the_shared_gradient_by_step():
    """At initialisation every slot holds the model's BatchNorm weights, so the per-slot gradients sum to
    the gradient MAML gives the shared (non-adapted) weights."""
    data = batch()
    algo = MAMLPlusPlus(bn_mlp(), inner_lr=0.2, inner_steps=2, **{**OFF, "per_step_bn_weights": True})
    assert algo.adapt_names == ("0.weight", "0.bias", "3.weight", "3.bias")
    maml = fm.MAML(bn_mlp(), inner_lr=0.2, inner_steps=2, adapt=["0", "3"])
    got, want = grads(algo, algo.outer_loss(data)), grads(maml, maml.outer_loss(data))
    for name in ("0.weight", "0.bias", "3.weight", "3.bias"):
        torch.testing.assert_close(got["model." + name], want["model." + name], atol=1e-12, rtol=0)
    for kind in ("weight", "bias"):
        per_step = got[f"norm.weights.1/{kind}"]
        assert per_step.shape == (3, 6) and (per_step.abs().sum(1) > 0).all()
        torch.testing.assert_close(per_step.sum(0), want[f"model.1.{kind}"], atol=1e-12, rtol=0)
    before, _ = algo.task_losses(data, track=True)
    with torch.no_grad():
        algo.norm.weights["1/weight"][2] *= 2  # the slot after two updates only
    after, _ = algo.task_losses(data, track=True)
    assert torch.equal(before[:, :2], after[:, :2]) and not torch.equal(before[:, 2], after[:, 2])


# -- BNRS: per-step running statistics -----------------------------------------------------------------


def statistics_algo(**options) -> MAMLPlusPlus:
    return MAMLPlusPlus(
        bn_mlp(track=True), inner_lr=0.3, inner_steps=2, **{**OFF, "per_step_bn_statistics": True, **options}
    )


def buffers(algo: nn.Module) -> dict[str, torch.Tensor]:
    return {n: b.clone() for n, b in algo.named_buffers()}


@pytest.mark.parametrize("execution", ["vmap", "loop"])
def test_statistics_of_step_k_are_the_moving_average_of_query_batches_at_step_k(execution):
    """Independent check: adapt each task for k steps by hand, capture the BatchNorm input of its query
    forward with a hook, average over tasks, and fold in with momentum 0.1."""
    data = batch()
    algo = statistics_algo(execution=execution)
    initial = buffers(algo)
    algo.outer_loss(data)
    seen = []
    hook = algo.model[1].register_forward_pre_hook(lambda module, args: seen.append(args[0].detach()))
    for k in range(3):
        query_inputs = []
        for i in range(len(data)):
            adapted = algo.adapt(data.support_x[i], data.support_y[i], inner_steps=k)
            seen.clear()
            algo.predict(adapted, data.query_x[i], inner_steps=k)
            query_inputs += seen
        mean = torch.stack([x.mean(0) for x in query_inputs]).mean(0)
        var = torch.stack([x.var(0) for x in query_inputs]).mean(0)
        torch.testing.assert_close(
            algo.norm.get_buffer("running_mean:1")[k],
            0.9 * initial["norm.running_mean:1"][k] + 0.1 * mean,
            atol=1e-12,
            rtol=0,
        )
        torch.testing.assert_close(
            algo.norm.get_buffer("running_var:1")[k],
            0.9 * initial["norm.running_var:1"][k] + 0.1 * var,
            atol=1e-12,
            rtol=0,
        )
    hook.remove()
    means = algo.norm.get_buffer("running_mean:1")
    assert (means[0] - means[2]).abs().max() > 1e-4  # the steps really see different statistics
    assert torch.equal(algo.model[1].running_mean, initial["model.1.running_mean"])  # the model's own: untouched


def test_meta_test_never_writes_statistics():
    data, unseen = batch(), batch(seed=1)
    algo = statistics_algo()
    algo.outer_loss(data)
    snapshot = buffers(algo)
    for mode in (True, False):
        algo.train(mode)
        algo.task_losses(unseen, inner_steps=4, track=True)
        algo.predict(algo.adapt(unseen.support_x[0], unseen.support_y[0]), unseen.query_x[0])
    algo.outer_loss(unseen)  # in eval mode: a validation loss, not a training step
    after = buffers(algo)
    assert all(torch.equal(snapshot[n], after[n]) for n in snapshot)


def test_evaluation_between_training_steps_does_not_change_training():
    """The reference MAML++ backs statistics up with a shallow copy that evaluation overwrites; here an
    evaluation between two training steps leaves both the statistics and the next gradient unchanged."""
    first, second, unseen = batch(seed=0), batch(seed=1), batch(seed=2)
    evaluated, plain = statistics_algo(), statistics_algo()
    evaluated.outer_loss(first)
    plain.outer_loss(first)
    evaluated.eval()
    evaluated.task_losses(unseen, track=True)
    evaluated.train()
    got, want = grads(evaluated, evaluated.outer_loss(second)), grads(plain, plain.outer_loss(second))
    assert all(torch.equal(got[n], want[n]) for n in got)
    assert all(torch.equal(a, b) for a, b in zip(evaluated.buffers(), plain.buffers()))


def test_eval_mode_uses_each_steps_own_statistics_and_tasks_stay_independent():
    data = batch()
    algo = statistics_algo()
    for seed in range(3):
        algo.outer_loss(batch(seed=seed))
    algo.eval()
    before, _ = algo.task_losses(data, track=True)
    with torch.no_grad():
        algo.norm.get_buffer("running_mean:1")[2] += 0.5
    after, _ = algo.task_losses(data, track=True)
    assert torch.equal(before[:, :2], after[:, :2]) and not torch.equal(before[:, 2], after[:, 2])
    changed = fm.TaskBatch(data.support_x.clone(), data.support_y, data.query_x.clone(), data.query_y)
    changed.support_x[1:] += 1.0
    changed.query_x[1:] += 1.0
    for mode in (False, True):  # eval: running statistics; train: each task's own batch statistics
        algo.train(mode)
        torch.testing.assert_close(
            algo.task_losses(changed, track=True)[0][0],
            algo.task_losses(data, track=True)[0][0],
            atol=1e-13,
            rtol=0,
        )


def test_bn_switches_follow_the_model_and_reject_what_it_lacks():
    conv = MAMLPlusPlus(fm.models.Conv4(ways=5))
    assert conv.norm is not None and not conv.norm.stat_layers and len(conv.norm.weight_names) == 8
    assert MAMLPlusPlus(mlp()).norm is None
    with pytest.raises(ValueError, match="per_step_bn_weights=True but the model has no affine BatchNorm"):
        MAMLPlusPlus(mlp(), per_step_bn_weights=True)
    with pytest.raises(ValueError, match="per_step_bn_statistics=True but the model has no BatchNorm with track"):
        MAMLPlusPlus(fm.models.Conv4(), per_step_bn_statistics=True)
    model = bn_mlp(track=True)
    model[1].momentum = None
    with pytest.raises(ValueError, match="momentum=None"):
        MAMLPlusPlus(model)
    with pytest.raises(ValueError, match="multi_step_loss_fraction=1.5; give a fraction of training between 0"):
        MAMLPlusPlus(mlp(), multi_step_loss_fraction=1.5)


# -- cosine annealing ----------------------------------------------------------------------------------


def test_cosine_schedule_anneals_the_outer_rate_to_the_floor():
    algo = MAMLPlusPlus(mlp(), min_outer_lr=1e-4)
    optimizer = torch.optim.Adam(algo.parameters(), lr=1e-2)
    schedule = algo.scheduler(optimizer, 10)
    rates = []
    for _ in range(10):
        optimizer.step()
        schedule.step()
        rates.append(optimizer.param_groups[0]["lr"])
    assert rates[4] == pytest.approx((1e-2 + 1e-4) / 2) and rates[-1] == pytest.approx(1e-4)
    assert fm.MAML(mlp()).scheduler(optimizer, 10) is None
