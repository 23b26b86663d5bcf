"""Every recipe runs end to end as a 2-iteration smoke test (tiny overrides, real or fixture data).

Each run is checked for what any two-iteration run must show, whatever its numbers: a finite training
loss logged at both iterations, a checkpoint at iteration 2, and an evaluation table with one row per
method (the algorithm and its baselines) and one column per inner step 0..``eval_inner_steps``, every
cell finite (accuracies in percent, within [0, 100]; losses non-negative).
"""

import json
import math
from pathlib import Path

import pytest
import torch
import yaml

from fastmaml.cli import main
from fastmaml.train import config as cfg
from fixtures import miniimagenet_layout

OMNIGLOT = Path(__file__).parents[2] / "shared" / "data" / "omniglot"
RECIPES = cfg.recipe_names()
RL = ("nav2d", "cheetah-vel", "cheetah-dir", "ant-vel", "ant-dir", "ml1-reach", "ml1-push", "ml1-pick-place", "ml10")
SMALL = ["iterations=2", "log_every=1", "val_every=1", "val_tasks=2", "eval_tasks=3", "checkpoint_every=1",
         "threads=0"]
EVAL_TASKS = 3


def test_the_recipe_count():
    assert len(RECIPES) == 19


@pytest.fixture(scope="module")
def miniimagenet(tmp_path_factory):
    return miniimagenet_layout(tmp_path_factory.mktemp("mini"), {"train": 6, "val": 5, "test": 5}, per_class=7,
                               size=40)


@pytest.fixture(autouse=True)
def _cache(tmp_path_factory, monkeypatch):
    monkeypatch.setenv("FASTMAML_CACHE", str(tmp_path_factory.getbasetemp() / "cache"))


def finite(value) -> bool:
    return isinstance(value, (int, float)) and math.isfinite(value)


def check_cells(cells: list[dict], steps: int, what: str, low: float = -math.inf, high: float = math.inf) -> None:
    """One ``{"mean", "ci95"}`` cell per inner step 0..``steps``: finite, the mean in [low, high]."""
    assert len(cells) == steps + 1, f"{what}: {len(cells)} columns, expected steps 0..{steps}"
    for step, cell in enumerate(cells):
        assert finite(cell["mean"]) and finite(cell["ci95"]) and cell["ci95"] >= 0, f"{what} step {step}: {cell}"
        assert low <= cell["mean"] <= high, f"{what} step {step}: mean {cell['mean']} outside [{low}, {high}]"


def check_training_log(run: Path, keys: tuple[str, ...]) -> list[dict]:
    """metrics.jsonl: one line per iteration (log_every=1), each named key finite; the checkpoint at 2."""
    history = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert [r["iteration"] for r in history] == [1, 2]
    for record in history:
        assert all(finite(record[key]) for key in keys), record
    assert torch.load(run / "checkpoint.pt", weights_only=False)["iteration"] == 2
    return history


def check_rl_run(recipe: str, run: Path, stdout: str) -> None:
    check_training_log(run, ("return_before", "return_after", "loss", "kl"))
    steps = yaml.safe_load((run / "config.yaml").read_text())["eval_inner_steps"]
    results = json.loads((run / "eval.json").read_text())
    methods = {"maml", "pretrained", "random"}
    assert methods <= set(results) <= methods | {"oracle"}
    if recipe == "nav2d":
        assert "oracle" in results  # the policy that knows the goal
    for name, result in results.items():
        assert [r["steps"] for r in result["returns"]] == list(range(steps + 1)), name
        for row in result["returns"]:
            assert finite(row["mean"]) and finite(row["ci95"]) and row["ci95"] >= 0, f"{name}: {row}"
        if recipe == "nav2d":  # the return is minus the distance to the goal, summed over the steps
            assert all(row["mean"] < 0 for row in result["returns"]), name
        assert any(line.split()[:1] == [name] for line in stdout.splitlines()), f"no table row for {name}"
    for name in ("pretrained", "random"):  # paired differences against the meta-learned policy
        assert results[name]["paired"]["minuend"] == "maml"
        assert len(results[name]["paired"]["returns"]) == steps + 1


