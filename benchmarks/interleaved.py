"""Two implementations timed in ONE process, their meta-iterations interleaved, so that a burst of load, a
frequency change or a cache-cold phase falls on both alike (speed.py times each in its own subprocess).

Both start from identical weights and data (speed.py's ``make_problem``: seeded); each has its own model
copy and fused Adam. After warm-up (``--warmup-s`` lets ``compile="auto"`` reach its steady state), each
round times one meta-iteration of every implementation, in an order that alternates round to round. It
reports, per implementation, the median and minimum wall and CPU time per iteration, and the speed-up as
the median over rounds of the per-round ratio (the two iterations of a round ran side by side in time).

Run (from the repository root, in a venv with learn2learn)::

    PYTHONPATH=src python benchmarks/interleaved.py --workload sinusoid --order second --rounds 2000 --threads 1
"""

from __future__ import annotations

import argparse
import gc
import os
import platform
import statistics
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from speed import WORKLOADS, git_commit, make_problem, make_step  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workload", default="sinusoid", choices=list(WORKLOADS))
    parser.add_argument("--order", default="second", choices=["second", "first"])
    parser.add_argument("--impls", nargs="+", default=["fastmaml-step", "learn2learn"])
    parser.add_argument("--rounds", type=int, default=2000, help="timed rounds (one iteration of each per round)")
    parser.add_argument("--warmup-s", type=float, default=25.0, help="untimed seconds of each implementation first")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--block", type=int, default=1,
                        help="iterations of one implementation per turn (1: strict alternation; more: each runs "
                             "back to back as in a training loop, caches warm, while turns still share the machine)")
    parser.add_argument("--gc", default="on", choices=["on", "freeze"],
                        help="freeze: gc.freeze() after warm-up, so a collection triggered by one implementation's "
                             "garbage does not traverse the other's long-lived objects inside its timed iteration")
    args = parser.parse_args()

    import torch

    torch.set_num_threads(args.threads)
    cfg = WORKLOADS[args.workload]
    runners, first_losses = {}, {}
    for impl in args.impls:
        model, batch, loss_fn = make_problem(args.workload)  # same seeds: identical weights and data
        owner, step = make_step(impl, model, batch, loss_fn, cfg["inner_lr"], args.order == "first",
                                cfg.get("steps", 1))
        opt = torch.optim.Adam(owner.parameters(), lr=1e-3, fused=True)

        def iteration(step=step, opt=opt):  # type: ignore[no-untyped-def]
            opt.zero_grad(set_to_none=True)
            loss = step()
            opt.step()
            return loss

        first_losses[impl] = float(iteration())
        until = time.perf_counter() + args.warmup_s
        while time.perf_counter() < until:
            iteration()
        runners[impl] = (owner, iteration)

    if args.gc == "freeze":
        gc.collect()
        gc.freeze()
    wall: dict[str, list[float]] = {impl: [] for impl in args.impls}
    cpu: dict[str, list[float]] = {impl: [] for impl in args.impls}
    for r in range(args.rounds):
        for impl in (args.impls if r % 2 == 0 else args.impls[::-1]):
            for _ in range(args.block):
                t0, c0 = time.perf_counter(), time.process_time()
                runners[impl][1]()
                wall[impl].append(time.perf_counter() - t0)
                cpu[impl].append(time.process_time() - c0)

    ref = args.impls[-1]
    print(f"# commit {git_commit()}, {platform.processor() or platform.machine()}, {os.cpu_count()} cpus, "
          f"python {platform.python_version()}, torch {torch.__version__}, threads {args.threads}, "
          f"rounds {args.rounds} x block {args.block}, gc {args.gc}, warmup {args.warmup_s:.0f} s each, "
          f"workload {args.workload}, order {args.order}, "
          f"load average {os.getloadavg()[0]:.2f}")
    print(f"| implementation (path) | median ms | min ms | median CPU ms | vs {ref}: median of per-round ratios "
          "(wall / CPU) | ratio of medians | ratio of minima | first loss |")
    print("|---|---:|---:|---:|---:|---:|---:|---:|")
    for impl in args.impls:
        path = getattr(getattr(runners[impl][0], "engine", None), "last_path", "")
        per_round = statistics.median(a / b for a, b in zip(wall[ref], wall[impl]))
        per_round_cpu = statistics.median(a / b for a, b in zip(cpu[ref], cpu[impl]) if b > 0)
        print(f"| {impl}{f' ({path})' if path else ''} | {1e3 * statistics.median(wall[impl]):.3f} | "
              f"{1e3 * min(wall[impl]):.3f} | {1e3 * statistics.median(cpu[impl]):.3f} | "
              f"{per_round:.1f}x / {per_round_cpu:.1f}x | "
              f"{statistics.median(wall[ref]) / statistics.median(wall[impl]):.1f}x | "
              f"{min(wall[ref]) / min(wall[impl]):.1f}x | {first_losses[impl]:.5f} |")


if __name__ == "__main__":
    main()
