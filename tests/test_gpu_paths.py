"""The GPU-shaped paths, checked on the CPU: the same code decides, chunks, places and prefetches there.

What needs a GPU itself (CUDA kernels, cuDNN routing, timings) is in tests/test_cuda.py, which runs where
CUDA exists, and benchmarks/gpu.py.
"""

import logging
import sys

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import fastmaml as fm
from fastmaml.core import compiled, execution
from fastmaml.core.execution import OutOfMemory, decide
from fastmaml.tasks.episodes import EpisodicTasks
from fastmaml.train import outer as train_loop
from fastmaml.train import run as runs
from fastmaml.train.distributed import Context
from fastmaml.train.outer import meta_train
from fastmaml.train.placement import Prefetcher, place


def images(per_task, tasks=2):
    return torch.zeros(tasks, per_task, 1, 28, 28)


class Recurrent(nn.Module):
    def __init__(self):
        super().__init__()
        self.lstm, self.head = nn.LSTM(3, 4, batch_first=True), nn.Linear(4, 2)

    def forward(self, x):
        return self.head(self.lstm(x)[0][:, -1])


def test_decide_off_the_cpu_vmaps_every_task_size_except_where_vmap_is_inexact():
    conv = fm.models.Conv4(1, 5)
    # the CPU's measured crossover (tests/test_execution_paths.py) ...
    assert decide(conv, images(5), None, images(75)) == "loop"
    # ... and none on a GPU: the paper's tasks, 15 query images per class, 20-way 1-shot with 5 steps
    for support, query in ((5, 5), (5, 75), (20, 20), (100, 300)):
        assert decide(conv, images(support), None, images(query), device="cuda") == "vmap"
    policy = fm.models.MLP([17, 100, 100, 6])
    rows = torch.zeros(2, 20, 200, 17)
    assert decide(policy, rows, None, rows) == "loop" and decide(policy, rows, None, rows, device="cuda") == "vmap"
    # recurrent layers cannot run under vmap: the loop on every device
    sequences = torch.zeros(2, 5, 7, 3)
    assert decide(Recurrent(), sequences, None, sequences, device="cuda") == "loop"


def test_device_option(tmp_path):
    assert Context().device("auto") == torch.device("cpu")  # no GPU here
    assert Context().device("cpu") == torch.device("cpu")
    with pytest.raises(ValueError, match="use auto, cpu, cuda or cuda:N"):
        Context().device("gpu")
    if not torch.cuda.is_available():
        for name in ("cuda", "cuda:1"):
            with pytest.raises(ValueError, match="no usable CUDA; use device=cpu"):
                Context().device(name)
        # a run trained on a GPU evaluates on the CPU of a machine without one
        assert runs.eval_device("cuda") == torch.device("cpu")


def _maml(execution="auto"):
    torch.manual_seed(0)
    model = fm.models.MLP([1, 16, 16, 1]).double()
    return fm.MAML(model, inner_lr=0.1, inner_steps=2, loss_fn=F.mse_loss, execution=execution, compile=False)


def _out_of_memory_above(limit, monkeypatch):
    """vmap raises CUDA's out-of-memory error when it holds more than ``limit`` tasks."""
    real = execution.run_vmap

    def limited(fn, *batched, chunk=None):
        if min(chunk or batched[0].shape[0], batched[0].shape[0]) > limit:
            raise torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")
        return real(fn, *batched, chunk=chunk)

    monkeypatch.setattr(execution, "run_vmap", limited)
    monkeypatch.setattr(compiled, "run_vmap", limited)


def test_out_of_memory_chunks_the_vmap_and_keeps_the_exact_meta_gradient(monkeypatch, caplog):
    batch = fm.Sinusoid().sample_tasks(8, torch.Generator().manual_seed(1)).to(dtype=torch.float64)
    reference = _maml("vmap")
    reference.outer_loss(batch).backward()
    expected = [p.grad.clone() for p in reference.parameters()]

    _out_of_memory_above(2, monkeypatch)
    maml = _maml()
    with caplog.at_level(logging.WARNING, logger="fastmaml.core.execution"):
        loss = maml.outer_loss(batch)
        loss.backward()
    assert maml.mapper.execution == "vmap" and maml.mapper.chunk == 2  # 8 -> 4 -> 2 tasks at a time
    assert maml.engine.last_path == "vmap-chunked"  # never the loop's fallback
    assert sum("out of device memory" in r.message for r in caplog.records) == 2
    for got, want in zip((p.grad for p in maml.parameters()), expected):
        torch.testing.assert_close(got, want, rtol=1e-12, atol=1e-14)
    # evaluation (no graph) chunks the same way
    with torch.no_grad():
        losses, _ = maml.task_losses(batch, track=True)
    assert losses.shape == (8, 3)


