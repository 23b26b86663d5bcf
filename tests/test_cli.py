"""The command line: user errors are one line on stderr, exit status 2, no traceback."""

import json
import logging
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
    assert main(["eval", str(out), "--mean-episodes", "3"]) == 2  # a meta-RL option: one line naming the fix
    assert capsys.readouterr().err.strip() == ("fastmaml: error: --mean-episodes scores a meta-RL policy's mean "
                                               "action; drop it for a supervised run")
    pytest.importorskip("matplotlib")
    assert main(["plot", str(out)]) == 0
    assert (out / "plot.png").stat().st_size > 10_000
    assert main(["recipes"]) == 0
    assert "sinusoid" in capsys.readouterr().out


def test_eval_never_replaces_the_runs_evaluation_unasked(tmp_path, capsys):
    run = tmp_path / "run"
    assert main(["train", "sinusoid", "iterations=2", "baseline_iterations=0", "eval_tasks=3", "eval_inner_steps=1",
                 "compile=false", "--out", str(run), "--no-progress"]) == 0
    trained = (run / "eval.json").read_bytes()
    capsys.readouterr()
    # eval.json is the training command's: a new evaluation goes beside it, named after its tasks and steps
    assert main(["eval", str(run), "--tasks", "4"]) == 0
    assert capsys.readouterr().out.endswith(f"results written to {run / 'eval-4tasks-1steps.json'} "
                                            "(the run's eval.json is kept)\n")
    assert json.loads((run / "eval-4tasks-1steps.json").read_text())["maml"]["tasks"] == 4
    assert main(["eval", str(run), "--tasks", "4", "--json"]) == 0  # the same evaluation again: said so
    out, err = capsys.readouterr()
    assert json.loads(out)["maml"]["tasks"] == 4  # --json: stdout stays machine-readable
    assert err == f"results written to {run / 'eval-4tasks-1steps.json'} (replacing the earlier file)\n"
    # --out FILE: there, refusing to replace it without --overwrite
    assert main(["eval", str(run), "--out", str(tmp_path / "e.json")]) == 0
    assert json.loads((tmp_path / "e.json").read_text())["maml"]["tasks"] == 3
    assert main(["eval", str(run), "--out", str(tmp_path / "e.json"), "--tasks", "5"]) == 2
    assert "pass --overwrite" in capsys.readouterr().err
    assert main(["eval", str(run), "--out", str(tmp_path / "e.json"), "--tasks", "5", "--overwrite"]) == 0
    assert json.loads((tmp_path / "e.json").read_text())["maml"]["tasks"] == 5
    assert (run / "eval.json").read_bytes() == trained
    # --overwrite alone replaces eval.json; a run without one gets it
    assert main(["eval", str(run), "--tasks", "6", "--overwrite"]) == 0
    assert json.loads((run / "eval.json").read_text())["maml"]["tasks"] == 6
    (run / "eval.json").unlink()
    assert main(["eval", str(run), "--tasks", "7"]) == 0
    assert capsys.readouterr().out.endswith(f"results written to {run / 'eval.json'}\n")
    assert json.loads((run / "eval.json").read_text())["maml"]["tasks"] == 7


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
    sigint = signal.getsignal(signal.SIGINT)  # SIG_IGN in a background job
    for command in commands:
        argv = command[1:]
        if "sinusoid" in argv[:2]:
            argv[2:2] = SHORT
        if argv[0] == "plot":
            pytest.importorskip("matplotlib")
        assert main(argv) == 0, (command, capsys.readouterr().err)
    out = capsys.readouterr().out
    assert "run folder: runs/sinusoid" in out and "run folder: runs/sin5" in out and '"maml"' in out
    runs = tmp_path / "runs"
    # `fastmaml eval` kept the evaluation the training command wrote (SHORT's 10 tasks) and wrote its own beside it
    assert json.loads((runs / "sinusoid" / "eval.json").read_text())["maml"]["tasks"] == 10
    assert json.loads((runs / "sinusoid" / "eval-600tasks-10steps.json").read_text())["maml"]["tasks"] == 600
    assert (runs / "sinusoid" / "plot.png").is_file() and (runs / "sin2" / "eval.json").is_file()
    assert signal.getsignal(signal.SIGINT) is sigint  # the launcher gave the handler back


