"""Host time per meta-iteration outside the meta-gradient step: what a GPU waits for between steps.

``meta_train`` runs its whole loop (task sampling, the copy to the device, zeroing and the Adam step,
bookkeeping, logging every ``log_every``) around a step that does no work, on the Omniglot 5-way 1-shot
tasks of the ``omniglot-5w1s`` recipe (32 tasks of 5 support and 5 query images, rotations). On a GPU the
images are held on the device (``fastmaml.train.placement``), so the host draws indices and launches one
gather; on the CPU the gather itself is host work. Reported: the median over blocks of ``--iters`` iterations
of the wall time per iteration.

    PYTHONPATH=src python benchmarks/host_time.py --root ../shared/data/omniglot [--device cuda]
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

import fastmaml as fm
from fastmaml.train import config as cfg
from fastmaml.train.build import build_tasks, model_args, build_model, task_generator
from fastmaml.train.outer import meta_train
from fastmaml.train.placement import place


def host_ms(root: str, device: str, iters: int, blocks: int) -> float:
    config = cfg.resolve("omniglot-5w1s", [f"data.root={root}"])
    device_ = torch.device(device)
    tasks = place(build_tasks(config, "train"), device_, "meta-train tasks")
    model = build_model(config, model_args(config, tasks)).to(device_)
    maml = fm.MAML(model, config.inner_lr)
    optimizer = torch.optim.Adam(maml.parameters(), lr=config.outer_lr)
    zero = torch.zeros((), device=device_)
    generator = task_generator(config, "train")

    def no_work(batch):  # the step's inputs are ready; its work is not counted
        return zero

    times = []
    state = meta_train(maml, optimizer, tasks, generator, iterations=iters, meta_batch_size=config.meta_batch_size,
                       step=no_work, progress=False, log_every=config.log_every)  # warm-up: allocations, pinned pool
    for block in range(blocks):
        if device_.type == "cuda":
            torch.cuda.synchronize(device_)
        start = time.perf_counter()
        state = meta_train(maml, optimizer, tasks, generator, iterations=(block + 2) * iters,
                           meta_batch_size=config.meta_batch_size, step=no_work, progress=False,
                           log_every=config.log_every, state=state)
        times.append((time.perf_counter() - start) / iters)
    close = getattr(tasks, "close", None)
    if close is not None:
        close()
    return 1e3 * statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--root", required=True, help="the Omniglot folder (images_background/, images_evaluation/)")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--iters", type=int, default=500)
    parser.add_argument("--blocks", type=int, default=5)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    print(f"host time per iteration outside the step, omniglot-5w1s, {args.device}: "
          f"{host_ms(args.root, args.device, args.iters, args.blocks):.3f} ms")


if __name__ == "__main__":
    main()
