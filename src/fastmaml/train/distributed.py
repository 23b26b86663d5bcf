"""Multi-process meta-training on ``torch.distributed``: an execution detail of the training loop.

Every rank samples the SAME full meta-batch from the same seeded generator and keeps its contiguous
shard (``TaskBatch.shard``; shares differ by at most one task, so any meta-batch size splits). A
shard's outer loss is the sum of its task losses over the WHOLE meta-batch's task count, so each task
enters the meta-gradient with the same factor 1/tasks as in one process, and :meth:`Context.allreduce_grads`
only sums the ranks' ``.grad``: N processes train the same model as one process on the same tasks, up to
the grouping of the per-task sum (13 + 12 instead of 25). Buffers an outer loss moves by its tasks
(MAML++'s per-step BatchNorm statistics) are combined by :meth:`Context.allreduce_buffers` the same way,
so the ranks keep one process's statistics too. Only rank 0 logs and writes files.

``fastmaml train RECIPE --nproc-per-node N`` starts the N processes itself (:func:`launch`, through
``torch.distributed.run``); ``python -m torch.distributed.run ... -m fastmaml.cli train ...`` does the
same by hand, on one machine or several. The process group is set up from the ``RANK`` /
``WORLD_SIZE`` / ``LOCAL_RANK`` / ``MASTER_ADDR`` / ``MASTER_PORT`` variables the launcher sets; gloo
carries CPU tensors, NCCL CUDA ones.
"""

from __future__ import annotations

import logging
import os
import signal
import sys
import tempfile
import time
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, TypeVar

import torch
from torch import Tensor, nn

T = TypeVar("T")
# Errors rank 0 may hit while opening a run; re-raised with the same type on every other rank.
# Under `--nproc-per-node` each process writes its closing line (error or interruption) into the folder
# this variable names, and the launcher prints one line for the whole job instead of one per process.
REPORT_DIR = "FASTMAML_REPORT_DIR"
SHARED_ERRORS = (ValueError, TypeError, FileNotFoundError, FileExistsError, PermissionError, NotADirectoryError,
                 KeyError)
# The last collectives of the latest closed Context, freed when the interpreter frees this module (see Context.close).
_LAST_WORKS: list[Any] = []


def _floating_buffers(module: nn.Module) -> list[Tensor]:
    return [b for b in module.buffers() if b.is_floating_point()]


