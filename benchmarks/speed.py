"""Side-by-side meta-training speed: fastmaml's execution paths against learn2learn and higher.

Every (workload, implementation, order) runs in a fresh subprocess on IDENTICAL weights and data
(both seeded), and reports the median wall time of one meta-iteration (outer forward + backward +
Adam step), tasks per second, the peak resident memory above the post-setup baseline (max RSS from
``resource.getrusage``; CPU torch keeps no allocator statistics) and the first outer loss, which must
agree across implementations (a check that they compute the same thing).

Run (from the repository root, with learn2learn and higher installed)::

    PYTHONPATH=src python benchmarks/speed.py --iters 10 --malloc both

``--malloc tuned`` sets ``GLIBC_TUNABLES`` (see ``TUNED_MALLOC``) in the subprocesses: large tensors then
stay on the heap instead of being ``mmap``-ed and zero-faulted anew on every allocation.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import time

# Heap instead of mmap for blocks up to 4 GiB and no trimming: a meta-iteration reallocates the
# same large activations every time, and glibc's default (mmap above 32 MiB at most, trim above
# 128 KiB) page-faults them in again on each iteration.
TUNED_MALLOC = "glibc.malloc.mmap_threshold=4294967296:glibc.malloc.trim_threshold=8589934592"

WORKLOADS = {
    "sinusoid": dict(tasks=25, support=10, query=10, inner_lr=0.01),
    "conv-stride": dict(tasks=32, ways=5, shots=1, query_shots=15, inner_lr=0.4, pool="stride"),
    "conv-max": dict(tasks=32, ways=5, shots=1, query_shots=15, inner_lr=0.4, pool="max"),
    # The MAML paper's own code trains Omniglot with shots query images per class (1 for 1-shot).
    "conv-stride-q1": dict(tasks=32, ways=5, shots=1, query_shots=1, inner_lr=0.4, pool="stride"),
    "conv-stride-q5": dict(tasks=32, ways=5, shots=1, query_shots=5, inner_lr=0.4, pool="stride"),
    # Omniglot 20-way 1-shot (paper: 5 steps alpha=0.1, meta-batch 16), 1 query image per class.
    "conv-20w1s-q1": dict(tasks=16, ways=20, shots=1, query_shots=1, inner_lr=0.1, pool="stride", steps=5),
}
IMPLS = (
    "fastmaml-step", "fastmaml-loop", "fastmaml-vmap", "fastmaml-compiled", "fastmaml-2proc", "learn2learn", "higher",
)
# fastmaml-2proc: the meta-batch split over 2 processes of 1 thread each (the library's torch.distributed
# path, gloo), the way ``torchrun --nproc_per_node=2 -m fastmaml.cli train`` runs; every other
# implementation is one process with --threads intra-op threads.


# -- one configuration, in its own process ---------------------------------------------------------


def make_problem(workload: str):
    import torch
    import torch.nn.functional as F

    import fastmaml as fm

    cfg = WORKLOADS[workload]
    torch.manual_seed(0)
    g = torch.Generator().manual_seed(1)
    if workload == "sinusoid":
        model = fm.models.MLP([1, 40, 40, 1])
        t, k, q = cfg["tasks"], cfg["support"], cfg["query"]
        amp, phase = 0.1 + 4.9 * torch.rand(t, 1, 1, generator=g), torch.pi * torch.rand(t, 1, 1, generator=g)
        sx, qx = 10 * torch.rand(t, k, 1, generator=g) - 5, 10 * torch.rand(t, q, 1, generator=g) - 5
        batch = fm.TaskBatch(sx, amp * torch.sin(sx + phase), qx, amp * torch.sin(qx + phase))
        return model, batch, F.mse_loss
    model = fm.models.Conv4(in_channels=1, ways=cfg["ways"], pool=cfg["pool"])
    t, w = cfg["tasks"], cfg["ways"]
    s, q = w * cfg["shots"], w * cfg["query_shots"]
    sy = torch.arange(w).repeat_interleave(cfg["shots"]).expand(t, s).contiguous()
    qy = torch.arange(w).repeat_interleave(cfg["query_shots"]).expand(t, q).contiguous()
    batch = fm.TaskBatch(torch.rand(t, s, 1, 28, 28, generator=g), sy, torch.rand(t, q, 1, 28, 28, generator=g), qy)
    return model, batch, F.cross_entropy


def make_step(impl: str, model, batch, loss_fn, inner_lr: float, first_order: bool, steps: int = 1):
    """A closure doing one meta-iteration's forward and backward (the caller zeroes grads and steps)."""
    import torch

    tensors = batch.tensors()
    tasks = len(batch)
    if impl.startswith("fastmaml"):
        import fastmaml as fm

        execution = impl.split("-")[1]
        if execution == "step":  # the documented idiom with every option at its default (the trainer's step)
            maml = fm.MAML(model, inner_lr, steps, first_order, loss_fn)
        elif execution == "compiled":  # the idiom with compile=True: compiled from the second call
            maml = fm.MAML(model, inner_lr, steps, first_order, loss_fn, compile=True)
        else:
            maml = fm.MAML(model, inner_lr, steps, first_order, loss_fn, execution=execution, compile=False)

        def step():
            loss = maml.outer_loss(batch)
            loss.backward()
            return loss.detach()

        return maml, step
    if impl == "learn2learn":
        import learn2learn as l2l

        maml = l2l.algorithms.MAML(model, lr=inner_lr, first_order=first_order)

        def step():
            # As learn2learn's examples/vision/maml_omniglot.py: clone, adapt, backward per task.
            total = 0.0
            for i in range(tasks):
                learner = maml.clone()
                for _ in range(steps):
                    learner.adapt(loss_fn(learner(tensors[0][i]), tensors[1][i]))
                loss = loss_fn(learner(tensors[2][i]), tensors[3][i]) / tasks
                loss.backward()
                total += loss.item()
            return torch.tensor(total)

        return maml, step
    if impl == "higher":
        import higher

        inner_opt = torch.optim.SGD(model.parameters(), lr=inner_lr)
        detach = (lambda grads: [g.detach() for g in grads]) if first_order else None

        def step():
            # As higher's examples/maml-omniglot.py: innerloop_ctx per task, backward per task.
            total = 0.0
            for i in range(tasks):
                with higher.innerloop_ctx(model, inner_opt, copy_initial_weights=False) as (fmodel, diffopt):
                    for _ in range(steps):
                        diffopt.step(loss_fn(fmodel(tensors[0][i]), tensors[1][i]), grad_callback=detach)
                    loss = loss_fn(fmodel(tensors[2][i]), tensors[3][i]) / tasks
                    loss.backward()
                    total += loss.item()
            return torch.tensor(total)

        return model, step
    raise ValueError(f"unknown implementation {impl!r}; pick one of {IMPLS}")


