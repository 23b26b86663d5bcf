"""The training loop, fit/load, run folders and the evaluation protocol."""

import dataclasses
import json

import pytest
import torch

import fastmaml as fm
from fastmaml.train import config as cfg
from fastmaml.train import run as runs
from fastmaml.train.evaluate import mean_ci95
from fastmaml.train.outer import meta_train


def test_pinned_first_losses():
    """A tiny seeded sinusoid run; these values changing means the training semantics changed."""
    torch.manual_seed(0)
    maml = fm.MAML(fm.models.MLP([1, 40, 40, 1]), inner_lr=0.01)
    state = meta_train(maml, torch.optim.Adam(maml.parameters(), 1e-3), fm.Sinusoid(),
                       torch.Generator().manual_seed(0), iterations=5, meta_batch_size=5, log_every=1,
                       progress=False)
    losses = [h["loss"] for h in state.history]
    assert losses == pytest.approx([2.4942834, 7.1278930, 4.6772332, 2.7551589, 1.6207726], rel=1e-4)
    assert maml.engine.last_path == "vmap"  # the trainer runs the idiom, which took the fast eager path


def test_fit_runs_the_idiom_with_the_librarys_decisions():
    torch.manual_seed(0)
    maml = fm.fit(fm.models.MLP([1, 8, 1]), fm.Sinusoid(), iterations=3, meta_batch_size=4, inner_steps=1,
                  progress=False)
    # compile="auto" has not seen 10 s of eager calls yet: the eager vmap path (tests/test_compiled.py
    # covers the compiled one)
    assert maml.engine.compile == "auto" and maml.mapper.execution == "vmap" and maml.engine.last_path == "vmap"


def test_same_seed_same_tasks_and_losses():
    a = fm.Sinusoid().sample_tasks(7, torch.Generator().manual_seed(3))
    b = fm.Sinusoid().sample_tasks(7, torch.Generator().manual_seed(3))
    c = fm.Sinusoid().sample_tasks(7, torch.Generator().manual_seed(4))
    assert all(torch.equal(x, y) for x, y in zip(a.tensors(), b.tensors()))
    assert not torch.equal(a.support_x, c.support_x)

    def run():
        torch.manual_seed(1)
        return fm.fit(fm.models.MLP([1, 8, 1]), fm.Sinusoid(), iterations=3, meta_batch_size=4, seed=5,
                      progress=False)
    assert all(torch.equal(p, q) for p, q in zip(run().parameters(), run().parameters()))


def test_sinusoid_matches_the_paper_ranges():
    batch = fm.Sinusoid(shots=10).sample_tasks(2000, torch.Generator().manual_seed(0))
    amplitude = batch.support_y.abs().amax(dim=(1, 2))
    assert batch.support_x.min() >= -5 and batch.support_x.max() <= 5
    assert amplitude.max() <= 5.0 and batch.support_x.shape == (2000, 10, 1) and batch.query_x.shape == (2000, 10, 1)


@pytest.mark.parametrize("optimizer, options", [(torch.optim.SGD, {"momentum": 0.9}), (torch.optim.RMSprop, {}),
                                                (torch.optim.Adam, {})])
def test_fit_with_any_optimizer_reduces_the_outer_loss(optimizer, options):
    torch.manual_seed(0)
    lr = 1e-2 if optimizer is not torch.optim.RMSprop else 1e-3
    maml = fm.fit(fm.models.MLP([1, 40, 40, 1]), fm.Sinusoid(), outer_lr=lr, inner_steps=1, iterations=300,
                  optimizer=optimizer, progress=False, log_every=100, **options)
    batch = fm.Sinusoid().sample_tasks(200, torch.Generator().manual_seed(99))
    fresh = fm.MAML(fm.models.MLP([1, 40, 40, 1]), inner_lr=0.01)
    assert maml.outer_loss(batch).item() < 0.8 * fresh.outer_loss(batch).item()


def test_mean_ci95():
    mean, ci = mean_ci95(torch.tensor([1.0, 2.0, 3.0, 4.0]))
    assert mean == 2.5 and ci == pytest.approx(1.96 * 1.2909944 / 2)


def small_config(**overrides):
    base = ["iterations=20", "log_every=10", "baseline_iterations=20", "eval_tasks=20", "meta_batch_size=4",
            "compile=false", "threads=0"]
    return cfg.resolve("sinusoid", base + [f"{k}={v}" for k, v in overrides.items()])


