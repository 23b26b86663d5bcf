"""Multi-process training: 2 CPU processes (gloo, float64) train the same model as one process."""

from __future__ import annotations

import dataclasses
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import fastmaml
from fastmaml.tasks.batch import TaskBatch
from fastmaml.train import config as cfg
from fastmaml.train import distributed
from fastmaml.train import run as runs
from fastmaml.train.checkpoint import load_checkpoint

SRC = str(Path(fastmaml.__file__).resolve().parents[1])
OVERRIDES = ["log_every=5", "checkpoint_every=5", "meta_batch_size=6", "baseline_iterations=0", "eval_tasks=6",
             "eval_inner_steps=1", "compile=false", "threads=1", "dtype=float64", "inner_steps=2", "seed=11"]


def torchrun(argv: list[str], cwd: Path, processes: int = 2) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": SRC + os.pathsep + os.environ.get("PYTHONPATH", ""), "OMP_NUM_THREADS": "1"}
    return subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone",
                           f"--nproc_per_node={processes}", "-m", "fastmaml.cli", *argv],
                          cwd=cwd, env=env, capture_output=True, text=True, timeout=300, check=False)


def single_process(run_dir: Path, iterations: int) -> dict[str, torch.Tensor]:
    threads = torch.get_num_threads()
    try:
        runs.train(cfg.resolve("sinusoid", [*OVERRIDES, f"iterations={iterations}"]), run_dir, progress=False,
                   evaluate_at_end=False)
    finally:
        torch.set_num_threads(threads)
    return load_checkpoint(run_dir / "checkpoint.pt")["algorithm"]


def relative_error(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> float:
    assert a.keys() == b.keys()
    return max(((a[k] - b[k]).abs().max() / b[k].abs().max()).item() for k in a)


def test_two_processes_train_what_one_process_trains_and_resume(tmp_path):
    """Fresh 2-process run to 10 iterations, then a 2-process resume to 20: both equal 1 process to 1e-12."""
    one_10 = single_process(tmp_path / "one-10", 10)
    one_20 = single_process(tmp_path / "one-20", 20)
    run = tmp_path / "two"
    result = torchrun(["train", "sinusoid", *OVERRIDES, "iterations=10", "--out", str(run), "--no-progress"], tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    two_10 = load_checkpoint(run / "checkpoint.pt")
    assert all(t.dtype == torch.float64 for t in two_10["algorithm"].values())
    assert relative_error(two_10["algorithm"], one_10) <= 1e-12
    assert two_10["iteration"] == 10 and result.stdout.count("run folder:") == 1
    # only rank 0 logs: one line per log step, and the logged loss is the global mean
    logged = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    reference = [json.loads(line) for line in (tmp_path / "one-10" / "metrics.jsonl").read_text().splitlines()]
    assert [r["iteration"] for r in logged] == [5, 10]
    assert [r["loss"] for r in logged] == pytest.approx([r["loss"] for r in reference], rel=1e-12)
    # resume in distributed mode (the run's config now asks for 20 iterations)
    cfg.save(dataclasses.replace(cfg.load(run / "config.yaml"), iterations=20), run / "config.yaml")
    result = torchrun(["train", "--resume", str(run), "--no-progress"], tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    two_20 = load_checkpoint(run / "checkpoint.pt")
    assert two_20["iteration"] == 20 and relative_error(two_20["algorithm"], one_20) <= 1e-12
    assert relative_error(two_20["algorithm"], one_10) > 1e-3  # it did train on


def test_the_all_reduced_shards_are_the_global_mean():
    """Each rank's weighted local mean gradient sums to the single-process meta-gradient."""
    maml = fastmaml.MAML(fastmaml.models.MLP([1, 8, 1]).double(), inner_lr=0.1)
    batch = fastmaml.Sinusoid(dtype=torch.float64).sample_tasks(6, torch.Generator().manual_seed(0))
    maml.outer_loss(batch).backward()
    full = [p.grad.clone() for p in maml.parameters()]
    summed = [torch.zeros_like(p) for p in maml.parameters()]
    for rank in range(3):
        shard = distributed.Context(rank, 3).shard(batch)
        maml.zero_grad()
        maml.outer_loss(shard).backward()
        summed = [s + p.grad * len(shard) / len(batch) for s, p in zip(summed, maml.parameters())]
    for a, b in zip(summed, full):
        torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-15)
    assert torch.equal(distributed.Context(1, 3).shard(batch).support_x, batch.support_x[2:4])


def test_uneven_meta_batch_and_incomplete_environment_are_one_line_errors(monkeypatch):
    with pytest.raises(ValueError, match="meta_batch_size=5 does not split evenly over 2 processes"):
        distributed.Context(0, 2).check_meta_batch(5)
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.delenv("MASTER_ADDR", raising=False)
    monkeypatch.delenv("RANK", raising=False)
    monkeypatch.delenv("MASTER_PORT", raising=False)
    with pytest.raises(ValueError, match="WORLD_SIZE is set but not RANK, MASTER_ADDR, MASTER_PORT; launch with"):
        distributed.from_env()
    assert isinstance(distributed.Context().shard(TaskBatch(*[torch.zeros(2, 1, 1)] * 4)), TaskBatch)