def worker(spec: dict) -> dict:
    if spec["impl"] == "fastmaml-2proc":
        return worker_processes(spec, 2)
    return timed(spec)


def timed(spec: dict, context=None) -> dict:  # type: ignore[no-untyped-def]
    """Time ``spec``'s meta-iterations in this process; with a ``distributed.Context`` this rank runs its
    shard of the meta-batch and all-reduces the gradient before the Adam step."""
    import resource

    import torch

    if context is not None:
        torch.set_num_threads(1)
    elif spec["threads"]:
        torch.set_num_threads(spec["threads"])
    model, batch, loss_fn = make_problem(spec["workload"])
    tasks = len(batch)
    impl = "fastmaml-step" if context is not None else spec["impl"]
    if context is not None:
        batch = context.shard(batch)
    owner, local_step = make_step(impl, model, batch, loss_fn, WORKLOADS[spec["workload"]]["inner_lr"],
                                  spec["first_order"], WORKLOADS[spec["workload"]].get("steps", 1))

    def step():  # type: ignore[no-untyped-def]
        loss = local_step()
        if context is None:
            return loss
        return context.allreduce_grads(owner.parameters(), loss)[0]

    # Fused Adam for every implementation: 48 instead of 158 us per step on the MLP, same update.
    opt = torch.optim.Adam(owner.parameters(), lr=1e-3, fused=True)
    base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    times, cpu_times, first_loss = [], [], None
    start = time.perf_counter()
    # Untimed warm-up: at least --warmup iterations and --warmup-s seconds (compile="auto" compiles once the
    # eager calls have cost fastmaml.core.compiled.COMPILE_AFTER_S; the steady state comes after that).
    it, warm_until = 0, time.perf_counter() + spec.get("warmup_s", 0.0)
    while it < spec["warmup"] or time.perf_counter() < warm_until:
        opt.zero_grad(set_to_none=True)
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=spec.get("autocast") == "bfloat16"):
            loss = step()
        opt.step()
        if first_loss is None:
            first_loss = float(loss)
            first_time = time.perf_counter() - start
        it += 1
    for _ in range(spec["iters"]):
        t0, c0 = time.perf_counter(), time.process_time()
        opt.zero_grad(set_to_none=True)
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=spec.get("autocast") == "bfloat16"):
            loss = step()
        opt.step()
        elapsed, cpu = time.perf_counter() - t0, time.process_time() - c0
        times.append(elapsed)
        cpu_times.append(cpu)
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - base
    # The median by default; the minimum (``--stat min``, as timeit advises) on a shared machine, where
    # other processes' bursts inflate the median but never make an iteration faster than its own work.
    pick = min if spec.get("stat") == "min" else (lambda xs: sorted(xs)[len(xs) // 2])
    median, cpu_median = pick(times), pick(cpu_times)
    return dict(ms=1e3 * median, cpu_ms=1e3 * cpu_median, tasks_s=tasks / median, peak_mb=peak / 1024,
                loss0=first_loss, first_s=first_time,
                path=getattr(getattr(owner, "engine", None), "last_path", ""))


def _rank(rank: int, world: int, port: int, spec: dict, results) -> None:  # type: ignore[no-untyped-def]
    import torch.distributed as dist

    from fastmaml.train import distributed

    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=world)
    context = distributed.Context(rank, world)
    context.owns_group = True
    try:
        results[rank] = timed(spec, context)
    finally:
        context.close(barrier=True)


def worker_processes(spec: dict, world: int) -> dict:
    """``world`` ranks of one thread; wall time is rank 0's (it includes the all-reduce and the wait for
    the slower rank), CPU time and peak memory are the sums over ranks (the machine's cost)."""
    import socket

    import torch.multiprocessing as mp

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    results = mp.Manager().dict()
    mp.spawn(_rank, args=(world, port, spec, results), nprocs=world)
    ranks = [results[r] for r in range(world)]
    return dict(ranks[0], cpu_ms=sum(r["cpu_ms"] for r in ranks), peak_mb=sum(r["peak_mb"] for r in ranks))


# -- the driver ------------------------------------------------------------------------------------


def run_one(spec: dict, malloc: str, timeout: float) -> dict:
    env = dict(os.environ)
    if malloc == "tuned":
        env["GLIBC_TUNABLES"] = TUNED_MALLOC
    else:
        env.pop("GLIBC_TUNABLES", None)
    cmd = [sys.executable, __file__, "--worker", json.dumps(spec)]
    try:
        out = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        return dict(error=f"timeout {timeout:.0f}s")
    if out.returncode != 0:
        lines = (out.stderr or "").strip().splitlines()
        return dict(error=lines[-1] if lines else f"exit {out.returncode}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def git_commit() -> str:
    try:
        here = os.path.dirname(os.path.abspath(__file__))
        return subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=here, capture_output=True,
                              text=True).stdout.strip() or "unknown"
    except OSError:
        return "unknown"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    parser.add_argument("--workloads", nargs="+", default=list(WORKLOADS), choices=list(WORKLOADS))
    parser.add_argument("--impls", nargs="+", default=list(IMPLS), choices=list(IMPLS))
    parser.add_argument("--orders", nargs="+", default=["second", "first"], choices=["second", "first"])
    parser.add_argument("--iters", type=int, default=10, help="timed meta-iterations per config")
    parser.add_argument("--warmup", type=int, default=2, help="untimed meta-iterations first (compile here)")
    parser.add_argument("--warmup-s", type=float, default=0.0,
                        help="and at least this many seconds of untimed iterations (compile='auto' decides in them)")
    parser.add_argument("--threads", type=int, default=0, help="torch.set_num_threads; 0 keeps torch's default")
    parser.add_argument("--stat", default="median", choices=["median", "min"],
                        help="per-iteration statistic: median, or min on a shared machine")
    parser.add_argument("--malloc", default="both", choices=["default", "tuned", "both"])
    parser.add_argument("--timeout", type=float, default=600.0, help="seconds per config before giving up")
    parser.add_argument("--autocast", default="none", choices=["none", "bfloat16"],
                        help="run every implementation's forward and backward under torch.autocast (CPU)")
    parser.add_argument("--compiled-conv", action="store_true",
                        help="also compile Conv-4 (the loop over tasks unrolls: minutes of compilation)")
    args = parser.parse_args()
    if args.worker:
        print(json.dumps(worker(json.loads(args.worker))))
        return
    mallocs = ["default", "tuned"] if args.malloc == "both" else [args.malloc]
    print(f"# commit {git_commit()}, {platform.processor() or platform.machine()}, {os.cpu_count()} cpus, "
          f"python {platform.python_version()}, iters {args.iters}, warmup {args.warmup}, stat {args.stat}, "
          f"threads {args.threads or 'default'}, autocast {args.autocast}")
    print("| workload | order | malloc | implementation | ms / iter | CPU ms / iter | tasks / s | peak MB "
          "| vs learn2learn (wall) | vs learn2learn (CPU) | loss0 |")
    print("|---|---|---|---|---:|---:|---:|---:|---:|---:|---:|")
    for workload in args.workloads:
        for order in args.orders:
            for malloc in mallocs:
                rows = {}
                for impl in args.impls:
                    if impl == "fastmaml-compiled" and workload != "sinusoid" and not args.compiled_conv:
                        continue
                    spec = dict(workload=workload, impl=impl, first_order=order == "first", iters=args.iters,
                                warmup=args.warmup, warmup_s=args.warmup_s, threads=args.threads, stat=args.stat,
                                autocast=args.autocast)
                    rows[impl] = run_one(spec, malloc, args.timeout)
                ref = rows.get("learn2learn", {})
                for impl, r in rows.items():
                    if "error" in r:
                        print(f"| {workload} | {order} | {malloc} | {impl} | {r['error']} | | | | | | |", flush=True)
                        continue
                    wall = f"{ref['ms'] / r['ms']:.2f}x" if "ms" in ref else "-"
                    cpu = f"{ref['cpu_ms'] / r['cpu_ms']:.2f}x" if "cpu_ms" in ref else "-"
                    name = f"{impl} ({r['path']})" if r.get("path") else impl
                    print(f"| {workload} | {order} | {malloc} | {name} | {r['ms']:.1f} | {r['cpu_ms']:.1f} | "
                          f"{r['tasks_s']:.0f} | {r['peak_mb']:.0f} | {wall} | {cpu} | {r['loss0']:.5f} |", flush=True)


if __name__ == "__main__":
    main()