@pytest.mark.parametrize("recipe", RECIPES)
def test_recipe_smoke(recipe, tmp_path, miniimagenet, capsys):
    run = tmp_path / "run"
    overrides = list(SMALL)
    if recipe in RL:  # meta-RL: its own config keys (tests/test_rl_*.py)
        if recipe != "nav2d":
            pytest.importorskip("mujoco")
        if recipe.startswith("ml"):  # Meta-World: the metaworld extra (tests/test_rl_metaworld.py)
            pytest.importorskip("metaworld")
        overrides = ["iterations=2", "meta_batch_size=2", "trajectories=2", "horizon=5", "policy.hidden=[4]",
                     "baseline_iterations=1", f"eval_tasks={EVAL_TASKS}", "checkpoint_every=1"]
        code = main(["train", recipe, *overrides, "--out", str(run), "--no-progress"])
        out, err = capsys.readouterr()
        assert code == 0, err
        check_rl_run(recipe, run, out)
        return
    if recipe == "sinusoid":
        overrides += ["compile=false", "baseline_iterations=2", "val_every=0"]
    elif recipe.startswith("omniglot"):
        if not OMNIGLOT.is_dir():
            pytest.skip(f"the Omniglot data is not at {OMNIGLOT}")
        overrides += [f"data.root={OMNIGLOT}", "model.filters=8", "meta_batch_size=2"]
        if recipe.endswith("-reptile"):  # its 50 test-time steps, shortened like the iterations
            overrides += ["eval_inner_steps=3"]
    elif recipe.startswith("sequence"):
        overrides += ["meta_batch_size=2", "data.eval_query_shots=2"]
    else:
        overrides += [f"data.root={miniimagenet}", "model.filters=4", "data.query_shots=2"]
    code = main(["train", recipe, *overrides, "--out", str(run), "--no-progress"])
    out, err = capsys.readouterr()
    assert code == 0, err

    config = cfg.load(run / "config.yaml")
    regression = recipe == "sinusoid"
    history = check_training_log(run, ("loss", "tasks_per_s"))
    assert all(r["loss"] >= 0 for r in history)  # mean squared error or cross-entropy

    # the evaluation table: rows are the methods, columns the inner steps 0..eval_inner_steps
    results = json.loads((run / "eval.json").read_text())
    methods = [config.algorithm] + (["pretrained", "scratch"] if regression else [])
    assert list(results) == methods
    for name, result in results.items():
        assert (result["tasks"], result["inner_steps"]) == (EVAL_TASKS, config.eval_inner_steps), name
        check_cells(result["loss"], config.eval_inner_steps, f"{name} loss", low=0)
        if regression:
            assert "accuracy" not in result
        else:
            check_cells(result["accuracy"], config.eval_inner_steps, f"{name} accuracy", low=0, high=100)
        assert any(line.split()[:1] == [name] for line in out.splitlines()), f"no table row for {name}:\n{out}"

    if regression:  # no validation (val_every=0): no best model, no validation score in the log
        assert not (run / "best.pt").exists() and all("val" not in r for r in history)
        assert (run / "baselines.pt").is_file()
    else:  # validated at both iterations (val_every=1); best.pt holds the better one
        scores = [r["val"] for r in history]
        assert all(finite(s) and 0 <= s <= 100 for s in scores), scores
        best = torch.load(run / "best.pt", weights_only=False)
        assert best["val"] == max(scores) and best["iteration"] == 1 + scores.index(max(scores))
    if recipe in ("omniglot-5w1s", "miniimagenet-5w1s"):  # accuracy curves and one task's images
        assert main(["plot", str(run)]) == 0
        assert (run / "plot.png").stat().st_size > 20_000
