"""Multi-process training: N CPU processes (gloo, float64) train the same model as one process.

The processes are started the way users start them: ``fastmaml train ... --nproc-per-node 2`` and the
commands of docs/distributed.md, run exactly as written (short-run overrides aside).
"""

from __future__ import annotations

import dataclasses
import json
import os
import re
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

import fastmaml
from fastmaml.cli import main
from fastmaml.tasks.batch import TaskBatch
from fastmaml.train import config as cfg
from fastmaml.train import distributed
from fastmaml.train import run as runs
from fastmaml.train.checkpoint import load_checkpoint

SRC = str(Path(fastmaml.__file__).resolve().parents[1])
DOCS = Path(__file__).resolve().parents[1] / "docs" / "distributed.md"
# meta_batch_size=5 does not split evenly over 2 processes (3 + 2 tasks): the weighted all-reduce is exact anyway
OVERRIDES = ["log_every=5", "checkpoint_every=5", "meta_batch_size=5", "baseline_iterations=0", "eval_tasks=6",
             "eval_inner_steps=1", "compile=false", "threads=1", "dtype=float64", "inner_steps=2", "seed=11"]
# What the documented commands get on top: a short run (the recipe trains 70,000 iterations).
SHORT = ["iterations=10", "log_every=5", "baseline_iterations=0", "eval_tasks=6", "eval_inner_steps=1",
         "compile=false", "dtype=float64"]


def environment(**extra: str) -> dict[str, str]:
    return {**os.environ, "PYTHONPATH": SRC + os.pathsep + os.environ.get("PYTHONPATH", ""), **extra}


def cli(argv: list[str], cwd: Path, **kwargs) -> subprocess.Popen:
    """``fastmaml ARGV`` in a subprocess (the console script is ``python -m fastmaml.cli``)."""
    return subprocess.Popen([sys.executable, "-m", "fastmaml.cli", *argv], cwd=cwd, env=environment(),
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, **kwargs)


def finish(proc: subprocess.Popen) -> tuple[int, str, str]:
    out, err = proc.communicate(timeout=300)
    return proc.returncode, out, err


def single_process(run_dir: Path, iterations: int, overrides: list[str] = OVERRIDES) -> dict[str, torch.Tensor]:
    runs.train(cfg.resolve("sinusoid", [*overrides, f"iterations={iterations}"]), run_dir, progress=False,
               evaluate_at_end=False)
    return load_checkpoint(run_dir / "checkpoint.pt")["algorithm"]


def relative_error(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> float:
    assert a.keys() == b.keys()
    return max(((a[k] - b[k]).abs().max() / b[k].abs().max()).item() for k in a)


def losses(run_dir: Path) -> list[float]:
    return [json.loads(line)["loss"] for line in (run_dir / "metrics.jsonl").read_text().splitlines()]


def test_two_processes_interrupted_and_resumed_train_what_one_process_trains(tmp_path):
    """``--nproc-per-node 2`` on 5 tasks (3 + 2), stopped by Ctrl-C, resumed on 2 processes: 1 process to 1e-12."""
    run = tmp_path / "two"
    proc = cli(["train", "sinusoid", *OVERRIDES, "iterations=100000", "--out", str(run), "--no-progress",
                "--nproc-per-node", "2"], tmp_path)
    deadline = time.monotonic() + 120
    while not (run / "metrics.jsonl").is_file() and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.01)
    proc.send_signal(signal.SIGINT)  # to the launcher only, as a terminal's Ctrl-C would reach it
    status, _, err = finish(proc)
    stopped = load_checkpoint(run / "checkpoint.pt")
    # without a progress bar the log lines go to stderr; the job's last word is one line
    assert status == 130 and err.endswith(f"\nfastmaml: interrupted at iteration {stopped['iteration']}; resume with "
                                          f"fastmaml train --resume {run}\n") and err.count("fastmaml:") == 1
    assert all(t.dtype == torch.float64 for t in stopped["algorithm"].values())
    total = stopped["iteration"] + 7
    cfg.save(dataclasses.replace(cfg.load(run / "config.yaml"), iterations=total), run / "config.yaml")
    status, out, err = finish(cli(["train", "--resume", str(run), "--no-progress", "--nproc-per-node", "2"], tmp_path))
    assert status == 0, err[-3000:]
    assert out.count("maml ") == 1  # rank 0 alone evaluates and prints the table
    resumed = load_checkpoint(run / "checkpoint.pt")
    reference = single_process(tmp_path / "one", total)
    assert resumed["iteration"] == total and relative_error(resumed["algorithm"], reference) <= 1e-12
    assert relative_error(resumed["algorithm"], stopped["algorithm"]) > 1e-4  # it did train on
    # only rank 0 logs: one line per log step, and the logged loss is the global mean
    assert losses(run) == pytest.approx(losses(tmp_path / "one"), rel=1e-12)


