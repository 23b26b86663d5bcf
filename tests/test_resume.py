"""Checkpoints that survive: kill -9 / SIGTERM / SIGINT and resume bit-identically; unsafe and diverged files.

The helpers here drive the real command line in subprocesses; ``benchmarks/kill_resume.py`` reuses
them for its 10-trial table.
"""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
import torch

import fastmaml
from fastmaml.cli import main
from fastmaml.train.checkpoint import load_checkpoint

SRC = str(Path(fastmaml.__file__).resolve().parents[1])
# ~200 short iterations: a second or two of training, checkpoints every 3 (not aligned with the
# logging every 5, so the partial loss average since the last log line must be checkpointed too).
OVERRIDES = ["iterations=200", "log_every=5", "checkpoint_every=3", "meta_batch_size=4", "baseline_iterations=0",
             "eval_tasks=10", "eval_inner_steps=2", "compile=false", "threads=1", "seed=3"]


def launch(argv: list[str], cwd: Path) -> subprocess.Popen:
    env = {**os.environ, "PYTHONPATH": SRC + os.pathsep + os.environ.get("PYTHONPATH", "")}
    return subprocess.Popen([sys.executable, "-m", "fastmaml.cli", *argv], cwd=cwd, env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)


def logged_lines(run_dir: Path) -> int:
    try:
        return (run_dir / "metrics.jsonl").read_text().count("\n")
    except FileNotFoundError:
        return 0


def interrupted_run(run_dir: Path, signals: list[int], rng: random.Random,
                    overrides: list[str] = OVERRIDES) -> list[tuple[int, int, str]]:
    """Train into ``run_dir``, stopping it with each of ``signals`` at a random moment after some progress
    and resuming each time, then resume to the end. Returns (signal, exit status, stderr) per stop."""
    first = ["train", "sinusoid", *overrides, "--out", str(run_dir), "--no-progress"]
    again = ["train", "--resume", str(run_dir), "--no-progress"]
    stops = []
    for i, signum in enumerate(signals):
        target = logged_lines(run_dir) + rng.randint(1, 6)
        proc = launch(first if i == 0 else again, run_dir.parent)
        deadline = time.monotonic() + 120
        while logged_lines(run_dir) < target and proc.poll() is None and time.monotonic() < deadline:
            time.sleep(0.002)
        time.sleep(rng.uniform(0.0, 0.03))
        proc.send_signal(signum)
        _, err = proc.communicate(timeout=120)
        stops.append((signum, proc.returncode, err))
    proc = launch(again if signals else first, run_dir.parent)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 0, err
    return stops


def reference_run(run_dir: Path, overrides: list[str] = OVERRIDES) -> None:
    """The same run, uninterrupted, in this process."""
    assert main(["train", "sinusoid", *overrides, "--out", str(run_dir), "--no-progress"]) == 0


def differences(a: Path, b: Path) -> list[str]:
    """What differs between two finished run folders (empty: bit-identical weights, optimizer and logs)."""
    ca, cb = load_checkpoint(a / "checkpoint.pt"), load_checkpoint(b / "checkpoint.pt")
    out = [f"weights {k}" for k in ca["algorithm"] if not torch.equal(ca["algorithm"][k], cb["algorithm"][k])]
    for index, state in ca["optimizer"]["state"].items():
        other = cb["optimizer"]["state"][index]
        out += [f"optimizer {index} {k}" for k in state if not torch.equal(torch.as_tensor(state[k]),
                                                                           torch.as_tensor(other[k]))]
    if ca["iteration"] != cb["iteration"]:
        out.append(f"iteration {ca['iteration']} != {cb['iteration']}")

    def losses(run: Path) -> list[tuple[int, float]]:
        return [(r["iteration"], r["loss"]) for r in map(json.loads, (run / "metrics.jsonl").read_text().splitlines())]

    if losses(a) != losses(b):
        out.append("metrics.jsonl")
    if json.loads((a / "eval.json").read_text()) != json.loads((b / "eval.json").read_text()):
        out.append("eval.json")
    return out


