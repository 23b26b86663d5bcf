"""A catalogue of bad inputs to the CLI and the Python API.

Each must give one clear line naming the fix; the CLI exits with status 2 and no traceback; and
nothing on disk changes: every file under the case's folder (a finished run among them) hashes the
same before and after.
"""

from __future__ import annotations

import hashlib
import random
import shutil
from collections.abc import Callable
from pathlib import Path

import pytest
import torch

import fastmaml as fm
from fastmaml.cli import main
from fastmaml.train import TrainConfig
from fastmaml.train import config as cfg
from fastmaml.train import run as runs
from fastmaml.train.distributed import Context
from fastmaml.train.outer import meta_train

TINY = ["iterations=4", "log_every=2", "checkpoint_every=2", "meta_batch_size=2", "baseline_iterations=0",
        "eval_tasks=4", "eval_inner_steps=1", "compile=false", "threads=0"]


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory) -> Path:
    run = tmp_path_factory.mktemp("template") / "run"
    runs.train(cfg.resolve("sinusoid", TINY), run, progress=False)
    return run


def snapshot(root: Path) -> dict[str, str]:
    """Every path under ``root`` with the hash of its bytes (folders as 'dir')."""
    return {str(p.relative_to(root)): "dir" if p.is_dir() else hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*"))}


def write(path: Path, data: bytes | str) -> Path:
    path.write_bytes(data.encode() if isinstance(data, str) else data)
    return path


def truncated(path: Path) -> Path:
    return write(path, path.read_bytes()[: path.stat().st_size // 2])


def train(ws: Path, *overrides: str) -> list[str]:
    return ["train", "sinusoid", *TINY, *overrides, "--out", str(ws / "new"), "--no-progress"]


def resume(ws: Path) -> list[str]:
    return ["train", "--resume", str(ws / "run"), "--no-progress"]


def edit_config(ws: Path, **changes) -> None:
    import dataclasses

    config = cfg.load(ws / "run" / "config.yaml")
    cfg.save(dataclasses.replace(config, **changes), ws / "run" / "config.yaml")


def only_weights(ws: Path) -> None:
    saved = torch.load(ws / "run" / "checkpoint.pt", weights_only=True)
    torch.save({"algorithm": saved["algorithm"]}, ws / "run" / "checkpoint.pt")


# (id, prepare(ws) -> argv, message fragment): `fastmaml ARGV` must exit 2 with one line holding the fragment.
CLI_CASES: list[tuple[str, Callable[[Path], list[str]], str]] = [
    ("unknown key", lambda ws: train(ws, "bogus=1"), "unknown config key 'bogus'"),
    ("mistyped key", lambda ws: train(ws, "iner_lr=0.1"), "did you mean inner_lr?"),
    ("mistyped nested key", lambda ws: train(ws, "data.shot=5"), "did you mean data.shots?"),
    ("override without =", lambda ws: train(ws, "inner_lr"), "is not key=value"),
    ("meta-batch of 0", lambda ws: train(ws, "meta_batch_size=0"), "meta_batch_size=0; it must be >= 1"),
    ("outer_lr 0", lambda ws: train(ws, "outer_lr=0"), "outer_lr=0.0; it must be > 0"),
    ("negative checkpoint_every", lambda ws: train(ws, "checkpoint_every=-1"), "checkpoint_every=-1; it must be >= 0"),
    ("negative keep_every", lambda ws: train(ws, "keep_every=-1"), "keep_every=-1; it must be >= 0"),
    ("iterations not an int", lambda ws: train(ws, "iterations=ten"), "iterations='ten' is not a valid int"),
    ("unknown dtype", lambda ws: train(ws, "dtype=float16"), "use one of float32, float64"),
    ("unknown lr_schedule", lambda ws: train(ws, "lr_schedule=linear"), "use one of constant, cosine"),
    ("two outer schedules", lambda ws: train(ws, "algorithm=mamlpp", "lr_schedule=cosine"),
     "already anneals the outer learning rate"),
    ("eval_query_shots 0", lambda ws: train(ws, "data.eval_query_shots=0"), "data.eval_query_shots=0; it must be >= 1"),
    ("unknown device", lambda ws: train(ws, "device=gpu"), "device='gpu' is not a torch device"),
    ("unknown recipe", lambda ws: ["train", "sinusiod", "--out", str(ws / "new")], "did you mean sinusoid?"),
    ("missing recipe file", lambda ws: ["train", str(ws / "missing.yaml"), "--out", str(ws / "new")],
     "no recipe file at"),
    ("recipe not YAML", lambda ws: ["train", str(write(ws / "bad.yaml", "inner_lr: [1,\n")), "--out",
                                    str(ws / "new")], "is not valid YAML"),
    ("recipe not a mapping", lambda ws: ["train", str(write(ws / "list.yaml", "- 1\n- 2\n")), "--out",
                                         str(ws / "new")], "list.yaml must be a mapping of config keys to values"),
    ("omniglot without data.root", lambda ws: train(ws, "data.name=omniglot", "model.name=conv4"),
     "data.name=omniglot needs the data set's folder; pass data.root=PATH"),
    ("omniglot root without images", lambda ws: train(ws, "data.name=omniglot", "model.name=conv4",
                                                      f"data.root={ws / 'run'}"), "has no images_background"),
    ("existing run without --resume", lambda ws: ["train", "sinusoid", *TINY, "--out", str(ws / "run")],
     "already holds a run; pass --resume"),
    ("--overwrite of a folder that is no run", lambda ws: ["train", "sinusoid", "--overwrite", "--out",
                                                           str(write(ws / "file.txt", "x").parent)],
     "is not empty and not a fastmaml run"),
    ("--out is a file", lambda ws: ["train", "sinusoid", "--out", str(write(ws / "file.txt", "x"))], "is a file"),
    ("unwritable --out", lambda ws: ["train", "sinusoid", *TINY, "--out", str(write(ws / "file.txt", "x") / "run")],
     "cannot write to"),
    ("resume of a non-run folder", lambda ws: ["train", "--resume", str(ws)], "not a fastmaml run folder"),
    ("resume with overrides", lambda ws: [*resume(ws), "inner_lr=1"], "drop the recipe and overrides"),
    ("resume with a garbage checkpoint",
     lambda ws: (write(ws / "run" / "checkpoint.pt", random.Random(0).randbytes(4096)), resume(ws))[1],
     "checkpoint.pt was refused unread"),
    ("resume with a truncated checkpoint", lambda ws: (truncated(ws / "run" / "checkpoint.pt"), resume(ws))[1],
     "checkpoint.pt is corrupt or truncated"),
    ("resume with an empty checkpoint", lambda ws: (write(ws / "run" / "checkpoint.pt", b""), resume(ws))[1],
     "is corrupt or truncated (empty file)"),
    ("resume with weights only", lambda ws: (only_weights(ws), resume(ws))[1],
     "is not a fastmaml training checkpoint (missing optimizer"),
    ("resume after the model changed", lambda ws: (edit_config(ws, model=cfg.ModelConfig(hidden=(8,))),
                                                   resume(ws))[1], "does not match the run's config.yaml"),
    ("resume with a broken config.yaml", lambda ws: (write(ws / "run" / "config.yaml", "data: [\n"), resume(ws))[1],
     "config.yaml is not valid YAML"),
    ("resume with an unknown config key", lambda ws: (write(ws / "run" / "config.yaml", "inner_rate: 1\n"),
                                                      resume(ws))[1], "unknown config key 'inner_rate'"),
    ("eval of a non-run folder", lambda ws: ["eval", str(ws)], "not a fastmaml run folder"),
    ("eval on -3 tasks", lambda ws: ["eval", str(ws / "run"), "--tasks", "-3"], "evaluate on at least 1 task"),
    ("eval with -1 steps", lambda ws: ["eval", str(ws / "run"), "--steps", "-1"], "inner_steps=-1"),
    ("eval --out an existing file", lambda ws: ["eval", str(ws / "run"), "--out", str(ws / "run" / "eval.json")],
     "exists; pass --overwrite to replace it, or choose another --out"),
    ("eval --out in a missing folder", lambda ws: ["eval", str(ws / "run"), "--out", str(ws / "no" / "eval.json")],
     "no folder"),
    ("eval --out a folder", lambda ws: ["eval", str(ws / "run"), "--out", str(ws)], "is a folder; name a file"),
]


@pytest.fixture
def workspace(tmp_path, finished_run) -> Path:
    shutil.copytree(finished_run, tmp_path / "run")
    return tmp_path


@pytest.mark.parametrize("prepare, fragment", [c[1:] for c in CLI_CASES], ids=[c[0] for c in CLI_CASES])
def test_cli_bad_input(prepare, fragment, workspace, capsys):
    argv = prepare(workspace)
    before = snapshot(workspace)
    capsys.readouterr()
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err.startswith("fastmaml: error: ") and err.count("\n") == 1 and "Traceback" not in err
    assert fragment in err
    assert snapshot(workspace) == before


def batch(tasks: int = 2, features: int = 1) -> fm.TaskBatch:
    return fm.TaskBatch(*[torch.zeros(tasks, 3, features)] * 4)


# (id, prepare(ws) -> call, error type, message fragment): ``call()`` must raise one line holding the fragment.
API_CASES: list[tuple[str, Callable[[Path], Callable[[], object]], type[Exception], str]] = [
    ("load of a non-run folder", lambda ws: lambda: fm.load(ws), FileNotFoundError, "not a fastmaml run folder"),
    ("load which=middle", lambda ws: lambda: fm.load(ws / "run", which="middle"), ValueError,
     "use 'best', 'last' or an iteration the run kept"),
    ("load of a truncated checkpoint", lambda ws: (truncated(ws / "run" / "checkpoint.pt"),
                                                   lambda: fm.load(ws / "run", "last"))[1],
     ValueError, "corrupt or truncated"),
    ("train into an existing run", lambda ws: lambda: runs.train(cfg.resolve("sinusoid", TINY), ws / "run"),
     FileExistsError, "already holds a run"),
    ("train without a config", lambda ws: lambda: runs.train(None, ws / "new"), ValueError, "needs a config"),
    ("TrainConfig out of range", lambda ws: lambda: TrainConfig(meta_batch_size=0), ValueError,
     "meta_batch_size=0"),
    ("TrainConfig dtype", lambda ws: lambda: TrainConfig(dtype="half"), ValueError, "use one of float32, float64"),
    ("TaskBatch task counts", lambda ws: lambda: fm.TaskBatch(torch.zeros(2, 5, 1), torch.zeros(3, 5, 1),
                                                              torch.zeros(2, 5, 1), torch.zeros(2, 5, 1)),
     ValueError, "task counts differ"),
    ("TaskBatch without task dim", lambda ws: lambda: fm.TaskBatch(*[torch.zeros(5)] * 4), ValueError,
     "unsqueeze(0)"),
    ("TaskBatch vs model features",
     lambda ws: lambda: fm.MAML(fm.models.MLP([1, 4, 1])).outer_loss(batch(features=3)),
     ValueError, "cannot take inputs of shape (3,)"),
    ("ranks without a task", lambda ws: lambda: meta_train(
        fm.MAML(fm.models.MLP([1, 4, 1])), torch.optim.SGD(fm.models.MLP([1, 1]).parameters(), 0.1), fm.Sinusoid(),
        torch.Generator(), iterations=1, meta_batch_size=1, dist=Context(0, 2), progress=False),
     ValueError, "meta_batch_size=1 leaves 1 of 2 processes without a task"),
    ("fit with negative iterations", lambda ws: lambda: fm.fit(fm.models.MLP([1, 1]), fm.Sinusoid(), iterations=-1),
     ValueError, "iterations=-1"),
]


@pytest.mark.parametrize("prepare, error, fragment", [c[1:] for c in API_CASES], ids=[c[0] for c in API_CASES])
def test_api_bad_input(prepare, error, fragment, workspace):
    call = prepare(workspace)
    before = snapshot(workspace)
    with pytest.raises(error) as info:
        call()
    message = str(info.value)
    assert fragment in message and "\n" not in message
    assert snapshot(workspace) == before


def test_catalogue_size():
    assert len(CLI_CASES) + len(API_CASES) >= 40