def test_out_of_memory_at_one_task_is_a_one_line_error(monkeypatch):
    batch = fm.Sinusoid().sample_tasks(4, torch.Generator().manual_seed(1)).to(dtype=torch.float64)
    _out_of_memory_above(0, monkeypatch)
    maml = _maml()
    with pytest.raises(OutOfMemory) as error:
        maml.outer_loss(batch)
    message = str(error.value)
    assert "\n" not in message and "lower meta_batch_size" in message and "one task at a time" in message
    # in training, the error names the checkpoint it left intact
    with pytest.raises(OutOfMemory, match=r"one task at a time.*the last checkpoint \(iteration 2\) is intact"):
        meta_train(maml, torch.optim.Adam(maml.parameters()), fm.Sinusoid(), torch.Generator(), iterations=5,
                   meta_batch_size=4, progress=False, checkpoint=lambda state: None, checkpoint_every=2,
                   state=train_loop.LoopState(iteration=2))


def _omniglot_like(classes=12, per_class=4):
    generator = torch.Generator().manual_seed(0)
    pixels = torch.randint(0, 256, (classes * per_class, 1, 8, 8), dtype=torch.uint8, generator=generator)
    return EpisodicTasks(pixels, torch.arange(classes).repeat_interleave(per_class), ways=3, shots=1,
                         query_shots=2, rotations=True)


def test_device_resident_tasks_sample_the_same_tasks():
    tasks = _omniglot_like()
    moved = tasks.to("cpu")
    assert moved.nbytes == tasks.nbytes == 4 * 48 * 64 and moved.device == torch.device("cpu")
    for a, b in zip(tasks.sample_tasks(5, torch.Generator().manual_seed(3)).tensors(),
                    moved.sample_tasks(5, torch.Generator().manual_seed(3)).tensors()):
        assert torch.equal(a, b)
    assert place(tasks, "cpu") is tasks  # nothing to arrange on the CPU


def test_prefetcher_gives_the_same_stream_and_generator_state():
    tasks = _omniglot_like()
    direct, ahead = torch.Generator().manual_seed(5), torch.Generator().manual_seed(5)
    prefetched = Prefetcher(tasks, "cpu", ahead=2)
    try:
        for _ in range(4):
            a, b = tasks.sample_tasks(3, direct), prefetched.sample_tasks(3, ahead)
            assert all(torch.equal(x, y) for x, y in zip(a.tensors(), b.tensors()))
            # what a checkpoint saves is the state after the consumed batch, not the thread's
            assert torch.equal(direct.get_state(), ahead.get_state())
        # the caller's generator moved by something else (a resume): the stream follows it
        direct.manual_seed(9)
        ahead.manual_seed(9)
        a, b = tasks.sample_tasks(3, direct), prefetched.sample_tasks(3, ahead)
        assert all(torch.equal(x, y) for x, y in zip(a.tensors(), b.tensors()))
        assert prefetched.num_classes == tasks.num_classes  # the tasks' attributes show through
    finally:
        prefetched.close()


def test_prefetcher_raises_the_samplers_error():
    class Broken:
        def sample_tasks(self, tasks, generator):
            raise ValueError("ways=20 but the split has 12 classes; lower ways")

    with pytest.raises(ValueError, match="lower ways"):
        Prefetcher(Broken(), "cpu").sample_tasks(2, torch.Generator())


class Counting:
    """Counts the calls that make the host wait for the device (each reads a value), except torch's
    optimizers' reads of their step counts, which live on the host even for a GPU's parameters."""

    names = ("item", "tolist", "__bool__", "__float__", "__int__")

    def __init__(self, monkeypatch):
        self.calls = 0
        for name in self.names:
            original = getattr(torch.Tensor, name)

            def counted(self_, *args, _original=original, **kwargs):
                caller = sys._getframe(1).f_code.co_filename
                if "torch/optim" not in caller.replace("\\", "/"):
                    self.calls += 1
                return _original(self_, *args, **kwargs)

            monkeypatch.setattr(torch.Tensor, name, counted)