def test_run_folder_evaluation_and_load(tmp_path):
    results = runs.train(small_config(), tmp_path / "run", progress=False)
    assert set(results) == {"maml", "pretrained", "scratch"}
    assert len(results["maml"]["loss"]) == 11 and results["maml"]["tasks"] == 20
    files = {p.name for p in (tmp_path / "run").iterdir()}
    assert {"config.yaml", "metrics.jsonl", "checkpoint.pt", "baselines.pt", "eval.json"} <= files
    # the config the run wrote is the one it ran, with device=auto resolved (no GPU here: cpu)
    assert small_config().device == "auto"
    assert cfg.load(tmp_path / "run" / "config.yaml") == dataclasses.replace(small_config(), device="cpu")
    lines = (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()
    assert [json.loads(line)["iteration"] for line in lines] == [10, 20]
    maml = fm.load(tmp_path / "run")
    batch = fm.Sinusoid().sample_tasks(1, torch.Generator().manual_seed(0))
    params = maml.adapt(batch.support_x[0], batch.support_y[0])
    assert maml.predict(params, batch.query_x[0]).shape == (10, 1)
    again = runs.evaluate_run(tmp_path / "run")
    assert again["maml"]["loss"][1] == results["maml"]["loss"][1]


def test_existing_run_folder_is_refused_and_untouched(tmp_path):
    runs.train(small_config(), tmp_path / "run", progress=False, evaluate_at_end=False)
    before = (tmp_path / "run" / "checkpoint.pt").read_bytes()
    with pytest.raises(FileExistsError, match="--resume"):
        runs.train(small_config(), tmp_path / "run", progress=False)
    assert (tmp_path / "run" / "checkpoint.pt").read_bytes() == before


def test_config_overrides_and_errors():
    config = cfg.resolve("sinusoid", ["data.shots=5", "model.hidden=[20, 20]", "inner_lr=1"])
    assert config.data.shots == 5 and config.model.hidden == (20, 20) and config.inner_lr == 1.0
    with pytest.raises(ValueError, match="did you mean inner_lr"):
        cfg.resolve("sinusoid", ["iner_lr=0.1"])
    with pytest.raises(ValueError, match="valid keys: data.name"):
        cfg.resolve("sinusoid", ["data.bogus=1"])
    with pytest.raises(ValueError, match="inner_steps=-1"):
        cfg.resolve("sinusoid", ["inner_steps=-1"])
    with pytest.raises(ValueError, match="not a valid int"):
        cfg.resolve("sinusoid", ["iterations=1.5"])
    with pytest.raises(ValueError, match="unknown recipe"):
        cfg.resolve("sinusoidd")
    with pytest.raises(ValueError, match="not key=value"):
        cfg.resolve("sinusoid", ["inner_lr"])


def test_every_recipe_resolves():
    names = cfg.recipe_names()
    assert names == ["ant-dir", "ant-vel", "cheetah-dir", "cheetah-vel", "miniimagenet-5w1s", "miniimagenet-5w5s",
                     "ml1-pick-place", "ml1-push", "ml1-reach", "ml10", "nav2d", "omniglot-20w1s", "omniglot-20w5s",
                     "omniglot-5w1s", "omniglot-5w1s-imaml", "omniglot-5w1s-reptile", "omniglot-5w5s", "sequence-5w1s",
                     "sinusoid"]
    from fastmaml import kinds
    from fastmaml.rl import config as rlcfg

    meta_rl = {"ant-dir", "ant-vel", "cheetah-dir", "cheetah-vel", "ml1-pick-place", "ml1-push", "ml1-reach", "ml10",
               "nav2d"}
    for name in names:  # each kind (kinds.KINDS) resolves its recipes into its own config
        kind = kinds.of_recipe(name)
        assert kind.NAME == ("rl" if name in meta_rl else "supervised")
        config = kind.resolve(name, [])
        assert isinstance(config, rlcfg.RLConfig if name in meta_rl else cfg.TrainConfig)
        assert cfg.recipe_summary(name)


def test_mlp_slices_like_a_sequential():
    model = fm.models.MLP([1, 4, 4, 1])
    body = model[:4]
    assert len(body) == 4 and body[0] is model[0]
    assert body(torch.zeros(3, 1)).shape == (3, 4)


def test_eval_query_shots_apply_to_val_and_test_only():
    from fastmaml.train.build import build_tasks

    config = cfg.resolve("sinusoid", ["data.query_shots=3", "data.eval_query_shots=7"])
    generator = torch.Generator().manual_seed(0)
    assert build_tasks(config, "train").sample_tasks(2, generator).query_x.shape[1] == 3
    for split in ("val", "test"):
        assert build_tasks(config, split).sample_tasks(2, generator).query_x.shape[1] == 7


def test_cosine_lr_schedule_anneals_the_outer_rate_to_zero():
    from fastmaml.train.build import build_algorithm, build_model, build_optimizer, build_scheduler

    config = cfg.resolve("sinusoid", ["lr_schedule=cosine", "iterations=10"])
    algorithm = build_algorithm(config, build_model(config, {}))
    optimizer = build_optimizer(config, algorithm.parameters())
    scheduler = build_scheduler(config, algorithm, optimizer)
    rates = []
    for _ in range(10):
        rates.append(optimizer.param_groups[0]["lr"])
        optimizer.step()
        scheduler.step()
    assert rates[0] == config.outer_lr and all(a > b for a, b in zip(rates, rates[1:]))
    assert optimizer.param_groups[0]["lr"] == pytest.approx(0.0, abs=1e-12)
    assert rates[5] == pytest.approx(config.outer_lr / 2)
    constant = cfg.resolve("sinusoid")
    assert build_scheduler(constant, algorithm, build_optimizer(constant, algorithm.parameters())) is None


def test_the_last_iteration_is_always_validated(tmp_path):
    config = cfg.resolve("sinusoid", ["iterations=7", "log_every=2", "val_every=4", "val_tasks=5",
                                      "meta_batch_size=2", "baseline_iterations=0", "eval_tasks=5"])
    runs.train(config, tmp_path / "run", progress=False)
    lines = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert [r["iteration"] for r in lines if "val" in r] == [4, 7]
    assert torch.load(tmp_path / "run" / "best.pt", weights_only=True)["iteration"] in (4, 7)


def test_task_scores_are_per_task_and_summarise_to_evaluate():
    from fastmaml.train.evaluate import evaluate, task_scores

    torch.manual_seed(0)
    maml = fm.MAML(fm.models.MLP([1, 8, 1]), inner_lr=0.01, inner_steps=2)
    tasks = fm.tasks.Sinusoid(shots=5)
    losses, accuracy = task_scores(maml, tasks, 30, 2, torch.Generator().manual_seed(3), chunk=7)
    summary = evaluate(maml, tasks, 30, 2, torch.Generator().manual_seed(3), chunk=7)
    assert losses.shape == (30, 3) and accuracy is None  # regression: no accuracy
    for step in range(3):
        assert summary["loss"][step]["mean"] == pytest.approx(losses[:, step].double().mean().item(), rel=1e-12)


def tensorboard_scalars(folder, tag: str) -> list[tuple[int, float]]:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(folder))
    events.Reload()
    return [(e.step, e.value) for e in events.Scalars(tag)]


