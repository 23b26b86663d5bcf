"""Every recipe runs end to end as a 2-iteration smoke test (tiny overrides, real or fixture data)."""

import json
import math
from pathlib import Path

import pytest

from fastmaml.cli import main
from fastmaml.train import config as cfg
from fixtures import miniimagenet_layout

OMNIGLOT = Path(__file__).parents[2] / "shared" / "data" / "omniglot"
RECIPES = cfg.recipe_names()
SMALL = ["iterations=2", "log_every=1", "val_every=1", "val_tasks=2", "eval_tasks=3", "checkpoint_every=1",
         "threads=0"]


def test_the_recipe_count():
    assert len(RECIPES) == 13


@pytest.fixture(scope="module")
def miniimagenet(tmp_path_factory):
    return miniimagenet_layout(tmp_path_factory.mktemp("mini"), {"train": 6, "val": 5, "test": 5}, per_class=7,
                               size=40)


@pytest.fixture(autouse=True)
def _cache(tmp_path_factory, monkeypatch):
    monkeypatch.setenv("FASTMAML_CACHE", str(tmp_path_factory.getbasetemp() / "cache"))


@pytest.mark.parametrize("recipe", RECIPES)
def test_recipe_smoke(recipe, tmp_path, miniimagenet, capsys):
    overrides = list(SMALL)
    if recipe in ("nav2d", "cheetah-vel", "cheetah-dir"):  # meta-RL: its own config keys (tests/test_rl_*.py)
        if recipe != "nav2d":
            pytest.importorskip("mujoco")
        overrides = ["iterations=2", "meta_batch_size=2", "trajectories=2", "horizon=5", "policy.hidden=[4]",
                     "baseline_iterations=1", "eval_tasks=2", "checkpoint_every=1"]
        assert main(["train", recipe, *overrides, "--out", str(tmp_path / "run"), "--no-progress"]) == 0
        before = json.loads((tmp_path / "run" / "eval.json").read_text())["maml"]["returns"][0]["mean"]
        assert before < 0 if recipe == "nav2d" else math.isfinite(before)  # nav2d: minus a distance
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
    assert main(["train", recipe, *overrides, "--out", str(tmp_path / "run"), "--no-progress"]) == 0, \
        capsys.readouterr().err
    results = json.loads((tmp_path / "run" / "eval.json").read_text())
    metric = "loss" if recipe == "sinusoid" else "accuracy"
    assert results[cfg.resolve(recipe).algorithm][metric][0]["mean"] >= 0
    if recipe != "sinusoid":
        assert (tmp_path / "run" / "best.pt").is_file()
    if recipe in ("omniglot-5w1s", "miniimagenet-5w1s"):  # accuracy curves and one task's images
        assert main(["plot", str(tmp_path / "run")]) == 0
        assert (tmp_path / "run" / "plot.png").stat().st_size > 20_000
