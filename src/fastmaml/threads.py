"""The intra-op thread count of a run left at ``threads=0``: torch's default on an idle machine, the free
cores on a busy one.

torch starts one intra-op thread per core. With another job on the machine those threads wait on each
other: on 2 busy cores a meta-RL iteration took 41-233 s at torch's default and 7 s on one thread. So
``threads=0`` looks at the load average first and, when other jobs hold cores, uses the free ones and
says so in one line. ``threads=N`` (or ``OMP_NUM_THREADS``) is always taken as given.
"""

from __future__ import annotations

import functools
import logging
import os
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager

import torch

log = logging.getLogger(__name__)


def free_cores(cores: int, load: float, machine_cores: int) -> int:
    """The cores of this process (``cores``) that other jobs leave free, at least 1.

    ``load`` is the machine's 1-minute load average, which counts runnable jobs over all its
    ``machine_cores``; a process confined to some of them (its affinity) is taken to see its share.

    Example:
        >>> free_cores(cores=8, load=3.2, machine_cores=8)
        5
    """
    busy = round(load * cores / max(machine_cores, cores))
    return max(1, cores - busy)


def auto_threads(default: int, cores: int, load: float, machine_cores: int) -> int:
    """The thread count for ``threads=0``: torch's ``default``, or fewer when other jobs leave fewer free cores.

    Example:
        >>> auto_threads(default=2, cores=2, load=1.1, machine_cores=2)  # another job holds one of two cores
        1
    """
    return min(default, free_cores(cores, load, machine_cores))


def process_cores() -> int:
    """The cores this process may run on: its affinity where the OS has one (a container or ``taskset`` may
    give it fewer than the machine's), else the machine's.

    Example:
        >>> process_cores() >= 1
        True
    """
    if hasattr(os, "sched_getaffinity"):
        return len(os.sched_getaffinity(0))
    return os.cpu_count() or 1


def _machine() -> tuple[int, float, int] | None:
    """(this process's cores, the 1-minute load average, the machine's cores), or None where the OS has no
    load average."""
    try:
        load = os.getloadavg()[0]
    except (AttributeError, OSError):  # Windows
        return None
    return process_cores(), load, os.cpu_count() or 1


@contextmanager
def use_free_cores(threads: int | None) -> Iterator[int]:
    """Within the block, a config's ``threads=0`` runs on the free cores of a busy machine (one log line says
    so); yields the thread count in force. Any other value (None: not known), or ``OMP_NUM_THREADS`` in the
    environment (the user's or ``--nproc-per-node``'s choice), is left alone. torch's setting is restored on
    exit.
    """
    default = torch.get_num_threads()
    machine = _machine() if threads == 0 and "OMP_NUM_THREADS" not in os.environ else None
    if machine is None or auto_threads(default, *machine) == default:
        yield default
        return
    chosen = auto_threads(default, *machine)
    _, load, machine_cores = machine
    log.info(f"threads=0: the machine is busy (load average {load:.1f} on {machine_cores} cores), so this run "
             f"uses {chosen} thread{'s' if chosen > 1 else ''} instead of {default}; set threads=N to choose")
    torch.set_num_threads(chosen)
    try:
        yield chosen
    finally:
        torch.set_num_threads(default)


@functools.lru_cache(maxsize=None)
def _pool(threads: int) -> ThreadPoolExecutor:
    return ThreadPoolExecutor(threads, thread_name_prefix="fastmaml-mujoco")


def split_over(threads: int, n: int, work: Callable[[int, range], None]) -> None:
    """``work(k, chunk)`` over ``range(n)`` cut into ``min(threads, n)`` contiguous chunks, each on a thread of a
    pool of ``threads`` shared by every caller with that count, or in this thread where there is one chunk. For
    work that releases the GIL, as MuJoCo's calls do: the Ant and Meta-World samplers run each chunk's
    environments on that chunk's own scratch simulation ``datas[k]``.

    Example:
        >>> seen = []
        >>> split_over(2, 5, lambda k, chunk: seen.append((k, list(chunk))))
        >>> sorted(seen)
        [(0, [0, 1]), (1, [2, 3, 4])]
    """
    chunks = min(threads, n)
    if chunks <= 1:
        work(0, range(n))
        return
    bounds = [n * k // chunks for k in range(chunks + 1)]
    list(_pool(threads).map(work, range(chunks), [range(a, b) for a, b in zip(bounds[:-1], bounds[1:])]))
