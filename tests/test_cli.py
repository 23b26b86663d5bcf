"""The command line: user errors are one line on stderr, exit status 2, no traceback."""

import json
import os
import re
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from fastmaml.cli import main


@pytest.mark.parametrize("argv, match", [
    (["train", "sinusoid", "inner_lr=-1"], "inner_lr=-1.0; it must be >= 0"),
    (["train", "sinusoid", "bogus=1"], "unknown config key 'bogus'"),
    (["train", "sinusoid", "data.ways=zero"], "data.ways='zero' is not a valid int"),
    (["train", "nope"], "unknown recipe 'nope'"),
    (["train"], "name a recipe"),
    (["train", "inner_lr=1"], "put the recipe name first"),
    (["train", "--resume", "/nonexistent/run"], "not a fastmaml run folder"),
    (["eval", "/nonexistent/run"], "not a fastmaml run folder"),
    (["train", "sinusoid", "algorithm=nope"], "unknown algorithm 'nope'"),
    (["train", "sinusoid", "optimizer=lbfgs"], "use one of adam, sgd, rmsprop"),
    (["train", "sinusoid", "model.name=conv4"], "takes images"),
])
def test_user_errors_exit_2_with_one_line(argv, match, capsys, tmp_path):
    assert main([*argv, "--out", str(tmp_path / "run")] if argv[:1] == ["train"] and "--resume" not in argv
                else argv) == 2
    err = capsys.readouterr().err
    assert err.startswith("fastmaml: error: ") and match in err and err.count("\n") == 1


def _recipe_rows(out: str) -> dict[str, list[str]]:
    """``fastmaml recipes`` output -> {name: [its lines]} (a continuation line starts with spaces)."""
    rows: dict[str, list[str]] = {}
    for line in out.splitlines():
        if line.startswith(" "):
            rows[list(rows)[-1]].append(line)
        else:
            rows[line.split()[0]] = [line]
    return rows


def test_recipes_show_whole_descriptions_in_aligned_columns(capsys, monkeypatch):
    from fastmaml.train import config as cfg

    names = cfg.recipe_names()
    column = max(map(len, names)) + 2
    for width in (None, 72):  # into a pipe: one line per recipe; on a terminal: wrapped under their column
        if width is not None:
            monkeypatch.setattr(sys.stdout, "isatty", lambda: True)
            monkeypatch.setattr("shutil.get_terminal_size", lambda width=width: os.terminal_size((width + 1, 24)))
        assert main(["recipes"]) == 0
        rows = _recipe_rows(capsys.readouterr().out)
        assert list(rows) == names
        for name, lines in rows.items():
            # every description starts in the same column, on every line of it
            assert lines[0][:column] == f"{name:<{column}}" and lines[0][column] != " "
            assert all(line[:column] == " " * column and line[column] != " " for line in lines[1:])
            assert width is None and len(lines) == 1 or all(len(line) <= width for line in lines)
            # the whole first sentence of the recipe's opening comment: its first line and more, up to a full stop
            text = " ".join(line[column:] for line in lines)
            opening = cfg.recipe_text(name).splitlines()[0].lstrip("# ")
            assert text.startswith(opening) or opening.startswith(text.removesuffix(".") + ".")
            assert text.endswith(".") and text.count("(") == text.count(")"), (name, text)
        if width is None:  # the description that was cut at "(no data to"
            assert rows["sequence-5w1s"][0].endswith("(no data to download; fastmaml.tasks.TokenSequences: 12 "
                                                     "tokens over a vocabulary of 16, 20% noise, random rotation).")


@pytest.mark.parametrize("override, message", [
    ("data.ways=zero", "data.ways='zero' is not a valid int; give an int"),
    ("inner_lr=fast", "inner_lr='fast' is not a valid float; give a float"),
    ("tensorboard=maybe", "tensorboard='maybe' is not a valid bool; give a bool (true or false)"),
    ("optimizer=[1]", "optimizer=[1] is not a valid str; give a str"),
])
def test_a_mistyped_override_names_the_type_it_needs(override, message, capsys, tmp_path):
    assert main(["train", "sinusoid", override, "--out", str(tmp_path / "run")]) == 2
    assert capsys.readouterr().err == f"fastmaml: error: {message}\n"


