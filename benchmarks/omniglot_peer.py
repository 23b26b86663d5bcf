"""learn2learn's MAML on Omniglot under the same wall-clock budget and the same tasks as a fastmaml run.

learn2learn is trained the way its ``examples/vision/maml_omniglot.py`` documents (``OmniglotCNN``,
``MAML(lr=0.5, first_order=False)``, Adam 0.003, meta-batch 32, one adaptation step, a clone, adapt
and backward per task), but fed by fastmaml's sampler with the recipe's seed: the meta-train task
stream, the meta-validation tasks (the best model is kept, as fastmaml keeps ``best.pt``) and the 600
meta-test tasks are exactly those of ``fastmaml train RECIPE`` with the same overrides.

Run (from the repository root, in a venv with learn2learn; ../shared/tools/install-peers.sh)::

    PYTHONPATH=src python benchmarks/omniglot_peer.py omniglot-5w1s data.root=../shared/data/omniglot \\
        data.query_shots=5 threads=1 max_minutes=60 val_every=500 val_tasks=200 --out runs/l2l-5w1s-q5.json
"""

from __future__ import annotations

import argparse
import copy
import json
import subprocess
import time
from pathlib import Path

import torch
import torch.nn.functional as F

from fastmaml.train import config as cfg
from fastmaml.train.build import build_tasks, task_generator
from fastmaml.train.evaluate import _per_step

# learn2learn's documented Omniglot settings (examples/vision/maml_omniglot.py)
L2L_FAST_LR, L2L_META_LR = 0.5, 0.003


def accuracies(maml, batch, steps: int) -> torch.Tensor:
    """(tasks, steps + 1) query accuracy in percent after 0..steps adaptation steps, learn2learn's way."""
    out = torch.zeros(len(batch), steps + 1, dtype=torch.float64)
    sx, sy, qx, qy = batch.tensors()
    for i in range(len(batch)):
        learner = maml.clone()
        for step in range(steps + 1):
            with torch.no_grad():
                out[i, step] = 100.0 * (learner(qx[i]).argmax(-1) == qy[i]).double().mean()
            if step < steps:
                learner.adapt(F.cross_entropy(learner(sx[i]), sy[i]))
    return out


def evaluate(maml, tasks, num_tasks: int, steps: int, generator: torch.Generator, chunk: int = 25) -> list[dict]:
    rows = []
    for start in range(0, num_tasks, chunk):
        rows.append(accuracies(maml, tasks.sample_tasks(min(chunk, num_tasks - start), generator), steps))
    return _per_step(torch.cat(rows))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("recipe")
    parser.add_argument("overrides", nargs="*", help="key=value, as for `fastmaml train`")
    parser.add_argument("--out", type=Path, required=True, help="JSON file for the results")
    args = parser.parse_args()

    import learn2learn as l2l

    config = cfg.resolve(args.recipe, args.overrides)
    if config.threads:
        torch.set_num_threads(config.threads)
    tasks, val_tasks, test_tasks = (build_tasks(config, split) for split in ("train", "val", "test"))
    generator = task_generator(config, "train")
    torch.manual_seed(config.seed)
    model = l2l.vision.models.OmniglotCNN(config.data.ways)
    maml = l2l.algorithms.MAML(model, lr=L2L_FAST_LR, first_order=bool(config.first_order))
    optimizer = torch.optim.Adam(maml.parameters(), L2L_META_LR)
    steps, history, best = config.eval_inner_steps, [], (-1.0, None, 0)
    start = time.perf_counter()
    deadline = start + 60 * config.max_minutes if config.max_minutes else float("inf")
    iteration = 0
    while iteration < config.iterations and time.perf_counter() < deadline:
        sx, sy, qx, qy = tasks.sample_tasks(config.meta_batch_size, generator).tensors()
        optimizer.zero_grad()
        total = 0.0
        for i in range(config.meta_batch_size):
            learner = maml.clone()
            for _ in range(config.inner_steps):
                learner.adapt(F.cross_entropy(learner(sx[i]), sy[i]))
            loss = F.cross_entropy(learner(qx[i]), qy[i]) / config.meta_batch_size
            loss.backward()
            total += loss.item()
        optimizer.step()
        iteration += 1
        if config.val_every and iteration % config.val_every == 0:
            val = evaluate(maml, val_tasks, config.val_tasks, steps, task_generator(config, "val"))[-1]["mean"]
            history.append({"iteration": iteration, "loss": total, "val": val,
                            "minutes": (time.perf_counter() - start) / 60})
            print(json.dumps(history[-1]), flush=True)
            if val > best[0]:
                best = (val, copy.deepcopy(maml.state_dict()), iteration)
    minutes = (time.perf_counter() - start) / 60
    results = {"last": evaluate(maml, test_tasks, config.eval_tasks, steps, task_generator(config, "test"))}
    if best[1] is not None:
        maml.load_state_dict(best[1])
        results["best"] = evaluate(maml, test_tasks, config.eval_tasks, steps, task_generator(config, "test"))
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True).stdout.strip()
    report = {"peer": f"learn2learn {l2l.__version__}", "recipe": args.recipe, "overrides": args.overrides,
              "fast_lr": L2L_FAST_LR, "meta_lr": L2L_META_LR, "iterations": iteration, "minutes": minutes,
              "best_iteration": best[2], "commit": commit, "test_accuracy": results, "history": history}
    args.out.write_text(json.dumps(report, indent=1))
    for name, curve in results.items():
        print(f"{name}: " + "  ".join(f"step {s}: {c['mean']:.2f} ± {c['ci95']:.2f}" for s, c in enumerate(curve)))


if __name__ == "__main__":
    main()