class Context:
    """This process's place in the job. ``world_size == 1`` is plain single-process training.

    Attributes:
        rank: global rank (0 logs and writes files); local_rank: rank on this node (picks the GPU).
        comm_seconds: wall time spent in gradient all-reduces (including waiting for slower ranks).
    """

    def __init__(self, rank: int = 0, world_size: int = 1, local_rank: int = 0) -> None:
        self.rank, self.world_size, self.local_rank = rank, world_size, local_rank
        self.comm_seconds = 0.0
        self.owns_group = False
        self._works: dict[str, list[Any]] = {}  # the latest all-reduces, per call site (see close)

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def enabled(self) -> bool:
        return self.world_size > 1

    def device(self, name: str) -> torch.device:
        """The device of this rank for the ``device`` option: ``auto`` is the GPU when torch sees one, else
        the CPU; ``cuda`` without an index is ``cuda:LOCAL_RANK`` with several ranks, else the current GPU.
        Each wrong name is a one-line ``ValueError`` naming the fix."""
        if name == "auto":
            name = "cuda" if torch.cuda.is_available() else "cpu"
        try:
            device = torch.device(name)
        except RuntimeError:
            raise ValueError(f"device={name!r} is not a torch device; use auto, cpu, cuda or cuda:N") from None
        if device.type == "cuda":
            if not torch.cuda.is_available():
                raise ValueError(f"device={name} but this torch has no usable CUDA; use device=cpu")
            if device.index is None:
                device = torch.device("cuda", self.local_rank if self.enabled else torch.cuda.current_device())
            if device.index >= torch.cuda.device_count():
                raise ValueError(f"device={name} but this machine has {torch.cuda.device_count()} GPU(s); use "
                                 f"cuda:0 to cuda:{torch.cuda.device_count() - 1}, or device=cuda")
            torch.cuda.set_device(device)
        return device

    def check_meta_batch(self, meta_batch_size: int) -> None:
        """Every rank needs a task; shares may differ by one (each task keeps its 1/tasks weight)."""
        if meta_batch_size < self.world_size:
            raise ValueError(f"meta_batch_size={meta_batch_size} leaves {self.world_size - meta_batch_size} of "
                             f"{self.world_size} processes without a task; use at most {meta_batch_size} processes "
                             f"or meta_batch_size>={self.world_size}")

    def shard(self, batch):
        """This rank's contiguous share of a full meta-batch (the whole batch on one process)."""
        return batch.shard(self.rank, self.world_size) if self.enabled else batch

    def allreduce_grads(self, params: Iterable[nn.Parameter], loss: Tensor, flags: tuple[bool, ...] = ()
                        ) -> tuple[Tensor, tuple[bool, ...]]:
        """Sum every ``.grad`` and the loss over the ranks (each rank's are its shard's share of the global
        mean, see the module docstring); return the global mean loss and, per flag, whether any rank
        raised it.

        The loss and the flags travel in the same buffer as the gradients: one all-reduce per
        iteration per dtype (a model with floating buffers adds one of their size,
        :meth:`allreduce_buffers`), and every rank leaves the iteration with the same loss, gradients and
        decisions (so a signal to one rank, or one rank's clock, stops all of them at the same iteration).
        """
        if not self.enabled:
            return loss, tuple(flags)
        start = time.perf_counter()
        grads = [p.grad for p in params if p.grad is not None]
        groups: dict[tuple, list[Tensor]] = {}
        for g in grads:
            groups.setdefault((g.dtype, g.device), []).append(g)
        if not groups:
            groups[(loss.dtype, loss.device)] = []
        out_loss, out_flags = loss, tuple(flags)
        extra = 1 + len(flags)
        works = self._works["grads"] = []
        for i, ((dtype, device), group) in enumerate(groups.items()):
            parts = [g.reshape(-1) for g in group]
            if i == 0:  # (loss, *flags) ride at the end of the first buffer
                parts.append(loss.detach().to(device, dtype).reshape(1))
                parts.append(torch.zeros(len(flags), device=device, dtype=dtype))
            flat = torch.cat(parts)
            if i == 0 and flags:  # counts of ranks that raised each flag
                flat[-len(flags):] = torch.tensor([float(f) for f in flags], dtype=dtype)
            works.append(_all_reduce(flat))
            offset = 0
            for g in group:
                g.copy_(flat[offset:offset + g.numel()].view_as(g))
                offset += g.numel()
            if i == 0:
                tail = flat[-extra:].tolist()
                out_loss = flat[-extra].to(loss.dtype)
                out_flags = tuple(v > 0 for v in tail[1:])
        self.comm_seconds += time.perf_counter() - start
        return out_loss, out_flags

    def snapshot_buffers(self, module: nn.Module) -> list[Tensor]:
        """``module``'s floating buffers before a step (nothing on one process), for :meth:`allreduce_buffers`."""
        if not self.enabled:
            return []
        return [b.detach().clone() for b in _floating_buffers(module)]

    def allreduce_buffers(self, module: nn.Module, before: list[Tensor], local_tasks: int, global_tasks: int) -> None:
        """Buffers a step moved by its own shard (MAML++'s per-step BatchNorm statistics: running averages
        moved towards the shard's mean task statistics) as one process moves them by the whole meta-batch:
        ``old + sum_r tasks_r / tasks * (new_r - old)``, exact for updates linear in the mean over tasks.
        A buffer no rank changed stays bit for bit what it was."""
        if not self.enabled or not before:
            return
        start = time.perf_counter()
        buffers = _floating_buffers(module)
        groups: dict[tuple, list[tuple[Tensor, Tensor]]] = {}
        for b, old in zip(buffers, before):
            groups.setdefault((b.dtype, b.device), []).append((b, old))
        works = self._works["buffers"] = []
        for group in groups.values():
            moved = torch.cat([(b.detach() - old).reshape(-1) for b, old in group]).mul_(local_tasks / global_tasks)
            works.append(_all_reduce(moved))
            offset = 0
            with torch.no_grad():
                for b, old in group:
                    b.copy_(old + moved[offset:offset + b.numel()].view_as(b))
                    offset += b.numel()
        self.comm_seconds += time.perf_counter() - start

    def run_on_main(self, fn: Callable[[], T]) -> T:
        """``fn()`` on rank 0 only; its result (or its user error) is sent to every rank.

        Rank 0 alone touches the run folder, so other ranks need no shared file system and never
        hang waiting for a rank that failed.
        """
        if not self.enabled:
            return fn()
        import torch.distributed as dist

        message: list[Any] = [None, None]
        if self.is_main:
            try:
                message = [fn(), None]
            except SHARED_ERRORS as error:
                message = [None, (type(error).__name__, str(error))]
        dist.broadcast_object_list(message, src=0, device=torch.device("cpu"))
        result, failure = message
        if failure is not None:
            name, text = failure
            raise {cls.__name__: cls for cls in SHARED_ERRORS}[name](text)
        return result

    def close(self, barrier: bool = False) -> None:
        """Leave the process group. ``barrier=True`` when every rank gets here together (after the loop):
        ranks that tear down gloo at different moments can abort in its connection threads.

        ``destroy_process_group`` joins gloo's worker threads (see :func:`from_env`) while this thread holds
        the GIL, and a worker drops its reference to a collective just after the caller's wait returns: if
        that reference were the last, the worker would free the collective's tensors, which takes the GIL,
        and the join would never end (about 1 exit in 8 on torch 2.4). So the last collectives (the barrier
        and the latest all-reduces) stay referenced here until the workers are gone; when something else
        keeps the group alive, until the interpreter frees this module or the next Context closes."""
        works = [work for site in self._works.values() for work in site]
        self._works.clear()
        if self.owns_group:
            import torch.distributed as dist

            if barrier:
                works.append(dist.barrier(async_op=True))
                works[-1].wait()
            dist.destroy_process_group()
            self.owns_group = False
        _LAST_WORKS[:] = works  # and the previous Context's are freed, long after its workers let go