def documented_commands() -> list[str]:
    """The commands of docs/distributed.md's bash blocks, continuation lines joined, comments dropped."""
    blocks = re.findall(r"```bash\n(.*?)```", DOCS.read_text(), re.S)
    lines = "\n".join(blocks).replace("\\\n", " ").splitlines()
    return [" ".join(line.split()) for line in lines if line.strip() and not line.lstrip().startswith("#")]


def short(command: str) -> str:
    """The documented command with the short-run overrides after the recipe name (a resume has none)."""
    return command.replace(" sinusoid ", f" sinusoid {' '.join(SHORT)} ")


def shell(command: str, cwd: Path, **variables: str) -> subprocess.Popen:
    """``command`` as a user's shell runs it: ``fastmaml`` and ``python`` are this interpreter's."""
    path = os.pathsep.join([str(Path(sys.executable).parent), os.environ.get("PATH", "")])
    return subprocess.Popen(["bash", "-c", command], cwd=cwd, env=environment(PATH=path, **variables),
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_every_command_of_docs_distributed_runs_as_written(tmp_path):
    commands = documented_commands()
    assert commands == [
        "fastmaml train sinusoid checkpoint_every=1000 --out runs/sin",
        "fastmaml train --resume runs/sin",
        "fastmaml train sinusoid --nproc-per-node 2 --out runs/sin2",
        "fastmaml train --resume runs/sin2 --nproc-per-node 2",
        "python -m torch.distributed.run --nnodes=2 --node_rank=$NODE_RANK --nproc_per_node=1 "
        "--master_addr=$MASTER_ADDR --master_port=$MASTER_PORT -m fastmaml.cli train sinusoid --out runs/sin-nodes",
    ], "a command was added to docs/distributed.md: run it here"
    for command in commands[:4]:
        status, _, err = finish(shell(short(command), tmp_path))
        assert status == 0, (command, err[-3000:])
    one, two = (load_checkpoint(tmp_path / "runs" / name / "checkpoint.pt")["algorithm"] for name in ("sin", "sin2"))
    assert relative_error(two, one) <= 1e-12  # the recipe's 25 tasks split 13 + 12
    # the two-machine command, as two "machines" on localhost with separate folders (no shared file system)
    port = str(free_port())
    nodes = []
    for rank in ("0", "1"):
        (tmp_path / f"node{rank}").mkdir()
        nodes.append(shell(short(commands[4]), tmp_path / f"node{rank}", NODE_RANK=rank, MASTER_ADDR="127.0.0.1",
                           MASTER_PORT=port, OMP_NUM_THREADS="1"))
    for node in nodes:
        status, _, err = finish(node)
        assert status == 0, err[-3000:]
    assert not (tmp_path / "node1" / "runs").exists()  # only machine 0 writes
    nodes_run = load_checkpoint(tmp_path / "node0" / "runs" / "sin-nodes" / "checkpoint.pt")["algorithm"]
    assert relative_error(nodes_run, one) <= 1e-12


def test_a_process_error_is_one_line(tmp_path):
    """Missing data is found inside the processes; the job still ends with one line, not one per process."""
    status, _, err = finish(cli(["train", "omniglot-5w1s", f"data.root={tmp_path / 'nowhere'}", "--out",
                                 str(tmp_path / "run"), "--nproc-per-node", "2"], tmp_path))
    assert status == 2 and err.count("\n") == 1 and err.startswith("fastmaml: error: ") and "Traceback" not in err
    assert "nowhere" in err


@pytest.mark.parametrize("argv, match", [
    (["train", "sinusoid", "meta_batch_size=2", "--nproc-per-node", "3"],
     "meta_batch_size=2 leaves 1 of 3 processes without a task; use at most 2 processes or meta_batch_size>=3"),
    (["train", "sinusoid", "--nproc-per-node", "0"], "--nproc-per-node 0; start at least 1 process"),
    (["train", "sinusoid", "bogus=1", "--nproc-per-node", "2"], "unknown config key 'bogus'"),
    (["train", "--resume", "/nonexistent/run", "--nproc-per-node", "2"], "not a fastmaml run folder"),
])
def test_launch_errors_are_one_line_before_any_process_starts(argv, match, tmp_path, capsys):
    out = tmp_path / "run"
    assert main([*argv, "--out", str(out)] if "--resume" not in argv else argv) == 2
    err = capsys.readouterr().err
    assert err == f"fastmaml: error: {match}\n" if match.startswith("meta") else match in err
    assert err.count("\n") == 1 and not out.exists()


def test_the_flag_is_refused_inside_a_launched_job(monkeypatch, tmp_path, capsys):
    monkeypatch.setenv("WORLD_SIZE", "2")
    assert main(["train", "sinusoid", "--out", str(tmp_path / "run"), "--nproc-per-node", "2"]) == 2
    assert "drop it when launching with torchrun" in capsys.readouterr().err


@pytest.mark.parametrize("name", ["maml", "fomaml", "anil", "metasgd", "mamlpp", "reptile", "imaml"])
def test_uneven_shards_all_reduced_are_the_global_mean(name):
    """The ranks' shard meta-gradients sum to the single-process meta-gradient, shares 2, 2, 1, 1, for every
    algorithm: a shard's outer loss is its share of the whole batch's mean (its task losses over 6)."""
    algorithm = fastmaml.build(name, fastmaml.models.MLP([1, 8, 8, 1]).double(), inner_lr=0.1, inner_steps=2)
    batch = fastmaml.Sinusoid(dtype=torch.float64).sample_tasks(6, torch.Generator().manual_seed(0))
    params = [p for p in algorithm.parameters() if p.requires_grad]
    algorithm.outer_loss(batch).backward()
    full = [p.grad.clone() for p in params]
    summed = [torch.zeros_like(p) for p in params]
    shards = [distributed.Context(rank, 4).shard(batch) for rank in range(4)]
    assert [len(s) for s in shards] == [2, 2, 1, 1]
    assert torch.equal(torch.cat([s.support_x for s in shards]), batch.support_x)  # contiguous, in order
    assert [s.denominator for s in shards] == [6] * 4
    for shard in shards:
        algorithm.zero_grad()
        algorithm.outer_loss(shard).backward()
        summed = [s + p.grad for s, p in zip(summed, params)]
    for a, b in zip(summed, full):
        torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-15)
    assert any(g.abs().max() > 1e-6 for g in full)


