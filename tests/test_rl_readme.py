"""The 2D-navigation tutorial (docs/tutorials/navigation.md) runs as written (training shortened by overrides)."""

import re
import shlex
from pathlib import Path

import pytest

pytest.importorskip("gymnasium")

from fastmaml.cli import main  # noqa: E402

SECTION = (Path(__file__).parents[1] / "docs" / "tutorials" / "navigation.md").read_text()
SHORT = ["iterations=1", "meta_batch_size=2", "trajectories=2", "horizon=5", "policy.hidden=[4]",
         "baseline_iterations=1", "eval_tasks=2"]


def _blocks(language):
    return re.findall(rf"```{language}\n(.*?)```", SECTION, re.S)


def test_the_readme_meta_rl_commands_and_python_run(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    (commands,) = _blocks("bash")
    lines = [shlex.split(line.split("#")[0]) for line in commands.strip().splitlines()]
    assert [line[:2] for line in lines] == [["fastmaml", "train"], ["fastmaml", "eval"], ["fastmaml", "plot"]]
    for line in lines:
        args = line[1:] + (SHORT + ["--no-progress"] if line[1] == "train" else [])
        assert main(args) == 0, capsys.readouterr().err
    assert (tmp_path / "runs" / "nav2d" / "plot.png").is_file()
    (python,) = _blocks("python")
    namespace = {}
    exec(compile(python, "docs/tutorials/navigation.md", "exec"), namespace)
    assert namespace["action"].shape == (2,)


def test_the_readme_cheetah_command_runs(tmp_path, monkeypatch, capsys):
    pytest.importorskip("mujoco")
    monkeypatch.chdir(tmp_path)
    (command,) = re.findall(r"`(fastmaml train cheetah-dir[^`]*)`", SECTION)
    args = shlex.split(command)[1:] + SHORT + ["--no-progress"]
    assert main(args) == 0, capsys.readouterr().err
    assert (tmp_path / "runs" / "cheetah-dir" / "eval.json").is_file()