@pytest.mark.parametrize("default, cores, load, machine_cores, threads", [
    (2, 2, 0.2, 2, 2),   # an idle machine: torch's default
    (2, 2, 1.1, 2, 1),   # another job on one of two cores: the free one
    (2, 2, 5.0, 2, 1),   # overloaded: still one thread
    (8, 8, 3.2, 8, 5),
    (4, 8, 3.0, 8, 4),   # torch's default (physical cores) already fits in what is free
    (2, 2, 4.0, 8, 1),   # confined to 2 of 8 cores, half the machine busy: about one of ours taken
])
def test_threads_0_uses_the_cores_other_jobs_leave_free(default, cores, load, machine_cores, threads):
    from fastmaml.threads import auto_threads

    assert auto_threads(default, cores, load, machine_cores) == threads


# The line a run on the busy machine below logs (docs/troubleshooting.md quotes it).
BUSY_NOTE = ("threads=0: the machine is busy (load average 1.3 on 2 cores), so this run uses 1 thread instead of 2; "
             "set threads=N to choose")


@pytest.fixture
def busy_machine(monkeypatch):
    """Two cores, torch's default of 2 threads, and a load average of 1.3: another job holds a core."""
    import fastmaml.threads

    monkeypatch.setattr(fastmaml.threads.os, "getloadavg", lambda: (1.3, 1.0, 0.5))
    monkeypatch.setattr(fastmaml.threads.os, "cpu_count", lambda: 2)
    monkeypatch.setattr(fastmaml.threads.os, "sched_getaffinity", lambda pid: {0, 1}, raising=False)
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    torch.set_num_threads(2)  # conftest gives the count back


@pytest.mark.parametrize("argv, trainer", [
    (["train", "sinusoid", "threads=0"], "fastmaml.train.run.train"),  # (the recipe itself sets threads: 1)
    (["train", "nav2d"], "fastmaml.rl.train.train"),
])
def test_on_a_busy_machine_threads_0_trains_on_the_free_cores_and_says_so_once(argv, trainer, busy_machine,
                                                                                monkeypatch, caplog, tmp_path):
    if "nav2d" in argv:
        pytest.importorskip("gymnasium")
    seen = []
    monkeypatch.setattr(trainer, lambda config, *args, **kwargs: seen.append(torch.get_num_threads()))
    with caplog.at_level(logging.INFO):
        assert main([*argv, "--out", str(tmp_path / "run")]) == 0
    notes = [r.getMessage() for r in caplog.records if "threads" in r.getMessage()]
    assert seen == [1] and notes == [BUSY_NOTE]
    assert torch.get_num_threads() == 2  # given back after the command
    caplog.clear()
    assert main([*argv, "threads=2", "--out", str(tmp_path / "run")]) == 0  # the user's choice stands
    assert seen[1:] == [2] and not [r for r in caplog.records if "busy" in r.getMessage()]


def test_threads_0_leaves_an_idle_machine_and_omp_num_threads_alone(busy_machine, monkeypatch, caplog):
    import fastmaml.threads
    from fastmaml.threads import use_free_cores

    monkeypatch.setenv("OMP_NUM_THREADS", "2")  # the user's (or --nproc-per-node's) choice
    with caplog.at_level(logging.INFO), use_free_cores(0) as threads:
        assert threads == torch.get_num_threads() == 2
    monkeypatch.delenv("OMP_NUM_THREADS")
    monkeypatch.setattr(fastmaml.threads.os, "getloadavg", lambda: (0.3, 0.3, 0.3))
    with caplog.at_level(logging.INFO), use_free_cores(0) as threads:
        assert threads == torch.get_num_threads() == 2
    assert not caplog.records


def test_eval_of_a_meta_rl_run_keeps_its_eval_json(tmp_path, capsys):
    pytest.importorskip("gymnasium")
    run = tmp_path / "nav"
    assert main(["train", "nav2d", "iterations=1", "meta_batch_size=2", "trajectories=2", "horizon=5",
                 "policy.hidden=[4]", "baseline_iterations=0", "eval_tasks=2", "eval_inner_steps=1",
                 "--out", str(run), "--no-progress"]) == 0
    trained = (run / "eval.json").read_bytes()
    capsys.readouterr()
    assert main(["eval", str(run), "--tasks", "3"]) == 0
    assert f"results written to {run / 'eval-3tasks-1steps.json'}" in capsys.readouterr().out
    assert (run / "eval.json").read_bytes() == trained and (run / "eval-3tasks-1steps.json").is_file()
    # Meta-World's protocol on any family: mean-action episodes beside the sampled ones
    assert main(["eval", str(run), "--tasks", "3", "--mean-episodes", "2", "--out", str(tmp_path / "m.json")]) == 0
    assert "maml mean action" in capsys.readouterr().out
    assert json.loads((tmp_path / "m.json").read_text())["maml"]["mean_action"]["episodes"] == 2