@pytest.mark.parametrize("path", [dict(execution="loop"), dict(execution="vmap", compile=True)])
def test_shards_sum_to_the_whole_batch_on_the_loop_and_compiled_paths(path):
    """The loop path and the compiled step divide a shard's task losses by the whole batch's count too."""
    maml = fastmaml.MAML(fastmaml.models.MLP([1, 8, 8, 1]).double(), inner_lr=0.1, inner_steps=1, **path)
    batch = fastmaml.Sinusoid(dtype=torch.float64).sample_tasks(6, torch.Generator().manual_seed(1))
    params = [p for p in maml.parameters() if p.requires_grad]

    def meta_gradient(tasks):
        for _ in range(2):  # compile=True: a shape's first call runs eagerly, the second compiled
            maml.zero_grad()
            loss = maml.outer_loss(tasks)
            loss.backward()
        assert maml.engine.last_path == ("compiled" if path.get("compile") else "loop")
        return loss.item(), [p.grad.clone() for p in params]

    loss, full = meta_gradient(batch)
    shards = [meta_gradient(batch.shard(rank, 2)) for rank in range(2)]
    assert sum(shard_loss for shard_loss, _ in shards) == pytest.approx(loss, rel=1e-12)
    for name, whole, *parts in zip(dict(maml.named_parameters()), full, *(g for _, g in shards)):
        torch.testing.assert_close(sum(parts), whole, rtol=1e-12, atol=1e-15, msg=name)