def test_tensorboard_events_match_metrics_and_survive_a_resume(tmp_path):
    """``tensorboard=true`` logs what metrics.jsonl logs; events past the resumed checkpoint are purged."""
    import dataclasses
    import time

    pytest.importorskip("tensorboard")
    from torch.utils.tensorboard import SummaryWriter

    run = tmp_path / "run"
    config = small_config(iterations=8, log_every=2, checkpoint_every=4, baseline_iterations=0, val_every=4,
                          val_tasks=5, tensorboard="true")
    runs.train(config, run, progress=False, evaluate_at_end=False)
    time.sleep(1.1)  # event files are ordered by the second they were opened in
    with SummaryWriter(str(run / "tensorboard")) as stale:  # what a run killed after iteration 8 had logged
        stale.add_scalar("train/loss", 99.0, 10)
    time.sleep(1.1)
    cfg.save(dataclasses.replace(config, iterations=12), run / "config.yaml")
    runs.train(None, run, resume=True, progress=False, evaluate_at_end=False)
    metrics = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    loss = tensorboard_scalars(run / "tensorboard", "train/loss")
    assert loss == [(r["iteration"], pytest.approx(r["loss"])) for r in metrics]
    assert [s for s, _ in loss] == [2, 4, 6, 8, 10, 12]
    val = tensorboard_scalars(run / "tensorboard", "val/score")
    assert val == [(r["iteration"], pytest.approx(r["val"])) for r in metrics if "val" in r] and len(val) == 3
    assert len(tensorboard_scalars(run / "tensorboard", "train/tasks_per_s")) == 6


def test_tensorboard_without_its_package_is_a_one_line_error(tmp_path, monkeypatch, capsys):
    import sys

    from fastmaml.cli import main

    monkeypatch.setitem(sys.modules, "torch.utils.tensorboard", None)  # as if the package were absent
    assert main(["train", "sinusoid", "tensorboard=true", "--out", str(tmp_path / "run")]) == 2
    assert capsys.readouterr().err == ("fastmaml: error: tensorboard=true needs the tensorboard package: "
                                       "pip install 'fastmaml[tensorboard]' "
                                       "(in a checkout: pip install -e '.[tensorboard]')\n")
    assert not (tmp_path / "run").exists()