def test_gpu_loop_reads_nothing_from_the_device_between_log_lines(monkeypatch):
    monkeypatch.setattr(train_loop, "checks_each_step", lambda device, dist: False)  # as on a GPU
    maml = _maml("vmap")
    optimizer = torch.optim.Adam(maml.parameters(), lr=1e-3)
    tasks, generator = fm.Sinusoid(), torch.Generator().manual_seed(0)
    meta_train(maml, optimizer, tasks, generator, iterations=1, meta_batch_size=4, progress=False,
               log_every=1)  # settles execution and the shape check once
    reads = []

    def on_log(state, last):
        reads.append(counter.calls)

    counter = Counting(monkeypatch)
    state = meta_train(maml, optimizer, tasks, generator, iterations=13, meta_batch_size=4, progress=False,
                       log_every=6, on_log=on_log, state=train_loop.LoopState(iteration=1))
    # each log line reads the summed loss and the finite flag: two reads, none in the steps between;
    # leaving the loop reads the loss summed since the last line (none here)
    assert reads == [2, 4, 6] and counter.calls == 7
    assert state.iteration == 13 and all(r["loss"] > 0 for r in state.history)


def test_gpu_loop_stops_on_a_non_finite_step_before_any_checkpoint(monkeypatch):
    monkeypatch.setattr(train_loop, "checks_each_step", lambda device, dist: False)

    class Poisoned:
        def __init__(self):
            self.calls = 0

        def sample_tasks(self, tasks, generator):
            self.calls += 1
            batch = fm.Sinusoid().sample_tasks(tasks, generator)
            if self.calls == 3:
                batch.query_y[0, 0] = float("nan")
            return batch

    maml = _maml("vmap")
    saved = []
    with pytest.raises(FloatingPointError) as error:
        meta_train(maml, torch.optim.Adam(maml.parameters()), Poisoned(), torch.Generator(), iterations=10,
                   meta_batch_size=4, progress=False, log_every=100, checkpoint_every=4,
                   checkpoint=lambda state: saved.append(state.iteration))
    assert saved == [] and "at iteration 3" in str(error.value) and "\n" not in str(error.value)


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the error of a machine without CUDA")
def test_a_gpu_run_resumes_on_the_cpu(tmp_path, capsys):
    from fastmaml.cli import main

    run_dir = tmp_path / "run"
    small = ["iterations=4", "log_every=2", "checkpoint_every=2", "baseline_iterations=0", "eval_tasks=5",
             "meta_batch_size=2", "compile=false", "--no-progress"]
    assert main(["train", "sinusoid", *small, "--out", str(run_dir)]) == 0
    config = run_dir / "config.yaml"
    assert "device: cpu" in config.read_text()  # device=auto, resolved and recorded
    config.write_text(config.read_text().replace("device: cpu", "device: cuda"))  # as a GPU run writes it
    capsys.readouterr()
    assert main(["train", "--resume", str(run_dir)]) == 2
    error = capsys.readouterr().err.strip()
    assert error.count("\n") == 0 and f"--resume {run_dir} device=cpu" in error
    assert main(["train", "--resume", str(run_dir), "device=cpu"]) == 0
    assert "device: cpu" in config.read_text()
    assert main(["train", "--resume", str(run_dir), "inner_lr=0.5"]) == 2
    assert "only device=... may change" in capsys.readouterr().err


def test_the_gpu_benchmark_runs_its_cpu_check_and_prints_results_rows():
    """benchmarks/gpu.py's documented check command (the CPU, the sinusoid row) runs and prints RESULTS.md's row."""
    import subprocess
    from pathlib import Path

    root = Path(__file__).resolve().parents[1]
    command = ["benchmarks/gpu.py", "--parts", "table", "--workloads", "sinusoid", "--device", "cpu", "--iters", "3"]
    assert " ".join(command) in (root / "benchmarks/gpu.py").read_text()
    out = subprocess.run([sys.executable, *command, "--warmup-s", "0"], cwd=root, capture_output=True, text=True,
                         timeout=300, env={**__import__("os").environ, "PYTHONPATH": str(root / "src")})
    assert out.returncode == 0, out.stderr[-2000:]
    row = [line for line in out.stdout.splitlines() if line.startswith("| sinusoid (25 tasks, K=10), ms |")]
    assert len(row) == 1 and "(vmap)" in row[0]