def test_a_shard_keeps_its_total_through_to_and_checks_it():
    batch = TaskBatch(*[torch.zeros(5, 2, 1)] * 4)
    assert batch.shard(1, 2).to(torch.float64).denominator == 5
    assert batch[1:3].denominator == 2  # indexing makes a batch of its own
    with pytest.raises(ValueError, match="TaskBatch.total=1 is below its 5 tasks"):
        TaskBatch(*[torch.zeros(5, 2, 1)] * 4, total=1)


@pytest.mark.parametrize("tasks, world, sizes", [(25, 2, [13, 12]), (5, 5, [1] * 5), (7, 3, [3, 2, 2]),
                                                 (2, 3, [1, 1, 0])])
def test_shard_sizes_differ_by_at_most_one(tasks, world, sizes):
    batch = TaskBatch(*[torch.arange(tasks, dtype=torch.float64).reshape(tasks, 1, 1)] * 4)
    shards = [batch.shard(rank, world) for rank in range(world)]
    assert [len(s) for s in shards] == sizes
    assert torch.cat([s.support_x for s in shards]).flatten().tolist() == list(range(tasks))
    with pytest.raises(ValueError, match="rank=3 is outside 0..2"):
        batch.shard(3, 3)


def test_incomplete_environment_is_a_one_line_error(monkeypatch):
    with pytest.raises(ValueError, match="meta_batch_size=1 leaves 1 of 2 processes without a task"):
        distributed.Context(0, 2).check_meta_batch(1)
    distributed.Context(0, 2).check_meta_batch(3)  # uneven is fine
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.delenv("MASTER_ADDR", raising=False)
    monkeypatch.delenv("RANK", raising=False)
    monkeypatch.delenv("MASTER_PORT", raising=False)
    with pytest.raises(ValueError, match="WORLD_SIZE is set but not RANK, MASTER_ADDR, MASTER_PORT; launch with"):
        distributed.from_env()
    assert isinstance(distributed.Context().shard(TaskBatch(*[torch.zeros(2, 1, 1)] * 4)), TaskBatch)


def _mamlpp_problem():
    """MAML++ with per-step BatchNorm statistics (buffers its outer loss moves), 5 sinusoid tasks, float64."""
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(1, 8), torch.nn.BatchNorm1d(8), torch.nn.ReLU(),
                                torch.nn.Linear(8, 1)).double()
    algorithm = fastmaml.build("mamlpp", model, inner_lr=0.1, inner_steps=2, per_step_bn_statistics=True)
    return algorithm, fastmaml.Sinusoid(dtype=torch.float64).sample_tasks(5, torch.Generator().manual_seed(0))