def _all_reduce(tensor: Tensor) -> Any:
    """``dist.all_reduce(tensor)``, returning its finished work for the caller to keep (see :meth:`Context.close`)."""
    import torch.distributed as dist

    work = dist.all_reduce(tensor, async_op=True)
    work.wait()
    return work


def from_env() -> Context:
    """The context torchrun describes in the environment; joins the process group when there are several ranks.

    Uses gloo for CPU tensors and, when CUDA is available, NCCL for CUDA tensors.
    """
    if "WORLD_SIZE" not in os.environ or int(os.environ["WORLD_SIZE"]) <= 1:
        return Context()
    missing = [k for k in ("RANK", "MASTER_ADDR", "MASTER_PORT") if k not in os.environ]
    if missing:
        raise ValueError(f"WORLD_SIZE is set but not {', '.join(missing)}; launch with torchrun "
                         "(see docs/distributed.md)")
    import torch.distributed as dist

    if not dist.is_available():
        raise ImportError("this torch build has no torch.distributed; install a torch with distributed support")
    context = Context(int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"]), int(os.environ.get("LOCAL_RANK", "0")))
    if not dist.is_initialized():
        # Imported after the group exists, torch._dynamo (which torch.optim and torch.compile load) keeps
        # references to it: destroy_process_group would then leave gloo's worker threads running into the
        # interpreter's exit, where one that asks for the GIL ends the process with "terminate called
        # without an active exception" (status 134) after a finished run (about 2 exits in 5 of a 2-process
        # run on one core, torch 2.14).
        import torch._dynamo  # noqa: F401

        backend = "cpu:gloo,cuda:nccl" if torch.cuda.is_available() and dist.is_nccl_available() else "gloo"
        dist.init_process_group(backend=backend, rank=context.rank, world_size=context.world_size)
        context.owns_group = True
    return context


def report(line: str) -> None:
    """Print a process's closing line to stderr, or hand it to :func:`launch` when that started the process."""
    folder = os.environ.get(REPORT_DIR)
    if folder and Path(folder).is_dir():
        Path(folder, f"rank-{int(os.environ.get('RANK', '0')):06d}").write_text(line)
    else:
        print(line, file=sys.stderr)


def available_cores() -> int:
    """The CPU cores this process may run on (its affinity mask where the OS has one)."""
    if hasattr(os, "sched_getaffinity"):
        return len(os.sched_getaffinity(0))
    return os.cpu_count() or 1


@contextmanager
def _quiet_launcher() -> Iterator[None]:
    """Silence torch.distributed.run's own logging (each of its modules sets its logger's level): the
    workers speak for the job."""
    import torch.distributed.run  # noqa: F401  (creates the launcher's loggers)

    loggers = [logging.getLogger(name) for name in list(logging.root.manager.loggerDict)
               if name.startswith("torch.distributed")]
    loggers.append(logging.getLogger())  # torch 2.4 logs "Using nproc_per_node=N." through the root logger
    levels = [lg.level for lg in loggers]
    for lg in loggers:
        lg.setLevel(logging.CRITICAL + 1)
    try:
        yield
    finally:
        for lg, level in zip(loggers, levels):
            lg.setLevel(level)


def launch(cli_args: list[str], nproc_per_node: int) -> int:
    """Run ``python -m fastmaml.cli *cli_args`` in ``nproc_per_node`` processes on this machine; its exit status.

    The processes are started through ``torch.distributed.run`` with a standalone rendezvous (localhost,
    a free port), as ``torchrun --standalone --nproc_per_node=N`` would. Each process gets
    ``cores // N`` intra-op threads unless ``OMP_NUM_THREADS`` is set (``threads=`` in the config
    still overrides). The job ends with one line, not one per process: the first failing rank's error
    (rank 0's when it has one), or rank 0's "interrupted at iteration N" after Ctrl-C/SIGTERM.

    Example:
        >>> # not run by the tests: it starts two training processes
        >>> launch(["train", "sinusoid", "iterations=10", "--out", "runs/sin2"], 2)  # doctest: +SKIP
        0
    """
    if nproc_per_node < 1:
        raise ValueError(f"--nproc-per-node {nproc_per_node}; start at least 1 process")
    if "WORLD_SIZE" in os.environ or "TORCHELASTIC_RUN_ID" in os.environ:
        raise ValueError("--nproc-per-node starts the processes itself; drop it when launching with torchrun")
    if not torch.distributed.is_available():
        raise ImportError("this torch build has no torch.distributed; install a torch with distributed support")
    from torch.distributed.elastic.multiprocessing.api import SignalException
    from torch.distributed.elastic.multiprocessing.errors import ChildFailedError
    from torch.distributed.run import parse_args, run

    saved = {k: os.environ.get(k) for k in ("OMP_NUM_THREADS", REPORT_DIR)}
    # the launcher installs its own handlers for these; a caller that goes on (a test, a notebook) gets its own back
    handlers = {s: signal.getsignal(s) for s in (signal.SIGINT, signal.SIGTERM, getattr(signal, "SIGHUP", None),
                                                 getattr(signal, "SIGQUIT", None)) if s is not None}
    with tempfile.TemporaryDirectory(prefix="fastmaml-launch-") as folder, _quiet_launcher():
        status, fallback = 0, ""
        try:
            os.environ.setdefault("OMP_NUM_THREADS", str(max(1, available_cores() // nproc_per_node)))
            os.environ[REPORT_DIR] = folder
            run(parse_args(["--standalone", f"--nproc_per_node={nproc_per_node}", "-m", "fastmaml.cli",
                            *cli_args]))
        except ChildFailedError as error:
            rank, failure = error.get_first_failure()
            status = failure.exitcode if failure.exitcode > 0 else 128 - failure.exitcode  # -N: killed by N
            fallback = f"fastmaml: error: process {rank} exited with status {status}; its output is above"
        except SignalException as error:  # Ctrl-C/SIGTERM to the launcher, forwarded once to every process
            status = 128 + int(error.sigval)
            fallback = f"fastmaml: {signal.Signals(error.sigval).name}"
        finally:
            for signum, handler in handlers.items():
                if handler is not None:  # None: a handler not installed from Python, nothing to restore
                    signal.signal(signum, handler)
            for key, value in saved.items():
                if value is None:
                    os.environ.pop(key, None)
                else:
                    os.environ[key] = value
        reports = sorted(Path(folder).glob("rank-*"))
        if status:
            print(reports[0].read_text() if reports else fallback, file=sys.stderr)
    return status