def interrupt_in_process(argv: list[str], run_dir: Path, signum: int, after_lines: int) -> int:
    """``main(argv)`` in this process, sent ``signum`` by a helper thread once ``after_lines`` are logged."""
    stray = []
    previous = signal.signal(signum, lambda *args: stray.append(args))  # safety net outside the loop

    def fire() -> None:
        while logged_lines(run_dir) < after_lines:
            time.sleep(0.002)
        os.kill(os.getpid(), signum)

    thread = threading.Thread(target=fire, daemon=True)
    thread.start()
    try:
        status = main(argv)
    finally:
        thread.join(timeout=60)
        signal.signal(signum, previous)
    assert not stray, "the signal arrived outside the training loop"
    return status


def check_graceful_stop(status: int, signum: int, err: str, run: Path) -> None:
    """Exit 128 + signal with one line naming the iteration and the resume command; files agree with it."""
    assert status == 128 + signum and err.count("\n") == 1
    iteration = int(err.split("interrupted at iteration ")[1].split(";")[0])
    assert err == f"fastmaml: interrupted at iteration {iteration}; resume with fastmaml train --resume {run}\n"
    checkpoint = load_checkpoint(run / "checkpoint.pt")
    logged = [json.loads(line)["iteration"] for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert checkpoint["iteration"] == iteration and logged == list(range(5, iteration + 1, 5))
    assert [h["iteration"] for h in checkpoint["history"]] == logged and checkpoint["running"][1] == iteration % 5


def test_one_process_stops_after_the_iteration_the_signal_arrived_in(tmp_path, capsys, monkeypatch):
    """SIGTERM during iteration 7's step: the checkpoint is iteration 7's, not one iteration later."""
    from fastmaml.train import outer

    original = outer.OuterSteps.step

    def step(self, iteration, *args):
        if iteration == 7:
            os.kill(os.getpid(), signal.SIGTERM)  # the handler runs now, in the middle of the step
        return original(self, iteration, *args)

    monkeypatch.setattr(outer.OuterSteps, "step", step)
    run = tmp_path / "run"
    status = main(["train", "sinusoid", *OVERRIDES, "--out", str(run), "--no-progress"])
    assert status == 128 + signal.SIGTERM
    assert "interrupted at iteration 7;" in capsys.readouterr().err
    assert load_checkpoint(run / "checkpoint.pt")["iteration"] == 7


def test_interrupted_and_killed_runs_resume_bit_identical(tmp_path, capsys):
    """SIGTERM, SIGKILL, SIGKILL at random moments, SIGINT, resuming after each: the same bits as no interruption."""
    rng = random.Random(0)
    reference_run(tmp_path / "reference")
    run = tmp_path / "run"
    resume = ["train", "--resume", str(run), "--no-progress"]
    first = ["train", "sinusoid", *OVERRIDES, "--out", str(run), "--no-progress"]
    capsys.readouterr()
    status = interrupt_in_process(first, run, signal.SIGTERM, rng.randint(2, 8))
    check_graceful_stop(status, signal.SIGTERM, capsys.readouterr().err, run)
    for _ in range(2):
        target = logged_lines(run) + rng.randint(1, 8)
        proc = launch(resume, tmp_path)
        while logged_lines(run) < target and proc.poll() is None:
            time.sleep(0.002)
        time.sleep(rng.uniform(0.0, 0.03))
        proc.kill()
        assert proc.wait(timeout=60) == -signal.SIGKILL
    status = interrupt_in_process(resume, run, signal.SIGINT, logged_lines(run) + rng.randint(1, 4))
    check_graceful_stop(status, signal.SIGINT, capsys.readouterr().err, run)
    assert main(resume) == 0
    assert differences(tmp_path / "reference", run) == []


class Payload:
    """Unpickling this would run a shell command that creates ``marker``."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return os.system, (f"touch {self.marker}",)


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory):
    run = tmp_path_factory.mktemp("finished") / "run"
    reference_run(run, [*OVERRIDES, "iterations=10"])
    return run


def test_kept_checkpoints_load_and_survive_a_resume(tmp_path, capsys):
    """A supervised run with ``keep_every``: a run resumed keeps the same checkpoints as one that was not
    (also when it stopped between a kept iteration's checkpoint and its copy), and ``fm.load(run, N)`` is the
    model those iterations ended with."""
    small = ["iterations=6", "log_every=2", "meta_batch_size=4", "baseline_iterations=0", "eval_tasks=2",
             "eval_inner_steps=1", "compile=false", "threads=1", "keep_every=3"]
    whole, part, three = tmp_path / "whole", tmp_path / "part", tmp_path / "three"
    assert main(["train", "sinusoid", *small, "--out", str(whole), "--no-progress"]) == 0
    assert main(["train", "sinusoid", *small[1:], "iterations=4", "--out", str(part), "--no-progress"]) == 0
    config = (part / "config.yaml").read_text()
    (part / "config.yaml").write_text(config.replace("iterations: 4", "iterations: 6"))
    assert main(["train", "--resume", str(part), "--no-progress"]) == 0
    assert main(["train", "sinusoid", *small[1:], "iterations=3", "--out", str(three), "--no-progress"]) == 0
    for run in (whole, part):
        assert sorted(p.name for p in (run / "snapshots").iterdir()) == ["checkpoint-3.pt", "checkpoint-6.pt"]
    at_three, ended = fastmaml.load(whole, 3).state_dict(), fastmaml.load(three, "last").state_dict()
    resumed = fastmaml.load(part, 3).state_dict()
    assert all(torch.equal(at_three[k], ended[k]) and torch.equal(at_three[k], resumed[k]) for k in ended)
    at_six, resumed = fastmaml.load(whole, 6).state_dict(), fastmaml.load(part, 6).state_dict()  # kept after it
    assert all(torch.equal(at_six[k], resumed[k]) for k in at_six)
    (part / "snapshots" / "checkpoint-6.pt").unlink()  # as if killed between the checkpoint and its copy
    (part / "config.yaml").write_text(config.replace("iterations: 4", "iterations: 7"))
    assert main(["train", "--resume", str(part), "--no-progress"]) == 0
    again = fastmaml.load(part, 6).state_dict()  # copied from the checkpoint the resume started from
    assert all(torch.equal(at_six[k], again[k]) for k in at_six)
    assert main(["eval", str(whole), "--iteration", "-1"]) == 2
    assert "--iteration -1" in capsys.readouterr().err


def test_code_carrying_checkpoint_is_refused_unrun(finished_run, tmp_path, capsys):
    import shutil

    run = tmp_path / "run"
    shutil.copytree(finished_run, run)
    marker = tmp_path / "pwned"
    torch.save({"algorithm": Payload(marker)}, run / "checkpoint.pt")
    evil = (run / "checkpoint.pt").read_bytes()
    with pytest.raises(ValueError, match="refused unread.*GLOBAL posix.system") as info:
        fastmaml.load(run, which="last")
    assert "\n" not in str(info.value)
    assert main(["train", "--resume", str(run), "--no-progress"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "refused unread" in err and "nothing in it was run" in err
    assert not marker.exists() and (run / "checkpoint.pt").read_bytes() == evil


def test_diverging_run_stops_and_keeps_the_last_good_checkpoint(tmp_path, capsys):
    run = tmp_path / "run"
    argv = ["train", "sinusoid", "iterations=200", "log_every=5", "checkpoint_every=2", "meta_batch_size=4",
            "optimizer=sgd", "outer_lr=0.3", "compile=false", "--out", str(run), "--no-progress"]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "became non-finite" in err and "lower inner_lr" in err
    failed_at = int(err.split("at iteration ")[1].split(":")[0])
    kept = int(err.split("last checkpoint (iteration ")[1].split(")")[0])
    before = (run / "checkpoint.pt").read_bytes()
    checkpoint = load_checkpoint(run / "checkpoint.pt")
    assert checkpoint["iteration"] == kept == (failed_at - 1) // 2 * 2 and kept >= 2
    assert all(t.isfinite().all() for t in checkpoint["algorithm"].values())
    # resuming replays the same iterations and fails at the same one, leaving the checkpoint alone
    assert main(["train", "--resume", str(run), "--no-progress"]) == 2
    assert f"at iteration {failed_at}:" in capsys.readouterr().err
    assert (run / "checkpoint.pt").read_bytes() == before