def _mamlpp_rank(rank: int, world: int, init: str, out: str) -> None:
    import torch.distributed as dist

    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=init, rank=rank, world_size=world)
    context = distributed.Context(rank, world)
    context.owns_group = True
    try:
        algorithm, batch = _mamlpp_problem()
        shard = context.shard(batch)
        before = context.snapshot_buffers(algorithm)
        algorithm.outer_loss(shard).backward()
        context.allreduce_buffers(algorithm, before, len(shard), len(batch))
        if rank == 0:
            torch.save(dict(algorithm.named_buffers()), out)
    finally:
        context.close(barrier=True)


def test_buffers_the_outer_loss_moves_are_all_reduced_as_one_process_moves_them(tmp_path):
    """MAML++'s per-step BatchNorm statistics on 2 processes (3 + 2 tasks) end as one process's: each rank's
    running averages moved by its shard, combined by the shards' task counts."""
    import torch.multiprocessing as mp

    algorithm, batch = _mamlpp_problem()
    start = {n: b.clone() for n, b in algorithm.named_buffers()}
    algorithm.outer_loss(batch).backward()
    one = dict(algorithm.named_buffers())
    out = tmp_path / "buffers.pt"
    mp.spawn(_mamlpp_rank, args=(2, f"file://{tmp_path / 'init'}", str(out)), nprocs=2)
    two = torch.load(out)
    moved = [n for n in one if one[n].is_floating_point() and not torch.equal(one[n], start[n])]
    assert moved == ["norm.running_mean:1", "norm.running_var:1"]
    for name in one:
        torch.testing.assert_close(two[name], one[name], rtol=1e-13, atol=1e-15, msg=name)
    assert torch.equal(two["model.1.running_mean"], start["model.1.running_mean"])  # unmoved: bit for bit


def _gloo_threads() -> list[str]:
    tasks = Path("/proc/self/task")
    return [t.name for t in tasks.iterdir() if (t / "comm").read_text().strip() == "pt_gloo_runloop"]


def _closing_rank(rank: int, port: int, out: str) -> None:
    os.environ.update(RANK=str(rank), WORLD_SIZE="2", LOCAL_RANK=str(rank), MASTER_ADDR="127.0.0.1",
                      MASTER_PORT=str(port))
    torch.set_num_threads(1)
    fresh = "torch._dynamo" not in sys.modules  # else the test proves nothing
    context = distributed.from_env()
    parameter = torch.nn.Parameter(torch.ones(3, dtype=torch.float64))
    torch.optim.Adam([parameter])  # loads torch._dynamo, as every training run does once the group exists
    parameter.grad = torch.full_like(parameter, rank + 1.0)
    context.allreduce_grads([parameter], torch.tensor(1.0, dtype=torch.float64))
    running = len(_gloo_threads())
    context.close(barrier=True)
    Path(out, f"rank-{rank}.json").write_text(json.dumps(
        {"fresh": fresh, "running": running, "left": len(_gloo_threads()), "grad": parameter.grad.tolist()}))


@pytest.mark.skipif(not Path("/proc/self/task").is_dir(), reason="counts threads through Linux's /proc")
def test_closing_the_group_ends_gloos_worker_threads_before_the_interpreter_exits(tmp_path):
    """A gloo worker thread alive at the interpreter's exit, asking for the GIL to free a tensor, ends a
    finished run with "terminate called without an active exception" (status 134). torch._dynamo, which
    torch.optim loads, keeps the group alive past destroy_process_group when it is first imported after the
    group exists; the context imports it first, so closing ends the threads."""
    import torch.multiprocessing as mp

    mp.spawn(_closing_rank, args=(free_port(), str(tmp_path)), nprocs=2)
    for rank in range(2):
        report = json.loads((tmp_path / f"rank-{rank}.json").read_text())
        if not report["running"]:
            pytest.skip(f"torch {torch.__version__} does not name gloo's worker threads: nothing to count")
        assert report["fresh"], report
        assert report["left"] == 0, report
        assert report["grad"] == [3.0, 3.0, 3.0]