def test_train_eval_plot_end_to_end(tmp_path, capsys):
    out = tmp_path / "run"
    args = ["train", "sinusoid", "iterations=10", "log_every=5", "baseline_iterations=5", "eval_tasks=10",
            "eval_inner_steps=2", "compile=false", "threads=0", "--out", str(out), "--no-progress"]
    assert main(args) == 0
    assert "maml" in capsys.readouterr().out
    assert main(args) == 2
    assert "--resume" in capsys.readouterr().err
    assert main(["eval", str(out), "--json", "--tasks", "5"]) == 0
    assert '"maml"' in capsys.readouterr().out
    pytest.importorskip("matplotlib")
    assert main(["plot", str(out)]) == 0
    assert (out / "plot.png").stat().st_size > 10_000
    assert main(["recipes"]) == 0
    assert "sinusoid" in capsys.readouterr().out


def test_console_script_shows_no_traceback(tmp_path):
    result = subprocess.run([sys.executable, "-m", "fastmaml.cli", "train", "sinusoid", "inner_steps=-2"],
                            capture_output=True, text=True, cwd=tmp_path)
    assert result.returncode == 2
    assert "Traceback" not in result.stderr and "inner_steps=-2" in result.stderr


def test_output_into_a_closed_pipe_is_quiet(tmp_path):
    # `fastmaml recipes | head -1`: the reader is gone before the output; no BrokenPipeError traceback.
    reader = subprocess.Popen([sys.executable, "-c", "pass"], stdin=subprocess.PIPE)
    reader.wait()
    result = subprocess.run([sys.executable, "-m", "fastmaml.cli", "recipes"], stdout=reader.stdin,
                            stderr=subprocess.PIPE, text=True, cwd=tmp_path)
    reader.stdin.close()
    assert result.returncode == 141 and result.stderr == ""


README = Path(__file__).resolve().parents[1] / "README.md"
# What the README's commands get on top: a short run (the recipe trains 70,000 iterations and 5,000 per baseline).
SHORT = ["iterations=10", "log_every=5", "baseline_iterations=10", "eval_tasks=10", "compile=false"]


def test_every_command_of_the_readme_command_line_section_runs_as_written(tmp_path, monkeypatch, capsys):
    section = README.read_text().split("## Command line", 1)[1].split("\n## ", 1)[0]
    block = re.search(r"```bash\n(.*?)```", section, re.S).group(1)
    commands = [line.split("#")[0].split() for line in block.splitlines() if line.strip()]
    assert [c[:3] for c in commands] == [
        ["fastmaml", "recipes"], ["fastmaml", "train", "sinusoid"], ["fastmaml", "train", "sinusoid"],
        ["fastmaml", "train", "--resume"], ["fastmaml", "train", "sinusoid"], ["fastmaml", "eval", "runs/sinusoid"],
        ["fastmaml", "plot", "runs/sinusoid"]], "a command was added to README's Command line: run it here"
    monkeypatch.chdir(tmp_path)
    threads, sigint = torch.get_num_threads(), signal.getsignal(signal.SIGINT)  # SIG_IGN in a background job
    try:
        for command in commands:
            argv = command[1:]
            if "sinusoid" in argv[:2]:
                argv[2:2] = SHORT
            if argv[0] == "plot":
                pytest.importorskip("matplotlib")
            assert main(argv) == 0, (command, capsys.readouterr().err)
    finally:
        torch.set_num_threads(threads)
    out = capsys.readouterr().out
    assert "run folder: runs/sinusoid" in out and "run folder: runs/sin5" in out and '"maml"' in out
    runs = tmp_path / "runs"
    assert json.loads((runs / "sinusoid" / "eval.json").read_text())["maml"]["tasks"] == 600
    assert (runs / "sinusoid" / "plot.png").is_file() and (runs / "sin2" / "eval.json").is_file()
    assert signal.getsignal(signal.SIGINT) is sigint  # the launcher gave the handler back
